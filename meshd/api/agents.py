"""The agent routes of the control API: spawn, list, show, lifecycle, send, external attach.

Every route here reads the node's `Runtime` through `AgentsView.runtime` and answers JSON.
Agents are named in paths and bodies by their `did:key:z...` id or by the name they were
spawned with. Failures are `ApiProblem`s: 400 bad input, 404 unknown agent, 409 illegal
lifecycle transition (or name taken, or not an external agent), 422 unknown kind, 429 a quota
(the code is the quota's reason: `max_agents`, `spawn_rate`, `budget`, or `inbox_full`), 502
when the peer an agent migrates to cannot be reached or refuses it, 503 when the node runs no
agent runtime.

Message bodies are JSON on the way in (any JSON value is plain CBOR) and plain CBOR on the
way out, shown as JSON: byte strings become `{"$base64": "..."}`, integer map keys become
text, non-finite floats become the strings "NaN", "Infinity", "-Infinity".

External agents (kind `external`) live in another process, which attaches over HTTP:

    GET  /v1/agents/{id}/inbox?wait=30&limit=100   -> [{seq, id, from, kind, body, reply_to,
                                                       topic, created_ms}, ...]
    POST /v1/agents/{id}/inbox/ack  {"seq": N}      -> removes every message with seq <= N
    POST /v1/send {"from": id, "to": ..., "body": ..., "reply_to": <msg id>}  -> answers

Pub/sub: `POST /v1/send` with `topic` (instead of `to`) publishes on the topic; `POST
/v1/agents/{id}/subscribe {"topic": ...}` (and `/unsubscribe`) manages an agent's durable
subscriptions. An external agent subscribed to a topic finds its messages in its inbox.

The GET returns what waits at once, or long-polls up to `wait` seconds for the first message.
Messages stay in the agent's persistent inbox until acked, so a client that dies before its
ack gets them again (at least once: dedupe by `id`). `meshd agent attach` is such a client.

The request parsing and the JSON conversions live in `meshd.api.agent_json`; their names stay
importable from here.
"""

from __future__ import annotations

import base64 as base64
import logging
import math as math
import re
from collections.abc import Collection as Collection
from collections.abc import Iterator
from contextlib import contextmanager
from json import JSONDecodeError as JSONDecodeError
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request

from meshd.api.agent_json import _bad as _bad
from meshd.api.agent_json import _Fields as _Fields
from meshd.api.agent_json import _json_object as _json_object
from meshd.api.agent_json import _message_json as _message_json
from meshd.api.agent_json import _query as _query
from meshd.api.agent_json import _query_float as _query_float
from meshd.api.agent_json import _query_int as _query_int
from meshd.api.agent_json import jsonable
from meshd.api.base import ApiProblem, Endpoint
from meshd.api.openapi import QueryParam
from meshd.migration import MigrationError, Migrator
from meshd.pubsub import Topics
from meshd.runtime import AgentError, LifecycleError, QuotaExceeded, Runtime, State, UnknownAgent
from meshd.runtime.kinds import KindError
from meshd.store import AgentGone, AgentNotFound, DuplicateAgent, InboxFull
from meshd.summaries import Summaries
from meshd.tracing import new_trace_id
from meshd.trust import MAX_ACL_ENTRIES, Trust
from protocol.envelope import MAX_TOPIC_LEN, MSG_ID_LEN, Envelope
from protocol.errors import LocalProtocolError
from protocol.errors import RemoteProtocolError as RemoteProtocolError
from protocol.ids import AgentId

if TYPE_CHECKING:
    from meshd.api.server import NodeView

# The `name as name` imports above re-export what this module defined or imported before the
# request parsing and JSON conversions moved to `meshd.api.agent_json`.

__all__ = [
    "AGENT_ENDPOINTS",
    "INBOX_MAX",
    "LIST_MAX",
    "MAX_SPAWN_PER_REQUEST",
    "SPAWN_INFOS",
    "WAIT_MAX_S",
    "jsonable",
]

log = logging.getLogger("meshd.api.agents")

