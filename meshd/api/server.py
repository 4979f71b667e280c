"""The daemon's control API: HTTP+JSON served by hypercorn's trio worker with Starlette.

The API listens on the Unix socket `api.sock` in the data directory (mode 0600: the file
permission is the access control), and optionally on a loopback TCP address where every
request must carry `Authorization: Bearer <token>`, the token being the content of `api.token`
in the data directory. The node exposes itself to the API only through `NodeView`.

Routes live in one table, `ENDPOINTS`: the app and its OpenAPI document are both built from it.
The agent routes are defined in `meshd.api.agents` and spliced into the table.
To add a route, write an async handler `(view, request) -> JSON-able data` (or a Starlette
`Response`), add a line to `ENDPOINTS` (and a schema to `meshd.api.openapi.SCHEMAS` if the
response shape is new), and add the method it needs to `NodeView`. Handlers signal expected
failures by raising `ApiProblem`, which becomes the standard JSON error.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import logging
import math
import os
import secrets
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import hypercorn.trio
import trio
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshd import __version__
from meshd.api.agents import AGENT_ENDPOINTS
from meshd.api.base import ApiProblem, Endpoint, Handler
from meshd.api.openapi import METRICS_CONTENT_TYPE, build_openapi
from meshd.api.swarms import SWARM_ENDPOINTS
from meshd.paths import API_SOCKET, API_TOKEN

if TYPE_CHECKING:
    # trio 0.35 ships TaskStatus, but libp2p pulls in trio-typing, whose trio-stubs (which mypy
    # prefers) lack it; trio_typing.TaskStatus is what those stubs use (as meshd/node.py does).
    from trio_typing import TaskStatus

    from meshd.runtime.runtime import Runtime

__all__ = [
    "ENDPOINTS",
    "AgentsView",
    "ApiAddresses",
    "ApiProblem",
    "ApiServerError",
    "Endpoint",
    "Handler",
    "NodeView",
    "build_app",
    "error_body",
    "serve_api",
]

log = logging.getLogger("meshd.api")

# hypercorn logs through this logger; it announces every bind at INFO, which is noise in the
# daemon's log, so only its warnings and errors get through.
_http_log = logging.getLogger("meshd.api.http")
_http_log.setLevel(logging.WARNING)

# Requests are small JSON documents; a bigger body is a mistake or an attack.
MAX_BODY_BYTES = 1 << 20
# In-flight requests get this long to finish once the API is told to stop.
GRACEFUL_TIMEOUT_S = 2.0
# Extra time hypercorn gets past its own graceful timeout before we cut it off.
_SHUTDOWN_SLACK_S = 1.0
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_UNIX_PATH = 107
# How long a probe of an existing socket file may take before we call it stale.
_PROBE_TIMEOUT_S = 1.0


class NodeView(Protocol):
    """What the control API may read from the running node."""

    def identity(self) -> dict[str, Any]:
        """`{"peer_id": str, "addrs": [multiaddr ending in /p2p/<id>], "version": str}`."""
        ...

    def peers(self) -> list[dict[str, Any]]:
        """`[{"peer_id": str, "addrs": [str], "connected_for_s": float}]`."""
        ...

    def status(self) -> dict[str, Any]:
        """`{"peer_id": str, "version": str, "uptime_s": float, "peers": int, ...counters}`."""
        ...


class AgentsView(NodeView, Protocol):
    """A `NodeView` that hosts agents: what the agent routes (`meshd.api.agents`) need.

    A separate protocol so that a view without agents still serves the other routes; the
    agent routes answer 503 `no_runtime` on such a view (or when `runtime` raises).
    """

    @property
    def runtime(self) -> Runtime:
        """The node's agent runtime."""
        ...


class ApiServerError(Exception):
    """The control API cannot start (socket in use, bad address, unsafe token file...)."""


