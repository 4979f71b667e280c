"""Daemon logging: text and JSON lines; py-libp2p's records counted, errors shown once."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from meshd.logs import configure_logging, log_event


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root, lib = logging.getLogger(), logging.getLogger("libp2p")
    saved = (root.handlers[:], root.level, lib.handlers[:], lib.level, lib.propagate)
    yield
    root.handlers[:], lib.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    lib.setLevel(saved[3])
    lib.propagate = saved[4]
    logging.getLogger("meshd").setLevel(logging.NOTSET)


def test_json_lines_carry_event_and_fields() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    log_event(logging.getLogger("meshd.test"), "peer_connected", "peer connected X", peer_id="X")
    line = json.loads(out.getvalue())
    assert line["event"] == "peer_connected"
    assert line["peer_id"] == "X"
    assert line["msg"] == "peer connected X"
    assert line["level"] == "info"


def test_text_lines_are_one_line_per_event() -> None:
    out = io.StringIO()
    configure_logging("info", "text", stream=out)
    log_event(logging.getLogger("meshd.test"), "stopped", "stopped")
    logging.getLogger("meshd.test").debug("not shown at info")
    (line,) = out.getvalue().splitlines()
    assert line.endswith("INFO    stopped")


def test_libp2p_noise_is_counted_and_errors_shown_once() -> None:
    out = io.StringIO()
    counters = configure_logging("info", "text", stream=out)
    noisy = logging.getLogger("libp2p.kad_dht.kad_dht")
    for _ in range(5):
        noisy.warning("DHT query warning %s", "x")
    try:
        raise OSError("boom")
    except OSError:
        for _ in range(3):
            noisy.error("dial failed: %s", "peer", exc_info=True)
    logging.warning("a library logging on the root logger")
    assert counters.libp2p == {"warning": 6, "error": 3}
    lines = out.getvalue().splitlines()
    assert lines == [lines[0]]  # one line: the first error, no traceback, no warnings
    assert "libp2p: dial failed: peer (OSError: boom)" in lines[0]
    assert "WARNING" in lines[0]
    counters.quiet = True
    noisy.error("during shutdown")
    assert len(out.getvalue().splitlines()) == 1
    assert counters.libp2p["error"] == 4
