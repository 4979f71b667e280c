"""The OpenAPI 3.1 description of the control API, built from the same route table as the app.

`meshd.api.server.ENDPOINTS` is the one list of routes; `build_openapi` turns it into the
document served at `/openapi.json`, so the two cannot drift. To describe a new route, add its
response (and request body) schema to `SCHEMAS` if it is new, then add its line to `ENDPOINTS`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = ["METRICS_CONTENT_TYPE", "SCHEMAS", "OperationSpec", "QueryParam", "build_openapi"]

OPENAPI_VERSION = "3.1.0"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Responses of these schemas are not JSON: they are served with this content type.
_TEXT_SCHEMAS = {"PrometheusText": METRICS_CONTENT_TYPE}

# Component schemas, referenced by name from the route table. JSON Schema 2020-12, which is
# what OpenAPI 3.1 uses.
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "description": "Every error response has this shape.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {
                        "type": "string",
                        "description": "Short machine-readable code, e.g. not_found.",
                    },
                    "message": {"type": "string", "description": "One line for humans."},
                },
            }
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
    },
    "Identity": {
        "type": "object",
        "required": ["peer_id", "addrs", "version"],
        "properties": {
            "peer_id": {"type": "string", "description": "The node's libp2p PeerID."},
            "addrs": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Listen multiaddrs, each ending in /p2p/<peer_id>.",
            },
            "version": {"type": "string"},
        },
    },
    "Peer": {
        "type": "object",
        "required": ["peer_id", "addrs", "connected_for_s"],
        "properties": {
            "peer_id": {"type": "string"},
            "addrs": {"type": "array", "items": {"type": "string"}},
            "connected_for_s": {"type": "number", "minimum": 0},
        },
    },
    "PeerList": {"type": "array", "items": {"$ref": "#/components/schemas/Peer"}},
    "Status": {
        "type": "object",
        "required": ["peer_id", "version", "uptime_s", "peers"],
        "properties": {
            "peer_id": {"type": "string"},
            "version": {"type": "string"},
            "uptime_s": {"type": "number", "minimum": 0},
            "peers": {"type": "integer", "minimum": 0},
        },
        # The node adds counters as it grows; clients must tolerate unknown keys.
        "additionalProperties": True,
    },
    "OpenApiDocument": {"type": "object", "description": "This document."},
    "PrometheusText": {
        "type": "string",
        "description": "Prometheus text exposition format 0.0.4 (served as text/plain).",
    },
}

_AGENT_ID = {"type": "string", "description": "An agent id, did:key:z..."}
_AGENT_REF = {
    "type": "string",
    "description": "An agent: its id (did:key:z...) or the name it was spawned with.",
}
_SWARM_NAME = {
    "type": "string",
    "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    "description": "A swarm name.",
}
_MSG_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "16 bytes, hex."}
_JSON_VALUE = {
    "description": (
        "Any JSON value (plain CBOR on the wire). Out of the node, CBOR byte strings are shown "
        'as {"$base64": "..."}, integer map keys as text, non-finite floats as "NaN", '
        '"Infinity", "-Infinity".'
    )
}
_STATE = {"enum": ["active", "dormant", "suspended", "migrating", "gone"]}

# The agent routes (meshd.api.agents).
_AGENT_SCHEMAS: dict[str, dict[str, Any]] = {
    "AgentInfo": {
        "type": "object",
        "required": ["id", "kind", "name", "caps", "state", "created_ms", "expires_ms"],
        "properties": {
            "id": _AGENT_ID,
            "kind": {"type": "string"},
            "name": {"type": ["string", "null"]},
            "caps": {"type": "array", "items": {"type": "string"}},
            "state": _STATE,
            "created_ms": {"type": "integer", "description": "Unix time, milliseconds."},
            "expires_ms": {
                "type": ["integer", "null"],
                "description": "When its TTL deletes it (Unix ms), or null.",
            },
            "parent": {"anyOf": [_AGENT_ID, {"type": "null"}]},
            "budget": {"type": "integer", "minimum": 0, "description": "Spawn budget left."},
            "state_version": {"type": "integer", "minimum": 0},
            "inbox": {
                "type": "integer",
                "minimum": 0,
                "description": "Messages waiting in its inbox (getAgent only).",
            },
        },
        "additionalProperties": True,
    },
    "SpawnRequest": {
        "type": "object",
        "required": ["kind"],
        "additionalProperties": False,
        "properties": {
            "kind": {
                "type": "string",
                "minLength": 1,
                "maxLength": 256,
                "description": "Built-in (echo, counter, relay, external), entry point, or "
                "module:Class.",
            },
            "count": {"type": "integer", "minimum": 1, "maximum": 100_000, "default": 1},
            "caps": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 64},
                "default": [],
            },
            "ttl": {
                "type": ["number", "null"],
                "exclusiveMinimum": 0,
                "description": "Seconds until the agents are deleted.",
            },
            "name": {
                "type": ["string", "null"],
                "pattern": "^[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}$",
                "description": "A unique name for one agent (count 1); 'operator' is reserved.",
            },
            "state": {"type": "object", "default": {}, "description": "Initial state."},
            "budget": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": "Spawn budget of each new agent (default: the node's).",
            },
            "parent": {
                "anyOf": [_AGENT_REF, {"type": "null"}],
                "description": "Spawn as children of this hosted agent, paid from its budget.",
            },
        },
    },
    "SpawnResult": {
        "type": "object",
        "required": ["count", "agents"],
        "properties": {
            "count": {"type": "integer", "minimum": 1, "description": "How many were spawned."},
            "agents": {
                "type": "array",
                "maxItems": 1000,
                "items": {"$ref": "#/components/schemas/AgentInfo"},
                "description": "The first (at most 1000) of the new agents.",
            },
        },
    },
    "AgentList": {
        "type": "object",
        "required": ["agents", "next", "counts"],
        "properties": {
            "agents": {"type": "array", "items": {"$ref": "#/components/schemas/AgentInfo"}},
            "next": {
                "anyOf": [_AGENT_ID, {"type": "null"}],
                "description": "Pass as `after` for the next page; null on the last page.",
            },
            "counts": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": "Agents hosted here by state, and the total.",
            },
        },
    },
    "LifecycleResult": {
        "type": "object",
        "required": ["id", "state"],
        "properties": {
            "id": _AGENT_ID,
            "state": _STATE,
            "delivered": {
                "type": "integer",
                "minimum": 0,
                "description": "Messages that had waited and were delivered (resume only).",
            },
        },
    },
    "InboxMessage": {
        "type": "object",
        "required": ["seq", "id", "from", "kind", "body", "reply_to"],
        "properties": {
            "seq": {"type": "integer", "description": "Position in the inbox; ack up to it."},
            "id": {"anyOf": [_MSG_ID, {"type": "null"}]},
            "from": {"anyOf": [_AGENT_ID, {"type": "null"}]},
            "kind": {"type": ["string", "null"]},
            "body": _JSON_VALUE,
            "reply_to": {
                "anyOf": [_MSG_ID, {"type": "null"}],
                "description": "The request this message answers, if it is a reply.",
            },
            "topic": {"type": ["string", "null"], "description": "Set for pub/sub messages."},
            "created_ms": {"type": ["integer", "null"]},
            "error": {
                "type": "string",
                "description": "Present only if the stored message cannot be decoded; ack it.",
            },
        },
    },
    "InboxMessages": {"type": "array", "items": {"$ref": "#/components/schemas/InboxMessage"}},
    "AckRequest": {
        "type": "object",
        "required": ["seq"],
        "additionalProperties": False,
        "properties": {"seq": {"type": "integer", "minimum": 0}},
    },
    "AckResult": {
        "type": "object",
        "required": ["acked", "waiting"],
        "properties": {
            "acked": {"type": "integer", "minimum": 0, "description": "Messages removed."},
            "waiting": {"type": "integer", "minimum": 0, "description": "Messages left."},
        },
    },
    "AclRequest": {
        "type": "object",
        "required": ["list"],
        "additionalProperties": False,
        "properties": {
            "list": {"enum": ["allow", "deny"]},
            "add": {
                "type": "array",
                "maxItems": 1000,
                "items": {**_AGENT_REF, "minLength": 1, "maxLength": 128},
                "description": "Senders to add (ids, or names of agents on this node).",
            },
            "clear": {"type": "boolean", "description": "Empty the list before adding."},
        },
    },
    "AclResult": {
        "type": "object",
        "required": ["id", "allow", "deny"],
        "properties": {
            "id": _AGENT_ID,
            "allow": {
                "type": "array",
                "items": _AGENT_ID,
                "description": "If not empty, only these senders may message the agent.",
            },
            "deny": {"type": "array", "items": _AGENT_ID, "description": "Refused senders."},
        },
    },
    "MigrateRequest": {
        "type": "object",
        "required": ["to"],
        "additionalProperties": False,
        "properties": {
            "to": {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "description": "PeerID of the node to move the agent to (its addresses come "
                "from the connected peers and the peerstore).",
            },
        },
    },
    "MigrateResult": {
        "type": "object",
        "required": ["id", "from", "to", "state"],
        "properties": {
            "id": _AGENT_ID,
            "from": {"type": "string", "description": "This node's PeerID."},
            "to": {"type": "string", "description": "The PeerID of the agent's new node."},
            "state": {
                "enum": ["dormant", "suspended"],
                "description": "The agent's state on its new node.",
            },
            "inbox": {"type": "integer", "minimum": 0, "description": "Waiting messages moved."},
            "forwarded": {
                "type": "integer",
                "minimum": 0,
                "description": "Messages that arrived during the move, forwarded after it.",
            },
            "elapsed_ms": {"type": "number", "minimum": 0},
        },
    },
    "SendRequest": {
        "type": "object",
        "required": ["body"],
        "oneOf": [{"required": ["to"]}, {"required": ["topic"]}],
        "additionalProperties": False,
        "properties": {
            "to": _AGENT_REF,
            "topic": {
                "type": "string",
                "minLength": 1,
                "maxLength": 256,
                "description": "Publish on this topic instead of sending to `to` (best effort; "
                "`wait`, `reliable` and `reply_to` do not apply; `kind` defaults to pub).",
            },
            "body": _JSON_VALUE,
            "kind": {"type": "string", "minLength": 1, "maxLength": 64, "default": "msg"},
            "from": {
                "anyOf": [_AGENT_REF, {"type": "null"}],
                "description": "A hosted agent to send as; default: the node's operator agent.",
            },
            "wait": {"type": "boolean", "default": False, "description": "Wait for the reply."},
            "timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 300,
                "default": 10,
                "description": "Seconds to wait for the reply.",
            },
            "reliable": {"type": "boolean", "default": False, "description": "At least once."},
            "trace": {
                "type": "boolean",
                "default": False,
                "description": "Give the message a random trace id: every node it touches "
                "logs it (event trace); the answer has the id as 'trace' (16 hex digits).",
            },
            "reply_to": {
                "anyOf": [_MSG_ID, {"type": "null"}],
                "description": "Answer this request (an external agent replying).",
            },
        },
    },
    "SwarmCreateRequest": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": _SWARM_NAME,
            "parent": {"anyOf": [_SWARM_NAME, {"type": "null"}], "description": "Parent swarm."},
        },
    },
    "SwarmCreated": {
        "type": "object",
        "required": ["name", "parent", "created"],
        "properties": {
            "name": {"type": "string"},
            "parent": {"type": ["string", "null"]},
            "created": {"type": "boolean", "description": "False: this node already followed it."},
        },
    },
    "SwarmMemberRequest": {
        "type": "object",
        "required": ["agent"],
        "additionalProperties": False,
        "properties": {"agent": _AGENT_REF},
    },
    "SwarmMembership": {
        "type": "object",
        "required": ["swarm", "agent", "changed"],
        "properties": {
            "swarm": {"type": "string"},
            "agent": _AGENT_ID,
            "changed": {"type": "boolean", "description": "False: it already was (or was not)."},
        },
    },
    "SwarmList": {
        "type": "object",
        "required": ["swarms"],
        "properties": {
            "swarms": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "parent", "state", "members", "coordinator"],
                    "properties": {
                        "name": {"type": "string"},
                        "parent": {"type": ["string", "null"]},
                        "state": {"enum": ["active", "empty"]},
                        "members": {"type": "integer", "minimum": 0},
                        "local_members": {"type": "integer", "minimum": 0},
                        "coordinator": {"type": ["string", "null"]},
                    },
                },
            }
        },
    },
    "SwarmInfo": {
        "type": "object",
        "required": ["name", "parent", "state", "coordinator", "coordinator_node", "members"],
        "properties": {
            "name": {"type": "string"},
            "parent": {"type": ["string", "null"]},
            "state": {
                "enum": ["active", "empty"],
                "description": "active: it has live members; empty: none.",
            },
            "coordinator": {
                "type": ["string", "null"],
                "description": "The live member with the lowest agent id (bytes order).",
            },
            "coordinator_node": {"type": ["string", "null"], "description": "Its node's id."},
            "members": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "node", "local"],
                    "properties": {
                        "id": _AGENT_ID,
                        "node": {"type": "string", "description": "Hosting node's peer id."},
                        "local": {"type": "boolean"},
                    },
                },
            },
            "nodes": {"type": "array", "items": {"type": "string"}},
            "local_members": {"type": "integer", "minimum": 0},
            "aggregate": {
                "type": "object",
                "description": "The subtree: live members plus child swarms' last reports "
                "(agents, summed contributions), and each child's report.",
                "properties": {
                    "agents": {"type": "integer", "minimum": 0},
                    "totals": {"type": "object", "additionalProperties": {"type": "number"}},
                    "children": {"type": "object"},
                },
            },
        },
    },
    "SubscriptionRequest": {
        "type": "object",
        "required": ["topic"],
        "additionalProperties": False,
        "properties": {"topic": {"type": "string", "minLength": 1, "maxLength": 256}},
    },
    "SubscriptionResult": {
        "type": "object",
        "required": ["id", "topic", "changed", "topics"],
        "properties": {
            "id": _AGENT_ID,
            "topic": {"type": "string"},
            "changed": {
                "type": "boolean",
                "description": "Whether this changed anything (false: it already was, or "
                "was not, subscribed).",
            },
            "topics": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Every topic the agent now subscribes to.",
            },
        },
    },
    "SendResult": {
        "type": "object",
        "required": ["id", "from", "outcome"],
        "properties": {
            "id": _MSG_ID,
            "from": _AGENT_ID,
            "outcome": {
                "type": "string",
                "description": "delivered, queued, published, not_here, gone, timeout, "
                "rejected:<reason>...",
            },
            "detail": {"type": "string"},
            "reply": {
                "type": "object",
                "required": ["from", "kind", "body", "id"],
                "properties": {
                    "from": _AGENT_ID,
                    "kind": {"type": "string"},
                    "body": _JSON_VALUE,
                    "id": _MSG_ID,
                },
            },
        },
    },
    "FindResult": {
        "type": "object",
        "required": ["cap", "agents"],
        "properties": {
            "cap": {"type": "string"},
            "agents": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "kind", "node"],
                    "properties": {
                        "id": _AGENT_ID,
                        "kind": {"type": "string"},
                        "node": {"type": "string", "description": "Peer id of the hosting node."},
                    },
                },
            },
        },
    },
}
SCHEMAS.update(_AGENT_SCHEMAS)

# The error statuses any route may answer with, besides its own success response.
_COMMON_ERRORS: dict[str, str] = {
    "401": "Missing or wrong bearer token (TCP listener only).",
    "500": "The daemon failed to serve the request; details are in its log.",
}

_PATH_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)}")


@dataclass(frozen=True)
class QueryParam:
    """One query-string parameter of a route."""

    name: str
    type: Literal["string", "integer", "number", "boolean"] = "string"
    description: str = ""
    required: bool = False
    # Bounds the handler enforces (400 outside them), so that clients and fuzzers know them.
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None

    def schema(self) -> dict[str, Any]:
        """The JSON schema of the parameter's value."""
        bounds = {
            "minimum": self.minimum,
            "maximum": self.maximum,
            "minLength": self.min_length,
            "maxLength": self.max_length,
        }
        return {"type": self.type, **{k: v for k, v in bounds.items() if v is not None}}


