"""Finding an agent kind's behaviour class: built-ins, entry points, or `module:Class`."""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points

from meshd.runtime.builtin import CounterAgent, EchoAgent, ExternalAgent, RelayAgent
from meshd.runtime.sdk import Agent

__all__ = ["BUILTIN_KINDS", "ENTRY_POINT_GROUP", "KindError", "resolve_kind"]

ENTRY_POINT_GROUP = "meshd.agents"
BUILTIN_KINDS: dict[str, type[Agent]] = {
    "echo": EchoAgent,
    "counter": CounterAgent,
    "relay": RelayAgent,
    "external": ExternalAgent,
}
_KIND_RE = re.compile(r"^[A-Za-z0-9_.\-]+(:[A-Za-z_][A-Za-z0-9_.]*)?$")


class KindError(Exception):
    """No behaviour could be found for a kind; the message says why."""


def resolve_kind(kind: str) -> type[Agent]:
    """The behaviour class of `kind`: built-in name, entry point name, or `module:Class`."""
    if not isinstance(kind, str) or not 0 < len(kind) <= 64 or not _KIND_RE.match(kind):
        raise KindError(f"invalid kind {kind!r}: use a name or module:Class (at most 64 chars)")
    if kind in BUILTIN_KINDS:
        return BUILTIN_KINDS[kind]
    if ":" in kind:
        module_name, _, attr = kind.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise KindError(f"kind {kind!r}: cannot import module {module_name!r}: {exc}") from exc
        target: object = module
        for part in attr.split("."):
            target = getattr(target, part, None)
            if target is None:
                raise KindError(f"kind {kind!r}: {module_name} has no {attr!r}")
        return _check(kind, target)
    for point in entry_points(group=ENTRY_POINT_GROUP, name=kind):
        try:
            return _check(kind, point.load())
        except ImportError as exc:
            raise KindError(f"kind {kind!r}: entry point failed to load: {exc}") from exc
    known = ", ".join(sorted(BUILTIN_KINDS))
    raise KindError(
        f"unknown kind {kind!r}: not built in ({known}), not an entry point in "
        f"{ENTRY_POINT_GROUP!r}, and not module:Class"
    )


def _check(kind: str, target: object) -> type[Agent]:
    if not (isinstance(target, type) and issubclass(target, Agent)):
        raise KindError(f"kind {kind!r} is not a subclass of meshd.runtime.sdk.Agent")
    return target
