"""`meshd agent allow|deny` on a real daemon: lists set, shown, enforced and cleared."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from meshd.localmesh import LocalDaemon, meshd_command

pytestmark = pytest.mark.slow


def cli(node: LocalDaemon, *args: str) -> tuple[int, str, str]:
    result = meshd_command(*args, "--data-dir", str(node.data_dir))
    return result.returncode, result.stdout, result.stderr


def send(node: LocalDaemon, to: str, sender: str | None) -> str:
    """The outcome of a message from `sender` (None: the node's operator agent) to `to`."""
    body = {"to": to, "body": {"n": 1}, **({"from": sender} if sender else {})}
    outcome: str = node.post("/v1/send", body)["outcome"]
    return outcome


def test_allow_and_deny_lists_through_the_cli(make_daemon: Callable[[str], LocalDaemon]) -> None:
    node = make_daemon("a")
    node.start()
    node.wait_ready()
    for name in ("target", "friend", "pest"):
        node.post("/v1/agents", {"kind": "echo", "name": name})
    assert send(node, "target", "pest") == "delivered"

    code, out, _ = cli(node, "agent", "deny", "target", "pest", "--json")
    assert code == 0
    pest_id = node.get("/v1/agents/pest")["id"]
    assert json.loads(out)["deny"] == [pest_id]
    assert send(node, "target", "pest") == "rejected:denied"
    assert send(node, "target", "friend") == "delivered"
    # The CLI's send exits 1 with the reason.
    code, out, err = cli(node, "send", "target", "{}", "--from", "pest")
    assert code == 1
    assert "rejected:denied" in out + err

    # An allow list admits only its senders.
    assert cli(node, "agent", "allow", "target", "friend")[0] == 0
    assert send(node, "target", None) == "rejected:denied"
    assert send(node, "target", "friend") == "delivered"
    shown = json.loads(cli(node, "agent", "show", "target", "--json")[1])
    assert shown["acl"]["allow"] == [node.get("/v1/agents/friend")["id"]]
    assert "allow only" in cli(node, "agent", "show", "target")[1]

    # Usage errors and unknown senders are refused with a reason.
    code, _, err = cli(node, "agent", "deny", "target")
    assert code == 2
    assert "--clear" in err
    code, _, err = cli(node, "agent", "deny", "target", "nobody")
    assert code != 0
    assert "nobody" in err

    # Cleared (persistence across restarts: tests/security/test_trust.py).
    assert cli(node, "agent", "allow", "target", "--clear")[0] == 0
    assert cli(node, "agent", "deny", "target", "--clear")[0] == 0
    assert send(node, "target", "pest") == "delivered"
    status = node.get("/v1/status")
    assert status["trust"]["refused:denied"] >= 1
    assert node.stop() == 0
