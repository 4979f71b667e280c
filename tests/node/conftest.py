"""Real `meshd` daemon processes on loopback, for end-to-end tests.

Use the `daemons` fixture:

    node = daemons.init("a")                      # meshd init --data-dir <tmp>/a
    node.start("--bootstrap", seed.addrs[0])      # meshd run ... --listen /ip4/127.0.0.1/tcp/0
    node.wait_ready()                             # until the control API answers (bounded)
    node.api().get("/v1/peers")                   # ApiClient of that data dir
    assert node.stop() == 0                       # SIGTERM, bounded wait, exit status

Every daemon runs as `sys.executable -m meshd` with its own data directory under
`tmp_path`, `MESHD_*` variables cleared (so the developer's environment cannot leak
in), and stderr written to `<data dir>.log`. At teardown every daemon still running is
killed, and if the test failed, the tail of every daemon's log is printed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from meshd.localmesh import LocalDaemon, meshd_command, wait_until

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None], *, timeout: float, interval: float = 0.2, what: str = ""
) -> T:
    """Call `check` until it returns something truthy; fail the test after `timeout` s."""
    try:
        return wait_until(check, timeout=timeout, interval=interval, what=what)
    except TimeoutError as exc:
        pytest.fail(str(exc))


Daemon = LocalDaemon
meshd = meshd_command


class Daemons:
    """Creates daemons in a temporary directory and cleans them all up.

    Test modules reach the helpers through this fixture object (`daemons.wait_for`,
    `daemons.cli`), and import the class for annotations only, under TYPE_CHECKING
    (`from tests.node.conftest import Daemons`): pytest imports this file as `conftest`.
    """

    wait_for = staticmethod(wait_for)
    cli = staticmethod(meshd)

    def __init__(self, root: Path) -> None:
        self.root = root
        self.all: list[Daemon] = []

    def init(self, name: str) -> Daemon:
        """`meshd init` a new data directory `name`; return its (stopped) daemon."""
        daemon = Daemon(self.root / name)
        daemon.init()
        self.all.append(daemon)
        return daemon

    def cleanup(self, failed: bool) -> None:
        """Kill every daemon still running; print their logs if the test failed."""
        for daemon in self.all:
            daemon.kill()
        if failed:
            for daemon in self.all:
                print(f"----- log of {daemon.data_dir.name} -----\n{daemon.log_tail()}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Remember each phase's report on the item, so fixtures can see if the test failed."""
    report = yield
    if report is not None:
        setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def daemons(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemons]:
    """A factory of real daemons on loopback; all are killed at teardown."""
    # Unix socket paths are limited to 107 bytes: keep data directories short.
    short = len(str(tmp_path)) < 70
    root = tmp_path if short else Path(tempfile.mkdtemp(prefix="meshd-"))
    factory = Daemons(root)
    yield factory
    report = getattr(request.node, "rep_call", None)
    factory.cleanup(failed=report is None or report.failed)
    if not short:
        shutil.rmtree(root, ignore_errors=True)
