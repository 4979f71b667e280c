"""Daemon configuration: one frozen `Config`, validated once at start.

Precedence, highest first: command-line flag > `MESHD_*` environment variable >
`config.toml` in the data directory > built-in default. Every key is declared once in
`_KEYS` (name, default, parser, help); the loader, the environment names and the
commented `config.toml` that `meshd init` writes are all derived from that table, so
they cannot drift apart. An invalid value raises `ConfigError` whose message names the
source and the key, e.g. `config.toml: listen[0]: not a multiaddr: 'foo'`.

Environment names are `MESHD_` + the key in upper case with dots as underscores
(`connections.low_watermark` -> `MESHD_CONNECTIONS_LOW_WATERMARK`); lists are
comma-separated, booleans are 1/0, true/false, yes/no, on/off.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshd.guard import GuardSettings
from meshd.net.addrs import BootstrapAddr, parse_bootstrap_addr, parse_listen_addr
from meshd.net.settings import DiscoverySettings
from meshd.paths import CONFIG_FILE
from meshd.runtime.settings import RuntimeSettings
from meshd.summary_settings import SummarySettings
from meshd.swarm_settings import SwarmSettings
from meshd.telemetry_settings import TelemetrySettings
from meshd.trust_settings import POLICIES, TrustSettings
from protocol.ids import NodeId

__all__ = [
    "DEFAULT_LISTEN",
    "Config",
    "ConfigError",
    "ConnectionSettings",
    "env_name",
    "load_config",
    "render_config_template",
]

DEFAULT_LISTEN = "/ip4/0.0.0.0/tcp/4001"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


class ConfigError(Exception):
    """Invalid configuration; the message names the source and the key."""


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Connection manager limits (see `connections.*` keys)."""

    low_watermark: int = 8
    high_watermark: int = 32
    max: int = 64
    dial_timeout_s: float = 5.0
    auto_connect_interval_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    """Everything `meshd run` needs to know, checked and typed."""

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    bootstrap: tuple[BootstrapAddr, ...] = ()
    mdns: bool = False
    log_level: str = "info"
    log_format: str = "text"
    api_tcp: str | None = None
    connections: ConnectionSettings = ConnectionSettings()
    # The dht.* keys, plus the two connection limits discovery also obeys.
    dht: DiscoverySettings = field(default_factory=DiscoverySettings)
    agents: RuntimeSettings = field(default_factory=RuntimeSettings)
    limits: GuardSettings = field(default_factory=GuardSettings)
    summary: SummarySettings = field(default_factory=SummarySettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    trust: TrustSettings = field(default_factory=TrustSettings)
    swarm: SwarmSettings = field(default_factory=SwarmSettings)
    # Private network: the pre-shared key file (relative to the data directory), or None.
    psk_file: str | None = None


class _ItemError(ValueError):
    """A list element is invalid: carries its index so the message can say `key[i]`."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


# -- value parsers: take a TOML/flag value (or an env string already split), return typed


def _list_of(item: Callable[[object], Any]) -> Callable[[object], tuple[Any, ...]]:
    def parse(value: object) -> tuple[Any, ...]:
        if isinstance(value, str):
            raise ValueError(f"expected a list of strings, got a single string {value!r}")
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list, got {type(value).__name__}")
        out = []
        for index, element in enumerate(value):
            try:
                out.append(item(element))
            except ValueError as exc:
                raise _ItemError(index, str(exc)) from exc
        return tuple(out)

    return parse


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    raise ValueError(f"expected true or false, got {value!r}")


def _int(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ValueError(f"expected an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _float(low: float, high: float) -> Callable[[object], float]:
    def parse(value: object) -> float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        number = float(value)
        if not low <= number <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {number:g}")
        return number

    return parse


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value.strip().lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return value.strip().lower()

    return parse


def _node_id(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a node peer id, got {value!r}")
    NodeId.from_text(value.strip())  # ValueError names the bad id
    return value.strip()


def _optional_path(value: object) -> str | None:
    if not isinstance(value, str):
        raise ValueError(f"expected a file path, got {value!r}")
    return value.strip() or None


def _loopback_hostport(value: object) -> str | None:
    if not isinstance(value, str):
        raise ValueError(f"expected 'host:port' text, got {value!r}")
    text = value.strip()
    if not text:
        return None
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"expected 'host:port' (e.g. 127.0.0.1:5001), got {value!r}")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"the API only listens on loopback addresses, got {host!r}")
    return text


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    default: Any  # as written in TOML
    parse: Callable[[object], Any]
    help: str
    is_list: bool = False


_KEYS: tuple[_Key, ...] = (
    _Key(
        "listen",
        [DEFAULT_LISTEN],
        _list_of(parse_listen_addr),
        "TCP multiaddrs to listen on. Flag: --listen (repeatable).",
        is_list=True,
    ),
    _Key(
        "bootstrap",
        [],
        _list_of(parse_bootstrap_addr),
        "Peers to join through, /ip4/<ip>/tcp/<port>/p2p/<peer id>. Flag: --bootstrap.",
        is_list=True,
    ),
    _Key("mdns", False, _bool, "Find peers on the local network with mDNS. Flag: --mdns."),
    _Key("log.level", "info", _choice(*LOG_LEVELS), "debug, info, warning or error."),
    _Key("log.format", "text", _choice(*LOG_FORMATS), "text (one line per event) or json."),
    _Key(
        "api.tcp",
        "",
        _loopback_hostport,
        "Also serve the control API on this loopback host:port (bearer token). Empty: off.",
    ),
    _Key(
        "connections.low_watermark",
        8,
        _int(1, 10_000),
        "Dial peers found through the DHT while holding fewer connections than this.",
    ),
    _Key(
        "connections.high_watermark",
        32,
        _int(1, 10_000),
        "Above this many connections, trim back to the middle of the two watermarks "
        "(if trim_interval_s > 0).",
    ),
    _Key("connections.max", 64, _int(1, 10_000), "Hard cap on connections."),
    _Key(
        "connections.trim_interval_s",
        0.0,
        _float(0.0, 3600.0),
        "How often connections above the high watermark are trimmed to the middle of the "
        "watermarks (DHT-spread peers kept). 0 (default): never; py-libp2p's pruner never "
        "trims either.",
    ),
    _Key(
        "connections.trim_grace_s",
        20.0,
        _float(0.0, 3600.0),
        "A connection younger than this is never trimmed.",
    ),
    _Key("connections.dial_timeout_s", 5.0, _float(0.1, 120.0), "Give up a dial after this."),
    _Key(
        "connections.auto_connect_interval_s",
        30.0,
        _float(1.0, 3600.0),
        "How often py-libp2p's connection manager tops connections up.",
    ),
    _Key(
        "dht.join_jitter_s",
        1.0,
        _float(0.0, 60.0),
        "Random delay before the first bootstrap dial, so nodes started together spread out.",
    ),
    _Key(
        "dht.fast_walk_s",
        1.0,
        _float(0.05, 600.0),
        "Interval between DHT random walks while they still find new peers.",
    ),
    _Key(
        "dht.small_table",
        8,
        _int(0, 10_000),
        "A routing table smaller than this counts as small: walks stay frequent.",
    ),
    _Key(
        "dht.small_table_walk_s",
        10.0,
        _float(0.05, 3600.0),
        "Longest interval between walks while the routing table is small.",
    ),
    _Key(
        "dht.walk_interval_s",
        120.0,
        _float(0.05, 86_400.0),
        "Longest interval between walks once the table is full and stable.",
    ),
    _Key("dht.lookup_timeout_s", 10.0, _float(0.1, 300.0), "Give up one DHT lookup after this."),
    _Key("dht.max_parallel_dials", 4, _int(1, 256), "Dials running at once during discovery."),
    _Key("agents.max", 2_000_000, _int(1, 1_000_000_000), "Most agents this node hosts."),
    _Key(
        "agents.max_active",
        10_000,
        _int(1, 10_000_000),
        "Memory budget: most agents active at once; the least recently used go dormant.",
    ),
    _Key(
        "agents.idle_evict_s",
        60.0,
        _float(0.01, 86_400.0),
        "An active agent idle this long goes back to dormant.",
    ),
    _Key("agents.spawn_rate", 50_000.0, _float(0.01, 1e9), "Spawns per second this node allows."),
    _Key("agents.spawn_burst", 200_000.0, _float(1.0, 1e10), "Spawns allowed at once (bucket)."),
    _Key(
        "agents.default_budget",
        1_000,
        _int(0, 1_000_000_000),
        "How many descendants an agent spawned from the CLI may spawn in turn.",
    ),
    _Key(
        "agents.inbox_limit",
        1_000,
        _int(1, 1_000_000),
        "Messages queued in memory per active agent before senders get rate_limited.",
    ),
    _Key(
        "limits.peer_msgs_per_s",
        20_000.0,
        _float(1.0, 1e9),
        "Messages per second one peer may have verified here; the excess is rate_limited.",
    ),
    _Key("limits.peer_burst", 40_000.0, _float(1.0, 1e10), "Burst allowed above that rate."),
    _Key(
        "limits.agent_msgs_per_s",
        5_000.0,
        _float(1.0, 1e9),
        "Messages per second one sending agent may deliver here (after verification).",
    ),
    _Key("limits.agent_burst", 10_000.0, _float(1.0, 1e10), "Burst allowed above that rate."),
    _Key(
        "limits.ban_threshold",
        500.0,
        _float(1.0, 1e9),
        "Penalty score that bans a peer (bad signature or malformed 10, bad frames 50...).",
    ),
    _Key(
        "limits.penalty_half_life_s",
        60.0,
        _float(0.1, 1e6),
        "Seconds in which a peer's penalty score halves.",
    ),
    _Key(
        "limits.ban_s",
        600.0,
        _float(0.0, 1e7),
        "How long a banned peer is disconnected and refused.",
    ),
    _Key(
        "summary.interval_s",
        30.0,
        _float(0.1, 86_400.0),
        "Longest time before a change of the hosted agents (or a lost push) reaches neighbours.",
    ),
    _Key(
        "summary.fp_rate",
        0.01,
        _float(1e-6, 0.25),
        "Target false-positive rate of the summary Bloom filters (sizes them).",
    ),
    _Key(
        "summary.neighbour_bytes_per_s",
        1024.0,
        _float(1.0, 1e9),
        "Summary bytes sent to one neighbour per second, on average, however high the churn.",
    ),
    _Key(
        "summary.two_hop",
        False,
        _bool,
        "Also forward the union of the neighbours' level-1 filters (routes three hops out; "
        "costs a bigger summary and more churn traffic).",
    ),
    _Key(
        "summary.min_push_gap_s",
        5.0,
        _float(0.0, 86_400.0),
        "Shortest time between two pushes to one neighbour: changes in between make one delta.",
    ),
    _Key(
        "summary.neighbour_after_s",
        0.0,
        _float(0.0, 3600.0),
        "A peer becomes a summary neighbour once connected this long (0: at once); spares "
        "whole summaries to short-lived connections (DHT lookups) in a large mesh.",
    ),
    _Key(
        "summary.max_bytes",
        4 * 1024 * 1024,
        _int(1024, 16 * 1024 * 1024),
        "Refuse (and count) summaries from neighbours larger than this.",
    ),
    _Key(
        "telemetry.interval_s",
        5.0,
        _float(0.1, 3600.0),
        "Seconds between telemetry exchanges with neighbours (mesh-wide estimates).",
    ),
    _Key("telemetry.fanout", 8, _int(1, 256), "Neighbours each telemetry round talks to."),
    _Key(
        "telemetry.epoch_s",
        600.0,
        _float(1.0, 86_400.0),
        "Sketch epoch: agents and nodes gone for two epochs leave the mesh estimates.",
    ),
    _Key(
        "telemetry.node_ttl_s",
        120.0,
        _float(1.0, 86_400.0),
        "A node silent this long leaves the mesh-wide counter sums.",
    ),
    _Key("telemetry.max_nodes", 256, _int(1, 512), "Most nodes in the counter table."),
    _Key(
        "telemetry.report_entries",
        32,
        _int(1, 512),
        "Most counter-table entries per report (news first, the rest in turn).",
    ),
    _Key(
        "telemetry.anomaly_factor",
        5.0,
        _float(1.5, 1e6),
        "Flag a node whose message, reject or spawn rate is this many times the mesh mean.",
    ),
    _Key(
        "trust.policy",
        "open",
        _choice(*POLICIES),
        "open: any verified agent may message ours; trusted-roots: only agents whose "
        "provenance is rooted in trust.roots or this node.",
    ),
    _Key(
        "trust.roots",
        [],
        _list_of(_node_id),
        "Node peer ids whose agents (and their descendants) trusted-roots admits.",
        is_list=True,
    ),
    _Key(
        "trust.accept_migrations",
        True,
        _bool,
        "Take agents that peers migrate here (under trusted-roots only trusted-rooted ones).",
    ),
    _Key("trust.cache_size", 10_000, _int(1, 10_000_000), "Senders whose verdict is cached."),
    _Key(
        "trust.cache_ttl_s",
        600.0,
        _float(1.0, 86_400.0),
        "Seconds a trusted verdict is cached (untrusted ones: 30 s, a record may appear).",
    ),
    _Key(
        "trust.peer_lookups_per_s",
        5.0,
        _float(0.01, 10_000.0),
        "trusted-roots: record lookups for unknown senders one peer's messages may cause "
        "(burst: 10 s worth); beyond, untrusted.",
    ),
    _Key(
        "swarm.heartbeat_s",
        1.0,
        _float(0.05, 600.0),
        "Seconds between a node's heartbeats on each swarm it has members in.",
    ),
    _Key(
        "swarm.misses",
        3,
        _int(2, 100),
        "A node whose heartbeats stop leaves a swarm's view after this many intervals.",
    ),
    _Key("swarm.max_swarms", 256, _int(1, 10_000), "Most swarms this node follows."),
    _Key(
        "network.psk_file",
        "",
        _optional_path,
        "Private network: pre-shared key file (64 hex digits, or a go-libp2p swarm.key), "
        "relative to the data directory; only nodes with the same key connect. Empty: off.",
    ),
)
_BY_NAME = {key.name: key for key in _KEYS}


def env_name(key: str) -> str:
    """The environment variable for a config key (`log.level` -> `MESHD_LOG_LEVEL`)."""
    return "MESHD_" + key.upper().replace(".", "_")


def _flatten(table: Mapping[str, Any], prefix: str, source: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in table.items():
        full = f"{prefix}{name}"
        if full in _BY_NAME:
            flat[full] = value
        elif isinstance(value, dict) and any(k.startswith(full + ".") for k in _BY_NAME):
            flat.update(_flatten(value, full + ".", source))
        else:
            raise ConfigError(f"{source}: unknown key {full!r}")
    return flat


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read: {reason}") from exc
    try:
        return _flatten(tomllib.loads(text), "", str(path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _parse(key: _Key, value: object, source: str) -> Any:
    try:
        return key.parse(value)
    except _ItemError as exc:
        raise ConfigError(f"{source}: {key.name}[{exc.index}]: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{source}: {key.name}: {exc}") from exc


def load_config(
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> Config:
    """Build the config: `flags` (key -> value; None or () = not given) > env > file > default."""
    env = os.environ if env is None else env
    path = data_dir / CONFIG_FILE
    from_file = _read_toml(path)
    values: dict[str, Any] = {}
    for key in _KEYS:
        value = _parse(key, key.default, "default")
        if key.name in from_file:
            value = _parse(key, from_file[key.name], str(path))
        variable = env_name(key.name)
        if variable in env:
            raw: object = env[variable]
            if key.is_list:
                raw = [part.strip() for part in str(raw).split(",") if part.strip()]
            value = _parse(key, raw, f"environment {variable}")
        flag = (flags or {}).get(key.name)
        if flag is not None and flag != ():
            flag_name = "--" + key.name.replace("_", "-").replace(".", "-")
            if key.is_list and isinstance(flag, list | tuple):
                flag = list(flag)
            value = _parse(key, flag, flag_name)
        values[key.name] = value
    for name in flags or {}:
        if name not in _BY_NAME:
            raise ConfigError(f"unknown config key {name!r}")
    psk = values["network.psk_file"]
    if psk is not None:
        values["network.psk_file"] = str(data_dir / psk)  # relative to the data directory
    return _build(values)


def _build(values: Mapping[str, Any]) -> Config:
    connections = ConnectionSettings(
        low_watermark=values["connections.low_watermark"],
        high_watermark=values["connections.high_watermark"],
        max=values["connections.max"],
        dial_timeout_s=values["connections.dial_timeout_s"],
        auto_connect_interval_s=values["connections.auto_connect_interval_s"],
    )
    if connections.high_watermark < connections.low_watermark:
        raise ConfigError(
            f"config: connections.high_watermark ({connections.high_watermark}) must be >= "
            f"connections.low_watermark ({connections.low_watermark})"
        )
    if connections.max < connections.high_watermark:
        raise ConfigError(
            f"config: connections.max ({connections.max}) must be >= "
            f"connections.high_watermark ({connections.high_watermark})"
        )
    if not values["listen"]:
        raise ConfigError("config: listen: at least one listen address is needed")
    return Config(
        listen=values["listen"],
        bootstrap=values["bootstrap"],
        mdns=values["mdns"],
        log_level=values["log.level"],
        log_format=values["log.format"],
        api_tcp=values["api.tcp"],
        connections=connections,
        dht=DiscoverySettings(
            low_watermark=connections.low_watermark,
            high_watermark=connections.high_watermark,
            trim_interval_s=values["connections.trim_interval_s"],
            trim_grace_s=values["connections.trim_grace_s"],
            dial_timeout_s=connections.dial_timeout_s,
            join_jitter_s=values["dht.join_jitter_s"],
            fast_walk_s=values["dht.fast_walk_s"],
            small_table=values["dht.small_table"],
            small_table_walk_s=values["dht.small_table_walk_s"],
            walk_interval_s=values["dht.walk_interval_s"],
            lookup_timeout_s=values["dht.lookup_timeout_s"],
            max_parallel_dials=values["dht.max_parallel_dials"],
        ),
        agents=RuntimeSettings(
            max_agents=values["agents.max"],
            max_active=values["agents.max_active"],
            idle_evict_s=values["agents.idle_evict_s"],
            spawn_rate=values["agents.spawn_rate"],
            spawn_burst=values["agents.spawn_burst"],
            default_budget=values["agents.default_budget"],
            inbox_limit=values["agents.inbox_limit"],
        ),
        limits=GuardSettings(
            peer_msgs_per_s=values["limits.peer_msgs_per_s"],
            peer_burst=values["limits.peer_burst"],
            agent_msgs_per_s=values["limits.agent_msgs_per_s"],
            agent_burst=values["limits.agent_burst"],
            ban_threshold=values["limits.ban_threshold"],
            penalty_half_life_s=values["limits.penalty_half_life_s"],
            ban_s=values["limits.ban_s"],
        ),
        summary=SummarySettings(
            interval_s=values["summary.interval_s"],
            fp_rate=values["summary.fp_rate"],
            neighbour_bytes_per_s=values["summary.neighbour_bytes_per_s"],
            two_hop=values["summary.two_hop"],
            min_gap_s=min(values["summary.min_push_gap_s"], values["summary.interval_s"]),
            max_bytes=values["summary.max_bytes"],
            neighbour_after_s=values["summary.neighbour_after_s"],
            tick_s=min(0.5, values["summary.interval_s"]),
        ),
        telemetry=TelemetrySettings(
            interval_s=values["telemetry.interval_s"],
            fanout=values["telemetry.fanout"],
            epoch_s=values["telemetry.epoch_s"],
            node_ttl_s=values["telemetry.node_ttl_s"],
            max_nodes=values["telemetry.max_nodes"],
            report_entries=values["telemetry.report_entries"],
            anomaly_factor=values["telemetry.anomaly_factor"],
        ),
        trust=TrustSettings(
            policy=values["trust.policy"],
            roots=values["trust.roots"],
            accept_migrations=values["trust.accept_migrations"],
            cache_size=values["trust.cache_size"],
            cache_ttl_s=values["trust.cache_ttl_s"],
            peer_lookups_per_s=values["trust.peer_lookups_per_s"],
        ),
        swarm=SwarmSettings(
            heartbeat_s=values["swarm.heartbeat_s"],
            misses=values["swarm.misses"],
            max_swarms=values["swarm.max_swarms"],
        ),
        psk_file=values["network.psk_file"],
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # JSON strings and arrays of strings are valid TOML basic strings and arrays.
    return json.dumps(value)


def render_config_template() -> str:
    """The commented `config.toml` that `meshd init` writes: every key, at its default."""
    lines = [
        "# meshd configuration: every key is listed, commented out, at its default value.",
        "# Uncomment a line to change it. Precedence: command-line flag > MESHD_* environment",
        "# variable > this file > default. Environment names are MESHD_ + the key in upper",
        "# case with dots as underscores (MESHD_LOG_LEVEL=debug); lists are comma-separated.",
        "",
    ]
    section = ""
    for key in _KEYS:
        table, _, leaf = key.name.rpartition(".")
        if table != section:
            lines += ["", f"[{table}]"]
            section = table
        lines.append(f"# {key.help} [env {env_name(key.name)}]")
        lines.append(f"# {leaf} = {_toml_value(key.default)}")
    return "\n".join(lines) + "\n"