@dataclass(frozen=True)
class ApiAddresses:
    """Where a started control API listens; the value `serve_api` hands to `nursery.start`."""

    socket: Path
    tcp: str | None = None  # "host:port" with the real port, when TCP is enabled


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON document of every error response."""
    return {"error": {"code": code, "message": message}}


def _error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


# --- handlers --------------------------------------------------------------------------------


async def _get_health(view: NodeView, request: Request) -> Any:
    return {"status": "ok"}


async def _get_id(view: NodeView, request: Request) -> Any:
    return view.identity()


async def _get_peers(view: NodeView, request: Request) -> Any:
    return view.peers()


async def _get_status(view: NodeView, request: Request) -> Any:
    status = view.status()
    refused = request.app.state.unauthorized
    if refused is not None:
        # Requests the TCP listener refused for a missing or wrong token (probes, bad clients).
        status = {**status, "api": {"unauthorized": refused[0]}}
    return status


async def _get_openapi(view: NodeView, request: Request) -> Any:
    return request.app.state.openapi


async def _get_metrics(view: NodeView, request: Request) -> Any:
    render = getattr(view, "metrics_text", None)
    try:
        if render is None:
            raise RuntimeError("this node exports no metrics")
        text = render()
    except RuntimeError as exc:
        raise ApiProblem(503, "no_metrics", str(exc)) from exc
    # Prometheus text, not JSON: the scrape format every Prometheus server reads.
    return Response(text, media_type=METRICS_CONTENT_TYPE)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/v1/health", "getHealth", "Liveness check.", "Health", _get_health),
    Endpoint("GET", "/v1/id", "getIdentity", "Peer id, addresses, version.", "Identity", _get_id),
    Endpoint("GET", "/v1/peers", "listPeers", "Connected peers.", "PeerList", _get_peers),
    Endpoint("GET", "/v1/status", "getStatus", "Uptime and counters.", "Status", _get_status),
    Endpoint(
        "GET", "/openapi.json", "getOpenApi", "This document.", "OpenApiDocument", _get_openapi
    ),
    Endpoint(
        "GET", "/metrics", "getMetrics", "Prometheus metrics.", "PrometheusText", _get_metrics
    ),
    *AGENT_ENDPOINTS,
    *SWARM_ENDPOINTS,
)


# --- the app ---------------------------------------------------------------------------------


def _route(endpoint: Endpoint, view: NodeView) -> Route:
    async def serve(request: Request) -> Response:
        result = await endpoint.handler(view, request)
        # A handler may answer with its own Response (e.g. Prometheus text); data becomes JSON.
        return result if isinstance(result, Response) else JSONResponse(result)

    return Route(endpoint.path, serve, methods=[endpoint.method], name=endpoint.operation_id)


def _code_for(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return f"http_{status}"
    return phrase.lower().replace(" ", "_").replace("-", "_")


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == HTTPStatus.NOT_FOUND:
        message = f"no route {request.method} {request.url.path}"
    elif status == HTTPStatus.METHOD_NOT_ALLOWED:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return _error_response(status, _code_for(status), message, exc.headers)


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiProblem)
    return _error_response(exc.status, exc.code, exc.message)


async def _on_internal_error(request: Request, exc: Exception) -> Response:
    # Last resort of Starlette's outermost middleware; _ErrorGuard normally answers first.
    return _internal_error_response()


def _internal_error_response() -> JSONResponse:
    return _error_response(500, "internal_error", "the daemon failed to serve this request")


class _ErrorGuard:
    """Turn an unhandled exception into a logged traceback and a JSON 500 with no details."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            # The client gets a generic message; the details belong in the daemon's log.
            log.exception("control API: %s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                await _internal_error_response()(scope, receive, send)


def build_app(view: NodeView) -> Starlette:
    """The Starlette app serving `ENDPOINTS` over `view`."""
    app = Starlette(
        routes=[_route(endpoint, view) for endpoint in ENDPOINTS],
        middleware=[Middleware(_ErrorGuard)],
        exception_handlers={
            HTTPException: _on_http_exception,
            ApiProblem: _on_problem,
            Exception: _on_internal_error,
        },
        max_body_size=MAX_BODY_BYTES,
    )
    app.state.openapi = build_openapi(ENDPOINTS, version=__version__)
    app.state.unauthorized = None  # with a TCP listener: its `_RequireBearer` refusals
    return app


class _RequireBearer:
    """ASGI wrapper that answers 401 unless the request carries the right bearer token."""

    def __init__(self, app: ASGIApp, token: str, refused: list[int] | None = None) -> None:
        self.app = app
        self._token = token.encode()
        self._refused = refused if refused is not None else [0]
        self._logged_at = -math.inf

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scheme, _, value = Headers(scope=scope).get("authorization", "").partition(" ")
            # compare_digest: the time taken must not tell how much of a guess was right.
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                value.strip().encode(), self._token
            )
            if not ok:
                self._refused[0] += 1
                now = trio.current_time()
                if now - self._logged_at >= 60.0:  # one line a minute, however many guesses
                    self._logged_at = now
                    log.warning(
                        "control API: refused a TCP request without the right token from %s "
                        "(%d so far)",
                        (scope.get("client") or ("?",))[0],
                        self._refused[0],
                    )
                response = _error_response(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token (see api.token in the data directory)",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- listeners -------------------------------------------------------------------------------


def _parse_loopback(tcp: str) -> tuple[str, int]:
    """Split "host:port" and refuse anything that is not a loopback address."""
    host, sep, port_text = tcp.rpartition(":")
    if not sep or not host:
        raise ApiServerError(f"API TCP address {tcp!r} is not host:port")
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        # Resolving could yield a non-loopback address from a tampered hosts file.
        host = "127.0.0.1"
    try:
        port = int(port_text)
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ApiServerError(f"API TCP address {tcp!r} is not a literal IP and port") from exc
    if not 0 <= port <= 65535:
        raise ApiServerError(f"API TCP port {port} is out of range")
    if not address.is_loopback:
        raise ApiServerError(
            f"API TCP address {tcp!r} is not loopback; the control API listens only on "
            "127.0.0.1 or ::1"
        )
    return host, port


def _load_or_create_token(data_dir: Path) -> str:
    """The TCP bearer token from `api.token`, created (0600, random) if missing."""
    path = data_dir / API_TOKEN
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ApiServerError(
                f"API token file {path} is accessible to other users "
                f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}"
            ) from None
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise ApiServerError(
                f"API token file {path} is empty; delete it to get a new one"
            ) from None
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(token + "\n")
    return token


