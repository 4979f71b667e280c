"""`meshd top` in a pseudo-terminal: it draws the live view and quits on `q`."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from meshd.localmesh import daemon_env

if TYPE_CHECKING:
    from tests.node.conftest import Daemons

pytestmark = pytest.mark.slow


def read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    """Read the pty until `needle` appears; fail after `timeout` s."""
    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"{needle!r} not shown within {timeout} s; got {out[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                out += os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
    return out


def test_top_renders_in_a_pty_and_quits_on_q(daemons: Daemons) -> None:
    node = daemons.init("a")
    node.start()
    node.wait_ready()
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshd",
            "top",
            "--interval",
            "0.3",
            "--data-dir",
            str(node.data_dir),
        ],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=daemon_env(),
    )
    os.close(terminal)
    try:
        screen = read_until(controller, b"rejects", timeout=20)
        assert b"\x1b[2J" in screen  # redrawn in place
        assert node.peer_id.encode() in screen
        assert b"agents" in screen
        read_until(controller, b"/s", timeout=5)  # a second refresh shows rates
        os.write(controller, b"q")
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)


def test_top_prints_plain_lines_when_not_a_terminal(daemons: Daemons) -> None:
    node = daemons.init("a")
    node.start()
    node.wait_ready()
    result = daemons.cli(
        "top", "--count", "2", "--interval", "0.2", "--data-dir", str(node.data_dir)
    )
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert result.stdout.count("meshd top") == 2


def test_top_shows_the_busiest_agents_with_their_rates() -> None:
    from meshd.cli_top import render_top

    before = {"busiest_agents": [{"id": "did:key:zA", "kind": "echo", "handled": 10}]}
    now = {
        "peer_id": "p",
        "busiest_agents": [
            {"id": "did:key:zA", "kind": "echo", "handled": 30},
            {"id": "did:key:zB", "kind": "counter", "handled": 7},
        ],
    }
    lines = render_top(now, before, elapsed=2.0, width=200)
    text = "\n".join(lines)
    assert "busiest" in text
    assert "10.0/s  did:key:zA (echo)" in text  # 20 more in 2 s
    assert "7  did:key:zB (counter)" in text  # new since the last refresh: its total
