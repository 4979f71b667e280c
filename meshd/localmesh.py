"""Real `meshd` daemons on this machine: start, wait for, drive and stop them.

Used by `make run` (the demo), the end-to-end tests, the benchmarks and simnet's process
mode, so that what they exercise is the shipped program: every daemon is
`python -m meshd run` with its own data directory, listening on loopback only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from meshd.api.client import ApiClient, ApiError, DaemonNotRunning

__all__ = [
    "LOOPBACK",
    "DaemonFailed",
    "LocalDaemon",
    "daemon_env",
    "meshd_command",
    "start_mesh",
    "wait_until",
]

T = TypeVar("T")

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_LOG_TAIL_LINES = 40


class DaemonFailed(Exception):
    """A daemon exited, or did not become ready, when it should have."""


def wait_until(
    check: Callable[[], T | None], *, timeout: float, interval: float = 0.2, what: str = ""
) -> T:
    """Call `check` until it returns something truthy; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            waited = what or repr(check)
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {waited}: {last!r}")
        time.sleep(interval)


def daemon_env(**extra: str) -> dict[str, str]:
    """The environment for a daemon or CLI process: ours minus MESHD_*, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHD_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def meshd_command(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run one `meshd` command to completion; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args],
        capture_output=True,
        text=True,
        env=env or daemon_env(),
        timeout=timeout,
        check=False,
    )


class LocalDaemon:
    """One node's data directory and, while running, its `meshd run` process."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir.with_name(data_dir.name + ".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._terminated = False
        self.peer_id = ""
        self.addrs: list[str] = []

    def init(self) -> str:
        """`meshd init` this data directory; return the new peer id."""
        result = meshd_command("init", "--data-dir", str(self.data_dir), "--json")
        if result.returncode != 0:
            raise DaemonFailed(f"meshd init {self.data_dir}: {result.stderr.strip()}")
        self.peer_id = json.loads(result.stdout)["peer_id"]
        return self.peer_id

    def start(
        self,
        *args: str,
        listen: str | None = LOOPBACK,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        """Start `meshd run` (not waiting for it to be ready); `args` are extra flags.

        `prefix` goes before the command: `("ip", "netns", "exec", NAME)` runs the daemon in
        a network namespace (the command execs, so the process is still the daemon).
        """
        if self.proc is not None and self.proc.poll() is None:
            raise DaemonFailed(f"daemon {self.data_dir.name} is already running")
        command = [
            *prefix,
            *(sys.executable, "-m", "meshd", "run", "--data-dir", str(self.data_dir)),
        ]
        if listen is not None:
            command += ["--listen", listen]
        self._terminated = False
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {' '.join(command[len(prefix) + 2 :] + list(args))}\n".encode())
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
                raise DaemonFailed(
                    f"daemon {self.data_dir.name} exited with {code}:\n{self.log_tail()}"
                )
            try:
                with self.api(timeout=2.0) as client:
                    identity: dict[str, Any] = client.get("/v1/id")
                    return identity
            except (DaemonNotRunning, ApiError):
                return None

        try:
            identity = wait_until(answer, timeout=timeout, what=f"{self.data_dir.name} API")
        except TimeoutError as exc:
            raise DaemonFailed(f"{exc}\n{self.log_tail()}") from exc
        self.peer_id = identity["peer_id"]
        self.addrs = identity["addrs"]
        return identity

    def api(self, timeout: float = 5.0) -> ApiClient:
        """A control API client for this data directory."""
        return ApiClient(self.data_dir, timeout=timeout)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET an API path and return the decoded JSON."""
        with self.api() as client:
            return client.get(path, params)

    def post(self, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """POST to an API path and return the decoded JSON."""
        with self.api(timeout=timeout) as client:
            return client.post(path, body)

    def peer_ids(self) -> set[str]:
        """The ids of the peers this daemon is connected to, from `/v1/peers`."""
        return {peer["peer_id"] for peer in self.get("/v1/peers")}

    def signal(self, signum: int) -> None:
        """Send a signal to the daemon process."""
        if self.proc is not None:
            self.proc.send_signal(signum)

    def terminate(self) -> None:
        """Send SIGTERM (without waiting), once: a second one would force an exit."""
        if self.proc is not None and self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Wait (bounded) for the process to exit; return its exit status."""
        if self.proc is None:
            raise DaemonFailed(f"daemon {self.data_dir.name} was never started")
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


def start_mesh(root: Path, names: Sequence[str], *extra: str) -> list[LocalDaemon]:
    """Init and start one daemon per name under `root`; all but the first bootstrap from it."""
    daemons = [LocalDaemon(root / name) for name in names]
    for daemon in daemons:
        daemon.init()
    first, *rest = daemons
    first.start(*extra)
    first.wait_ready()
    for daemon in rest:
        daemon.start("--bootstrap", first.addrs[0], *extra)
    for daemon in rest:
        daemon.wait_ready()
    return daemons
