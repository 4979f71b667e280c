"""Turn a run's `Results` into report.json, PNG plots and a short text summary.

Figures: delivery ratio (ACK'd at send time, by mode), latency percentiles (send to ACK;
requests: to the reply), delivery over time in one-second bins with the fault schedule,
at-least-once messages counted on arrival (each counter holds exactly the accepted ones),
route paths, DHT lookups per message, summary bytes (per agent) and convergence.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simnet.driver import OK_OUTCOMES, Results, Sample

__all__ = ["build_report", "summary_text", "write_plots", "write_report"]

NOT_ATTEMPTED = ("down", "no_target")


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": round(ordered[-1] * 1000, 3),
        "mean": round(statistics.fmean(ordered) * 1000, 3),
    }


def _ratio(ok: int, total: int) -> float | None:
    return round(ok / total, 4) if total else None


def _sum_stats(statuses: dict[int, dict[str, Any]]) -> dict[str, Any]:
    paths: Counter[str] = Counter()
    dht_lookups = 0
    summary_out = summary_in = 0
    handled = 0
    for status in statuses.values():
        router = status.get("router") or {}
        paths.update({k: int(v) for k, v in (router.get("paths") or {}).items()})
        dht_lookups += int(router.get("dht_lookups") or 0)
        summaries = status.get("summaries") or {}
        summary_out += int(summaries.get("bytes_out") or 0)
        summary_in += int(summaries.get("bytes_in") or 0)
        handled += int((status.get("runtime") or {}).get("handled") or 0)
    return {
        "route_paths": dict(sorted(paths.items())),
        "dht_lookups": dht_lookups,
        "summary_bytes_out": summary_out,
        "summary_bytes_in": summary_in,
        "handled": handled,
    }


def _timeline(samples: list[Sample], duration: float) -> list[dict[str, Any]]:
    bins = max(1, int(duration + 0.999))
    rows: list[dict[str, Any]] = [
        {"t": i, "sent": 0, "ok": 0, "reliable_sent": 0, "reliable_ok": 0} for i in range(bins)
    ]
    for s in samples:
        # Not attempted: the sender was down, or the target's node had not joined yet.
        if s.kind not in ("direct", "request") or s.outcome in NOT_ATTEMPTED:
            continue
        row = rows[min(bins - 1, int(s.at_s))]
        ok = s.outcome in OK_OUTCOMES
        if s.reliable:
            row["reliable_sent"] += 1
            # Acknowledged delivery at send time; "queued" ones are checked at the end.
            row["reliable_ok"] += int(s.outcome == "delivered")
        else:
            row["sent"] += 1
            row["ok"] += int(ok)
    for row in rows:
        row["ratio"] = _ratio(row["ok"], row["sent"])
        row["reliable_ratio"] = _ratio(row["reliable_ok"], row["reliable_sent"])
    return rows


def build_report(
    results: Results,
    *,
    scenario: Any,
    seed: int,
    plan_digest: str,
    clock: str,
    real_s: float,
    sim_s: float,
    events: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report document (what report.json holds)."""
    samples = results.samples
    by_kind: dict[str, dict[str, Any]] = {}
    picks: tuple[tuple[str, Callable[[Sample], bool]], ...] = (
        ("direct_at_most_once", lambda s: s.kind == "direct" and not s.reliable),
        ("direct_at_least_once", lambda s: s.kind == "direct" and s.reliable),
        ("request", lambda s: s.kind == "request"),
        ("publish", lambda s: s.kind == "publish"),
    )
    for name, pick in picks:
        chosen = [s for s in samples if pick(s)]
        outcomes = Counter(s.outcome for s in chosen)
        ok = sum(v for k, v in outcomes.items() if k in (*OK_OUTCOMES, "published"))
        sent = sum(v for k, v in outcomes.items() if k not in NOT_ATTEMPTED)
        by_kind[name] = {
            "planned": len(chosen),
            "sent": sent,
            "ok": ok,
            "ratio": _ratio(ok, sent),
            "outcomes": dict(sorted(outcomes.items())),
            "latency_ms": _percentiles([s.latency_s for s in chosen if s.latency_s is not None]),
        }
    everything = [c for c in results.counts.values() if c["reliable"]]
    # Targets whose node is down at the end cannot be counted: reported, not guessed.
    reliable = [c for c in everything if c.get("count") is not None]
    unverified = sum(c["accepted"] for c in everything if c.get("count") is None)
    accepted = sum(c["accepted"] for c in reliable)
    arrived = sum(min(c.get("count") or 0, c["accepted"] + c["uncertain"]) for c in reliable)
    missing = sum(max(0, c["accepted"] - (c.get("count") or 0)) for c in reliable)
    duplicates = sum(
        max(0, (c.get("count") or 0) - c["accepted"] - c["uncertain"]) for c in reliable
    )
    plain = [c for c in results.counts.values() if not c["reliable"]]
    totals = _sum_stats(results.statuses)
    messages = by_kind["direct_at_most_once"]["sent"] + by_kind["direct_at_least_once"]["sent"]
    messages += by_kind["request"]["sent"]
    paths = totals["route_paths"]
    routed = sum(paths.values())
    return {
        "scenario": scenario.name,
        "mode": results.mode,
        "seed": seed,
        "plan_digest": plan_digest,
        "clock": clock,
        "nodes": scenario.nodes,
        "agents": results.agents_total,
        "duration_s": scenario.duration_s,
        "real_time_s": round(real_s, 3),
        "simulated_s": round(sim_s, 3),
        "real_s_per_simulated_s": round(real_s / sim_s, 4) if sim_s else None,
        "settle_s": round(results.settle_s, 3),
        "delivery": by_kind,
        "at_least_once": {
            "targets": len(reliable),
            "accepted": accepted,
            "arrived": arrived,
            "missing": missing,
            "duplicates": duplicates,
            "all_delivered": missing == 0,
            "unverified": unverified,
            "drained_after_s": (
                None if results.drained_after_s is None else round(results.drained_after_s, 3)
            ),
        },
        "at_most_once_arrived": sum(c.get("count") or 0 for c in plain),
        "topic": {"expected": results.topic_expected, "received": results.topic_received},
        "route_paths": paths,
        "dht_lookups_per_message": round(totals["dht_lookups"] / messages, 4) if messages else None,
        "no_dht_ratio": (round(1 - paths.get("dht", 0) / routed, 4) if routed else None),
        "summary_bytes": {
            "out": totals["summary_bytes_out"],
            "in": totals["summary_bytes_in"],
            "per_agent": (
                round(totals["summary_bytes_out"] / results.agents_total, 2)
                if results.agents_total
                else None
            ),
        },
        # Every byte the memory transport carried (Noise, yamux, DHT, gossip, summaries).
        "transport": results.transport,
        "transport_bytes_per_message": (
            round(results.transport["bytes"] / messages, 1)
            if messages and results.transport.get("bytes")
            else None
        ),
        "faults": results.faults,
        "notes": results.notes,
        "swarm": results.swarm,
        "timeline": _timeline(samples, scenario.duration_s),
        "counts": results.counts,
        "events": events if events is not None else [],
    }


