"""Daemon logging: one readable line per event (or one JSON object per line), on stderr.

Call `configure_logging` *after* importing libp2p: `import libp2p` resets the `libp2p`
logger (no handlers, no propagation), and a logger without handlers falls back to
Python's "last resort" handler, which prints every libp2p warning raw. py-libp2p warns on
routine events (each DHT query, each reset stream) and logs tracebacks while shutting
down, so we give the `libp2p` logger a handler of its own that counts every warning and
error (`LogCounters.libp2p`, shown in `meshd status`) and passes on only errors, each
kind at most once per five minutes, as one warning line without traceback (warnings and full
tracebacks too at `--log-level debug`; set LIBP2P_DEBUG for py-libp2p's own debug
output). Records logged on the root logger itself (py-libp2p calls `logging.warning`
in places) get the same treatment. During shutdown it only counts.

Our own events use `log_event(logger, "peer_connected", "peer connected ...", peer_id=...)`:
the message is the text line; the event name and fields go into the JSON form.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["LogCounters", "configure_logging", "log_event"]

# A given kind of py-libp2p error is shown at most once per this many seconds.
LIBP2P_REPEAT_WINDOW_S = 300.0
_MAX_LIBP2P_LINE = 300

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


@dataclass
class LogCounters:
    """How many records py-libp2p logged, by level; `quiet` stops passing them on."""

    libp2p: Counter[str] = field(default_factory=Counter)
    quiet: bool = False


def log_event(logger: logging.Logger, event: str, message: str, /, **fields: Any) -> None:
    """Log one INFO event: `message` is the text line, `event` and `fields` go to JSON too."""
    logger.info(message, extra={"event": event, "fields": fields})


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", "log"),
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class _Libp2pHandler(logging.Handler):
    """Counts py-libp2p records; forwards errors, each kind at most once per window."""

    def __init__(self, target: logging.Handler, counters: LogCounters, verbose: bool) -> None:
        super().__init__(logging.WARNING)
        self._target = target
        self._counters = counters
        self._verbose = verbose
        # (logger, message template) -> (time last forwarded, repeats held back since)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self._counters.libp2p[record.levelname.lower()] += 1
        if self._counters.quiet:
            return
        if record.levelno < logging.ERROR and not self._verbose:
            return
        # py-libp2p logs an "error" before raising even routine failures (every failed
        # dial to a peer that left): show each kind once per window, then count repeats.
        # Keyed by call site: py-libp2p formats peer ids into many of its messages.
        kind = (record.name, f"{record.pathname}:{record.lineno}")
        last, held = self._seen.get(kind, (float("-inf"), 0))
        if record.created - last < LIBP2P_REPEAT_WINDOW_S:
            self._seen[kind] = (last, held + 1)
            return
        self._seen[kind] = (record.created, 0)
        record = logging.makeLogRecord(record.__dict__)
        # Some py-libp2p messages are multi-line dumps: fold them into one bounded line.
        text = " | ".join(part.strip() for part in record.getMessage().splitlines() if part.strip())
        if len(text) > _MAX_LIBP2P_LINE:
            text = text[: _MAX_LIBP2P_LINE - 3] + "..."
        if not self._verbose and record.exc_info:
            exc = record.exc_info[1]
            text = f"{text} ({type(exc).__name__}: {exc})"
            record.exc_info = None
            record.exc_text = None
        if held:
            text += f" [{held} similar in the last {LIBP2P_REPEAT_WINDOW_S:g} s not shown]"
        record.msg = f"libp2p: {text}"
        record.args = None
        # Shown as warnings: py-libp2p logs "errors" for attempts it then retries or
        # reports by raising, and our own code logs the failures that matter to us.
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self._target.handle(record)


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> LogCounters:
    """Set up daemon logging (`level` debug|info|warning|error, `fmt` text|json)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("meshd").setLevel(_LEVELS[level])

    counters = LogCounters()
    libp2p_logger = logging.getLogger("libp2p")
    for old in list(libp2p_logger.handlers):
        libp2p_logger.removeHandler(old)
    libp2p_logger.propagate = False
    libp2p_logger.setLevel(logging.WARNING)
    libp2p_handler = _Libp2pHandler(handler, counters, verbose=level == "debug")
    libp2p_logger.addHandler(libp2p_handler)
    handler.addFilter(_RootRecordsToLibp2p(libp2p_handler))
    return counters


class _RootRecordsToLibp2p(logging.Filter):
    """Route records logged on the root logger itself through the libp2p handler.

    Our code always logs through named `meshd.*` loggers; records named "root" come from
    libraries calling `logging.warning(...)` directly (py-libp2p's connection teardown
    does), so they get the libp2p treatment: counted, errors shown once per window.
    """

    def __init__(self, libp2p_handler: _Libp2pHandler) -> None:
        super().__init__()
        self._libp2p = libp2p_handler

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "root" or getattr(record, "_meshd_routed", False):
            return True
        # The libp2p handler hands a copy back to this handler: let that one through.
        setattr(record, "_meshd_routed", True)  # noqa: B010
        self._libp2p.handle(record)
        return False