# One request spawns at most this many agents: bigger spawns are split by the client (the CLI
# sends 20,000 per request), so that each request commits and answers in seconds.
MAX_SPAWN_PER_REQUEST = 100_000
# A spawn answers with the descriptions of at most this many of the agents it created.
SPAWN_INFOS = 1_000
LIST_MAX = 10_000
INBOX_MAX = 1_000
FIND_MAX = 1_000
WAIT_MAX_S = 300.0
SEND_TIMEOUT_MAX_S = 300.0
# A long poll re-reads the inbox at least this often: `Runtime.wait_inbox` can miss a message
# queued between our read and its registration, and a resumed agent wakes no waiter.
_POLL_SLICE_S = 1.0
_DID_PREFIX = "did:"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
# The runtime finds its operator agent by this name; another agent must not take it.
_RESERVED_NAMES = frozenset({"operator"})
_STATES = tuple(state.value for state in State)


# --- request parsing -------------------------------------------------------------------------


def _runtime(view: NodeView) -> Runtime:
    """The node's runtime, or 503 when this view hosts no agents."""
    try:
        runtime = getattr(view, "runtime", None)
    except RuntimeError:  # Node.runtime says so when the node runs without one
        runtime = None
    if not isinstance(runtime, Runtime):
        raise ApiProblem(503, "no_runtime", "this node runs no agent runtime")
    return runtime


