"""SIGKILL a daemon again and again under load: nothing acknowledged is lost or done twice.

The victim hosts counter agents and takes spawns through its control API; another daemon
sends it at-least-once messages to the counters. Each round kills the victim while both
kinds of load run, then restarts it on the same data directory. At the end every spawn the
API acknowledged names an agent that exists, and every counter's persisted count equals the
number of at-least-once messages sent to it: a lost state write or message would make it
lower, a message handled twice higher.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest

from meshd.api.client import ApiError, DaemonNotRunning

if TYPE_CHECKING:
    from tests.node.conftest import Daemon, Daemons

pytestmark = pytest.mark.slow

ROUNDS = 2
COUNTERS = 4
SPAWNS_BEFORE_KILL = 8
SENDS_BEFORE_KILL = 12
LOAD_TIMEOUT_S = 60.0


def _count(sender: Daemon, counter: str) -> Any:
    result = sender.post(
        "/v1/send", {"to": counter, "body": {"add": 0}, "kind": "req", "wait": True, "timeout": 5}
    )
    return result.get("reply", {}).get("body", {}).get("count")


class Load:
    """Spawns on the victim and at-least-once sends to its counters, from two threads."""

    def __init__(self, victim: Daemon, sender: Daemon, counters: list[str]) -> None:
        self.victim, self.sender, self.counters = victim, sender, counters
        self.spawned: list[str] = []  # ids the victim's API acknowledged
        self.sent: Counter[str] = Counter()  # at-least-once messages accepted, by counter
        self.outcomes: Counter[str] = Counter()
        self.stop = threading.Event()
        self.round = 0

    def loaded(self, spawned0: int, sent0: int) -> bool:
        """Whether this round's load has done enough to make a kill interesting."""
        spawned = len(self.spawned) - spawned0 >= SPAWNS_BEFORE_KILL
        return spawned and sum(self.sent.values()) - sent0 >= SENDS_BEFORE_KILL

    def spawn_loop(self) -> None:
        """Spawn one agent at a time until told to stop (or the victim is down)."""
        i = 0
        while not self.stop.is_set():
            try:
                result = self.victim.post(
                    "/v1/agents", {"kind": "echo", "name": f"r{self.round}-{i}"}, timeout=5
                )
            except (ApiError, DaemonNotRunning, OSError):
                time.sleep(0.05)  # the victim is down (killed): keep trying until stopped
                continue
            self.spawned.extend(agent["id"] for agent in result["agents"])
            i += 1

    def send_loop(self) -> None:
        """Send at-least-once messages round robin until told to stop."""
        i = 0
        while not self.stop.is_set():
            counter = self.counters[i % len(self.counters)]
            result = self.sender.post(
                "/v1/send", {"to": counter, "body": {"add": 1}, "reliable": True}, timeout=30
            )
            self.outcomes[result["outcome"]] += 1
            if result["outcome"] in ("delivered", "queued"):
                self.sent[counter] += 1
            i += 1


def test_repeated_sigkill_under_load_loses_nothing_and_repeats_nothing(daemons: Daemons) -> None:
    sender = daemons.init("sender")
    sender.start()
    sender.wait_ready()
    victim = daemons.init("victim")
    victim.start("--bootstrap", sender.addrs[0])
    victim.wait_ready()
    daemons.wait_for(lambda: victim.peer_id in sender.peer_ids(), timeout=30, what="connect")
    spawned = victim.post("/v1/agents", {"kind": "counter", "count": COUNTERS})
    counters = [agent["id"] for agent in spawned["agents"]]
    for counter in counters:  # the sender finds each one (DHT) before the load starts
        assert _count(sender, counter) == 0
    load = Load(victim, sender, counters)

    for round_ in range(ROUNDS):
        load.round = round_
        load.stop.clear()
        spawned0, sent0 = len(load.spawned), sum(load.sent.values())
        threads = [
            threading.Thread(target=load.spawn_loop),
            threading.Thread(target=load.send_loop),
        ]
        for thread in threads:
            thread.start()
        try:
            daemons.wait_for(
                partial(load.loaded, spawned0, sent0), timeout=LOAD_TIMEOUT_S, what="load"
            )
            victim.kill()  # SIGKILL, mid-load: spawns and handlers in flight
            victim.start("--bootstrap", sender.addrs[0])
            victim.wait_ready()
        finally:
            load.stop.set()
            for thread in threads:
                thread.join(timeout=LOAD_TIMEOUT_S)
    assert set(load.outcomes) <= {"delivered", "queued"}, load.outcomes

    total = sum(load.sent.values())

    def drained() -> bool:
        outbox = sender.get("/v1/status")["delivery"]["outbox"]
        return bool(outbox.get("settled:delivered", 0) >= total)

    daemons.wait_for(drained, timeout=90, what="the sender's outbox to drain")
    for counter in counters:
        count = daemons.wait_for(lambda: _count(sender, counter), timeout=30, what="a count")  # noqa: B023
        assert count == load.sent[counter], (counter, count, load.sent, load.outcomes)
    for agent in load.spawned:
        assert victim.get(f"/v1/agents/{agent}")["id"] == agent
    assert sender.get("/v1/status")["delivery"]["outbox"].get("expired", 0) == 0
    print(f"{ROUNDS} kills: {len(load.spawned)} spawns acknowledged and found, "
          f"{total} at-least-once messages each counted once ({dict(load.outcomes)})")  # fmt: skip
