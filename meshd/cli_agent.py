"""`meshd agent ...` and `meshd send`: the agents of the running daemon, through its control API.

Agents are named by their id (`did:key:z...`) or by the name they were spawned with. Exit
statuses are those of `meshd.cli_client` (2 usage, 3 no daemon, 4 the daemon refused); `meshd
send` also exits with 1 when the message was not delivered, queued or published (the outcome,
e.g. not_here or timeout, is printed first).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from meshd.api.client import ApiClient, ApiError
from meshd.cli_client import (
    CliError,
    api_client,
    api_options,
    data_dir_option,
    emit,
    format_fields,
    format_table,
    inbox_wait_option,
    refused,
)

__all__ = ["SPAWN_CHUNK", "agent_group", "send_command"]

# Agents per spawn request: big spawns are split so each request answers within seconds and
# the progress bar moves; the daemon takes at most 100,000 per request.
SPAWN_CHUNK = 20_000
# `spawn --json` lists at most this many ids (what the daemon describes per request).
JSON_IDS = 1_000
_HUMAN_TABLE = 10  # up to this many new agents are shown as a table, more as a summary
_HUMAN_IDS = 5
_SPAWN_TIMEOUT_S = 120.0
# A spawn refused by the node's spawn rate is retried for at most this long in total.
_RATE_RETRY_S = 60.0
_DELIVERED = frozenset({"delivered", "queued", "published"})
_STATES = ("active", "dormant", "suspended", "migrating", "gone")
# Agent ids (did:key:z + base58) and names ([A-Za-z0-9_.-]) fit in one URL path segment as is.
_AGENT_TEXT = re.compile(r"^[A-Za-z0-9:_.\-]{1,128}$")


def _agent_path(agent: str, suffix: str = "") -> str:
    if not _AGENT_TEXT.match(agent):
        raise click.UsageError(f"{agent!r} is not an agent id (did:key:z...) or agent name")
    return f"/v1/agents/{agent}{suffix}"


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from exc


@click.group("agent")
def agent_group() -> None:
    """Spawn, list, inspect, suspend, resume, delete, migrate and attach to agents."""


# --- spawn -----------------------------------------------------------------------------------


@contextmanager
def _progress(count: int) -> Iterator[Callable[[int], None]]:
    """A callback advancing a progress bar on a terminal's stderr (nothing otherwise)."""
    if count <= 1 or not sys.stderr.isatty():
        yield lambda n: None
        return
    with click.progressbar(length=count, label="spawning", file=sys.stderr) as bar:
        yield bar.update


def _spawn_chunk(client: ApiClient, body: dict[str, Any], done: int, total: int) -> Any:
    """POST one spawn request, waiting and retrying (bounded) while the spawn rate refuses."""
    deadline = time.monotonic() + _RATE_RETRY_S
    delay = 0.2
    while True:
        try:
            return client.post("/v1/agents", body)
        except ApiError as exc:
            if exc.code == "spawn_rate" and time.monotonic() + delay < deadline:
                # The node's token bucket refills at its spawn rate: wait and ask again.
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            prefix = f"spawn {body['kind']}"
            if done:
                prefix += f": {done} of {total} agents were spawned, then the daemon refused"
            raise refused(exc, prefix) from exc


def _format_spawn(result: dict[str, Any], infos: list[dict[str, Any]]) -> str:
    count, kind = result["count"], result["kind"]
    summary = f"spawned {count} {kind} agent" + ("s" if count != 1 else "")
    if count <= _HUMAN_TABLE:
        rows = [(i["id"], i.get("name") or "-", i["state"]) for i in infos]
        return format_table(("ID", "NAME", "STATE"), rows) + "\n" + summary
    lines = [*result["ids"][:_HUMAN_IDS], f"... and {count - _HUMAN_IDS} more", summary]
    return "\n".join(lines)


