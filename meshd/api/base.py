"""The route-table types of the control API, shared by `server` and the route modules.

They live apart from `meshd.api.server` so that a module of routes (`meshd.api.agents`) can
build its `Endpoint`s while `server` imports that module to assemble `ENDPOINTS`, with no
import cycle. `meshd.api.server` re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from meshd.api.openapi import QueryParam

if TYPE_CHECKING:
    # Only a type: server imports this module at run time, not the other way round.
    from meshd.api.server import NodeView

__all__ = ["ApiProblem", "Endpoint", "Handler"]


class ApiProblem(Exception):
    """An expected failure of a request, answered as a JSON error with this status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


Handler = Callable[["NodeView", Request], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    """One route: the handler that serves it and what the OpenAPI document says about it."""

    method: str
    path: str  # Starlette path syntax without converters, which is also OpenAPI's: /v1/x/{id}
    operation_id: str
    summary: str
    response: str  # name of the success response schema in meshd.api.openapi.SCHEMAS
    handler: Handler
    query: Sequence[QueryParam] = ()
    request_body: str | None = None  # schema name of the JSON body, for POST routes
    errors: Mapping[int, str] = field(default_factory=dict)  # route-specific error statuses
