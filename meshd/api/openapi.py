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

__all__ = ["SCHEMAS", "OperationSpec", "QueryParam", "build_openapi"]

OPENAPI_VERSION = "3.1.0"

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
}

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
            "schema": {"type": q.type},
        }
        for q in op.query
    ]
    responses: dict[str, Any] = {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": _ref(op.response)}},
        }
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
