"""Trust on real daemons: `trust.policy = "trusted-roots"` across nodes (records from the DHT),
and `meshd agent allow|deny` lists set, shown, enforced and cleared through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from click.testing import CliRunner

from meshd.api.client import ApiError
from meshd.cli import cli as meshd_cli
from meshd.localmesh import LocalDaemon, meshd_command, wait_until
from tests.observability.test_metrics import scrape

pytestmark = pytest.mark.slow


def cli(node: LocalDaemon, *args: str) -> tuple[int, str, str]:
    result = meshd_command(*args, "--data-dir", str(node.data_dir))
    return result.returncode, result.stdout, result.stderr


def send(node: LocalDaemon, to: str, sender: str | None) -> str:
    """The outcome of a message from `sender` (None: the node's operator agent) to `to`."""
    body = {"to": to, "body": {"n": 1}, **({"from": sender} if sender else {})}
    outcome: str = node.post("/v1/send", body)["outcome"]
    return outcome


def test_trusted_roots_and_lists(make_daemon: Callable[[str], LocalDaemon]) -> None:
    trusted, node, stranger = (make_daemon(name) for name in ("a", "b", "c"))
    trusted.start()
    trusted.wait_ready()
    # b admits only agents rooted in a (and in b itself); c is nobody it knows.
    config = f'[trust]\npolicy = "trusted-roots"\nroots = ["{trusted.peer_id}"]\n'
    (node.data_dir / "config.toml").write_text(config)
    for other in (node, stranger):
        other.start("--bootstrap", trusted.addrs[0])
    for other in (node, stranger):
        other.wait_ready()
    wait_until(lambda: len(trusted.peer_ids()) == 2, timeout=30, what="b and c to join a")
    for name in ("target", "friend", "pest"):
        node.post("/v1/agents", {"kind": "echo", "name": name})
    target = node.get("/v1/agents/target")["id"]
    trusted.post("/v1/agents", {"kind": "echo", "name": "ally"})
    stranger.post("/v1/agents", {"kind": "echo", "name": "intruder"})
    # Each sender's provenance comes from its agent record in the DHT.
    assert send(trusted, target, "ally") == "delivered"
    assert send(stranger, target, "intruder") == "rejected:untrusted"
    assert node.get("/v1/status")["delivery"]["rejected"]["untrusted"] == 1
    # Local senders are rooted in b itself.
    assert send(node, "target", "pest") == "delivered"

    code, out, _ = cli(node, "agent", "deny", "target", "pest", "--json")
    assert code == 0
    pest_id = node.get("/v1/agents/pest")["id"]
    assert json.loads(out)["deny"] == [pest_id]
    assert send(node, "target", "pest") == "rejected:denied"
    assert send(node, "target", "friend") == "delivered"
    # An allow list admits only its senders.
    assert cli(node, "agent", "allow", "target", "friend")[0] == 0
    assert send(node, "target", None) == "rejected:denied"
    assert send(node, "target", "friend") == "delivered"
    shown = json.loads(cli(node, "agent", "show", "target", "--json")[1])
    assert shown["acl"]["allow"] == [node.get("/v1/agents/friend")["id"]]
    assert "allow only" in cli(node, "agent", "show", "target")[1]

    # Unknown senders are refused with a reason (404 unknown_agent).
    with pytest.raises(ApiError, match="nobody"):
        node.post("/v1/agents/target/acl", {"list": "deny", "add": ["nobody"]})

    # A deleted agent's lists go with it.
    assert cli(node, "agent", "deny", "friend", "pest")[0] == 0
    assert node.get("/v1/status")["trust"]["agents_with_lists"] == 2
    assert cli(node, "agent", "delete", "friend")[0] == 0
    assert node.get("/v1/status")["trust"]["agents_with_lists"] == 1
    assert node.get("/v1/status")["trust"]["lists_removed"] == 1

    # Cleared (persistence across restarts: tests/security/test_trust.py).
    assert cli(node, "agent", "allow", "target", "--clear")[0] == 0
    node.post("/v1/agents/target/acl", {"list": "deny", "clear": True})
    assert send(node, "target", "pest") == "delivered"
    status = node.get("/v1/status")
    assert status["trust"]["refused:denied"] >= 1
    assert status["trust"]["refused:untrusted"] == 1
    metrics = scrape(node)  # the same refusals in /metrics
    assert metrics["meshd_trust_events_total{event=refused:untrusted}"] == 1
    assert metrics["meshd_trust_events_total{event=refused:denied}"] >= 1
    for daemon in (trusted, node, stranger):
        daemon.terminate()  # all at once: each takes a moment to close its connections
    assert [daemon.wait() for daemon in (trusted, node, stranger)] == [0, 0, 0]


def test_allow_or_deny_needs_a_sender_or_clear() -> None:
    result = CliRunner().invoke(meshd_cli, ["agent", "deny", "some-agent"])
    assert result.exit_code == 2
    assert "--clear" in result.output
