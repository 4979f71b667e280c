"""`meshd swarm ...`: swarms, their shared state, task board and decisions, through the API.

Each command is one request to `/v1/swarms...` (`meshd.api.swarms`); `--json` prints the
API's answer as one JSON document. Exit statuses are those of `meshd.cli_client`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from meshd.api.client import ApiError
from meshd.cli_client import api_client, api_options, emit, format_fields, format_table, refused

__all__ = ["swarm_group"]


@click.group("swarm")
def swarm_group() -> None:
    """Swarms: named groups of agents across nodes, with a coordinator."""


def _call(data_dir: Path | None, method: str, path: str, body: Any, what: str) -> Any:
    with api_client(data_dir) as client:
        try:
            if method == "GET":
                return client.get(path)
            return client.post(path, body)
        except ApiError as exc:
            raise refused(exc, what) from exc


@swarm_group.command("create")
@click.argument("name")
@click.option("--parent", metavar="PARENT", help="The parent swarm (for hierarchies).")
@api_options
def create_command(name: str, parent: str | None, data_dir: Path | None, as_json: bool) -> None:
    """Follow swarm NAME on this node (with PARENT); agents join it with `swarm join`."""
    body: dict[str, Any] = {"name": name}
    if parent is not None:
        body["parent"] = parent
    result = _call(data_dir, "POST", "/v1/swarms", body, f"cannot create swarm {name!r}")
    emit(
        result,
        as_json,
        lambda r: (
            f"{'created' if r['created'] else 'already followed'}: swarm {r['name']}"
            + (f" (parent {r['parent']})" if r["parent"] else "")
        ),
    )


def _membership(name: str, agent: str, data_dir: Path | None, as_json: bool, op: str) -> None:
    result = _call(
        data_dir,
        "POST",
        f"/v1/swarms/{name}/{op}",
        {"agent": agent},
        f"cannot {op} swarm {name!r}",
    )
    done = {"join": ("joined", "already a member of"), "leave": ("left", "not a member of")}[op]
    emit(
        result,
        as_json,
        lambda r: f"{r['agent']} {done[0] if r['changed'] else done[1]} swarm {r['swarm']}",
    )


@swarm_group.command("join")
@click.argument("name")
@click.option("--agent", required=True, metavar="ID", help="A hosted agent (id or name).")
@api_options
def join_command(name: str, agent: str, data_dir: Path | None, as_json: bool) -> None:
    """Make a hosted agent a member of swarm NAME."""
    _membership(name, agent, data_dir, as_json, "join")


@swarm_group.command("leave")
@click.argument("name")
@click.option("--agent", required=True, metavar="ID", help="A hosted agent (id or name).")
@api_options
def leave_command(name: str, agent: str, data_dir: Path | None, as_json: bool) -> None:
    """Take a hosted agent out of swarm NAME."""
    _membership(name, agent, data_dir, as_json, "leave")


@swarm_group.command("list")
@api_options
def list_command(data_dir: Path | None, as_json: bool) -> None:
    """The swarms this node follows: members, local members, coordinator."""
    result = _call(data_dir, "GET", "/v1/swarms", None, "cannot list swarms")

    def human(r: dict[str, Any]) -> str:
        rows = [
            (
                s["name"],
                s["parent"] or "-",
                s["state"],
                s["members"],
                s["local_members"],
                s["coordinator"] or "-",
            )
            for s in r["swarms"]
        ]
        if not rows:
            return "no swarms"
        return format_table(("NAME", "PARENT", "STATE", "MEMBERS", "LOCAL", "COORDINATOR"), rows)

    emit(result, as_json, human)


def _shared_line(shared: dict[str, Any] | None) -> str:
    if not shared:
        return "-"
    tasks = shared["tasks"]
    return (
        f"{shared['keys']} keys, {shared['bytes']} bytes; tasks {tasks['open']} open, "
        f"{tasks['claimed']} claimed, {tasks['done']} done; {shared['proposals']} proposals"
    )


@swarm_group.command("show")
@click.argument("name")
@api_options
def show_command(name: str, data_dir: Path | None, as_json: bool) -> None:
    """Swarm NAME as this node sees it: members, their nodes, the coordinator, the state."""
    result = _call(data_dir, "GET", f"/v1/swarms/{name}", None, f"cannot show swarm {name!r}")

    def human(r: dict[str, Any]) -> str:
        head = format_fields(
            [
                ("name", r["name"]),
                ("parent", r["parent"] or "-"),
                ("state", r["state"]),
                ("coordinator", r["coordinator"] or "-"),
                ("coordinator node", r["coordinator_node"] or "-"),
                ("nodes", r["nodes"]),
                ("subtree agents", r["aggregate"]["agents"]),
                ("subtree totals", json.dumps(r["aggregate"]["totals"])),
                ("children", sorted(r["aggregate"]["children"]) or "-"),
                ("shared state", _shared_line(r.get("shared"))),
            ]
        )
        rows = [(m["id"], m["node"], "yes" if m["local"] else "") for m in r["members"]]
        return head + "\n\n" + format_table(("MEMBER", "NODE", "LOCAL"), rows)

    emit(result, as_json, human)


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from exc


def _state_text(r: dict[str, Any]) -> str:
    head = f"swarm {r['swarm']}: {len(r['state'])} keys, {r['bytes']} bytes, {r['clients']} writers"
    rows = [(key, json.dumps(value, ensure_ascii=False)) for key, value in r["state"].items()]
    return head + ("\n\n" + format_table(("KEY", "VALUE"), rows) if rows else "")


@swarm_group.command("state")
@click.argument("name")
@click.option(
    "--set",
    "set_",
    nargs=2,
    metavar="KEY JSON",
    help="Write KEY with the JSON value (replicated to every node following NAME).",
)
@click.option("--delete", metavar="KEY", help="Remove KEY.")
@api_options
def state_command(
    name: str,
    set_: tuple[str, str] | None,
    delete: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Swarm NAME's shared state (this node's replica); --set or --delete writes one key."""
    what = f"cannot write the state of swarm {name!r}"
    if set_ and delete:
        raise click.UsageError("--set and --delete do not go together")
    if set_:
        body = {"key": set_[0], "value": _parse_json(set_[1], "--set JSON")}
        result = _call(data_dir, "POST", f"/v1/swarms/{name}/state", body, what)
    elif delete:
        body = {"key": delete, "delete": True}
        result = _call(data_dir, "POST", f"/v1/swarms/{name}/state", body, what)
    else:
        path = f"/v1/swarms/{name}/state"
        result = _call(data_dir, "GET", path, None, f"cannot read the state of swarm {name!r}")
    emit(result, as_json, _state_text)