async def _socket_answers(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket at `path`."""
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        with trio.move_on_after(_PROBE_TIMEOUT_S):
            try:
                await probe.connect(os.fspath(path))
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    return False
                raise ApiServerError(f"cannot check existing API socket {path}: {exc}") from exc
            return True
        # A full backlog: a daemon that exists but is swamped still owns the socket.
        return True


def _existing_socket(path: Path) -> bool:
    """Whether a socket file is at `path`; refuse if something else is."""
    if len(os.fsencode(path)) > _MAX_UNIX_PATH:
        raise ApiServerError(
            f"API socket path {path} is longer than {_MAX_UNIX_PATH} bytes, the limit for "
            "Unix sockets; use a shorter data directory"
        )
    try:
        existing = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(existing.st_mode):
        raise ApiServerError(f"{path} exists and is not a socket; move it away first")
    return True


def _bind_unix_now(path: Path) -> socket.socket:
    """A bound (not yet listening) Unix socket at the free `path`, mode 0600."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        # The file is created with the umask's mode; tightening it before listen() means no
        # one ever connects through a looser mode.
        os.chmod(path, 0o600)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ApiServerError(f"another process took the API socket {path}") from exc
        raise ApiServerError(f"cannot create API socket {path}: {exc.strerror}") from exc
    return sock


async def _bind_unix(path: Path) -> socket.socket:
    """A bound (not yet listening) Unix socket at `path`, mode 0600, replacing a stale one."""
    if _existing_socket(path):
        if await _socket_answers(path):
            raise ApiServerError(
                f"another meshd daemon is already running for data directory {path.parent} "
                f"(it answers on {path})"
            )
        log.info("removing stale API socket %s", path)
        os.unlink(path)
    return _bind_unix_now(path)


def _bind_tcp(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket on the loopback `host`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ApiServerError(f"cannot listen for the API on {host}:{port}: {exc.strerror}") from exc
    return sock


def _hypercorn_config(sock: socket.socket) -> Config:
    config = Config()
    # Hand our bound socket over by descriptor: we chose its path, mode and port; hypercorn
    # takes ownership of the descriptor and calls listen().
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = _http_log
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    config.include_server_header = False
    return config


async def _serve_hypercorn(
    app: ASGIApp,
    config: Config,
    shutdown: trio.Event,
    *,
    task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one hypercorn listener until `shutdown` is set, then drain it within a deadline."""
    # Shielded so that cancelling serve_api becomes hypercorn's graceful shutdown (answers in
    # flight are finished) instead of connections cut mid-response; the deadline bounds it.
    with trio.CancelScope(shield=True) as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    hypercorn.trio.serve,
                    app,  # type: ignore[arg-type]  # Starlette's ASGI types vs hypercorn's
                    config,
                    shutdown_trigger=shutdown.wait,
                    mode="asgi",
                )
            )
            task_status.started()
            await shutdown.wait()
            scope.deadline = trio.current_time() + GRACEFUL_TIMEOUT_S + _SHUTDOWN_SLACK_S


def _remove_socket(path: Path, inode: int) -> None:
    """Remove our socket file, unless another daemon has replaced it since."""
    try:
        if path.lstat().st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass


async def serve_api(
    view: NodeView,
    data_dir: Path,
    *,
    tcp: str | None = None,
    task_status: TaskStatus[ApiAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control API on `data_dir/api.sock` (and loopback `tcp`) until cancelled."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ApiServerError(f"data directory {data_dir} does not exist; run `meshd init`")
    # Check everything that can be refused before touching the socket file.
    tcp_host_port = _parse_loopback(tcp) if tcp is not None else None
    token = _load_or_create_token(data_dir) if tcp_host_port is not None else None
    app = build_app(view)
    socket_path = data_dir / API_SOCKET
    unix_sock = await _bind_unix(socket_path)
    inode = socket_path.lstat().st_ino
    try:
        tcp_sock = _bind_tcp(*tcp_host_port) if tcp_host_port is not None else None
        tcp_text = None
        if tcp_sock is not None:
            host, port = tcp_sock.getsockname()[:2]
            tcp_text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        unix_config = _hypercorn_config(unix_sock)
        tcp_config = _hypercorn_config(tcp_sock) if tcp_sock is not None else None
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(_serve_hypercorn, app, unix_config, shutdown)
                if tcp_config is not None and token is not None:
                    refused = app.state.unauthorized = [0]
                    await nursery.start(
                        _serve_hypercorn,
                        _RequireBearer(app, token, refused),
                        tcp_config,
                        shutdown,
                    )
                also = f" and http://{tcp_text}" if tcp_text else ""
                log.info("control API on %s%s", socket_path, also)
                task_status.started(ApiAddresses(socket=socket_path, tcp=tcp_text))
                await trio.sleep_forever()
            finally:
                shutdown.set()
    finally:
        unix_sock.close()  # no-op once detached to hypercorn; closes it if we failed before
        _remove_socket(socket_path, inode)
