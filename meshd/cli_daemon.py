"""`meshd init` and `meshd run`: create a node's data directory, run its daemon.

`run` checks everything that can be refused before it touches the network: the config
(message names the key), the node key (missing, unreadable, corrupt), and that no other
daemon holds this data directory (an exclusive `flock` on `meshd.pid`, released by the
kernel even after `kill -9`, so a stale pid file never blocks a restart). Then it
imports libp2p, sets up logging, and runs the node under trio until SIGINT/SIGTERM.

Exit codes: 0 clean stop, 1 error (one line `meshd: <reason>` on stderr, or a log line
once logging runs), 2 usage (click). A second SIGINT/SIGTERM during shutdown exits at
once with status 1.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from meshd.cli_client import CliError, data_dir_option, json_option
from meshd.config import LOG_FORMATS, LOG_LEVELS, Config, ConfigError, load_config
from meshd.config import render_config_template as _render_config_template
from meshd.identity import (
    IdentityError,
    create_node_key,
    insecure_mode_warning,
    load_node_key,
    load_psk,
    refuse_insecure,
)
from meshd.paths import API_SOCKET, CONFIG_FILE, NODE_KEY, PID_FILE, resolve_data_dir

if TYPE_CHECKING:
    import trio

__all__ = ["init_command", "run_command", "run_daemon"]

log = logging.getLogger("meshd.daemon")

# SIGTERM to exit: the node closes connections (<= 2 s) and the API drains; past this,
# whatever is left is cancelled so the process always ends within 5 s.
SHUTDOWN_DEADLINE_S = 4.5


class DaemonError(CliError):
    """The daemon cannot start; shown as `meshd: <reason>`, exit status 1."""


# -- init -------------------------------------------------------------------------------------


@click.command("init")
@data_dir_option
@json_option
def init_command(data_dir: Path | None, as_json: bool) -> None:
    """Create a node: data directory, node key (mode 0600) and a commented config.toml."""
    directory = resolve_data_dir(data_dir)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise DaemonError(f"cannot create data directory {directory}: {exc.strerror}") from exc
    try:
        key = create_node_key(directory / NODE_KEY)
    except IdentityError as exc:
        raise DaemonError(str(exc)) from exc
    config_path = directory / CONFIG_FILE
    wrote_config = _write_new(config_path, _render_config_template())
    result = {
        "peer_id": key.node_id.text,
        "data_dir": str(directory),
        "key_file": str(directory / NODE_KEY),
        "config_file": str(config_path),
        "config_created": wrote_config,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"peer id   {key.node_id.text}")
    click.echo(f"data dir  {directory}")
    kept = "" if wrote_config else " (kept the existing file)"
    click.echo(f"config    {config_path}{kept}")


def _write_new(path: Path, text: str) -> bool:
    """Write `text` to a new file at `path`; leave an existing file alone (return False)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except OSError as exc:
        raise DaemonError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return True


# -- run --------------------------------------------------------------------------------------


