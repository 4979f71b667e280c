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

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from meshd.api.client import ApiClient, ApiError, DaemonNotRunning

T = TypeVar("T")

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_LOG_TAIL_LINES = 40


def wait_for(
    check: Callable[[], T | None], *, timeout: float, interval: float = 0.2, what: str = ""
) -> T:
    """Call `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what or check}: {last!r}")
        time.sleep(interval)


def daemon_env(**extra: str) -> dict[str, str]:
    """The environment for a daemon or CLI process: ours minus MESHD_*, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHD_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def meshd(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> Any:
    """Run one `meshd` command to completion; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args],
        capture_output=True,
        text=True,
        env=env or daemon_env(),
        timeout=timeout,
        check=False,
    )


class Daemon:
    """One node's data directory and, while running, its `meshd run` process."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir.with_name(data_dir.name + ".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._terminated = False
        self.peer_id = ""
        self.addrs: list[str] = []

    def start(
        self, *args: str, listen: str | None = LOOPBACK, env: dict[str, str] | None = None
    ) -> None:
        """Start `meshd run` (not waiting for it to be ready); `args` are extra flags."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        command = [sys.executable, "-m", "meshd", "run", "--data-dir", str(self.data_dir)]
        if listen is not None:
            command += ["--listen", listen]
        self._terminated = False
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {' '.join(command[2:] + list(args))}\n".encode())
            self.proc = subprocess.Popen(
                [*command, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env or daemon_env(),
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Wait until the control API answers `/v1/id`; remember and return the identity."""

        def answer() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                code = self.proc.returncode
                pytest.fail(f"daemon {self.data_dir.name} exited with {code}:\n{self.log_tail()}")
            try:
                with self.api(timeout=2.0) as client:
                    identity: dict[str, Any] = client.get("/v1/id")
                    return identity
            except (DaemonNotRunning, ApiError):
                return None

        identity = wait_for(answer, timeout=timeout, what=f"{self.data_dir.name} API")
        self.peer_id = identity["peer_id"]
        self.addrs = identity["addrs"]
        return identity

    def api(self, timeout: float = 5.0) -> ApiClient:
        """A control API client for this data directory."""
        return ApiClient(self.data_dir, timeout=timeout)

    def get(self, path: str) -> Any:
        """GET an API path and return the decoded JSON."""
        with self.api() as client:
            return client.get(path)

    def peer_ids(self) -> set[str]:
        """The ids of the peers this daemon is connected to, from `/v1/peers`."""
        return {peer["peer_id"] for peer in self.get("/v1/peers")}

    def signal(self, signum: int) -> None:
        """Send a signal to the daemon process."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def terminate(self) -> None:
        """Send SIGTERM (without waiting), once: a second one would force an exit."""
        assert self.proc is not None
        if self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Wait (bounded) for the process to exit; return its exit status."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (unless already sent) and wait (bounded); return the exit status."""
        self.terminate()
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (no clean shutdown) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def log_text(self) -> str:
        """Everything the daemon wrote so far (all runs of this data directory)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the daemon's log."""
        return "\n".join(self.log_text().splitlines()[-lines:])


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
        result = meshd("init", "--data-dir", str(daemon.data_dir), "--json")
        assert result.returncode == 0, result.stderr
        daemon.peer_id = json.loads(result.stdout)["peer_id"]
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
