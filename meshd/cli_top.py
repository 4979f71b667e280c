"""`meshd top`: a live view of one node, refreshed in place, over the control API.

On a terminal it redraws the screen with plain ANSI escapes (so it works over SSH with
any terminal) and reads keys in cbreak mode: `q` quits, as does Ctrl-C; the terminal is
restored on the way out. When stdout is not a terminal it prints one plain block of lines
per refresh instead (`--count` bounds how many).
"""

from __future__ import annotations

import contextlib
import math
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from meshd.api.client import ApiClient
from meshd.cli_client import api_client, data_dir_option, format_duration

__all__ = ["render_top", "top_command"]

_CLEAR = "\x1b[H\x1b[2J"
_HIDE_CURSOR, _SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


def _total(values: Any) -> int:
    if not isinstance(values, dict):
        return 0
    return sum(v for v in values.values() if isinstance(v, int))


def _figures(status: dict[str, Any]) -> dict[str, float]:
    delivery = status.get("delivery", {})
    runtime = status.get("runtime", {})
    return {
        "in": _total(delivery.get("received")),
        "out": _total(delivery.get("sent")),
        "rejected": _total(delivery.get("rejected")),
        "handled": float(runtime.get("handled", 0)),
        "spawned": float(runtime.get("spawned", 0)),
    }


def render_top(
    status: dict[str, Any], previous: dict[str, Any] | None, elapsed: float, width: int = 100
) -> list[str]:
    """The lines of one refresh: node, peers, agents by state, rates, rejects, mesh."""
    now, before = _figures(status), _figures(previous) if previous else None

    def rate(name: str) -> str:
        if before is None or elapsed <= 0:
            return "-"
        return f"{max(0.0, (now[name] - before[name]) / elapsed):.1f}/s"

    agents = status.get("agents", {})
    states = "  ".join(f"{k} {v}" for k, v in agents.items() if k != "total")
    loop = status.get("loop", {})
    lines = [
        f"meshd top  {status.get('peer_id', '?')}  v{status.get('version', '?')}  "
        f"up {format_duration(float(status.get('uptime_s', math.nan)))}   (q to quit)",
        "",
        f"peers      {status.get('peers', '?')} connected, "
        f"{status.get('dht_routing_table', '?')} in the DHT table",
        f"agents     {agents.get('total', 0)}   {states}",
        f"messages   in {rate('in')}  out {rate('out')}  handled {rate('handled')}  "
        f"spawns {rate('spawned')}",
        f"totals     in {now['in']:.0f}  out {now['out']:.0f}  handled {now['handled']:.0f}",
        f"rejects    {rate('rejected')}  total {now['rejected']:.0f}",
    ]
    busiest = status.get("busiest_agents") or []
    if busiest:
        # Rates where the previous refresh saw the same activation, totals otherwise.
        earlier = {a["id"]: a["handled"] for a in (previous or {}).get("busiest_agents") or []}
        lines.append("busiest    handled  agent")
        for agent in busiest:
            handled = agent.get("handled", 0)
            if agent["id"] in earlier and elapsed > 0 and handled >= earlier[agent["id"]]:
                figure = f"{(handled - earlier[agent['id']]) / elapsed:.1f}/s"
            else:
                figure = str(handled)
            lines.append(f"           {figure:>8}  {agent['id']} ({agent.get('kind', '?')})")
    rejected = status.get("delivery", {}).get("rejected", {})
    for reason, count in sorted(rejected.items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"             {reason:<16} {count}")
    if loop:
        lag_ms = 1000 * float(loop.get("loop_lag_max_s") or 0)
        lines.append(f"event loop lag {lag_ms:.1f} ms (worst of the last 5 s)")
    telemetry = status.get("telemetry")
    if telemetry:
        mesh = telemetry.get("mesh", {})
        lines += [
            "",
            f"mesh       ~{mesh.get('agents', 0):.0f} agents on ~{mesh.get('nodes', 0):.0f} "
            f"nodes; {mesh.get('messages_per_s', 0):g} msgs/s, "
            f"{mesh.get('rejects_per_s', 0):g} rejects/s",
        ]
        for anomaly in telemetry.get("anomalies", []):
            who = "this node" if anomaly.get("self") else anomaly.get("node", "?")
            lines.append(
                f"anomaly    {who}: {anomaly.get('metric')} {anomaly.get('rate_per_s')}/s "
                f"(mesh mean {anomaly.get('mesh_mean_per_s')}/s)"
            )
    return [line[:width] for line in lines]


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """stdin in cbreak mode (single keys, no echo) while the view runs, if it is a terminal."""
    if not sys.stdin.isatty():
        yield None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield sys.stdin
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(stdin: Any, timeout: float) -> bool:
    """Wait up to `timeout` s for a key; True if it was q (or Q)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if stdin is None:
            time.sleep(left)
            return False
        ready, _, _ = select.select([stdin], [], [], left)
        if ready and stdin.read(1) in ("q", "Q"):
            return True


def _run(client: ApiClient, interval: float, count: int | None) -> None:
    terminal = sys.stdout.isatty()
    previous: dict[str, Any] | None = None
    last = time.monotonic()
    shown = 0
    with _keys() as stdin:
        if terminal:
            sys.stdout.write(_HIDE_CURSOR)
        try:
            while count is None or shown < count:
                status = client.get("/v1/status")
                now = time.monotonic()
                width = shutil.get_terminal_size().columns if terminal else 200
                lines = render_top(status, previous, now - last, width)
                previous, last = status, now
                if terminal:
                    sys.stdout.write(_CLEAR + "\r\n".join(lines) + "\r\n")
                else:
                    sys.stdout.write("\n".join(lines) + "\n\n")
                sys.stdout.flush()
                shown += 1
                if (count is None or shown < count) and _wait_for_quit(stdin, interval):
                    return
        except KeyboardInterrupt:
            return
        finally:
            if terminal:
                sys.stdout.write(_SHOW_CURSOR)
                sys.stdout.flush()


@click.command("top")
@click.option(
    "--interval",
    type=click.FloatRange(0.1, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after N refreshes.")
@data_dir_option
def top_command(data_dir: Path | None, interval: float, count: int | None) -> None:
    """A live view of this node: peers, agents by state, message rates, rejects (q quits)."""
    with api_client(data_dir) as client:
        _run(client, interval, count)
