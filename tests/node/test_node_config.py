"""Config precedence (flag > env > file > default) and errors that name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from meshd.config import (
    DEFAULT_LISTEN,
    Config,
    ConfigError,
    env_name,
    load_config,
    render_config_template,
)

PEER = "12D3KooWEDKsoWLiuVxiXEGsRAmFSLseiUNrcstexpJF9gEy13HX"
SEED = f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "config.toml").write_text(text)
    return tmp_path


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(tmp_path, env={})
    assert config == Config()
    assert config.listen == (DEFAULT_LISTEN,)
    assert config.bootstrap == ()
    assert config.connections.low_watermark <= config.connections.high_watermark


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    write(tmp_path, 'listen = ["/ip4/127.0.0.1/tcp/1"]\n[log]\nlevel = "debug"\nformat = "json"\n')
    env = {"MESHD_LISTEN": "/ip4/127.0.0.1/tcp/2", "MESHD_LOG_LEVEL": "warning"}
    config = load_config(tmp_path, env=env, flags={"listen": ("/ip4/127.0.0.1/tcp/3",)})
    assert config.listen == ("/ip4/127.0.0.1/tcp/3",)  # flag
    assert config.log_level == "warning"  # env over file
    assert config.log_format == "json"  # file over default
    assert config.mdns is False  # default
    # Flags that were not given (None, empty tuple) do not override anything.
    config = load_config(tmp_path, env={}, flags={"listen": (), "mdns": None})
    assert config.listen == ("/ip4/127.0.0.1/tcp/1",)


def test_env_lists_booleans_and_numbers(tmp_path: Path) -> None:
    env = {
        env_name("bootstrap"): f"{SEED}, {SEED}",
        env_name("mdns"): "yes",
        env_name("connections.low_watermark"): "3",
        env_name("dht.fast_walk_s"): "0.5",
    }
    config = load_config(tmp_path, env=env)
    assert [b.peer_id for b in config.bootstrap] == [PEER, PEER]
    assert config.mdns is True
    assert config.connections.low_watermark == 3
    assert config.dht.fast_walk_s == 0.5


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('listen = ["foo"]', "config.toml: listen[0]: not a multiaddr: 'foo'"),
        ('listen = "/ip4/1.2.3.4/tcp/1"', "config.toml: listen: expected a list"),
        ('bootstrap = ["/ip4/1.2.3.4/tcp/1"]', "config.toml: bootstrap[0]: not a bootstrap"),
        ("mdns = 3", "config.toml: mdns: expected true or false"),
        ('[log]\nlevel = "loud"', "config.toml: log.level: must be one of"),
        ("[connections]\nlow_watermark = -1", "config.toml: connections.low_watermark"),
        ('[api]\ntcp = "10.0.0.1:80"', "config.toml: api.tcp: the API only listens on loopback"),
        ("colour = 1", "config.toml: unknown key 'colour'"),
        ("[dht]\nwalkies = 1", "config.toml: unknown key 'dht.walkies'"),
        ("listen = [", "config.toml: not valid TOML"),
        (
            "[connections]\nlow_watermark = 10\nhigh_watermark = 5",
            "connections.high_watermark (5) must be >= connections.low_watermark (10)",
        ),
    ],
)
def test_file_errors_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    write(tmp_path, toml + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, env={})
    assert message in str(caught.value)


def test_env_and_flag_errors_name_their_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="environment MESHD_MDNS: mdns: expected true"):
        load_config(tmp_path, env={"MESHD_MDNS": "maybe"})
    with pytest.raises(ConfigError, match=r"--listen: listen\[1\]: not a multiaddr: 'x'"):
        load_config(tmp_path, env={}, flags={"listen": ("/ip4/127.0.0.1/tcp/0", "x")})


def test_unreadable_config_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").mkdir()
    with pytest.raises(ConfigError, match=r"config\.toml: cannot read"):
        load_config(tmp_path, env={})


def test_template_lists_every_key_at_its_default(tmp_path: Path) -> None:
    template = render_config_template()
    assert tomllib.loads(template) == {
        "log": {},
        "api": {},
        "connections": {},
        "dht": {},
        "agents": {},
        "limits": {},
        "summary": {},
        "telemetry": {},
        "trust": {},
        "swarm": {},
        "network": {},
    }
    # Uncommenting every key gives a valid file equal to the defaults.
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line else line
        for line in template.splitlines()
    )
    write(tmp_path, uncommented)
    assert load_config(tmp_path, env={}) == Config()
    for key in ("listen", "bootstrap", "mdns", "level", "tcp", "low_watermark", "fast_walk_s"):
        assert f"# {key} = " in template