class OperationSpec(Protocol):
    """What the document needs to know about one route (see `meshd.api.server.Endpoint`)."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def operation_id(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def response(self) -> str: ...
    @property
    def query(self) -> Sequence[QueryParam]: ...
    @property
    def request_body(self) -> str | None: ...
    @property
    def errors(self) -> Mapping[int, str]: ...


def _ref(schema: str) -> dict[str, str]:
    if schema not in SCHEMAS:
        # Fail when the app is built, not when a client trips over a dangling $ref.
        raise KeyError(f"OpenAPI schema {schema!r} is not defined in meshd.api.openapi.SCHEMAS")
    return {"$ref": f"#/components/schemas/{schema}"}


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }


def _operation(op: OperationSpec) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(op.path)
    ]
    params += [
        {
            "name": q.name,
            "in": "query",
            "required": q.required,
            "description": q.description,
            "schema": q.schema(),
        }
        for q in op.query
    ]
    media = _TEXT_SCHEMAS.get(op.response, "application/json")
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": {media: {"schema": _ref(op.response)}}}
    }
    errors = dict(_COMMON_ERRORS)
    errors.update({str(status): text for status, text in op.errors.items()})
    responses.update({status: _error_response(text) for status, text in sorted(errors.items())})
    doc: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "responses": responses,
    }
    if params:
        doc["parameters"] = params
    if op.request_body is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(op.request_body)}},
        }
    return doc


def build_openapi(operations: Iterable[OperationSpec], *, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing `operations`."""
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        method = op.method.lower()
        entry = paths.setdefault(op.path, {})
        if method in entry:
            raise ValueError(f"route {op.method} {op.path} is listed twice")
        entry[method] = _operation(op)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "meshd control API",
            "version": version,
            "description": (
                "Control API of a meshd daemon: HTTP+JSON on the Unix socket api.sock in the "
                "data directory, and optionally on loopback TCP with a bearer token."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                # Only the TCP listener checks it; the Unix socket relies on its 0600 mode.
                "bearerToken": {"type": "http", "scheme": "bearer"}
            },
        },
        "security": [{}, {"bearerToken": []}],
    }
