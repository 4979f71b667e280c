"""The swarm routes of the control API: create, list, show, join, leave (`meshd.swarms`).

    GET  /v1/swarms                          -> {"swarms": [summary, ...]}
    POST /v1/swarms {"name", "parent"?}      -> {"name", "parent", "created"}
    GET  /v1/swarms/{name}                   -> members, their nodes, coordinator, state
    POST /v1/swarms/{name}/join  {"agent"}   -> {"swarm", "agent", "changed"}
    POST /v1/swarms/{name}/leave {"agent"}   -> {"swarm", "agent", "changed"}
    GET  /v1/swarms/{name}/state             -> {"swarm", "state", "bytes", "clients"}
    POST /v1/swarms/{name}/state {"key", "value"? , "delete"?}          -> the same
    GET  /v1/swarms/{name}/tasks             -> {"swarm", "tasks": [task, ...]}
    POST /v1/swarms/{name}/tasks {"spec", "agent"?}                     -> {"swarm", "id"}
    POST /v1/swarms/{name}/tasks/{task}/claim {"agent"}       -> {"swarm", "task", "agent", "won"}
    POST /v1/swarms/{name}/tasks/{task}/done {"agent", "result"?} -> {..., "changed"}
    GET  /v1/swarms/{name}/proposals         -> {"swarm", "proposals": [decision, ...]}
    POST /v1/swarms/{name}/proposals {"text", "agent"?}                 -> decision
    GET  /v1/swarms/{name}/proposals/{proposal}  -> decision with the signed frames (hex)
    POST /v1/swarms/{name}/proposals/{proposal}/vote {"choice", "agent"?} -> decision
    POST /v1/swarms/{name}/ballots {"ballot": hex}  (a ballot signed elsewhere)  -> decision

Agents are named by id or by the name they were spawned with, and must be hosted here.
Failures: 400 bad input (code bad_name for a bad swarm name, bad_value, bad_ballot), 404
unknown agent, task or proposal, or a swarm this node does not follow, 409 a conflicting
parent, not_member, already_voted, 413 state_full, 429 max_swarms, 503 no swarm service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from meshd.api.agent_json import _bad, _Fields, _json_object
from meshd.api.agents import _resolve, _runtime, _runtime_errors
from meshd.api.base import ApiProblem, Endpoint
from meshd.api.openapi import SCHEMAS
from meshd.swarms import SwarmError, Swarms
from protocol.ids import AgentId

if TYPE_CHECKING:
    from meshd.api.server import NodeView

__all__ = ["SWARM_ENDPOINTS"]

_STATUS = {
    "bad_name": 400,
    "parent_conflict": 409,
    "max_swarms": 429,
    "max_members": 429,
    "not_member": 409,
    "already_voted": 409,
    "state_full": 413,
    "unknown_task": 404,
    "unknown_proposal": 404,
}


def _swarms(view: NodeView) -> Swarms:
    """The node's swarm service, or 503 when it runs none."""
    try:
        swarms = getattr(view, "swarms", None)
    except RuntimeError:  # Node.swarms says so when the node runs without one
        swarms = None
    if not isinstance(swarms, Swarms):
        raise ApiProblem(503, "no_swarms", "this node runs no swarm service")
    return swarms


def _problem(exc: SwarmError) -> ApiProblem:
    return ApiProblem(_STATUS.get(exc.code, 400), exc.code, str(exc))


def _known(swarms: Swarms, name: str) -> str:
    if name not in swarms.names():
        raise ApiProblem(404, "unknown_swarm", f"this node follows no swarm {name!r:.80}")
    return name


async def _list(view: NodeView, request: Request) -> Any:
    return {"swarms": _swarms(view).list()}


async def _create(view: NodeView, request: Request) -> Any:
    swarms = _swarms(view)
    fields = _Fields(await _json_object(request, "create"), "create", ("name", "parent"))
    name = fields.text("name", max_len=64)
    if name is None:
        raise _bad("'name' is required: a swarm name")
    parent = fields.text("parent", max_len=64)
    try:
        created = await swarms.create(name, parent)
    except SwarmError as exc:
        raise _problem(exc) from exc
    return {"name": name, "parent": swarms.show(name)["parent"], "created": created}


async def _show(view: NodeView, request: Request) -> Any:
    swarms = _swarms(view)
    return swarms.show(_known(swarms, request.path_params["name"]))


