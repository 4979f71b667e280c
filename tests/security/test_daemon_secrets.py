"""Secrets of a real `meshd run`: file modes checked at start, private network, clean logs,
no agent or node seed in clear in the database."""

from __future__ import annotations

import base64
import socket
import sqlite3
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.localmesh import LocalDaemon, daemon_env, meshd_command, wait_until
from meshd.runtime.keys import KeyVault
from protocol.ids import SigningKey

pytestmark = pytest.mark.slow

MakeDaemon = Callable[[str], LocalDaemon]
WAIT_S = 30.0


def run_refused(daemon: LocalDaemon) -> str:
    """`meshd run` that must be refused before starting: its stderr."""
    result = meshd_command("run", "--data-dir", str(daemon.data_dir), timeout=30)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert not (daemon.data_dir / "api.sock").exists()
    return result.stderr


def test_run_refuses_a_key_or_data_dir_others_can_read(make_daemon: MakeDaemon) -> None:
    node = make_daemon("a")
    key = node.data_dir / "node.key"
    key.chmod(0o644)
    assert f"{key} has mode 0644" in run_refused(node)
    assert f"chmod 600 {key}" in run_refused(node)
    key.chmod(0o600)
    node.data_dir.chmod(0o750)
    assert f"{node.data_dir} has mode 0750" in run_refused(node)
    node.data_dir.chmod(0o700)
    # A private-network key must be private too, and well-formed.
    psk = node.data_dir / "swarm.key"
    psk.write_text("ab" * 32 + "\n")
    psk.chmod(0o644)
    (node.data_dir / "config.toml").write_text('[network]\npsk_file = "swarm.key"\n')
    assert "private-network key" in run_refused(node)
    psk.chmod(0o600)
    psk.write_text("not hex\n")
    assert "not 64 hex digits" in run_refused(node)


def write_psk(daemon: LocalDaemon, key_hex: str) -> None:
    path = daemon.data_dir / "swarm.key"
    path.write_text(f"/key/swarm/psk/1.0.0/\n/base16/\n{key_hex}\n")
    path.chmod(0o600)
    (daemon.data_dir / "config.toml").write_text('[network]\npsk_file = "swarm.key"\n')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def encodings(secret: bytes) -> set[str]:
    """Ways a secret could be printed: hex, base64, base64url, Python's repr of the bytes."""
    return {
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode().rstrip("="),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1],
    }


def agent_seeds(daemon: LocalDaemon, node_seed: bytes) -> list[bytes]:
    """Every agent seed the daemon stored, opened with its node key (the test is the owner)."""
    vault = KeyVault(SigningKey(node_seed))
    with sqlite3.connect(daemon.data_dir / "meshd.db") as db:
        # A migrated agent leaves a tombstone row without a key.
        rows = db.execute("SELECT secret FROM agents WHERE length(secret) > 0").fetchall()
    return [vault.open(bytes(row[0])).seed for row in rows]


def test_private_network_and_no_secret_in_logs_or_database(make_daemon: MakeDaemon) -> None:
    """a and b share a private-network key, the stranger has none; a and b spawn, send and
    migrate at debug level; then no secret is in their logs, no agent seed in clear on disk."""
    a, b, stranger = (make_daemon(name) for name in ("a", "b", "c"))
    psk = "5a" * 32
    write_psk(a, psk)
    write_psk(b, psk)
    debug = daemon_env(MESHD_LOG_LEVEL="debug")
    a.start(env=daemon_env(MESHD_API_TCP=f"127.0.0.1:{free_port()}", MESHD_LOG_LEVEL="debug"))
    a.wait_ready()
    # The stranger dials a at the same time as b (a wrong key fails the same way as none:
    # the handshake cannot start).
    b.start("--bootstrap", a.addrs[0], env=debug)
    stranger.start("--bootstrap", a.addrs[0])
    b.wait_ready()
    stranger.wait_ready()
    wait_until(lambda: b.peer_id in a.peer_ids(), timeout=WAIT_S, what="b to join a")

    counter = a.post("/v1/agents", {"kind": "counter"})["agents"][0]["id"]
    a.post("/v1/agents", {"kind": "echo", "count": 20})
    sent = b.post("/v1/send", {"to": counter, "body": {"add": 1}, "kind": "req", "wait": True})
    assert sent["outcome"] == "delivered", sent
    moved = a.post(f"/v1/agents/{counter}/migrate", {"to": b.peer_id}, timeout=60)
    assert moved["to"] == b.peer_id
    sent = a.post("/v1/send", {"to": counter, "body": {"add": 1}, "kind": "req", "wait": True})
    assert sent["outcome"] == "delivered", sent

    # By now the stranger's bootstrap has long failed: it is connected to no one.
    wait_until(
        lambda: "bootstrap" in stranger.log_text(), timeout=WAIT_S, what="its bootstrap result"
    )
    assert a.peer_ids() == {b.peer_id}
    assert not stranger.peer_ids()
    for node in (a, b, stranger):
        node.terminate()  # all at once: each takes a moment to close its connections
    assert [node.wait() for node in (a, b, stranger)] == [0, 0, 0]

    secrets: dict[str, bytes] = {}
    for node in (a, b):
        seed = bytes.fromhex(tomllib.loads((node.data_dir / "node.key").read_text())["seed"])
        secrets[f"{node.data_dir.name} node seed"] = seed
        for index, agent_seed in enumerate(agent_seeds(node, seed)):
            secrets[f"{node.data_dir.name} agent seed {index}"] = agent_seed
    assert len(secrets) >= 2 + 22  # both node keys, 21 agents on a, the migrated one on b
    secrets["private-network key"] = bytes.fromhex(psk)
    token = (a.data_dir / "api.token").read_text().strip()
    logs = a.log_text() + b.log_text()
    assert "arrived" in logs  # the daemons logged the run, migration included
    assert token not in logs
    for name, secret in secrets.items():
        for text in encodings(secret):
            assert text not in logs, f"{name} appears in a daemon log"
    # At rest: no agent seed in clear in the database files (main file and WAL).
    for node in (a, b):
        files = [path for path in node.data_dir.iterdir() if path.name.startswith("meshd.db")]
        stored = b"".join(path.read_bytes() for path in files)
        for name, secret in secrets.items():
            if "agent seed" in name or "node seed" in name:
                assert secret not in stored, f"{name} is stored in clear by {node.data_dir.name}"


def test_the_vault_seals_every_seed_in_the_sqlite_file(tmp_path: Path) -> None:
    """In-process: many spawned agents, then the raw bytes of the database files."""
    import trio

    from meshd.runtime.runtime import Runtime
    from meshd.store import Store

    node_key = SigningKey.generate()

    async def spawn_many() -> None:
        async with Store(tmp_path / "meshd.db") as store, trio.open_nursery() as nursery:
            runtime = Runtime(store, node_key)
            await nursery.start(runtime.serve)
            await runtime.spawn("echo", count=300)
            nursery.cancel_scope.cancel()

    trio.run(spawn_many)
    with sqlite3.connect(tmp_path / "meshd.db") as db:
        sealed = [bytes(row[0]) for row in db.execute("SELECT secret FROM agents")]
    assert len(sealed) == 300
    vault = KeyVault(node_key)
    seeds = [vault.open(item).seed for item in sealed]
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("meshd.db"))
    assert all(seed not in raw for seed in seeds)
    assert node_key.seed not in raw
    # And the sealed form is what is there: the check above would notice plaintext.
    assert all(item in raw for item in sealed[:10])
