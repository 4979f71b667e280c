"""`meshd swarm create|join|leave|list|show`: swarms, through the daemon's control API.

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
            ]
        )
        rows = [(m["id"], m["node"], "yes" if m["local"] else "") for m in r["members"]]
        return head + "\n\n" + format_table(("MEMBER", "NODE", "LOCAL"), rows)

    emit(result, as_json, human)