async def _membership(view: NodeView, request: Request, join: bool) -> Any:
    swarms = _swarms(view)
    runtime = _runtime(view)
    what = "join" if join else "leave"
    name = request.path_params["name"]
    fields = _Fields(await _json_object(request, what), what, ("agent",))
    text = fields.text("agent")
    if text is None:
        raise _bad("'agent' is required: a hosted agent's id or name")
    agent = await _resolve(runtime, text)
    if runtime.state_of(agent) is None:
        raise ApiProblem(404, "unknown_agent", f"no agent {agent.did} on this node")
    try:
        with _runtime_errors(f"{what} swarm {name!r:.80} as {agent.did}"):
            if join:
                changed = await swarms.join(name, agent)
            else:
                changed = await swarms.leave(_known(swarms, name), agent)
    except SwarmError as exc:
        raise _problem(exc) from exc
    return {"swarm": name, "agent": agent.did, "changed": changed}


async def _join(view: NodeView, request: Request) -> Any:
    return await _membership(view, request, join=True)


async def _leave(view: NodeView, request: Request) -> Any:
    return await _membership(view, request, join=False)


async def _hosted(view: NodeView, text: str | None, role: str = "agent") -> AgentId | None:
    """The hosted agent a request names, or None when it names none."""
    if text is None:
        return None
    runtime = _runtime(view)
    agent = await _resolve(runtime, text, role)
    if runtime.state_of(agent) is None:
        raise ApiProblem(404, "unknown_agent", f"no agent {agent.did} on this node")
    return agent


def _member(swarms: Swarms, name: str, agent: AgentId | None) -> AgentId:
    """The acting member: `agent` if a local member, else the only local member."""
    if agent is not None:
        if not swarms.is_local_member(name, agent):
            raise ApiProblem(409, "not_member", f"{agent.did} is not a member of {name} here")
        return agent
    local = swarms.local_members(name)
    if len(local) != 1:
        raise _bad(f"swarm {name} has {len(local)} members on this node: name one with 'agent'")
    return local[0]


async def _shared(view: NodeView, request: Request, what: str, fields: tuple[str, ...]) -> Any:
    swarms = _swarms(view)
    name = _known(swarms, request.path_params["name"])
    return swarms, name, _Fields(await _json_object(request, what), what, fields)


async def _state(view: NodeView, request: Request) -> Any:
    swarms = _swarms(view)
    return swarms.shared.info(_known(swarms, request.path_params["name"]))


async def _set_state(view: NodeView, request: Request) -> Any:
    swarms, name, fields = await _shared(view, request, "state", ("key", "value", "delete"))
    key = fields.text("key", max_len=128)
    if key is None:
        raise _bad("'key' is required: the state key to write")
    delete = fields.flag("delete")
    if not delete and not fields.has("value"):
        raise _bad("'value' is required (any JSON), unless 'delete' is true")
    try:
        await swarms.shared.set_state(name, key, fields.data.get("value"), delete=delete)
    except SwarmError as exc:
        raise _problem(exc) from exc
    return swarms.shared.info(name)


async def _tasks(view: NodeView, request: Request) -> Any:
    swarms = _swarms(view)
    name = _known(swarms, request.path_params["name"])
    return {"swarm": name, "tasks": swarms.shared.tasks(name)}


async def _add_task(view: NodeView, request: Request) -> Any:
    swarms, name, fields = await _shared(view, request, "task", ("spec", "agent"))
    if not fields.has("spec"):
        raise _bad("'spec' is required: the task, any JSON")
    by = await _hosted(view, fields.text("agent"))
    try:
        task = await swarms.shared.add_task(name, fields.data["spec"], by)
    except SwarmError as exc:
        raise _problem(exc) from exc
    return {"swarm": name, "id": task}


async def _claim(view: NodeView, request: Request) -> Any:
    swarms, name, fields = await _shared(view, request, "claim", ("agent",))
    agent = _member(swarms, name, await _hosted(view, fields.text("agent")))
    task = request.path_params["task"]
    try:
        won = await swarms.shared.claim(name, task, agent, swarms.settle_s)
    except SwarmError as exc:
        raise _problem(exc) from exc
    return {"swarm": name, "task": task, "agent": agent.did, "won": won}


