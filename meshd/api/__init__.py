"""The daemon's control API: the HTTP+JSON server over the node, and its client.

Names are imported on first use, so that the CLI, which needs only the client, does not pay
for importing trio, hypercorn and Starlette on every command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshd.api.client import ApiClient, ApiError, DaemonNotRunning
    from meshd.api.server import ApiAddresses, ApiServerError, NodeView, build_app, serve_api

__all__ = [
    "ApiAddresses",
    "ApiClient",
    "ApiError",
    "ApiServerError",
    "DaemonNotRunning",
    "NodeView",
    "build_app",
    "serve_api",
]

_CLIENT_NAMES = frozenset({"ApiClient", "ApiError", "DaemonNotRunning"})


def __getattr__(name: str) -> Any:
    """Import a public name from its submodule on first access."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = "client" if name in _CLIENT_NAMES else "server"
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