@swarm_group.group("task")
def task_group() -> None:
    """The swarm's task board: tasks added, claimed by worker agents, done once."""


def _actor(agent: str | None, **more: Any) -> dict[str, Any]:
    body = {k: v for k, v in more.items() if v is not None}
    if agent is not None:
        body["agent"] = agent
    return body


_AGENT_HELP = "A hosted member (id or name); default: the swarm's only member here."


@task_group.command("add")
@click.argument("name")
@click.argument("spec_json", metavar="SPEC_JSON")
@click.option("--agent", metavar="ID", help="The hosted agent adding it (recorded as 'by').")
@api_options
def task_add_command(
    name: str, spec_json: str, agent: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Put a task (SPEC_JSON, any JSON) on swarm NAME's board; print its id."""
    body = _actor(agent, spec=_parse_json(spec_json, "SPEC_JSON"))
    result = _call(data_dir, "POST", f"/v1/swarms/{name}/tasks", body, "cannot add the task")
    emit(result, as_json, lambda r: str(r["id"]))


@task_group.command("list")
@click.argument("name")
@api_options
def task_list_command(name: str, data_dir: Path | None, as_json: bool) -> None:
    """Swarm NAME's tasks: state (open, claimed, done), claimant, result."""
    result = _call(data_dir, "GET", f"/v1/swarms/{name}/tasks", None, "cannot list tasks")

    def human(r: dict[str, Any]) -> str:
        rows = [
            (
                t["id"],
                t["state"],
                (t["done"] or {}).get("agent") or t["claimant"] or "-",
                json.dumps(t["spec"], ensure_ascii=False)[:60],
                json.dumps((t["done"] or {}).get("result"), ensure_ascii=False)[:40]
                if t["done"]
                else "",
            )
            for t in r["tasks"]
        ]
        if not rows:
            return "no tasks"
        return format_table(("TASK", "STATE", "AGENT", "SPEC", "RESULT"), rows)

    emit(result, as_json, human)


@task_group.command("claim")
@click.argument("name")
@click.argument("task")
@click.option("--agent", metavar="ID", help=_AGENT_HELP)
@api_options
def task_claim_command(
    name: str, task: str, agent: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Claim TASK for a member; exits 0 and prints whether the claim won (after settling)."""
    path = f"/v1/swarms/{name}/tasks/{task}/claim"
    result = _call(data_dir, "POST", path, _actor(agent), f"cannot claim {task!r}")
    emit(result, as_json, lambda r: f"{r['agent']} {'won' if r['won'] else 'lost'} {r['task']}")


@task_group.command("done")
@click.argument("name")
@click.argument("task")
@click.option("--agent", metavar="ID", help=_AGENT_HELP)
@click.option("--result", "result_json", metavar="JSON", help="The task's result (JSON).")
@api_options
def task_done_command(
    name: str,
    task: str,
    agent: str | None,
    result_json: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Mark TASK done by a member, with its result."""
    result = None if result_json is None else _parse_json(result_json, "--result")
    path = f"/v1/swarms/{name}/tasks/{task}/done"
    body = _actor(agent, result=result)
    answer = _call(data_dir, "POST", path, body, f"cannot complete {task!r}")
    emit(answer, as_json, lambda r: f"{r['task']}: {'done' if r['changed'] else 'already done'}")


def _decision_text(r: dict[str, Any]) -> str:
    return format_fields(
        [
            ("proposal", r["id"]),
            ("text", r["text"]),
            ("proposer", r["proposer"]),
            ("outcome", r["outcome"]),
            (
                "votes",
                f"{r['yes']} yes, {r['no']} no of {len(r['electorate'])} (quorum {r['quorum']})",
            ),
            ("refused ballots", json.dumps(r.get("rejected") or {})),
        ]
    )


@swarm_group.command("propose")
@click.argument("name")
@click.argument("text")
@click.option("--agent", metavar="ID", help=_AGENT_HELP)
@api_options
def propose_command(
    name: str, text: str, agent: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """A member proposes TEXT to swarm NAME's live members; prints the proposal id."""
    body = _actor(agent, text=text)
    result = _call(data_dir, "POST", f"/v1/swarms/{name}/proposals", body, "cannot propose")
    emit(result, as_json, _decision_text)


@swarm_group.command("vote")
@click.argument("name")
@click.argument("proposal")
@click.argument("choice", type=click.Choice(["yes", "no"]))
@click.option("--agent", metavar="ID", help=_AGENT_HELP)
@api_options
def vote_command(
    name: str, proposal: str, choice: str, agent: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """A member signs a ballot (yes or no) on PROPOSAL of swarm NAME."""
    path = f"/v1/swarms/{name}/proposals/{proposal}/vote"
    result = _call(data_dir, "POST", path, _actor(agent, choice=choice), "cannot vote")
    emit(result, as_json, _decision_text)


@swarm_group.command("proposals")
@click.argument("name")
@click.argument("proposal", required=False)
@api_options
def proposals_command(
    name: str, proposal: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Swarm NAME's proposals and verdicts; with PROPOSAL, that one with its signed ballots."""
    if proposal is not None:
        path = f"/v1/swarms/{name}/proposals/{proposal}"
        result = _call(data_dir, "GET", path, None, f"cannot show proposal {proposal!r}")
        emit(result, as_json, _decision_text)
        return
    path = f"/v1/swarms/{name}/proposals"
    result = _call(data_dir, "GET", path, None, "cannot list proposals")

    def human(r: dict[str, Any]) -> str:
        rows = [
            (p["id"], p["outcome"], p["yes"], p["no"], len(p["electorate"]), p["text"][:50])
            for p in r["proposals"]
        ]
        if not rows:
            return "no proposals"
        return format_table(("PROPOSAL", "OUTCOME", "YES", "NO", "VOTERS", "TEXT"), rows)

    emit(result, as_json, human)
