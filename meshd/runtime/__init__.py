"""The agent runtime: agents as virtual actors, their SDK, kinds, lifecycle and quotas.

Names are loaded on first use, so that importing `meshd.runtime.settings` (the config loader
does, for every CLI command) does not pull in trio and the store.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshd.runtime.lifecycle import LifecycleError, State, UnknownAgent
    from meshd.runtime.quota import QuotaExceeded
    from meshd.runtime.runtime import Runtime
    from meshd.runtime.sdk import (
        Agent,
        AgentError,
        Context,
        DeliveryReport,
        Message,
        RequestTimeout,
    )
    from meshd.runtime.settings import RuntimeSettings

__all__ = [
    "Agent",
    "AgentError",
    "Context",
    "DeliveryReport",
    "LifecycleError",
    "Message",
    "QuotaExceeded",
    "RequestTimeout",
    "Runtime",
    "RuntimeSettings",
    "State",
    "UnknownAgent",
]

_HOMES = {
    "Agent": "sdk",
    "AgentError": "sdk",
    "Context": "sdk",
    "DeliveryReport": "sdk",
    "Message": "sdk",
    "RequestTimeout": "sdk",
    "LifecycleError": "lifecycle",
    "State": "lifecycle",
    "UnknownAgent": "lifecycle",
    "QuotaExceeded": "quota",
    "Runtime": "runtime",
    "RuntimeSettings": "settings",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'meshd.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"meshd.runtime.{home}"), name)
