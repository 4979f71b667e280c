"""`--netns` lab: namespaces on a bridge; a partition cuts TCP between groups, the heal restores it.

Creates real network namespaces, so it needs root and iproute2; it is skipped otherwise, or
where the kernel refuses namespaces (some containers). Everything it creates is removed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from simnet.netns import NetnsError, NetnsLab, netns_available

# A TCP server inside a namespace: accepts and closes, until killed.
_SERVER = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], 4001)); s.listen(8); print('ready', flush=True)\n"
    "while True: s.accept()[0].close()\n"
)
# A TCP connect from a namespace: exit 0 if it connected within 1.5 s.
_CLIENT = (
    "import socket,sys\n"
    "try: socket.create_connection((sys.argv[1], 4001), timeout=1.5).close()\n"
    "except OSError: sys.exit(1)\n"
)


def _created(nodes: int) -> NetnsLab:
    """A lab of `nodes` namespaces, created; the test is skipped where that is not allowed."""
    refused = netns_available()
    if refused:
        pytest.skip(refused)
    made = NetnsLab(nodes)
    try:
        made.create()
    except NetnsError as exc:
        made.remove()
        pytest.skip(f"cannot create network namespaces here: {exc}")
    return made


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    made = _created(3)
    try:
        yield made
    finally:
        made.remove()


def _reaches(lab: NetnsLab, src: int, dst: int) -> bool:
    command = [*lab.prefix(src), sys.executable, "-c", _CLIENT, lab.addr(dst)]
    return subprocess.run(command, timeout=10, check=False).returncode == 0


def _namespaces() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False
    ).stdout


def test_partition_cuts_tcp_between_groups_and_heal_restores_it(lab: NetnsLab) -> None:
    server = subprocess.Popen(
        [*lab.prefix(0), sys.executable, "-c", _SERVER, lab.addr(0)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        assert _reaches(lab, 1, 0)
        assert _reaches(lab, 2, 0)
        lab.partition([[0, 1], [2]])
        assert _reaches(lab, 1, 0)  # same group
        assert not _reaches(lab, 2, 0)  # across the cut: packets vanish, the connect times out
        lab.heal()
        assert _reaches(lab, 2, 0)
    finally:
        server.kill()
        server.wait(timeout=10)


def test_remove_deletes_every_namespace() -> None:
    made = _created(2)
    made.partition([[0], [1]])
    listed = _namespaces()
    assert all(ns in listed for ns in made.namespaces)
    made.remove()
    listed = _namespaces()
    assert not any(ns in listed for ns in made.namespaces)
