"""Scenario files (TOML) and the plan they expand to: every event of a run, from one seed.

A scenario names the nodes, the agents each node hosts, the workload (direct messages,
requests, topic messages, rates, at-most-once and at-least-once) and the fault schedule
(partition/heal, crash/restart, join/leave, link changes). `plan(scenario, seed)` draws
every choice from one `random.Random(seed)`, so the same seed gives the same events;
the format is documented in docs/simnet.md. Any mistake in the file is a `ScenarioError`
naming the key, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import random
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AgentGroup",
    "Event",
    "Fault",
    "LinkModel",
    "Scenario",
    "ScenarioError",
    "SwarmPlan",
    "Workload",
    "load_scenario",
    "parse_scenario",
    "plan",
]

FAULT_KINDS = ("partition", "heal", "crash", "restart", "join", "leave", "link")
MAX_NODES = 1000
MAX_EVENTS = 2_000_000


class ScenarioError(Exception):
    """The scenario file is unreadable or invalid; the message names the key."""


@dataclass(frozen=True, slots=True)
class AgentGroup:
    """`count` agents of `kind` with `caps` on each node (or on the listed nodes)."""

    kind: str
    count: int
    caps: tuple[str, ...] = ()
    nodes: tuple[int, ...] | None = None  # None: every node


@dataclass(frozen=True, slots=True)
class Workload:
    """What the nodes' operators send while the scenario runs."""

    direct_rate: float = 0.0  # messages/s, mesh-wide, to `counter` agents
    reliable_fraction: float = 0.0  # share of direct messages sent at-least-once
    request_rate: float = 0.0  # requests/s to `echo` agents (reply awaited)
    topic_rate: float = 0.0  # topic publications/s
    topic: str = "simnet"
    topic_subscribers: int = 0  # agents per node subscribed to `topic`
    start_s: float = 0.0
    stop_s: float | None = None  # default: the scenario's duration
    send_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class LinkModel:
    """Link defaults and regions: latency, jitter, loss, bandwidth."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    bandwidth_kbps: float | None = None
    regions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    region_latency_ms: Mapping[tuple[str, str], float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Fault:
    """One scheduled fault at `at_s` seconds."""

    at_s: float
    kind: str
    nodes: tuple[int, ...] = ()
    groups: tuple[tuple[int, ...], ...] = ()
    latency_ms: float | None = None
    jitter_ms: float | None = None
    loss: float | None = None


@dataclass(frozen=True, slots=True)
class SwarmPlan:
    """A hierarchical swarm that runs after the workload (`[swarm]`; in-process mode only).

    Leaf swarm `leafL` lives on `nodes_per_leaf` consecutive nodes, `workers_per_node` worker
    agents on each; every `leaves_per_mid` leaves have a parent `midM`, whose parent is
    `org`. Each worker contributes {"work": 1}; each leaf's board gets `tasks_per_leaf` tasks
    that its workers finish.
    """

    leaves: int
    nodes_per_leaf: int = 2
    workers_per_node: int = 4
    leaves_per_mid: int = 5
    tasks_per_leaf: int = 8
    timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """A parsed, validated scenario file."""

    name: str
    nodes: int
    duration_s: float
    seed: int
    agents: tuple[AgentGroup, ...]
    workload: Workload
    links: LinkModel
    faults: tuple[Fault, ...]
    warmup_s: float = 3.0
    drain_s: float = 15.0
    virtual_time: bool = False
    late_nodes: tuple[int, ...] = ()  # nodes that start only at their `join` fault
    node_config: Mapping[str, Any] = field(default_factory=dict)
    swarm: SwarmPlan | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One planned event: a send, a request, a publication or a fault."""

    at_s: float
    kind: str  # direct | request | publish | <fault kind>
    node: int = -1  # the sending node, or the node a fault hits
    target: tuple[int, int] | None = None  # (node, agent slot) of the recipient
    reliable: bool = False
    fault: Fault | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for report.json and for comparing plans)."""
        out: dict[str, Any] = {"at_s": round(self.at_s, 6), "kind": self.kind}
        if self.node >= 0:
            out["node"] = self.node
        if self.target is not None:
            out["target"] = list(self.target)
            out["reliable"] = self.reliable
        if self.fault is not None:
            out["fault"] = {k: v for k, v in asdict(self.fault).items() if v not in (None, ())}
        return out


# -- parsing ------------------------------------------------------------------------------


class _Table:
    """Typed reads from one TOML table, with the key path in every error."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(f"{where}: expected a table")
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def _get(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def number(self, key: str, default: float | None, low: float, high: float) -> Any:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(f"{self.where}.{key}: expected a number, got {value!r}")
        if not low <= value <= high:
            raise ScenarioError(f"{self.where}.{key}: {value} is outside [{low}, {high}]")
        return float(value)

    def integer(self, key: str, default: int | None, low: int, high: int) -> Any:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{self.where}.{key}: expected an integer, got {value!r}")
        if not low <= value <= high:
            raise ScenarioError(f"{self.where}.{key}: {value} is outside [{low}, {high}]")
        return value

    def text(self, key: str, default: str) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise ScenarioError(f"{self.where}.{key}: expected a non-empty string")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ScenarioError(f"{self.where}.{key}: expected true or false")
        return value

    def nodes(self, key: str, count: int) -> tuple[int, ...] | None:
        value = self._get(key)
        if value is None:
            return None
        return _node_list(value, f"{self.where}.{key}", count)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ScenarioError(f"{self.where}.{key}: expected a list of strings")
        return tuple(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ScenarioError(f"{self.where}: unknown key(s) {', '.join(unknown)}")


def _node_list(value: object, where: str, count: int) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ScenarioError(f"{where}: expected a list of node numbers")
    for node in value:
        if not 0 <= node < count:
            raise ScenarioError(f"{where}: node {node} does not exist (nodes are 0..{count - 1})")
    return tuple(value)


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: invalid TOML: {exc}") from exc
    return parse_scenario(data, default_name=path.stem)


def parse_scenario(data: Mapping[str, Any], *, default_name: str = "scenario") -> Scenario:
    """Validate a scenario given as a TOML document's dict."""
    top = _Table(dict(data), "scenario")
    name = top.text("name", default_name)
    nodes = top.integer("nodes", None, 1, MAX_NODES)
    if nodes is None:
        raise ScenarioError("scenario.nodes: required (how many nodes)")
    duration = top.number("duration_s", None, 0.1, 86400)
    if duration is None:
        raise ScenarioError("scenario.duration_s: required (seconds of workload)")
    seed = top.integer("seed", 1, 0, 2**63 - 1)
    warmup = top.number("warmup_s", 3.0, 0, 3600)
    drain = top.number("drain_s", 15.0, 0, 3600)
    virtual_time = top.flag("virtual_time", False)
    late = top.nodes("late_nodes", nodes) or ()
    if 0 in late:
        raise ScenarioError("scenario.late_nodes: node 0 is the bootstrap node; it starts first")
    agents = tuple(_agents(top._get("agents"), nodes))
    workload = _workload(top._get("workload"), duration)
    links = _links(top._get("links"), nodes)
    faults = tuple(_faults(top._get("faults"), nodes, duration))
    swarm = _swarm(top._get("swarm"), nodes)
    node_config = top._get("node_config") or {}
    if not isinstance(node_config, dict):
        raise ScenarioError("scenario.node_config: expected a table of meshd config keys")
    top.done()
    for node in late:
        if not any(f.kind == "join" and node in f.nodes for f in faults):
            raise ScenarioError(f"scenario.late_nodes: node {node} has no join fault")
    return Scenario(
        name=name,
        nodes=nodes,
        duration_s=duration,
        seed=seed,
        agents=agents,
        workload=workload,
        links=links,
        faults=faults,
        warmup_s=warmup,
        drain_s=drain,
        virtual_time=virtual_time,
        late_nodes=late,
        node_config=_flatten(node_config),
        swarm=swarm,
    )


def _swarm(value: object, nodes: int) -> SwarmPlan | None:
    if value is None:
        return None
    table = _Table(value, "swarm")
    per_leaf = table.integer("nodes_per_leaf", 2, 1, nodes)
    leaves = table.integer("leaves", max(1, nodes // per_leaf), 1, 10_000)
    plan = SwarmPlan(
        leaves=leaves,
        nodes_per_leaf=per_leaf,
        workers_per_node=table.integer("workers_per_node", 4, 1, 1_000),
        leaves_per_mid=table.integer("leaves_per_mid", 5, 1, 1_000),
        tasks_per_leaf=table.integer("tasks_per_leaf", 8, 0, 1_000),
        timeout_s=table.number("timeout_s", 600.0, 1, 86_400),
    )
    table.done()
    if leaves * per_leaf > nodes:
        raise ScenarioError(
            f"swarm: {leaves} leaves of {per_leaf} nodes need {leaves * per_leaf} nodes, "
            f"the scenario has {nodes}"
        )
    return plan


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _agents(value: object, nodes: int) -> list[AgentGroup]:
    if value is None:
        return [AgentGroup("counter", 2), AgentGroup("echo", 1)]
    if not isinstance(value, list):
        raise ScenarioError("scenario.agents: expected [[agents]] tables")
    groups = []
    for index, item in enumerate(value):
        table = _Table(item, f"agents[{index}]")
        kind = table.text("kind", "")
        if not kind:
            raise ScenarioError(f"agents[{index}].kind: required")
        count = table.integer("count", 1, 1, 1_000_000)
        groups.append(AgentGroup(kind, count, table.strings("caps"), table.nodes("nodes", nodes)))
        table.done()
    return groups


def _workload(value: object, duration: float) -> Workload:
    table = _Table(value or {}, "workload")
    stop = table.number("stop_s", None, 0, duration)
    workload = Workload(
        direct_rate=table.number("direct_rate", 0.0, 0, 100_000),
        reliable_fraction=table.number("reliable_fraction", 0.0, 0, 1),
        request_rate=table.number("request_rate", 0.0, 0, 100_000),
        topic_rate=table.number("topic_rate", 0.0, 0, 1_000),
        topic=table.text("topic", "simnet"),
        topic_subscribers=table.integer("topic_subscribers", 0, 0, 1000),
        start_s=table.number("start_s", 0.0, 0, duration),
        stop_s=stop,
        send_timeout_s=table.number("send_timeout_s", 5.0, 0.1, 600),
    )
    table.done()
    return workload


def _links(value: object, nodes: int) -> LinkModel:
    table = _Table(value or {}, "links")
    regions_raw = table._get("regions") or {}
    regions: dict[str, tuple[int, ...]] = {}
    if not isinstance(regions_raw, dict):
        raise ScenarioError("links.regions: expected a table region = [nodes]")
    for region, members in regions_raw.items():
        regions[region] = _node_list(members, f"links.regions.{region}", nodes)
    between_raw = table._get("region_latency_ms") or {}
    if not isinstance(between_raw, dict):
        raise ScenarioError('links.region_latency_ms: expected a table "a-b" = ms')
    between: dict[tuple[str, str], float] = {}
    for pair, ms in between_raw.items():
        a, _, b = pair.partition("-")
        if a not in regions or b not in regions:
            raise ScenarioError(f'links.region_latency_ms.{pair}: use "<region>-<region>"')
        if isinstance(ms, bool) or not isinstance(ms, int | float) or ms < 0:
            raise ScenarioError(f"links.region_latency_ms.{pair}: expected milliseconds >= 0")
        between[(a, b)] = float(ms)
    bandwidth = table.number("bandwidth_kbps", None, 1, 10_000_000)
    model = LinkModel(
        latency_ms=table.number("latency_ms", 0.0, 0, 60_000),
        jitter_ms=table.number("jitter_ms", 0.0, 0, 60_000),
        loss=table.number("loss", 0.0, 0, 0.9),
        bandwidth_kbps=bandwidth,
        regions=regions,
        region_latency_ms=between,
    )
    table.done()
    return model


def _faults(value: object, nodes: int, duration: float) -> list[Fault]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ScenarioError("scenario.faults: expected [[faults]] tables")
    faults = []
    for index, item in enumerate(value):
        where = f"faults[{index}]"
        table = _Table(item, where)
        at = table.number("at_s", None, 0, duration)
        if at is None:
            raise ScenarioError(f"{where}.at_s: required")
        kind = table.text("kind", "")
        if kind not in FAULT_KINDS:
            raise ScenarioError(f"{where}.kind: one of {', '.join(FAULT_KINDS)}")
        members = table.nodes("nodes", nodes) or ()
        groups_raw = table._get("groups")
        groups: tuple[tuple[int, ...], ...] = ()
        if groups_raw is not None:
            if not isinstance(groups_raw, list) or len(groups_raw) < 2:
                raise ScenarioError(f"{where}.groups: expected at least two lists of nodes")
            groups = tuple(
                _node_list(g, f"{where}.groups[{i}]", nodes) for i, g in enumerate(groups_raw)
            )
        if kind == "partition" and not groups:
            raise ScenarioError(f"{where}: a partition needs groups = [[...], [...]]")
        if kind in ("crash", "restart", "join", "leave") and not members:
            raise ScenarioError(f"{where}: {kind} needs nodes = [...]")
        if kind in ("crash", "leave") and 0 in members:
            raise ScenarioError(f"{where}: node 0 is the bootstrap node; it stays up")
        fault = Fault(
            at_s=at,
            kind=kind,
            nodes=members,
            groups=groups,
            latency_ms=table.number("latency_ms", None, 0, 60_000),
            jitter_ms=table.number("jitter_ms", None, 0, 60_000),
            loss=table.number("loss", None, 0, 0.9),
        )
        table.done()
        faults.append(fault)
    return sorted(faults, key=lambda f: f.at_s)


# -- the plan -----------------------------------------------------------------------------


def agent_slots(scenario: Scenario, node: int) -> list[tuple[str, tuple[str, ...]]]:
    """The (kind, caps) of each agent slot on `node`, in spawn order."""
    slots: list[tuple[str, tuple[str, ...]]] = []
    for group in scenario.agents:
        if group.nodes is None or node in group.nodes:
            slots.extend([(group.kind, group.caps)] * group.count)
    return slots


def _arrivals(rng: random.Random, rate: float, start: float, stop: float) -> list[float]:
    """Poisson arrival times at `rate` per second in [start, stop)."""
    times: list[float] = []
    if rate <= 0:
        return times
    t = start + rng.expovariate(rate)
    while t < stop:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def plan(scenario: Scenario, seed: int) -> list[Event]:
    """Every event of a run, in time order; the same seed gives the same list."""
    rng = random.Random(seed)
    w = scenario.workload
    stop = w.stop_s if w.stop_s is not None else scenario.duration_s
    counters: list[tuple[int, int]] = []
    echoes: list[tuple[int, int]] = []
    for node in range(scenario.nodes):
        for slot, (kind, _) in enumerate(agent_slots(scenario, node)):
            if kind == "counter":
                counters.append((node, slot))
            elif kind == "echo":
                echoes.append((node, slot))
    # Each counter gets one delivery mode, so its final count checks that mode alone.
    rng.shuffle(counters)
    split = round(len(counters) * w.reliable_fraction)
    reliable_targets, plain_targets = counters[:split], counters[split:]
    if w.direct_rate > 0 and not counters:
        raise ScenarioError("workload.direct_rate needs `counter` agents")
    if w.reliable_fraction > 0 and w.direct_rate > 0 and not reliable_targets:
        raise ScenarioError("workload.reliable_fraction: too few counters for any reliable one")
    if w.request_rate > 0 and not echoes:
        raise ScenarioError("workload.request_rate needs `echo` agents")
    events: list[Event] = []
    for t in _arrivals(rng, w.direct_rate, w.start_s, stop):
        reliable = bool(reliable_targets) and (
            not plain_targets or rng.random() < w.reliable_fraction
        )
        target = rng.choice(reliable_targets if reliable else plain_targets)
        events.append(Event(t, "direct", rng.randrange(scenario.nodes), target, reliable))
    for t in _arrivals(rng, w.request_rate, w.start_s, stop):
        events.append(Event(t, "request", rng.randrange(scenario.nodes), rng.choice(echoes)))
    for t in _arrivals(rng, w.topic_rate, w.start_s, stop):
        events.append(Event(t, "publish", rng.randrange(scenario.nodes)))
    for fault in scenario.faults:
        node = fault.nodes[0] if fault.nodes else -1
        events.append(Event(fault.at_s, fault.kind, node, fault=fault))
    if len(events) > MAX_EVENTS:
        raise ScenarioError(f"the workload makes {len(events)} events; at most {MAX_EVENTS}")
    # Faults first at equal times: a send at the instant of a crash finds the node down.
    events.sort(key=lambda e: (e.at_s, e.fault is None))
    return events


def plan_digest(events: list[Event]) -> str:
    """A short hash of the plan: equal digests, equal events."""
    text = json.dumps([e.to_json() for e in events], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
