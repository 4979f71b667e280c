"""Processes mode: the scenario with real `meshd run` daemons on loopback.

Each node is a daemon with its own data directory (`meshd.localmesh.LocalDaemon`), driven
through its control API exactly as `meshd agent spawn` and `meshd send` drive it, so what
is measured is the shipped program. The scenario's `node_config` becomes `MESHD_*`
environment variables. Crash is SIGKILL, leave is SIGTERM, restart and join start the
daemon again on its data directory. Partitions and link changes need the network between
the daemons: on loopback they are not applied (each is reported as skipped). With `netns`
(`--netns`, root) every daemon runs in a network namespace of its own (`simnet.netns`) and
partitions and heals are real; link latency and loss changes are still skipped.

Blocking API calls run in trio worker threads (`trio.to_thread.run_sync`), bounded by
trio's default thread limiter; every call has an HTTP timeout. Each daemon's API clients
are kept for the daemon's life, one per timeout: building an httpx transport loads the CA
bundle for an SSL context (about 20 ms idle, 120 ms on a busy machine, with the GIL held),
which a client per call added to every measured send latency and to every other call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from meshd.api.client import ApiClient
from meshd.config import env_name
from meshd.localmesh import LocalDaemon, daemon_env
from simnet.driver import Results, drive
from simnet.netns import NetnsError, NetnsLab, netns_available
from simnet.scenario import Event, LinkModel, Scenario, ScenarioError

__all__ = ["ProcessesBackend", "run_processes"]

NETWORK_FAULTS_SKIPPED = (
    "processes mode: partitions and link changes are not applied (loopback has no "
    "per-pair links; crash, restart, join and leave are; --netns applies partitions)"
)
LINK_CHANGES_SKIPPED = "processes mode with --netns: link latency and loss changes need tc netem"


class ProcessesBackend:
    """Runs scenario nodes as `meshd run` daemons; see the module docstring."""

    mode = "processes"

    def __init__(self, scenario: Scenario, root: Path, netns: NetnsLab | None = None) -> None:
        self._scenario = scenario
        self._netns = netns
        self._daemons = [LocalDaemon(root / f"node{i}") for i in range(scenario.nodes)]
        extra = {env_name(key): _env_value(value) for key, value in scenario.node_config.items()}
        self._env = daemon_env(**extra)
        self._up: set[int] = set()
        self._initialised: set[int] = set()
        # (node, timeout) -> a client kept while that daemon runs (see the module docstring)
        self._clients: dict[tuple[int, float], ApiClient] = {}
        self._clients_lock = threading.Lock()

    async def start_node(self, node: int) -> None:
        """Start (or restart) the daemon; return once its API answers."""
        daemon = self._daemons[node]
        if node not in self._initialised:
            await trio.to_thread.run_sync(daemon.init)
            self._initialised.add(node)
        args: list[str] = []
        for other in sorted(self._up):
            if other != node:
                args = ["--bootstrap", self._daemons[other].addrs[0]]
                break
        if self._netns is None:
            start = partial(daemon.start, *args, env=self._env)
        else:
            start = partial(
                daemon.start,
                *args,
                env=self._env,
                listen=self._netns.listen(node),
                prefix=self._netns.prefix(node),
            )
        await trio.to_thread.run_sync(start)
        await trio.to_thread.run_sync(daemon.wait_ready)
        self._up.add(node)

    async def stop_node(self, node: int, *, crash: bool) -> None:
        """SIGKILL (crash) or SIGTERM and wait (leave)."""
        daemon = self._daemons[node]
        self._up.discard(node)
        self._drop_clients(node)
        await trio.to_thread.run_sync(daemon.kill if crash else daemon.stop)

    def _client(self, node: int, timeout: float) -> ApiClient:
        with self._clients_lock:  # worker threads build them
            client = self._clients.get((node, timeout))
            if client is None:
                client = self._clients[(node, timeout)] = self._daemons[node].api(timeout=timeout)
            return client

    def _drop_clients(self, node: int) -> None:
        with self._clients_lock:
            doomed = [self._clients.pop(key) for key in list(self._clients) if key[0] == node]
        for client in doomed:
            client.close()

    async def _api(self, node: int, timeout: float, method: str, *args: Any) -> Any:
        def call() -> Any:
            return getattr(self._client(node, timeout), method)(*args)

        return await trio.to_thread.run_sync(call)

    def is_up(self, node: int) -> bool:
        """Whether the daemon runs (as far as the driver has started and stopped it)."""
        return node in self._up

    async def spawn(self, node: int, kind: str, count: int, caps: tuple[str, ...]) -> list[str]:
        """`POST /v1/agents`."""
        answer = await self._api(
            node, 30.0, "post", "/v1/agents", {"kind": kind, "count": count, "caps": list(caps)}
        )
        return [str(info["id"]) for info in answer["agents"]]

    async def subscribe(self, node: int, agent: str, topic: str) -> None:
        """`POST /v1/agents/{id}/subscribe`."""
        await self._api(node, 30.0, "post", f"/v1/agents/{agent}/subscribe", {"topic": topic})

    async def send(
        self,
        node: int,
        to: str,
        body: Any,
        *,
        kind: str,
        reliable: bool,
        wait: bool,
        timeout: float,
    ) -> dict[str, Any]:
        """`POST /v1/send` as the node's operator."""
        request = {
            "to": to,
            "body": body,
            "kind": kind,
            "reliable": reliable,
            "wait": wait,
            "timeout": timeout,
        }
        answer: dict[str, Any] = await self._api(node, timeout + 5.0, "post", "/v1/send", request)
        return answer

    async def publish(self, node: int, topic: str, body: Any) -> dict[str, Any]:
        """`POST /v1/send` with a topic."""
        answer: dict[str, Any] = await self._api(
            node, 30.0, "post", "/v1/send", {"topic": topic, "body": body}
        )
        return answer

    async def network_fault(self, event: Event) -> str:
        """Partition and heal with namespaces; otherwise skipped (see the module docstring)."""
        fault = event.fault
        if self._netns is None or fault is None or fault.kind == "link":
            await trio.lowlevel.checkpoint()
            return NETWORK_FAULTS_SKIPPED if self._netns is None else LINK_CHANGES_SKIPPED
        lab = self._netns
        if fault.kind == "partition":
            await trio.to_thread.run_sync(lab.partition, fault.groups)
        else:
            await trio.to_thread.run_sync(lab.heal)
        return ""

    async def status(self, node: int) -> dict[str, Any]:
        """`GET /v1/status`."""
        answer: dict[str, Any] = await self._api(node, 5.0, "get", "/v1/status")
        return answer

    def stop_all(self) -> None:
        """SIGTERM every daemon, then wait for each (bounded); SIGKILL what remains."""
        for node in range(len(self._daemons)):
            self._drop_clients(node)
        for daemon in self._daemons:
            daemon.terminate()
        for daemon in self._daemons:
            if daemon.proc is None:
                continue
            try:
                daemon.wait()
            except Exception:  # did not stop in time: the kill below ends it
                daemon.kill()


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def run_processes(
    scenario: Scenario,
    events: list[Event],
    root: Path,
    seed: int,
    progress: Callable[[float, str], None] | None = None,
    netns: bool = False,
) -> Results:
    """Run the scenario on daemons under `root`; stop them all, whatever happens."""
    lab: NetnsLab | None = None
    if netns:
        refused = netns_available()
        if refused:
            raise ScenarioError(f"--netns: {refused}")
        lab = NetnsLab(scenario.nodes)
    backend = ProcessesBackend(scenario, root, lab)
    try:
        if lab is not None:
            lab.create()
        results = trio.run(partial(drive, scenario, events, backend, progress=progress))
        if scenario.links != LinkModel():
            results.notes.append(
                "processes mode: the [links] model (latency, jitter, loss, bandwidth, regions) "
                "is not applied; daemons talk over "
                + ("namespace veths" if lab is not None else "loopback")
            )
        return results
    except NetnsError as exc:
        raise ScenarioError(f"--netns: {exc}") from exc
    finally:
        backend.stop_all()
        if lab is not None:
            lab.remove()