def _check_name(name: str) -> str:
    if name in _RESERVED_NAMES:
        raise _bad(f"name {name!r} is reserved for the node's operator agent")
    if not _NAME_RE.match(name):
        raise _bad(
            f"invalid name {name!r}: 1..64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


async def _resolve(runtime: Runtime, text: str, role: str = "agent") -> AgentId:
    """The agent named by `text`: a did:key id (hosted here or not) or a local name."""
    if text.startswith(_DID_PREFIX):
        try:
            return AgentId.from_did(text)
        except ValueError as exc:
            raise _bad(f"{role}: {exc}", "bad_agent_id") from exc
    try:
        return await runtime.find_by_name(text)
    except UnknownAgent as exc:
        message = str(exc) if role == "agent" else f"{role}: {exc}"
        raise ApiProblem(404, "unknown_agent", message) from exc


async def _hosted(runtime: Runtime, request: Request) -> AgentId:
    """The agent of the `{id}` path parameter, which must be hosted here."""
    agent = await _resolve(runtime, request.path_params["id"])
    if runtime.state_of(agent) is None:
        raise ApiProblem(404, "unknown_agent", f"no agent {agent.did} on this node")
    return agent


@contextmanager
def _runtime_errors(subject: str) -> Iterator[None]:
    """Turn the runtime's refusals into API problems whose message names `subject`."""
    try:
        yield
    except (UnknownAgent, AgentNotFound, AgentGone) as exc:
        raise ApiProblem(404, "unknown_agent", str(exc)) from exc
    except LifecycleError as exc:
        raise ApiProblem(409, "illegal_transition", f"{subject}: {exc}") from exc
    except QuotaExceeded as exc:
        raise ApiProblem(429, exc.reason, f"{subject}: {exc}") from exc
    except InboxFull as exc:
        raise ApiProblem(429, "inbox_full", str(exc)) from exc
    except KindError as exc:
        raise ApiProblem(422, "unknown_kind", str(exc)) from exc
    except (AgentError, LocalProtocolError) as exc:
        raise _bad(f"{subject}: {exc}") from exc


# --- handlers --------------------------------------------------------------------------------

_SPAWN_FIELDS = ("kind", "count", "caps", "ttl", "name", "state", "budget", "parent")


async def _spawn(view: NodeView, request: Request) -> Any:
    runtime = _runtime(view)
    fields = _Fields(await _json_object(request, "spawn"), "spawn", _SPAWN_FIELDS)
    kind = fields.text("kind", max_len=256)
    if kind is None:
        raise _bad("'kind' is required (e.g. echo, counter, relay, external)")
    count = fields.integer("count", low=1, high=MAX_SPAWN_PER_REQUEST)
    count = 1 if count is None else count
    caps = fields.texts("caps")
    ttl = fields.number("ttl", low=0, high=10 * 365 * 86400, open_low=True)
    name = fields.text("name", max_len=64)
    if name is not None:
        _check_name(name)
        if count != 1:
            raise _bad("'name' names one agent: use it with count 1")
    state = fields.mapping("state")
    budget = fields.integer("budget", low=0, high=2**53)
    parent_text = fields.text("parent")
    parent = await _resolve(runtime, parent_text, "parent") if parent_text else None
    subject = f"spawn {count} {kind}" + (f" as {parent.did}" if parent else "")
    try:
        with _runtime_errors(subject):
            infos = await runtime.spawn(
                kind,
                count=count,
                caps=caps,
                state=state,
                ttl_s=ttl,
                name=name,
                parent=parent,
                budget=budget,
            )
    except DuplicateAgent as exc:
        raise ApiProblem(
            409, "name_taken", f"an agent named {name!r} already exists on this node"
        ) from exc
    return {"count": count, "agents": infos[:SPAWN_INFOS]}


async def _list(view: NodeView, request: Request) -> Any:
    runtime = _runtime(view)
    params = _query(request, ("state", "kind", "limit", "after"))
    state = params.get("state") or None
    if state is not None and state not in _STATES:
        raise _bad(f"query parameter 'state' must be one of {', '.join(_STATES)}, got {state!r}")
    kind = params.get("kind") or None
    limit = _query_int(params, "limit", 100, 1, LIST_MAX)
    after_text = params.get("after") or None
    after = await _resolve(runtime, after_text, "after") if after_text else None
    try:
        agents = await runtime.list_agents(
            lifecycle=state, kind=kind, limit=limit, after=after.raw if after else None
        )
    except AgentNotFound as exc:
        raise _bad(f"after: no agent {after_text} here to continue from") from exc
    # A full page may have a next one; a short page is the last.
    next_after = agents[-1]["id"] if len(agents) >= limit else None
    return {"agents": agents, "next": next_after, "counts": runtime.counts()}


async def _show(view: NodeView, request: Request) -> Any:
    runtime = _runtime(view)
    _query(request, ())
    agent = await _resolve(runtime, request.path_params["id"])
    with _runtime_errors(agent.did):
        info = await runtime.describe(agent)
        info["inbox"] = await runtime.store.inbox_count(agent.raw)
    trust = _trust(view)
    if trust is not None:
        info["acl"] = trust.acl_of(agent).to_json()
    return info


def _trust(view: NodeView) -> Trust | None:
    try:
        trust = getattr(view, "trust", None)
    except RuntimeError:  # Node.trust says so when the node runs without one
        return None
    return trust if isinstance(trust, Trust) else None


async def _acl(view: NodeView, request: Request) -> Any:
    runtime = _runtime(view)
    fields = _Fields(await _json_object(request, "acl"), "acl", ("list", "add", "clear"))
    which = fields.text("list", max_len=8)
    if which not in ("allow", "deny"):
        raise _bad("'list' is required: allow or deny")
    refs = fields.texts("add", max_len=128, max_items=MAX_ACL_ENTRIES)
    clear = fields.flag("clear")
    agent = await _hosted(runtime, request)
    senders = [await _resolve(runtime, ref, "sender") for ref in refs]
    trust = _trust(view)
    if trust is None:
        raise ApiProblem(503, "no_trust", "this node keeps no allow/deny lists")
    try:
        acl = await trust.update_acl(agent, which, senders, clear=clear)
    except ValueError as exc:
        raise _bad(str(exc)) from exc
    return {"id": agent.did, **acl.to_json()}


async def _suspend(view: NodeView, request: Request) -> Any:
    runtime = _runtime(view)
    agent = await _hosted(runtime, request)
    with _runtime_errors(f"agent {agent.did}"):
        await runtime.suspend(agent)
    return {"id": agent.did, "state": State.SUSPENDED.value}


async def _resume(view: NodeView, request: Request) -> Any:
    runtime = _runtime(view)
    agent = await _hosted(runtime, request)
    with _runtime_errors(f"agent {agent.did}"):
        delivered = await runtime.resume(agent)
    state = runtime.state_of(agent)
    return {
        "id": agent.did,
        "state": state.value if state is not None else State.GONE.value,
        "delivered": delivered,
    }


async def _delete(view: NodeView, request: Request) -> Any:
    runtime = _runtime(view)
    agent = await _hosted(runtime, request)
    with _runtime_errors(f"agent {agent.did}"):
        await runtime.delete(agent)
    return {"id": agent.did, "state": State.GONE.value}


# MigrationError codes -> (HTTP status, API error code).
_MIGRATION_PROBLEMS = {
    "bad_peer": (400, "bad_peer_id"),
    "not_migratable": (409, "not_migratable"),
    "unreachable": (502, "peer_unreachable"),
    "refused": (502, "migration_refused"),
}


async def _find(view: NodeView, request: Request) -> Any:
    _runtime(view)
    params = _query(request, ("cap", "limit"))
    tag = params.get("cap") or ""
    if not 0 < len(tag) <= 64:
        raise _bad("query parameter 'cap' must be a capability tag of 1..64 characters")
    limit = _query_int(params, "limit", 100, 1, FIND_MAX)
    try:
        summaries = getattr(view, "summaries", None)
    except RuntimeError:  # Node.summaries says so when the node keeps none
        summaries = None
    if not isinstance(summaries, Summaries):
        raise ApiProblem(503, "no_summaries", "this node keeps no node summaries")
    found = await summaries.find(tag, limit)
    return {
        "cap": tag,
        "agents": [
            {"id": AgentId(item.agent).did, "kind": item.kind, "node": item.node} for item in found
        ],
    }


async def _migrate(view: NodeView, request: Request) -> Any:
    runtime = _runtime(view)
    fields = _Fields(await _json_object(request, "migrate"), "migrate", ("to",))
    to = fields.text("to", max_len=128)
    if to is None:
        raise _bad("'to' is required: the peer id of the node to move the agent to")
    agent = await _hosted(runtime, request)
    try:
        migrator = getattr(view, "migrator", None)
    except RuntimeError:  # Node.migrator says so when the node runs without one
        migrator = None
    if not isinstance(migrator, Migrator):
        raise ApiProblem(503, "no_migration", "this node cannot migrate agents")
    subject = f"migrate agent {agent.did}"
    try:
        with _runtime_errors(subject):
            return await migrator.migrate(agent, to)
    except MigrationError as exc:
        status, code = _MIGRATION_PROBLEMS.get(exc.code, (502, "migration_failed"))
        raise ApiProblem(status, code, str(exc)) from exc


async def _external(runtime: Runtime, request: Request) -> AgentId:
    agent = await _hosted(runtime, request)
    if not runtime.is_external(agent):
        raise ApiProblem(
            409,
            "not_external",
            f"agent {agent.did} is not an external agent: its behaviour runs in the node, "
            "which consumes its inbox",
        )
    return agent


async def _read_inbox(view: NodeView, request: Request) -> Any:
    runtime = _runtime(view)
    params = _query(request, ("wait", "limit"))
    wait = _query_float(params, "wait", 0.0, WAIT_MAX_S)
    limit = _query_int(params, "limit", 100, 1, INBOX_MAX)
    agent = await _external(runtime, request)
    deadline = trio.current_time() + wait
    while True:
        state = runtime.state_of(agent)
        if state is None:
            raise ApiProblem(404, "unknown_agent", f"agent {agent.did} was deleted")
        # A suspended agent's inbox is held: nothing is handed out until it is resumed.
        if state is not State.SUSPENDED:
            items = await runtime.store.inbox_take(agent.raw, limit)
            if items:
                return [_message_json(seq, frame) for seq, frame in items]
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            return []
        await runtime.wait_inbox(agent, min(remaining, _POLL_SLICE_S))


async def _ack_inbox(view: NodeView, request: Request) -> Any:
    runtime = _runtime(view)
    fields = _Fields(await _json_object(request, "ack"), "ack", ("seq",))
    seq = fields.integer("seq", low=0, high=2**63 - 1)
    if seq is None:
        raise _bad("'seq' is required: the seq of the last message handled")
    agent = await _external(runtime, request)
    with _runtime_errors(f"agent {agent.did}"):
        removed = await runtime.store.inbox_ack(agent.raw, seq)
        waiting = await runtime.store.inbox_count(agent.raw)
    return {"acked": removed, "waiting": waiting}


def _topics(runtime: Runtime) -> Topics:
    """The node's pub/sub (the delivery service's), or 503 when it runs none."""
    topics = getattr(runtime.messenger, "topics", None)
    if not isinstance(topics, Topics):
        raise ApiProblem(503, "no_pubsub", "this node runs no pub/sub (no delivery service)")
    return topics


async def _subscription(view: NodeView, request: Request, subscribe: bool) -> Any:
    runtime = _runtime(view)
    what = "subscribe" if subscribe else "unsubscribe"
    fields = _Fields(await _json_object(request, what), what, ("topic",))
    topic = fields.text("topic", max_len=MAX_TOPIC_LEN)
    if topic is None:
        raise _bad(f"'topic' is required: a topic name of 1..{MAX_TOPIC_LEN} characters")
    agent = await _hosted(runtime, request)
    topics = _topics(runtime)
    with _runtime_errors(f"{what} agent {agent.did} to {topic!r}"):
        if subscribe:
            changed = await topics.subscribe(topic, agent)
        else:
            changed = await topics.unsubscribe(topic, agent)
    return {"id": agent.did, "topic": topic, "changed": changed, "topics": topics.topics_of(agent)}


async def _subscribe(view: NodeView, request: Request) -> Any:
    return await _subscription(view, request, subscribe=True)


async def _unsubscribe(view: NodeView, request: Request) -> Any:
    return await _subscription(view, request, subscribe=False)


async def _publish(runtime: Runtime, fields: _Fields, topic: str) -> Any:
    """`/v1/send` with `topic`: publish as `from` (default: the operator) on the topic."""
    for key in ("to", "wait", "reliable", "reply_to"):
        if fields.data.get(key) not in (None, False):
            raise _bad(f"'{key}' does not apply to a topic message (pub/sub is best effort)")
    if not fields.has("body"):
        raise _bad("'body' is required (any JSON value)")
    kind = fields.text("kind", max_len=64) or "pub"
    from_text = fields.text("from")
    sender = await _resolve(runtime, from_text, "from") if from_text is not None else None
    if sender is not None and runtime.state_of(sender) is None:
        raise ApiProblem(404, "unknown_agent", f"from: no agent {sender.did} on this node")
    with _runtime_errors(f"publish on {topic!r}"):
        if sender is None:
            sender = await runtime.operator()
        result = await runtime.send_as(sender, topic, fields.data["body"], kind=kind)
    return jsonable(result)


_SEND_FIELDS = (
    "to",
    "topic",
    "body",
    "kind",
    "from",
    "wait",
    "timeout",
    "reliable",
    "reply_to",
    "trace",
)


async def _send(view: NodeView, request: Request) -> Any:
    runtime = _runtime(view)
    fields = _Fields(await _json_object(request, "send"), "send", _SEND_FIELDS)
    topic = fields.text("topic", max_len=MAX_TOPIC_LEN)
    if topic is not None:
        return await _publish(runtime, fields, topic)
    to_text = fields.text("to")
    if to_text is None:
        raise _bad("'to' is required: an agent id (did:key:z...) or a local agent's name")
    if not fields.has("body"):
        raise _bad("'body' is required (any JSON value)")
    body = fields.data["body"]
    kind = fields.text("kind", max_len=64) or "msg"
    wait = fields.flag("wait")
    reliable = fields.flag("reliable")
    timeout = fields.number("timeout", low=0, high=SEND_TIMEOUT_MAX_S, open_low=True)
    timeout = 10.0 if timeout is None else timeout
    reply_text = fields.text("reply_to", max_len=2 * MSG_ID_LEN)
    reply_to = _message_id(reply_text) if reply_text is not None else None
    if reply_to is not None and wait:
        raise _bad("'wait' and 'reply_to' cannot be combined: a reply gets no reply")
    to = await _resolve(runtime, to_text, "to")
    from_text = fields.text("from")
    if from_text is not None:
        sender = await _resolve(runtime, from_text, "from")
        if runtime.state_of(sender) is None:
            raise ApiProblem(404, "unknown_agent", f"from: no agent {sender.did} on this node")
    with _runtime_errors(f"send to {to.did}"):
        if from_text is None:
            sender = await runtime.operator()
        if reply_to is not None:
            return await _send_reply(runtime, sender, to, kind, body, reply_to, reliable)
        result = await runtime.send_as(
            sender,
            to,
            body,
            kind=kind,
            reliable=reliable,
            wait=wait,
            timeout=timeout,
            trace=new_trace_id() if fields.flag("trace") else None,
        )
    return jsonable(result)


def _message_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != MSG_ID_LEN:
        raise _bad(f"'reply_to' must be a message id ({2 * MSG_ID_LEN} hex digits)")
    return raw


async def _send_reply(
    runtime: Runtime,
    sender: AgentId,
    to: AgentId,
    kind: str,
    body: Any,
    reply_to: bytes,
    reliable: bool,
) -> dict[str, Any]:
    """Answer a request as `sender` (what `Runtime.send_as` cannot do: it sets no reply_to)."""
    key = await runtime.signing_key(sender)
    envelope = Envelope.create(
        key,
        to,
        kind,
        body,
        now_ms=runtime.clock(),
        ttl_ms=runtime.settings.envelope_ttl_ms,
        reply_to=reply_to,
    )
    report = await runtime.messenger.send(envelope, reliable=reliable)
    result: dict[str, Any] = {
        "id": envelope.msg_id.hex(),
        "from": sender.did,
        "outcome": report.outcome,
    }
    if report.detail:
        result["detail"] = report.detail
    return result


# --- the routes ------------------------------------------------------------------------------

_NOT_FOUND = {404: "No such agent on this node (by id or name)."}
_BAD = {400: "Invalid input; the message names the field.", 503: "The node hosts no agents."}
_LIFECYCLE = {**_BAD, **_NOT_FOUND, 409: "Not allowed in the agent's current state."}
_EXTERNAL = {**_BAD, **_NOT_FOUND, 409: "The agent is not an external agent."}

AGENT_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        "/v1/agents",
        "spawnAgents",
        "Spawn agents (dormant, durable once answered).",
        "SpawnResult",
        _spawn,
        request_body="SpawnRequest",
        errors={
            **_BAD,
            404: "The parent agent is not hosted here.",
            409: "The name is taken.",
            422: "Unknown kind.",
            429: "A quota refused: the code is max_agents, spawn_rate or budget.",
        },
    ),
    Endpoint(
        "GET",
        "/v1/agents",
        "listAgents",
        "List hosted agents, in creation order.",
        "AgentList",
        _list,
        query=(
            QueryParam("state", description=f"Only agents in this state: {', '.join(_STATES)}."),
            QueryParam("kind", description="Only agents of this kind."),
            QueryParam("limit", "integer", "Page size, default 100.", minimum=1, maximum=LIST_MAX),
            QueryParam("after", description="Continue after this agent (the previous `next`)."),
        ),
        # 404: `after` names no agent (found by fuzzing: it was answered, but undocumented).
        errors={**_BAD, 404: "`after` is a name no agent here has."},
    ),
    Endpoint(
        "GET",
        "/v1/agents/{id}",
        "getAgent",
        "Describe one agent (id or name); `inbox` counts waiting messages.",
        "AgentInfo",
        _show,
        errors={**_BAD, **_NOT_FOUND},
    ),
    Endpoint(
        "POST",
        "/v1/agents/{id}/suspend",
        "suspendAgent",
        "Suspend an agent: its messages wait in its inbox.",
        "LifecycleResult",
        _suspend,
        errors=_LIFECYCLE,
    ),
    Endpoint(
        "POST",
        "/v1/agents/{id}/resume",
        "resumeAgent",
        "Resume a suspended agent and deliver what waited.",
        "LifecycleResult",
        _resume,
        errors=_LIFECYCLE,
    ),
    Endpoint(
        "POST",
        "/v1/agents/{id}/delete",
        "deleteAgent",
        "Delete an agent (tombstoned; senders get not_here).",
        "LifecycleResult",
        _delete,
        errors=_LIFECYCLE,
    ),
    Endpoint(
        "POST",
        "/v1/agents/{id}/acl",
        "updateAgentAcl",
        "Add senders to an agent's allow or deny list, or clear the list first.",
        "AclResult",
        _acl,
        request_body="AclRequest",
        errors={**_BAD, **_NOT_FOUND},
    ),
    Endpoint(
        "POST",
        "/v1/agents/{id}/migrate",
        "migrateAgent",
        "Move an agent, with its key, state and inbox, to another node; senders follow it.",
        "MigrateResult",
        _migrate,
        request_body="MigrateRequest",
        errors={
            **_LIFECYCLE,
            400: "Invalid input, or the peer id is malformed or this node's.",
            409: "Not allowed in the agent's state, or this agent cannot migrate.",
            502: "The peer is unknown, unreachable, or refused the agent (the reason is given).",
            503: "The node hosts no agents or cannot migrate them.",
        },
    ),
    Endpoint(
        "GET",
        "/v1/agents/{id}/inbox",
        "readInbox",
        "An external agent's waiting messages, oldest first; long-polls when empty.",
        "InboxMessages",
        _read_inbox,
        query=(
            QueryParam("wait", "number", "Seconds to wait.", minimum=0, maximum=WAIT_MAX_S),
            QueryParam("limit", "integer", "Most messages.", minimum=1, maximum=INBOX_MAX),
        ),
        errors=_EXTERNAL,
    ),
    Endpoint(
        "POST",
        "/v1/agents/{id}/inbox/ack",
        "ackInbox",
        "Remove an external agent's messages up to and including `seq`.",
        "AckResult",
        _ack_inbox,
        request_body="AckRequest",
        errors=_EXTERNAL,
    ),
    Endpoint(
        "GET",
        "/v1/find",
        "findAgents",
        "Agents with a capability anywhere in the mesh (here, then nodes whose summary has it).",
        "FindResult",
        _find,
        query=(
            QueryParam("cap", "string", "The capability tag.", True, min_length=1, max_length=64),
            QueryParam("limit", "integer", "Most agents, default 100", minimum=1, maximum=FIND_MAX),
        ),
        errors={**_BAD, 503: "The node hosts no agents or keeps no summaries."},
    ),
    Endpoint(
        "POST",
        "/v1/send",
        "sendMessage",
        "Send a signed message as a hosted agent (default: the operator agent).",
        "SendResult",
        _send,
        request_body="SendRequest",
        errors={
            **_BAD,
            404: "The sender (or a named recipient) is not hosted here.",
            429: "The recipient's inbox is full (inbox_full).",
        },
    ),
    Endpoint(
        "POST",
        "/v1/agents/{id}/subscribe",
        "subscribeAgent",
        "Subscribe an agent to a topic, durably (kept while dormant and across restarts).",
        "SubscriptionResult",
        _subscribe,
        request_body="SubscriptionRequest",
        errors={
            **_BAD,
            **_NOT_FOUND,
            429: "The node's agents already subscribe to as many topics as it allows.",
            503: "The node hosts no agents or runs no pub/sub.",
        },
    ),
    Endpoint(
        "POST",
        "/v1/agents/{id}/unsubscribe",
        "unsubscribeAgent",
        "Unsubscribe an agent from a topic.",
        "SubscriptionResult",
        _unsubscribe,
        request_body="SubscriptionRequest",
        errors={**_BAD, **_NOT_FOUND, 503: "The node hosts no agents or runs no pub/sub."},
    ),
)
