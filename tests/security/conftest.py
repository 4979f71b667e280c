"""Real daemons for the security tests: short data directories, all killed at teardown."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshd.localmesh import LocalDaemon


@pytest.fixture
def make_daemon() -> Iterator[Callable[[str], LocalDaemon]]:
    """`make_daemon(name)`: an initialised (stopped) daemon; every one is killed afterwards."""
    # Unix socket paths hold at most 107 bytes: a short root, not pytest's deep tmp_path.
    root = Path(tempfile.mkdtemp(prefix="meshd-sec-"))
    made: list[LocalDaemon] = []

    def make(name: str) -> LocalDaemon:
        daemon = LocalDaemon(root / name)
        daemon.init()
        made.append(daemon)
        return daemon

    try:
        yield make
    finally:
        for daemon in made:
            daemon.kill()
        shutil.rmtree(root, ignore_errors=True)