def write_report(report: dict[str, Any], out: Path) -> Path:
    """Write report.json under `out`; return its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def write_plots(report: dict[str, Any], results: Results, out: Path) -> list[Path]:
    """latency.png, delivery.png, routes.png, summaries.png under `out`."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    title = f"{report['scenario']} ({report['mode']}, seed {report['seed']})"

    fig, ax = plt.subplots(figsize=(7, 4))
    picks: tuple[tuple[str, Callable[[Sample], bool]], ...] = (
        ("at-most-once", lambda s: s.kind == "direct" and not s.reliable),
        ("at-least-once", lambda s: s.kind == "direct" and s.reliable),
        ("request (round trip)", lambda s: s.kind == "request"),
    )
    for label, pick in picks:
        values = [s.latency_s * 1000 for s in results.samples if pick(s) and s.latency_s]
        if values:
            ax.hist(values, bins=40, alpha=0.6, label=f"{label} (n={len(values)})")
    ax.set_xlabel("latency (ms): send to ACK, or to the reply")
    ax.set_ylabel("messages")
    ax.set_title(f"Latency: {title}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    written.append(_save(fig, out / "latency.png", plt))

    fig, ax = plt.subplots(figsize=(8, 4))
    rows = report["timeline"]
    xs = [r["t"] + 0.5 for r in rows]
    ax.plot(xs, [r["ratio"] for r in rows], marker=".", label="at-most-once + requests")
    ax.plot(xs, [r["reliable_ratio"] for r in rows], marker=".", label="at-least-once (ACK)")
    _draw_faults(ax, report["faults"], report["duration_s"])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(0, report["duration_s"])
    ax.set_xlabel("scenario time (s)")
    ax.set_ylabel("delivered at send time")
    ax.set_title(f"Delivery over time: {title}")
    ax.legend(loc="lower left")
    written.append(_save(fig, out / "delivery.png", plt))

    fig, ax = plt.subplots(figsize=(6, 4))
    paths = report["route_paths"] or {"(none)": 0}
    ax.bar(list(paths), list(paths.values()))
    ax.set_ylabel("messages")
    ax.set_title(f"Route paths: {title}")
    written.append(_save(fig, out / "routes.png", plt))

    fig, ax = plt.subplots(figsize=(6, 4))
    nodes = sorted(results.statuses)
    sent = [int((results.statuses[n].get("summaries") or {}).get("bytes_out") or 0) for n in nodes]
    ax.bar([str(n) for n in nodes], sent)
    ax.set_xlabel("node")
    ax.set_ylabel("summary bytes sent")
    ax.set_title(f"Summary traffic: {title}")
    written.append(_save(fig, out / "summaries.png", plt))
    return written


def _draw_faults(ax: Any, faults: list[dict[str, Any]], duration: float) -> None:
    """Partitions as shaded spans, other faults as labelled vertical lines."""
    opened: float | None = None
    for fault in faults:
        kind, at = fault["kind"], fault["at_s"]
        if kind == "partition":
            opened = at
        elif kind == "heal" and opened is not None:
            ax.axvspan(opened, at, color="red", alpha=0.15, label="partition")
            opened = None
        else:
            ax.axvline(at, color="grey", linestyle="--", linewidth=0.8)
            nodes = ",".join(str(n) for n in fault.get("nodes", ()))
            ax.text(at, 1.02, f"{kind} {nodes}".strip(), fontsize=7, rotation=90)
    if opened is not None:
        ax.axvspan(opened, duration, color="red", alpha=0.15, label="partition")


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def summary_text(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    d = report["delivery"]
    alo = report["at_least_once"]

    def line(name: str, key: str) -> str:
        entry = d[key]
        if not entry["sent"]:
            return f"  {name:<22} none"
        lat = entry["latency_ms"]
        ratio = entry["ratio"] * 100 if entry["ratio"] is not None else 0.0
        return (
            f"  {name:<22} {entry['ok']}/{entry['sent']} ({ratio:.1f}%)"
            f"  p50 {lat['p50']} ms  p99 {lat['p99']} ms"
        )

    lines = [
        f"simnet {report['scenario']}: {report['mode']}, seed {report['seed']}, "
        f"clock {report['clock']}, plan {report['plan_digest']}",
        f"  {report['nodes']} nodes, {report['agents']} agents, "
        f"{report['duration_s']} s simulated in {report['real_time_s']} s real "
        f"({report['real_s_per_simulated_s']} real s per simulated s)",
        line("at-most-once", "direct_at_most_once"),
        line("at-least-once (ACK)", "direct_at_least_once"),
        line("requests", "request"),
        f"  at-least-once arrived {alo['arrived']}/{alo['accepted']} "
        f"(missing {alo['missing']}, duplicates {alo['duplicates']}, "
        f"all delivered: {'yes' if alo['all_delivered'] else 'NO'}; "
        f"{alo['unverified']} to nodes down at the end not counted)",
        f"  topic messages received {report['topic']['received']}/{report['topic']['expected']}",
        f"  route paths {report['route_paths']}, "
        f"DHT lookups per message {report['dht_lookups_per_message']}",
        f"  summary bytes out {report['summary_bytes']['out']} "
        f"({report['summary_bytes']['per_agent']} per agent)",
    ]
    swarm = report.get("swarm")
    if swarm:
        lines.append(
            f"  swarm: {swarm['swarms']} swarms, {swarm['agents']} agents; root counted all "
            f"after {swarm['root_counts_all_s']} s; {swarm['task_runs']} runs of "
            f"{swarm['tasks']} tasks in {swarm['completion_s']} s "
            f"({swarm['tasks_run_twice']} run twice); {swarm['messages_per_agent']} swarm "
            f"messages per agent"
        )
    skipped = [f for f in report["faults"] if f.get("skipped")]
    for fault in skipped:
        lines.append(f"  skipped {fault['kind']} at {fault['at_s']} s: {fault['skipped']}")
    lines.extend(f"  note: {note}" for note in report.get("notes", []))
    return "\n".join(lines)