async def _done(view: NodeView, request: Request) -> Any:
    swarms, name, fields = await _shared(view, request, "done", ("agent", "result"))
    agent = _member(swarms, name, await _hosted(view, fields.text("agent")))
    task = request.path_params["task"]
    try:
        changed = await swarms.shared.complete(name, task, agent, fields.data.get("result"))
    except SwarmError as exc:
        raise _problem(exc) from exc
    return {"swarm": name, "task": task, "agent": agent.did, "changed": changed}


async def _proposals(view: NodeView, request: Request) -> Any:
    swarms = _swarms(view)
    name = _known(swarms, request.path_params["name"])
    return {"swarm": name, "proposals": swarms.shared.proposals(name)}


async def _propose(view: NodeView, request: Request) -> Any:
    swarms, name, fields = await _shared(view, request, "propose", ("text", "agent"))
    text = fields.text("text", max_len=1000)
    if text is None:
        raise _bad("'text' is required: what the members vote on")
    agent = _member(swarms, name, await _hosted(view, fields.text("agent")))
    try:
        return await swarms.shared.propose(name, text, agent)
    except SwarmError as exc:
        raise _problem(exc) from exc


async def _proposal(view: NodeView, request: Request) -> Any:
    swarms = _swarms(view)
    name = _known(swarms, request.path_params["name"])
    try:
        return swarms.shared.decision(name, request.path_params["proposal"], ballots=True)
    except SwarmError as exc:
        raise _problem(exc) from exc


async def _vote(view: NodeView, request: Request) -> Any:
    swarms, name, fields = await _shared(view, request, "vote", ("choice", "agent"))
    choice = fields.text("choice", max_len=3)
    if choice not in ("yes", "no"):
        raise _bad("'choice' is required: yes or no")
    agent = _member(swarms, name, await _hosted(view, fields.text("agent")))
    try:
        return await swarms.shared.vote(
            name, request.path_params["proposal"], agent, choice == "yes"
        )
    except SwarmError as exc:
        raise _problem(exc) from exc


async def _ballot(view: NodeView, request: Request) -> Any:
    swarms, name, fields = await _shared(view, request, "ballot", ("ballot",))
    text = fields.text("ballot", max_len=4096)
    try:
        frame = bytes.fromhex(text or "")
    except ValueError:
        frame = b""
    if not frame:
        raise _bad("'ballot' is required: a signed swarm.ballot envelope, hex")
    try:
        return await swarms.shared.submit_ballot(name, frame)
    except SwarmError as exc:
        raise _problem(exc) from exc


_BAD = {400: "Invalid input; the message names the field.", 503: "No swarm service."}
_MEMBER_ERRORS = {
    **_BAD,
    404: "The agent is not hosted here (or, to leave, the swarm is not followed here).",
    429: "This node follows as many swarms as it allows (max_swarms), or the swarm has as "
    "many members on this node as one heartbeat carries (max_members, 1,500).",
}

SWARM_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        "/v1/swarms",
        "listSwarms",
        "The swarms this node follows, with member counts and coordinators.",
        "SwarmList",
        _list,
        errors={503: "No swarm service."},
    ),
    Endpoint(
        "POST",
        "/v1/swarms",
        "createSwarm",
        "Follow a swarm on this node, optionally naming its parent swarm.",
        "SwarmCreated",
        _create,
        request_body="SwarmCreateRequest",
        errors={
            **_BAD,
            409: "The swarm already has another parent.",
            429: "This node follows as many swarms as it allows (max_swarms).",
        },
    ),
    Endpoint(
        "GET",
        "/v1/swarms/{name}",
        "getSwarm",
        "A swarm as this node sees it: members, their nodes, the coordinator, the state.",
        "SwarmInfo",
        _show,
        errors={404: "This node follows no such swarm.", 503: "No swarm service."},
    ),
    Endpoint(
        "POST",
        "/v1/swarms/{name}/join",
        "joinSwarm",
        "A hosted agent joins the swarm (followed here from now on).",
        "SwarmMembership",
        _join,
        request_body="SwarmMemberRequest",
        errors=_MEMBER_ERRORS,
    ),
    Endpoint(
        "POST",
        "/v1/swarms/{name}/leave",
        "leaveSwarm",
        "A hosted agent leaves the swarm.",
        "SwarmMembership",
        _leave,
        request_body="SwarmMemberRequest",
        errors=_MEMBER_ERRORS,
    ),
)