@agent_group.command("spawn")
@click.argument("kind")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--cap", "caps", multiple=True, metavar="TAG", help="Capability tag (repeatable).")
@click.option(
    "--ttl", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS", help="Delete after."
)
@click.option("--name", help="A unique name for the agent (with --count 1).")
@click.option("--state", "state_json", metavar="JSON", help="Initial state, a JSON object.")
@click.option("--budget", type=click.IntRange(min=0), help="Spawn budget of each new agent.")
@api_options
def spawn_command(
    kind: str,
    count: int,
    caps: tuple[str, ...],
    ttl: float | None,
    name: str | None,
    state_json: str | None,
    budget: int | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Spawn COUNT agents of KIND (echo, counter, relay, external, or module:Class).

    Large counts are sent in requests of 20,000, with a progress bar when stderr is a
    terminal. Prints the new agents: up to 10 as a table, more as the first ids and the
    total. With --json: {"count", "kind", "ids", "complete"}, where "ids" lists every new id
    when COUNT <= 1000 ("complete": true) and only the first 1000 otherwise.
    """
    state = _parse_json(state_json, "--state") if state_json is not None else {}
    if not isinstance(state, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--state")
    if name is not None and count != 1:
        raise click.UsageError("--name names one agent: use it with --count 1")
    infos: list[dict[str, Any]] = []
    done = 0
    with api_client(data_dir, timeout=_SPAWN_TIMEOUT_S) as client, _progress(count) as advance:
        while done < count:
            n = min(SPAWN_CHUNK, count - done)
            body: dict[str, Any] = {"kind": kind, "count": n, "caps": list(caps), "state": state}
            for key, value in (("ttl", ttl), ("name", name), ("budget", budget)):
                if value is not None:
                    body[key] = value
            answer = _spawn_chunk(client, body, done, count)
            if len(infos) < JSON_IDS:
                infos.extend(answer["agents"][: JSON_IDS - len(infos)])
            done += n
            advance(n)
    result = {
        "count": done,
        "kind": kind,
        "ids": [info["id"] for info in infos],
        "complete": len(infos) == done,
    }
    emit(result, as_json, lambda data: _format_spawn(data, infos))


# --- list and show ---------------------------------------------------------------------------


def _format_list(data: dict[str, Any]) -> str:
    agents = data["agents"]
    counts = data.get("counts", {})
    states = ", ".join(f"{counts[s]} {s}" for s in _STATES if counts.get(s))
    footer = f"{len(agents)} shown; {counts.get('total', '?')} hosted" + (
        f" ({states})" if states else ""
    )
    if data.get("next"):
        footer += f"\nmore: --after {data['next']}"
    if not agents:
        return "no agents\n" + footer
    rows = [
        (a["id"], a["kind"], a.get("name") or "-", a["state"], a.get("caps") or []) for a in agents
    ]
    return format_table(("ID", "KIND", "NAME", "STATE", "CAPS"), rows) + "\n" + footer


@agent_group.command("list")
@click.option("--state", type=click.Choice(_STATES), help="Only agents in this state.")
@click.option("--kind", help="Only agents of this kind.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--after", metavar="ID", help="Continue after this agent (from the last page).")
@api_options
def list_command(
    state: str | None,
    kind: str | None,
    limit: int,
    after: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """List the agents hosted by this node, oldest first."""
    params: dict[str, Any] = {"limit": limit}
    for key, value in (("state", state), ("kind", kind), ("after", after)):
        if value is not None:
            params[key] = value
    with api_client(data_dir) as client:
        try:
            data = client.get("/v1/agents", params=params)
        except ApiError as exc:
            raise refused(exc, "agent list") from exc
    emit(data, as_json, _format_list)


def _format_find(data: dict[str, Any]) -> str:
    agents = data["agents"]
    if not agents:
        return f"no agents with capability {data['cap']!r} found"
    rows = [(a["id"], a["kind"], a["node"]) for a in agents]
    return format_table(("ID", "KIND", "NODE"), rows) + f"\n{len(agents)} found"


@agent_group.command("find")
@click.option("--cap", required=True, metavar="TAG", help="The capability tag to look for.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@api_options
def find_command(cap: str, limit: int, data_dir: Path | None, as_json: bool) -> None:
    """Find agents with a capability anywhere in the mesh, with the nodes hosting them."""
    with api_client(data_dir) as client:
        try:
            data = client.get("/v1/find", params={"cap": cap, "limit": limit})
        except ApiError as exc:
            raise refused(exc, "agent find") from exc
    emit(data, as_json, _format_find)


def _format_agent(info: dict[str, Any]) -> str:
    fields: list[tuple[str, Any]] = [
        ("id", info["id"]),
        ("kind", info["kind"]),
        ("name", info.get("name") or "-"),
        ("state", info["state"]),
        ("caps", list(info.get("caps") or [])),
        ("created", _ms_text(info.get("created_ms"))),
        ("expires", _ms_text(info.get("expires_ms"))),
        ("parent", info.get("parent") or "-"),
        ("budget", info.get("budget", "?")),
        ("state version", info.get("state_version", "?")),
    ]
    if "inbox" in info:
        fields.append(("inbox", info["inbox"]))
    acl = info.get("acl") or {}
    if acl.get("allow"):
        fields.append(("allow only", list(acl["allow"])))
    if acl.get("deny"):
        fields.append(("deny", list(acl["deny"])))
    return format_fields(fields)


def _ms_text(ms: Any) -> str:
    if not isinstance(ms, int):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


@agent_group.command("show")
@click.argument("agent", metavar="ID")
@api_options
def show_command(agent: str, data_dir: Path | None, as_json: bool) -> None:
    """Describe one agent (by id or name)."""
    path = _agent_path(agent)
    with api_client(data_dir) as client:
        try:
            info = client.get(path)
        except ApiError as exc:
            raise refused(exc, f"agent {agent}") from exc
    emit(info, as_json, _format_agent)


# --- lifecycle -------------------------------------------------------------------------------


def _lifecycle_command(action: str, past: str, doc: str) -> click.Command:
    def format_result(result: dict[str, Any]) -> str:
        text = f"agent {result['id']} {past}"
        if "delivered" in result:
            text += f" ({result['delivered']} waiting messages delivered)"
        return text

    @click.command(action, help=doc)
    @click.argument("agent", metavar="ID")
    @api_options
    def command(agent: str, data_dir: Path | None, as_json: bool) -> None:
        path = _agent_path(agent, f"/{action}")
        with api_client(data_dir) as client:
            try:
                result = client.post(path)
            except ApiError as exc:
                raise refused(exc, f"cannot {action} agent {agent}") from exc
        emit(result, as_json, format_result)

    return command


agent_group.add_command(
    _lifecycle_command("suspend", "suspended", "Suspend an agent: its messages wait in its inbox.")
)
agent_group.add_command(
    _lifecycle_command("resume", "resumed", "Resume a suspended agent and deliver what waited.")
)
agent_group.add_command(
    _lifecycle_command("delete", "deleted", "Delete an agent: its key, state and inbox go.")
)


# --- migrate ---------------------------------------------------------------------------------

# Stopping the agent (its handler may run for up to 10 s) plus the transfer (up to 30 s).
_MIGRATE_TIMEOUT_S = 90.0


def _format_migrate(result: dict[str, Any]) -> str:
    text = f"agent {result['id']} migrated to {result['to']} ({result['state']})"
    moved = [
        f"{result[key]} {label}"
        for key, label in (("inbox", "waiting messages moved"), ("forwarded", "forwarded"))
        if result.get(key)
    ]
    return text + (f"; {', '.join(moved)}" if moved else "")


@agent_group.command("migrate")
@click.argument("agent", metavar="ID")
@click.option("--to", "to_peer", required=True, metavar="PEER_ID", help="The node to move it to.")
@api_options
def migrate_command(agent: str, to_peer: str, data_dir: Path | None, as_json: bool) -> None:
    """Move an agent, with its key, state and inbox, to the node PEER_ID; senders follow it."""
    path = _agent_path(agent, "/migrate")
    with api_client(data_dir, timeout=_MIGRATE_TIMEOUT_S) as client:
        try:
            result = client.post(path, {"to": to_peer})
        except ApiError as exc:
            raise refused(exc, f"cannot migrate agent {agent}") from exc
    emit(result, as_json, _format_migrate)


def _format_acl(result: dict[str, Any]) -> str:
    allow, deny = result["allow"], result["deny"]
    return format_fields(
        [
            ("id", result["id"]),
            ("allow only", list(allow) if allow else "- (every sender the trust policy admits)"),
            ("deny", list(deny) if deny else "-"),
        ]
    )


def _acl_command(
    which: str, agent: str, senders: tuple[str, ...], clear: bool, **rest: Any
) -> None:
    if not senders and not clear:
        raise click.UsageError(f"name at least one SENDER to {which}, or give --clear")
    path = _agent_path(agent, "/acl")
    with api_client(rest["data_dir"]) as client:
        try:
            result = client.post(path, {"list": which, "add": list(senders), "clear": clear})
        except ApiError as exc:
            raise refused(exc, f"cannot change the {which} list of agent {agent}") from exc
    emit(result, rest["as_json"], _format_acl)


_CLEAR_HELP = "Empty the list first (alone: just empty it)."


@agent_group.command("allow")
@click.argument("agent", metavar="ID")
@click.argument("senders", metavar="SENDER...", nargs=-1)
@click.option("--clear", is_flag=True, help=_CLEAR_HELP)
@api_options
def allow_command(
    agent: str, senders: tuple[str, ...], clear: bool, data_dir: Path | None, as_json: bool
) -> None:
    """Let only the listed senders (ids or local names) message agent ID (plus earlier ones)."""
    _acl_command("allow", agent, senders, clear, data_dir=data_dir, as_json=as_json)


@agent_group.command("deny")
@click.argument("agent", metavar="ID")
@click.argument("senders", metavar="SENDER...", nargs=-1)
@click.option("--clear", is_flag=True, help=_CLEAR_HELP)
@api_options
def deny_command(
    agent: str, senders: tuple[str, ...], clear: bool, data_dir: Path | None, as_json: bool
) -> None:
    """Refuse messages to agent ID from the listed senders (ids or names of local agents)."""
    _acl_command("deny", agent, senders, clear, data_dir=data_dir, as_json=as_json)


# --- attach ----------------------------------------------------------------------------------


@agent_group.command("attach")
@click.argument("agent", metavar="ID")
@click.option("--once", is_flag=True, help="Read one batch (waiting up to --wait s), then exit.")
@inbox_wait_option
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Accepted; the output is JSON lines anyway.")
def attach_command(
    agent: str, once: bool, wait: float, limit: int, data_dir: Path | None, as_json: bool
) -> None:
    """Attach to an external agent: print its messages as JSON lines, and ack them.

    The output is always one JSON object per line (with or without --json):
    {"seq", "id", "from", "kind", "body", "reply_to", "topic", "created_ms"}. Runs until
    Ctrl-C (exit 0), or with --once for one batch. Messages wait in the agent's inbox while
    nothing is attached, and a message is acked only after it was printed: if this process
    dies in between, it is printed again next time (at least once; dedupe by "id").

    Any program can attach the same way, over HTTP on the Unix socket <data dir>/api.sock
    (or loopback TCP with `Authorization: Bearer <api.token>`):

    \b
      1. GET  /v1/agents/ID/inbox?wait=30&limit=100
         -> a JSON array of the messages above, oldest first; waits up to `wait`
            seconds while the inbox is empty, then answers [].
      2. handle them, then POST /v1/agents/ID/inbox/ack {"seq": <last seq>}
         -> {"acked": n, "waiting": m}; every message with seq <= last is removed.
      3. to answer a message, POST /v1/send {"from": "ID", "to": <its from>,
         "body": ..., "reply_to": <its id>}; to send anything else, leave out reply_to.
      4. repeat from 1.

    \b
    For example with curl:
      curl -s --unix-socket DIR/api.sock 'http://meshd/v1/agents/ID/inbox?wait=30'
    """
    del as_json  # the output is JSON lines either way
    inbox = _agent_path(agent, "/inbox")
    # The HTTP timeout must outlast the long poll, with room for a slow answer.
    with api_client(data_dir, timeout=wait + 15.0) as client:
        try:
            while True:
                try:
                    messages = client.get(inbox, params={"wait": wait, "limit": limit})
                except ApiError as exc:
                    raise refused(exc, f"cannot attach to agent {agent}") from exc
                for message in messages:
                    click.echo(json.dumps(message, ensure_ascii=False))
                sys.stdout.flush()  # before the ack: an acked message must have been written
                if messages:
                    try:
                        client.post(f"{inbox}/ack", {"seq": messages[-1]["seq"]})
                    except ApiError as exc:
                        raise refused(exc, f"cannot ack the inbox of agent {agent}") from exc
                if once:
                    return
        except KeyboardInterrupt:
            return  # Ctrl-C is how an attached session ends
        except BrokenPipeError:
            # The reader went away (e.g. `| head -1`): what was not written stays unacked.
            # Point stdout at /dev/null so the interpreter's final flush does not fail again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return


# --- send ------------------------------------------------------------------------------------


def _format_send(result: dict[str, Any]) -> str:
    text = f"{result['outcome']}: message {result['id']} from {result['from']}"
    if result.get("trace"):
        text += f" (trace {result['trace']})"
    if result.get("detail"):
        text += f" ({result['detail']})"
    reply = result.get("reply")
    if reply is not None:
        text += f"\nreply from {reply['from']} (kind {reply['kind']}):\n"
        text += json.dumps(reply["body"], ensure_ascii=False)
    return text


@click.command("send")
@click.argument("to")
@click.argument("body_json", metavar="BODY_JSON")
@click.option("--from", "sender", metavar="AGENT", help="Send as this hosted agent.")
@click.option("--kind", default="msg", show_default=True, help="Message kind (1..64 chars).")
@click.option("--wait", is_flag=True, help="Wait for the reply and print it.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, 300, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How long --wait waits.",
)
@click.option("--reliable", is_flag=True, help="At-least-once delivery.")
@click.option(
    "--trace", is_flag=True, help="Trace it: every node it touches logs it with one trace id."
)
@click.option("--reply-to", metavar="MSG_ID", help="Answer this message (its id, hex).")
@api_options
def send_command(
    to: str,
    body_json: str,
    sender: str | None,
    kind: str,
    wait: bool,
    timeout: float,
    reliable: bool,
    reply_to: str | None,
    trace: bool,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Send BODY_JSON (any JSON value) to the agent TO, signed as --from or the node's operator.

    Exits with 1 when the outcome is not delivered, queued or published (e.g. not_here,
    gone, timeout), after printing it.
    """
    body = _parse_json(body_json, "BODY_JSON")
    request: dict[str, Any] = {"to": to, "body": body, "kind": kind, "timeout": timeout}
    for key, value in (("from", sender), ("reply_to", reply_to)):
        if value is not None:
            request[key] = value
    if wait:
        request["wait"] = True
    if reliable:
        request["reliable"] = True
    if trace:
        request["trace"] = True
    with api_client(data_dir, timeout=timeout + 10.0) as client:
        try:
            result = client.post("/v1/send", request)
        except ApiError as exc:
            raise refused(exc, f"send to {to}") from exc
    emit(result, as_json, _format_send)
    if result.get("outcome") not in _DELIVERED:
        detail = f" ({result['detail']})" if result.get("detail") else ""
        raise CliError(f"message to {to} not delivered: {result.get('outcome')}{detail}")
