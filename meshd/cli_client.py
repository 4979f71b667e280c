"""Commands that talk to a running daemon (`meshd id`, `peers`, `status`) and their shared parts.

A new client command is: `@click.command`, `@api_options`, then in the body
`emit(api_get(data_dir, "/v1/..."), as_json, formatter)`, or `with api_client(data_dir) as c:`
for several calls. The helpers turn "no daemon" and API errors into one line on stderr and the
exit codes below.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from meshd.api.client import ApiClient, ApiError, DaemonNotRunning
from meshd.paths import resolve_data_dir

__all__ = [
    "EXIT_API_ERROR",
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_NO_DAEMON",
    "EXIT_OK",
    "EXIT_USAGE",
    "ApiFailedError",
    "CliError",
    "NoDaemonError",
    "api_client",
    "api_get",
    "api_options",
    "data_dir_option",
    "emit",
    "format_duration",
    "format_fields",
    "format_health",
    "format_mesh",
    "format_table",
    "id_command",
    "json_option",
    "peers_command",
    "refused",
    "status_command",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3
EXIT_API_ERROR = 4

# What every `meshd` client command's exit status means; scripts may rely on these.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_ERROR: "usage or other error",
    EXIT_USAGE: "command line usage error (reported by click)",
    EXIT_NO_DAEMON: "no daemon is running for the data directory",
    EXIT_API_ERROR: "the daemon answered with an error, or the exchange with it failed",
}

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """A failure shown as one line `meshd: <reason>` on stderr, exiting with `exit_code`."""

    exit_code = EXIT_ERROR

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the reason on stderr in the house format."""
        click.echo(f"meshd: {self.format_message()}", err=True, file=file)


class NoDaemonError(CliError):
    """No daemon runs for the data directory."""

    exit_code = EXIT_NO_DAEMON


class ApiFailedError(CliError):
    """The daemon answered with an error, or the exchange with it failed."""

    exit_code = EXIT_API_ERROR


# --- options ---------------------------------------------------------------------------------


def data_dir_option(func: F) -> F:
    """The `--data-dir` option (env MESHD_HOME), passed as `data_dir: Path | None`."""
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="MESHD_HOME",
        default=None,
        help="Node data directory [env MESHD_HOME; default: the user data directory].",
    )(func)


def json_option(func: F) -> F:
    """The `--json` flag, passed as `as_json: bool`."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document instead of text."
    )(func)


def inbox_wait_option(func: F) -> F:
    """Add `--wait SECONDS`: how long each long-poll for an inbox waits (attach, subscribe)."""
    return click.option(
        "--wait",
        type=click.FloatRange(0, 300),
        default=30.0,
        show_default=True,
        metavar="SECONDS",
        help="How long each request waits for a message.",
    )(func)


def api_options(func: F) -> F:
    """The options every command talking to the daemon takes: `--data-dir` and `--json`."""
    return data_dir_option(json_option(func))


# --- talking to the daemon -------------------------------------------------------------------


@contextmanager
def api_client(data_dir: Path | None, *, timeout: float = 10.0) -> Iterator[ApiClient]:
    """A client of the daemon for `data_dir`, its failures turned into `CliError`s."""
    directory = resolve_data_dir(data_dir)
    try:
        with ApiClient(directory, timeout=timeout) as client:
            yield client
    except DaemonNotRunning as exc:
        raise NoDaemonError(
            f"no daemon running for {directory}; start it with `meshd run`"
        ) from exc
    except ApiError as exc:
        if exc.status:
            message = f"the daemon refused: {exc.message} (HTTP {exc.status} {exc.code})"
        else:
            message = exc.message
        raise ApiFailedError(message) from exc


def api_get(data_dir: Path | None, path: str, params: dict[str, Any] | None = None) -> Any:
    """GET `path` from the daemon for `data_dir`, failures turned into `CliError`s."""
    with api_client(data_dir) as client:
        return client.get(path, params=params)


def emit(data: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    """Print `data` as exactly one JSON document, or as the text `human(data)`."""
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        click.echo(human(data))


# --- formatting ------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """A short human duration: 42s, 3m07s, 2h05m, 4d03h."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_text(item) for item in value) or "-"
    return str(value)


