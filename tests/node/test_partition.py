"""A network partition between two daemons in network namespaces, and its heal.

Each daemon runs in a network namespace of its own (created here, removed after), joined
by a veth pair; cutting the link is a real partition: packets vanish, nothing is refused.
At-least-once messages sent during the cut are queued; after the heal every one of them is
delivered, and handled once. Needs root and `ip netns`; skipped where the machine does not
allow it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.node.conftest import Daemon, Daemons

pytestmark = pytest.mark.slow

MESSAGES = 8
SUBNET = "10.203.{}.{}"  # inside our own namespaces only


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Netns:
    """Two namespaces `a` and `b` joined by a veth pair, with addresses and links up."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10_000}{threading.get_ident() % 100}"
        self.ns = {"a": f"mshd-a{tag}", "b": f"mshd-b{tag}"}
        self.dev = {"a": f"mva{tag}", "b": f"mvb{tag}"}
        octet = os.getpid() % 250 + 1
        self.addr = {"a": SUBNET.format(octet, 1), "b": SUBNET.format(octet, 2)}

    def create(self) -> None:
        for ns in self.ns.values():
            _ip("netns", "add", ns)
        _ip("link", "add", self.dev["a"], "type", "veth", "peer", "name", self.dev["b"])
        for side in ("a", "b"):
            ns, dev = self.ns[side], self.dev[side]
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{self.addr[side]}/24", "dev", dev)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")

    def link(self, up: bool) -> None:
        """Cut (down) or heal (up) the link, from side a."""
        _ip("-n", self.ns["a"], "link", "set", self.dev["a"], "up" if up else "down")

    def remove(self) -> None:
        for ns in self.ns.values():  # removing a namespace removes its end of the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)

    def prefix(self, side: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.ns[side])


@pytest.fixture
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    pair = Netns()
    try:
        pair.create()
    except (subprocess.CalledProcessError, OSError) as exc:
        pair.remove()
        pytest.skip(f"cannot create network namespaces here: {exc}")
    try:
        yield pair
    finally:
        pair.remove()


def _local_count(daemon: Daemon, counter: str) -> Any:
    """The counter's count, asked on its own node (works while the network is cut)."""
    result = daemon.post(
        "/v1/send", {"to": counter, "body": {"add": 0}, "kind": "req", "wait": True, "timeout": 5}
    )
    return result.get("reply", {}).get("body", {}).get("count")


def test_messages_queued_during_a_partition_arrive_after_the_heal(
    daemons: Daemons, netns: Netns
) -> None:
    a, b = daemons.init("a"), daemons.init("b")
    a.start(listen=f"/ip4/{netns.addr['a']}/tcp/0", prefix=netns.prefix("a"))
    a.wait_ready()
    b.start("--bootstrap", a.addrs[0], listen=f"/ip4/{netns.addr['b']}/tcp/0",
            prefix=netns.prefix("b"))  # fmt: skip
    b.wait_ready()
    daemons.wait_for(lambda: b.peer_id in a.peer_ids(), timeout=30, what="a and b connected")
    counter = b.post("/v1/agents", {"kind": "counter"})["agents"][0]["id"]
    first = a.post("/v1/send", {"to": counter, "body": {"add": 0}, "kind": "req", "wait": True})
    assert first["reply"]["body"] == {"count": 0}  # a found it across the link

    netns.link(up=False)
    outcomes: Counter[str] = Counter()

    def send_one() -> None:
        result = a.post("/v1/send", {"to": counter, "body": {"add": 1}, "reliable": True}, 60)
        outcomes[result["outcome"]] += 1

    senders = [threading.Thread(target=send_one) for _ in range(MESSAGES)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(timeout=90)
    assert outcomes == {"queued": MESSAGES}  # nothing got through the cut
    assert _local_count(b, counter) == 0

    netns.link(up=True)

    def drained() -> bool:
        outbox = a.get("/v1/status")["delivery"]["outbox"]
        return bool(outbox.get("settled:delivered", 0) >= MESSAGES)

    daemons.wait_for(drained, timeout=120, what="the queued messages after the heal")
    assert daemons.wait_for(lambda: _local_count(b, counter), timeout=30) == MESSAGES
