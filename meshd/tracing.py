"""Message tracing: every node a traced message touches logs it with the same trace id.

An envelope may carry an 8-byte trace id (`protocol.envelope`, key 10); `meshd send --trace`
sets a random one, and replies copy it (`Envelope.reply`, `AgentContext.reply`). Delivery
calls `trace_step` at each step (send, deliver, receive) only when the field is present,
so untraced messages cost one attribute test. The line is an INFO event `trace` whose JSON
form (`--log-format json`) has `trace`, `step`, `msg_id`, `from`, `to`, `kind` and the
step's fields; the text form starts with `trace <id>`, so one `grep <id>` over every node's
log follows the message.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from meshd.logs import log_event
from protocol.envelope import TRACE_ID_LEN, Envelope
from protocol.ids import AgentId

__all__ = ["new_trace_id", "trace_step"]

log = logging.getLogger("meshd.trace")


def new_trace_id() -> bytes:
    """A random trace id."""
    return os.urandom(TRACE_ID_LEN)


def trace_step(step: str, envelope: Envelope, /, **fields: Any) -> None:
    """Log one step of a traced message (no-op for an envelope without a trace id)."""
    if envelope.trace is None:
        return
    trace = envelope.trace.hex()
    to = envelope.recipient.did if isinstance(envelope.recipient, AgentId) else envelope.recipient
    details = " ".join(f"{key}={value}" for key, value in fields.items())
    log_event(
        log,
        "trace",
        f"trace {trace} {step} msg {envelope.msg_id.hex()} {envelope.kind} "
        f"from {envelope.sender.did} to {to} {details}".rstrip(),
        trace=trace,
        step=step,
        msg_id=envelope.msg_id.hex(),
        kind=envelope.kind,
        **{"from": envelope.sender.did, "to": to},
        **fields,
    )
