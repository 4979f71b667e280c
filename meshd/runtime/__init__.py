"""The agent runtime: agents as virtual actors, their SDK, kinds, lifecycle and quotas."""

from meshd.runtime.lifecycle import LifecycleError, State
from meshd.runtime.quota import QuotaExceeded
from meshd.runtime.runtime import Runtime, RuntimeSettings, UnknownAgent
from meshd.runtime.sdk import Agent, AgentError, Context, DeliveryReport, Message, RequestTimeout

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