@click.command("run")
@data_dir_option
@click.option(
    "--listen",
    multiple=True,
    metavar="MADDR",
    help="Listen on this TCP multiaddr (repeatable) [config: listen; env MESHD_LISTEN].",
)
@click.option(
    "--bootstrap",
    multiple=True,
    metavar="MADDR",
    help="Join through this peer, /ip4/…/tcp/…/p2p/<id> (repeatable) [config: bootstrap].",
)
@click.option(
    "--mdns/--no-mdns",
    default=None,
    help="Find peers on the local network with mDNS [config: mdns].",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default=None,
    help="text: one line per event; json: one JSON object per line [config: log.format].",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS),
    default=None,
    help="[config: log.level; default info].",
)
def run_command(
    data_dir: Path | None,
    listen: tuple[str, ...],
    bootstrap: tuple[str, ...],
    mdns: bool | None,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Run the node daemon in the foreground; SIGINT/SIGTERM stop it cleanly."""
    flags: dict[str, object] = {
        "listen": listen,
        "bootstrap": bootstrap,
        "mdns": mdns,
        "log.format": log_format,
        "log.level": log_level,
    }
    code = run_daemon(resolve_data_dir(data_dir), flags)
    sys.exit(code)


def run_daemon(directory: Path, flags: dict[str, object]) -> int:
    """Start the daemon for `directory` and block until it stops; return the exit status."""
    if not directory.is_dir():
        raise DaemonError(f"data directory {directory} does not exist; run `meshd init` first")
    try:
        config = load_config(directory, flags=flags)
    except ConfigError as exc:
        raise DaemonError(str(exc)) from exc
    try:
        key = load_node_key(directory / NODE_KEY)
        # Secrets first: no start with a key or data directory others can read.
        refuse_insecure(directory, directory / NODE_KEY)
        if config.psk_file is not None:
            load_psk(Path(config.psk_file))  # refused here, before the network starts
    except IdentityError as exc:
        raise DaemonError(str(exc)) from exc
    # Until trio takes the signals over, SIGTERM would kill us mid-start (with the pid
    # file left behind) and SIGINT would print a traceback: both become a quiet stop.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with _pid_lock(directory):
            return _run_locked(directory, config, key.seed)
    except KeyboardInterrupt:
        click.echo("meshd: stopped before it finished starting", err=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_locked(directory: Path, config: Config, seed: bytes) -> int:
    """The daemon proper, once the data directory is ours."""
    # Imported here: libp2p takes a second to import and resets its logger on import,
    # so logging is configured after it (see meshd.logs). trio is not needed by `init`.
    import trio

    from meshd.guard import PeerGuard
    from meshd.logs import configure_logging
    from meshd.net.libp2p_net import Libp2pNetwork

    counters = configure_logging(config.log_level, config.log_format)
    warning = insecure_mode_warning(directory / NODE_KEY)
    if warning:
        log.warning(warning)
    try:
        # One guard: delivery rate-limits and penalises, the network enforces the bans.
        guard = PeerGuard(config.limits)
        network = Libp2pNetwork(seed, guard=guard, **_network_options(config))
        return trio.run(partial(_run_node, network, directory, config, counters, seed, guard))
    except Exception:
        log.critical("daemon failed", exc_info=True)
        return 1
    finally:
        _remove_stale_socket(directory)


def _network_options(config: Config) -> dict[str, Any]:
    from meshd.net.host import HostLimits

    limits = HostLimits(
        low_watermark=config.connections.low_watermark,
        high_watermark=config.connections.high_watermark,
        max_connections=config.connections.max,
        dial_timeout_s=config.connections.dial_timeout_s,
        auto_connect_interval_s=config.connections.auto_connect_interval_s,
    )
    return {
        "listen": config.listen,
        "bootstrap": config.bootstrap,
        "mdns": config.mdns,
        "limits": limits,
        "discovery": config.dht,
        "psk": load_psk(Path(config.psk_file)) if config.psk_file is not None else None,
    }


async def _run_node(
    network: Any, directory: Path, config: Config, counters: Any, seed: bytes, guard: Any
) -> int:
    import trio

    from meshd.api.server import ApiServerError, serve_api
    from meshd.build import build_node
    from meshd.net.types import NetworkError
    from meshd.store import StoreError

    api = partial(serve_api, data_dir=directory, tcp=config.api_tcp)
    refused: list[BaseException] = []
    try:
        # One composition for the daemon and simnet (meshd.build).
        async with build_node(
            network, directory, config, seed, guard, api=api, log_counters=counters
        ) as node:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_on_signals, signals, node, nursery.cancel_scope)
                    await node.serve()
                    nursery.cancel_scope.cancel()
    except* (NetworkError, ApiServerError, StoreError) as group:
        refused.extend(_leaves(group))
    for exc in refused:
        log.error("cannot start: %s", exc)
    return 1 if refused else 0


async def _on_signals(signals: Any, node: Any, scope: trio.CancelScope) -> None:
    import trio

    stopping = False
    async for signum in signals:
        name = signal.Signals(signum).name
        if stopping:
            log.error("second %s: exiting now", name)
            logging.shutdown()
            os._exit(1)
        stopping = True
        node.request_stop(f"received {name}")
        # Whatever has not finished by then is cancelled: the process ends within 5 s.
        scope.deadline = trio.current_time() + SHUTDOWN_DEADLINE_S


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


@contextmanager
def _pid_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `meshd.pid` (with our pid in it) while the daemon runs."""
    path = directory / PID_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DaemonError(f"cannot open pid file {path}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise DaemonError(
                f"another meshd daemon (pid {other}) is already running for data directory "
                f"{directory}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _remove_stale_socket(directory: Path) -> None:
    """Remove `api.sock` if the API server could not (we hold the lock: it is ours)."""
    (directory / API_SOCKET).unlink(missing_ok=True)