_KNOWN = {404: "This node follows no such swarm.", 503: "No swarm service."}
_WRITE = {
    **_BAD,
    404: "This node follows no such swarm (or no such agent is hosted here).",
    413: "The swarm's document is full (state_full): delete keys first.",
}
_ACT = {
    **_WRITE,
    404: "No such swarm followed here, task or proposal, or no such agent hosted here.",
    409: "The agent is not a (local) member, or already voted (already_voted).",
}

SWARM_ENDPOINTS += (
    Endpoint(
        "GET",
        "/v1/swarms/{name}/state",
        "getSwarmState",
        "The swarm's shared key/value state (this node's replica).",
        "SwarmState",
        _state,
        errors=_KNOWN,
    ),
    Endpoint(
        "POST",
        "/v1/swarms/{name}/state",
        "setSwarmState",
        "Write (or delete) one key of the swarm's shared state; replicated to every node.",
        "SwarmState",
        _set_state,
        request_body="SwarmStateWrite",
        errors=_WRITE,
    ),
    Endpoint(
        "GET",
        "/v1/swarms/{name}/tasks",
        "listSwarmTasks",
        "The swarm's task board: every task, its state and claimant.",
        "SwarmTasks",
        _tasks,
        errors=_KNOWN,
    ),
    Endpoint(
        "POST",
        "/v1/swarms/{name}/tasks",
        "addSwarmTask",
        "Put a task (any JSON) on the swarm's board.",
        "SwarmTaskAdded",
        _add_task,
        request_body="SwarmTaskRequest",
        errors=_WRITE,
    ),
    Endpoint(
        "POST",
        "/v1/swarms/{name}/tasks/{task}/claim",
        "claimSwarmTask",
        "A local member claims a task; answers after the settle delay whether it won.",
        "SwarmTaskClaim",
        _claim,
        request_body="SwarmActorRequest",
        errors=_ACT,
    ),
    Endpoint(
        "POST",
        "/v1/swarms/{name}/tasks/{task}/done",
        "completeSwarmTask",
        "A local member marks a task done, with its result.",
        "SwarmTaskDone",
        _done,
        request_body="SwarmTaskDoneRequest",
        errors=_ACT,
    ),
    Endpoint(
        "GET",
        "/v1/swarms/{name}/proposals",
        "listSwarmProposals",
        "The swarm's proposals with the verdict their ballots prove.",
        "SwarmProposals",
        _proposals,
        errors=_KNOWN,
    ),
    Endpoint(
        "POST",
        "/v1/swarms/{name}/proposals",
        "proposeInSwarm",
        "A local member proposes a text to the swarm's live members.",
        "SwarmDecision",
        _propose,
        request_body="SwarmProposeRequest",
        errors=_ACT,
    ),
    Endpoint(
        "GET",
        "/v1/swarms/{name}/proposals/{proposal}",
        "getSwarmProposal",
        "One proposal's verdict, with the signed proposal and ballots (hex) as proof.",
        "SwarmDecision",
        _proposal,
        errors={**_KNOWN, 404: "No such swarm followed here, or no such proposal."},
    ),
    Endpoint(
        "POST",
        "/v1/swarms/{name}/proposals/{proposal}/vote",
        "voteInSwarm",
        "A local member signs and casts a ballot (yes or no) on a proposal.",
        "SwarmDecision",
        _vote,
        request_body="SwarmVoteRequest",
        errors=_ACT,
    ),
    Endpoint(
        "POST",
        "/v1/swarms/{name}/ballots",
        "submitSwarmBallot",
        "Add a ballot signed elsewhere (hex of a swarm.ballot envelope), once it verifies.",
        "SwarmDecision",
        _ballot,
        request_body="SwarmBallotRequest",
        errors={
            **_ACT,
            400: "Invalid input, or the ballot does not verify (bad_ballot: bad signature, "
            "not in the electorate, malformed).",
        },
    ),
)

