"""At-least-once across a receiver SIGKILL and restart: nothing lost, nothing handled twice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.node.conftest import Daemon, Daemons

pytestmark = pytest.mark.slow

MESSAGES = 40


def _count(sender: Daemon, counter: str) -> Any:
    result = sender.post(
        "/v1/send", {"to": counter, "body": {"add": 0}, "kind": "req", "wait": True, "timeout": 5}
    )
    return result.get("reply", {}).get("body", {}).get("count")


def test_reliable_messages_survive_a_receiver_crash(daemons: Daemons) -> None:
    a, b = daemons.init("a"), daemons.init("b")
    a.start()
    a.wait_ready()
    b.start("--bootstrap", a.addrs[0])
    b.wait_ready()
    daemons.wait_for(lambda: b.peer_id in a.peer_ids(), timeout=30, what="a and b connected")
    counter = b.post("/v1/agents", {"kind": "counter"})["agents"][0]["id"]
    assert _count(a, counter) == 0  # a resolved it through the DHT and got an answer

    outcomes: dict[str, int] = {}
    for i in range(MESSAGES):
        if i == MESSAGES // 2:
            b.kill()  # SIGKILL: messages in flight may be handled but not yet acknowledged
        if i == 3 * MESSAGES // 4:
            b.start("--bootstrap", a.addrs[0])  # same data directory and peer id, new port
            b.wait_ready()
        result = a.post(
            "/v1/send", {"to": counter, "body": {"add": 1}, "reliable": True, "timeout": 30}
        )
        outcomes[result["outcome"]] = outcomes.get(result["outcome"], 0) + 1
    assert set(outcomes) <= {"delivered", "queued"}, outcomes

    # The sender's outbox retries until every message is acknowledged.
    def drained() -> bool:
        outbox = a.get("/v1/status")["delivery"]["outbox"]
        return bool(outbox.get("settled:delivered", 0) >= MESSAGES)

    daemons.wait_for(drained, timeout=60, what="the outbox to drain")
    count = daemons.wait_for(lambda: _count(a, counter), timeout=30, what="count")
    delivery = a.get("/v1/status")["delivery"]
    assert count == MESSAGES, (outcomes, delivery["outbox"], delivery["sent"])
    status = b.get("/v1/status")
    assert status["runtime"]["handled"] >= 1
    assert a.get("/v1/status")["delivery"]["outbox"].get("expired", 0) == 0