def format_fields(fields: Iterable[tuple[str, Any]]) -> str:
    """`key  value` lines with the values aligned; list values continue on indented lines."""
    pairs = list(fields)
    width = max((len(key) for key, _ in pairs), default=0)
    lines: list[str] = []
    for key, value in pairs:
        items = value if isinstance(value, list) and value else [value]
        lines.append(f"{key:<{width}}  {_text(items[0])}")
        lines.extend(f"{'':<{width}}  {_text(item)}" for item in items[1:])
    return "\n".join(lines)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain text table with a header line and left-aligned columns."""
    cells = [list(headers), *([_text(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _format_id(data: dict[str, Any]) -> str:
    return format_fields(
        [
            ("peer id", data.get("peer_id", "?")),
            ("version", data.get("version", "?")),
            ("addresses", list(data.get("addrs", []))),
        ]
    )


def _format_peers(peers: list[dict[str, Any]]) -> str:
    if not peers:
        return "no connected peers"
    rows = []
    for peer in peers:
        addrs = list(peer.get("addrs", []))
        address = addrs[0] if addrs else "-"
        if len(addrs) > 1:
            address += f" (+{len(addrs) - 1} more)"
        connected = format_duration(float(peer.get("connected_for_s", math.nan)))
        rows.append((peer.get("peer_id", "?"), connected, address))
    count = f"{len(peers)} connected peer" + ("s" if len(peers) != 1 else "")
    return format_table(("PEER ID", "CONNECTED", "ADDRESS"), rows) + "\n" + count


# Shown first and in this order; the node's other counters follow alphabetically.
_STATUS_FIRST = ("peer_id", "version", "uptime_s", "peers")


def _format_status(status: dict[str, Any]) -> str:
    fields: list[tuple[str, Any]] = [
        ("peer id", status.get("peer_id", "?")),
        ("version", status.get("version", "?")),
        ("uptime", format_duration(float(status.get("uptime_s", math.nan)))),
        ("peers", status.get("peers", "?")),
    ]
    rest = {key: value for key, value in status.items() if key not in _STATUS_FIRST}
    fields.extend(sorted(_flatten(rest)))
    return format_fields(fields)


def _sum(values: Any) -> int:
    return sum(v for v in values.values() if isinstance(v, int)) if isinstance(values, dict) else 0


def _anomaly_lines(anomalies: list[dict[str, Any]]) -> list[str]:
    return [
        f"{'this node' if a.get('self') else a.get('node', '?')}: {a.get('metric')} "
        f"{a.get('rate_per_s', 0):g}/s vs mesh mean {a.get('mesh_mean_per_s', 0):g}/s"
        for a in anomalies
    ]


def format_health(status: dict[str, Any]) -> str:
    """This node's health in a few lines: peers, agents, traffic, rejects, lag, anomalies."""
    agents = status.get("agents", {})
    delivery = status.get("delivery", {})
    loop = status.get("loop", {})
    telemetry = status.get("telemetry", {})
    own = telemetry.get("self", {})
    states = ", ".join(f"{v} {k}" for k, v in agents.items() if k != "total" and v)
    rejected = delivery.get("rejected", {})
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none"
    fields: list[tuple[str, Any]] = [
        ("peer id", status.get("peer_id", "?")),
        ("version", status.get("version", "?")),
        ("uptime", format_duration(float(status.get("uptime_s", math.nan)))),
        ("peers", f"{status.get('peers', '?')} (DHT table {status.get('dht_routing_table', '?')})"),
        ("agents", f"{agents.get('total', 0)} ({states or 'none'})"),
        (
            "messages",
            f"{_sum(delivery.get('received'))} in, {_sum(delivery.get('sent'))} out"
            + (
                f" ({own.get('msgs_in', 0):g}/s in, {own.get('msgs_out', 0):g}/s out)"
                if own
                else ""
            ),
        ),
        ("rejected", reasons),
    ]
    if loop:
        fields.append(
            (
                "event loop",
                f"lag {1000 * float(loop.get('loop_lag_max_s') or 0):.1f} ms (worst of 5 s)",
            )
        )
    anomalies = telemetry.get("anomalies", [])
    if telemetry:
        fields.append(("anomalies", _anomaly_lines(anomalies) or "none"))
    return format_fields(fields)


def format_mesh(telemetry: dict[str, Any]) -> str:
    """Mesh-wide estimates from telemetry gossip, with their error bounds."""
    mesh = telemetry.get("mesh", {})
    low, high = (mesh.get("agents_bound") or [math.nan, math.nan])[:2]
    agents_err = 100 * float(mesh.get("agents_error", math.nan))
    nodes_err = 100 * float(mesh.get("nodes_error", math.nan))
    fields: list[tuple[str, Any]] = [
        (
            "agents",
            f"~{mesh.get('agents', 0):.0f} (std error {agents_err:.1f}%, 99.7% in "
            f"{low:.0f}..{high:.0f}); {mesh.get('agents_reported', 0)} reported by "
            f"{mesh.get('nodes_reporting', 0)} nodes",
        ),
        ("nodes", f"~{mesh.get('nodes', 0):.0f} (std error {nodes_err:.1f}%)"),
        (
            "messages",
            f"{mesh.get('messages_per_s', 0):g}/s received, {mesh.get('sent_per_s', 0):g}/s sent",
        ),
        ("rejects", f"{mesh.get('rejects_per_s', 0):g}/s"),
        ("spawns", f"{mesh.get('spawns_per_s', 0):g}/s"),
        ("anomalies", _anomaly_lines(telemetry.get("anomalies", [])) or "none"),
    ]
    return format_fields(fields)


# --- commands --------------------------------------------------------------------------------


@click.command("id")
@api_options
def id_command(data_dir: Path | None, as_json: bool) -> None:
    """Show this node's peer id, listen addresses and version."""
    emit(api_get(data_dir, "/v1/id"), as_json, _format_id)


@click.command("peers")
@api_options
def peers_command(data_dir: Path | None, as_json: bool) -> None:
    """List the peers this node is connected to."""
    emit(api_get(data_dir, "/v1/peers"), as_json, _format_peers)


@click.command("status")
@click.option("--mesh", is_flag=True, help="Estimates of the whole mesh (telemetry gossip).")
@click.option("--all", "show_all", is_flag=True, help="Every counter, not only the summary.")
@api_options
def status_command(data_dir: Path | None, as_json: bool, mesh: bool, show_all: bool) -> None:
    """Show this node's health in a few lines (--mesh: the whole mesh; --all: every counter)."""
    status = api_get(data_dir, "/v1/status")
    if mesh:
        telemetry = status.get("telemetry")
        if telemetry is None:
            raise CliError("this daemon gossips no telemetry: no mesh-wide figures")
        emit(telemetry, as_json, format_mesh)
    else:
        emit(status, as_json, _format_status if show_all else format_health)


def refused(exc: ApiError, prefix: str) -> ApiFailedError:
    """The CLI error for an API refusal: `prefix`, the daemon's reason and its HTTP status."""
    if exc.status:
        return ApiFailedError(f"{prefix}: {exc.message} (HTTP {exc.status} {exc.code})")
    return ApiFailedError(f"{prefix}: {exc.message}")
