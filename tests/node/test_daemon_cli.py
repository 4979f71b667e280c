"""`meshd init` and `meshd run` as processes: files, refusals, clear errors, exit codes."""

from __future__ import annotations

import json
import signal
import socket
import stat
from typing import TYPE_CHECKING

from meshd.localmesh import daemon_env

if TYPE_CHECKING:
    from pathlib import Path

    from tests.node.conftest import Daemons


def test_init_creates_a_private_key_and_refuses_to_overwrite(daemons: Daemons) -> None:
    node = daemons.init("a")
    key = node.data_dir / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(node.data_dir.stat().st_mode) == 0o700
    assert (node.data_dir / "config.toml").read_text().startswith("# meshd configuration")
    assert node.peer_id.startswith("12D3KooW")
    before = key.read_bytes()
    again = daemons.cli("init", "--data-dir", str(node.data_dir))
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
    assert key.read_bytes() == before
    text = daemons.cli("init", "--data-dir", str(node.data_dir.with_name("b")))
    assert text.returncode == 0
    assert "peer id" in text.stdout


def test_init_honours_meshd_home(daemons: Daemons, tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = daemons.cli("init", "--json", env=_env(MESHD_HOME=str(home)))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data_dir"] == str(home)
    assert (home / "node.key").exists()


def test_run_refuses_clearly(daemons: Daemons, tmp_path: Path) -> None:
    missing = daemons.cli("run", "--data-dir", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert "run `meshd init` first" in missing.stderr

    node = daemons.init("a")
    bad_flag = daemons.cli("run", "--data-dir", str(node.data_dir), "--listen", "foo")
    assert bad_flag.returncode == 1
    assert "--listen: listen[0]: not a multiaddr: 'foo'" in bad_flag.stderr

    usage = daemons.cli("run", "--data-dir", str(node.data_dir), "--no-such-flag")
    assert usage.returncode == 2

    (node.data_dir / "config.toml").write_text("[connections]\nmax = 0\n")
    bad_file = daemons.cli("run", "--data-dir", str(node.data_dir))
    assert bad_file.returncode == 1
    assert "config.toml: connections.max: must be between 1 and" in bad_file.stderr
    (node.data_dir / "config.toml").write_text("")

    bad_env = daemons.cli("run", "--data-dir", str(node.data_dir), env=_env(MESHD_MDNS="perhaps"))
    assert bad_env.returncode == 1
    assert "environment MESHD_MDNS: mdns" in bad_env.stderr


def test_unreadable_or_corrupt_key(daemons: Daemons) -> None:
    node = daemons.init("a")
    key = node.data_dir / "node.key"
    key.write_text("this is not a key\n")
    corrupt = daemons.cli("run", "--data-dir", str(node.data_dir))
    assert corrupt.returncode == 1
    assert f"node key {key} is corrupt" in corrupt.stderr
    key.unlink()
    key.mkdir()  # unreadable as a file even for root, unlike chmod 000
    unreadable = daemons.cli("run", "--data-dir", str(node.data_dir))
    assert unreadable.returncode == 1
    assert f"cannot read node key {key}" in unreadable.stderr


def test_port_in_use(daemons: Daemons) -> None:
    node = daemons.init("a")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node.start(listen=f"/ip4/127.0.0.1/tcp/{port}")
        assert node.wait() == 1
    assert "address already in use" in node.log_text()
    assert "Traceback" not in node.log_text()
    assert not (node.data_dir / "meshd.pid").exists()


def test_sigint_stops_cleanly(daemons: Daemons) -> None:
    node = daemons.init("a")
    node.start()
    node.wait_ready()
    node.signal(signal.SIGINT)
    assert node.wait() == 0
    log = node.log_text()
    assert "shutting down (received SIGINT)" in log
    assert "stopped" in log
    assert "Traceback" not in log
    assert not (node.data_dir / "api.sock").exists()


def _env(**extra: str) -> dict[str, str]:
    return daemon_env(**extra)