_ANY = {"description": "Any JSON value."}
_AGENT = {"type": "string", "description": "A hosted agent (id or name)."}
_DECISION = {
    "type": "object",
    "required": ["id", "swarm", "text", "proposer", "electorate", "quorum", "outcome"],
    "properties": {
        "id": {"type": "string", "description": "32 hex digits."},
        "swarm": {"type": "string"},
        "text": {"type": "string"},
        "proposer": {"type": "string"},
        "created_ms": {"type": "integer"},
        "electorate": {"type": "array", "items": {"type": "string"}},
        "quorum": {"type": "integer", "description": "A majority of the electorate."},
        "yes": {"type": "integer"},
        "no": {"type": "integer"},
        "outcome": {"enum": ["accepted", "rejected", "pending"]},
        "votes": {"type": "object", "additionalProperties": {"enum": ["yes", "no"]}},
        "rejected": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "Ballots refused, by reason (bad_signature, unauthorized, ...).",
        },
        "proposal": {"type": "string", "description": "The signed proposal, hex."},
        "ballots": {"type": "array", "items": {"type": "string"}},
    },
}
SCHEMAS.update(
    {
        "SwarmState": {
            "type": "object",
            "required": ["swarm", "state", "bytes", "clients"],
            "properties": {
                "swarm": {"type": "string"},
                "state": {"type": "object", "description": "Key -> JSON value."},
                "bytes": {"type": "integer", "description": "Encoded document size."},
                "clients": {"type": "integer", "description": "Writers in the state vector."},
            },
        },
        "SwarmStateWrite": {
            "type": "object",
            "required": ["key"],
            "additionalProperties": False,
            "properties": {
                "key": {"type": "string", "minLength": 1, "maxLength": 128},
                "value": _ANY,
                "delete": {"type": "boolean", "default": False},
            },
        },
        "SwarmTasks": {
            "type": "object",
            "required": ["swarm", "tasks"],
            "properties": {
                "swarm": {"type": "string"},
                "tasks": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "state", "claimant"],
                        "properties": {
                            "id": {"type": "string"},
                            "spec": _ANY,
                            "state": {"enum": ["open", "claimed", "done"]},
                            "claimant": {"type": ["string", "null"]},
                            "claims": {"type": "integer"},
                            "done": {"type": ["object", "null"]},
                        },
                    },
                },
            },
        },
        "SwarmTaskRequest": {
            "type": "object",
            "required": ["spec"],
            "additionalProperties": False,
            "properties": {"spec": _ANY, "agent": _AGENT},
        },
        "SwarmTaskAdded": {
            "type": "object",
            "required": ["swarm", "id"],
            "properties": {"swarm": {"type": "string"}, "id": {"type": "string"}},
        },
        "SwarmActorRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"agent": _AGENT},
        },
        "SwarmTaskClaim": {
            "type": "object",
            "required": ["swarm", "task", "agent", "won"],
            "properties": {
                "swarm": {"type": "string"},
                "task": {"type": "string"},
                "agent": {"type": "string"},
                "won": {"type": "boolean"},
            },
        },
        "SwarmTaskDoneRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"agent": _AGENT, "result": _ANY},
        },
        "SwarmTaskDone": {
            "type": "object",
            "required": ["swarm", "task", "agent", "changed"],
            "properties": {
                "swarm": {"type": "string"},
                "task": {"type": "string"},
                "agent": {"type": "string"},
                "changed": {"type": "boolean"},
            },
        },
        "SwarmProposals": {
            "type": "object",
            "required": ["swarm", "proposals"],
            "properties": {
                "swarm": {"type": "string"},
                "proposals": {"type": "array", "items": _DECISION},
            },
        },
        "SwarmDecision": _DECISION,
        "SwarmProposeRequest": {
            "type": "object",
            "required": ["text"],
            "additionalProperties": False,
            "properties": {
                "text": {"type": "string", "minLength": 1, "maxLength": 1000},
                "agent": _AGENT,
            },
        },
        "SwarmVoteRequest": {
            "type": "object",
            "required": ["choice"],
            "additionalProperties": False,
            "properties": {"choice": {"enum": ["yes", "no"]}, "agent": _AGENT},
        },
        "SwarmBallotRequest": {
            "type": "object",
            "required": ["ballot"],
            "additionalProperties": False,
            "properties": {
                "ballot": {"type": "string", "minLength": 2, "maxLength": 4096},
            },
        },
    }
)
SCHEMAS["SwarmInfo"]["properties"]["shared"] = {
    "type": "object",
    "description": "The shared document in numbers (docs/swarms.md).",
    "properties": {
        "keys": {"type": "integer", "minimum": 0},
        "bytes": {"type": "integer", "minimum": 0},
        "tasks": {"type": "object", "additionalProperties": {"type": "integer"}},
        "proposals": {"type": "integer", "minimum": 0},
    },
}
