"""The swarm routes of the control API: create, list, show, join, leave (`meshd.swarms`).

    GET  /v1/swarms                          -> {"swarms": [summary, ...]}
    POST /v1/swarms {"name", "parent"?}      -> {"name", "parent", "created"}
    GET  /v1/swarms/{name}                   -> members, their nodes, coordinator, state
    POST /v1/swarms/{name}/join  {"agent"}   -> {"swarm", "agent", "changed"}
    POST /v1/swarms/{name}/leave {"agent"}   -> {"swarm", "agent", "changed"}

Agents are named by id or by the name they were spawned with, and must be hosted here.
Failures: 400 bad input (code bad_name for a bad swarm name), 404 unknown agent or a swarm
this node does not follow, 409 a conflicting parent, 429 max_swarms, 503 no swarm service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from meshd.api.agent_json import _bad, _Fields, _json_object
from meshd.api.agents import _resolve, _runtime, _runtime_errors
from meshd.api.base import ApiProblem, Endpoint
from meshd.swarms import SwarmError, Swarms

if TYPE_CHECKING:
    from meshd.api.server import NodeView

__all__ = ["SWARM_ENDPOINTS"]

_STATUS = {"bad_name": 400, "parent_conflict": 409, "max_swarms": 429, "max_members": 429}


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
