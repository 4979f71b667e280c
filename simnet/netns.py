"""Network namespaces for processes mode: each daemon on its own link, partitions for real.

`--processes --netns` puts every daemon in a network namespace of its own, joined to a
bridge in the root namespace by a veth pair (node `i` at 10.205.<i // 250>.<i % 250 + 1>/16).
A partition moves the root-side ends of each group's veths onto a bridge of that group, so
packets between groups vanish (nothing is refused, as on a real cut); the heal moves them
back. Link latency and loss would need `tc netem`, which this kernel may lack: those changes
stay skipped. Needs root and iproute2; everything created is removed by `remove()`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Sequence

__all__ = ["NetnsError", "NetnsLab", "netns_available"]

_IP_TIMEOUT_S = 10.0


class NetnsError(Exception):
    """A namespace, veth or bridge could not be set up."""


def netns_available() -> str:
    """ "" if this process can create namespaces, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2 (`ip`)"
    return ""


def _ip(*args: str) -> None:
    try:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=_IP_TIMEOUT_S)
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip()
        raise NetnsError(f"ip {' '.join(args)}: {detail}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"ip {' '.join(args)}: {exc}") from exc


_LABS = itertools.count()


class NetnsLab:
    """One namespace per node on a shared bridge; see the module docstring."""

    def __init__(self, nodes: int) -> None:
        # Unique per lab, not only per process: the kernel deletes a namespace's veth pair
        # after the namespace, so a second lab in the same test run could meet the first's
        # names still in use ("File exists"). 2 + 6 + 1 + 3 characters fit IFNAMSIZ (15).
        tag = f"{(os.getpid() * 100 + next(_LABS)) % 1_000_000:06d}"
        self.nodes = nodes
        self._tag = tag
        self.namespaces = [f"sn{tag}n{i}" for i in range(nodes)]
        self._host_dev = [f"sn{tag}h{i}" for i in range(nodes)]
        self._bridge = f"sn{tag}b0"
        self._group_bridges: list[str] = []

    def addr(self, node: int) -> str:
        """Node `node`'s IPv4 address."""
        return f"10.205.{node // 250}.{node % 250 + 1}"

    def listen(self, node: int) -> str:
        """The multiaddr node `node`'s daemon listens on."""
        return f"/ip4/{self.addr(node)}/tcp/4001"

    def prefix(self, node: int) -> tuple[str, ...]:
        """The command prefix that runs a program in node `node`'s namespace."""
        return ("ip", "netns", "exec", self.namespaces[node])

    def create(self) -> None:
        """Create the bridge, the namespaces and their links (all up)."""
        _ip("link", "add", self._bridge, "type", "bridge")
        _ip("link", "set", self._bridge, "up")
        for node in range(self.nodes):
            ns, host = self.namespaces[node], self._host_dev[node]
            inner = f"sn{self._tag}i{node}"
            _ip("netns", "add", ns)
            _ip("link", "add", host, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{self.addr(node)}/16", "dev", inner)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("link", "set", host, "master", self._bridge)
            _ip("link", "set", host, "up")

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Each group on a bridge of its own (nodes in no group share one more)."""
        self.heal()
        named = {node for group in groups for node in group}
        rest = [node for node in range(self.nodes) if node not in named]
        for index, group in enumerate([*groups, rest]):
            if not group:
                continue
            bridge = f"sn{self._tag}g{index}"
            _ip("link", "add", bridge, "type", "bridge")
            _ip("link", "set", bridge, "up")
            self._group_bridges.append(bridge)
            for node in group:
                _ip("link", "set", self._host_dev[node], "master", bridge)

    def heal(self) -> None:
        """Every node back on the shared bridge."""
        if not self._group_bridges:
            return
        for host in self._host_dev:
            _ip("link", "set", host, "master", self._bridge)
        for bridge in self._group_bridges:
            _ip("link", "del", bridge)
        self._group_bridges.clear()

    def remove(self) -> None:
        """Delete everything `create` and `partition` made (best effort, never raises)."""
        commands = [["ip", "netns", "del", ns] for ns in self.namespaces]
        # Deleting a namespace deletes its veth pair; the bridges go separately.
        commands += [["ip", "link", "del", b] for b in [*self._group_bridges, self._bridge]]
        for command in commands:
            subprocess.run(command, capture_output=True, timeout=_IP_TIMEOUT_S, check=False)
        self._group_bridges.clear()
