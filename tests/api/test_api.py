"""The control API over a real hypercorn server on a Unix socket (and loopback TCP), and the CLI.

The node is replaced by a small fixed `NodeView`: that protocol is the API's boundary. The
synchronous `ApiClient` and click's `CliRunner` run in worker threads so the trio loop keeps
serving while they wait.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import click.testing
import httpx
import pytest
import trio
from starlette.routing import Route

from meshd.api.client import ApiClient, ApiError, DaemonNotRunning
from meshd.api.server import ApiAddresses, ApiServerError, build_app, serve_api
from meshd.cli import cli
from meshd.cli_client import EXIT_NO_DAEMON
from meshd.paths import API_SOCKET, API_TOKEN

T = TypeVar("T")

PEER_ID = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
OTHER_ID = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"


class FixedView:
    """A node that never changes: what the API must pass through unaltered."""

    def __init__(self, peers: list[dict[str, Any]] | None = None) -> None:
        self._peers = (
            peers
            if peers is not None
            else [
                {
                    "peer_id": OTHER_ID,
                    "addrs": ["/ip4/127.0.0.1/tcp/4002", "/ip4/10.0.0.2/tcp/4002"],
                    "connected_for_s": 125.5,
                }
            ]
        )

    def identity(self) -> dict[str, Any]:
        return {
            "peer_id": PEER_ID,
            "addrs": [f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER_ID}"],
            "version": "0.1.0",
        }

    def peers(self) -> list[dict[str, Any]]:
        return self._peers

    def status(self) -> dict[str, Any]:
        return {
            "peer_id": PEER_ID,
            "version": "0.1.0",
            "uptime_s": 3725.0,
            "peers": len(self._peers),
            "messages": {"in": 7, "out": 9},
        }


class BrokenView(FixedView):
    """A node whose status fails with details that must stay in the daemon's log."""

    def status(self) -> dict[str, Any]:
        raise RuntimeError("secret internal detail")


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking client code off the trio thread, so the server keeps answering."""
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


def client_get(data_dir: Path, path: str, **kwargs: Any) -> Any:
    with ApiClient(data_dir, timeout=5.0, **kwargs) as client:
        return client.get(path)


def raw_client(data_dir: Path) -> httpx.AsyncClient:
    """A plain HTTP client on the socket, to see statuses and headers as they are."""
    transport = httpx.AsyncHTTPTransport(uds=os.fspath(data_dir / API_SOCKET))
    return httpx.AsyncClient(transport=transport, base_url="http://meshd", timeout=5.0)


def invoke(*args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    return click.testing.CliRunner(env=env).invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
async def api(nursery: trio.Nursery, tmp_path: Path) -> ApiAddresses:
    addresses: ApiAddresses = await nursery.start(serve_api, FixedView(), tmp_path)
    return addresses


# --- server ----------------------------------------------------------------------------------


async def test_socket_is_private_and_routes_return_the_view(
    api: ApiAddresses, tmp_path: Path
) -> None:
    mode = (tmp_path / API_SOCKET).stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert api.socket == tmp_path / API_SOCKET
    view = FixedView()
    assert await in_thread(client_get, tmp_path, "/v1/id") == view.identity()
    assert await in_thread(client_get, tmp_path, "/v1/peers") == view.peers()
    assert await in_thread(client_get, tmp_path, "/v1/status") == view.status()
    assert await in_thread(client_get, tmp_path, "/v1/health") == {"status": "ok"}


async def test_openapi_lists_exactly_the_app_routes(api: ApiAddresses, tmp_path: Path) -> None:
    document = await in_thread(client_get, tmp_path, "/openapi.json")
    assert document["openapi"].startswith("3.1")
    app = build_app(FixedView())
    routes = [route for route in app.routes if isinstance(route, Route)]
    assert len(routes) == len(app.routes)
    in_app = {
        (method, route.path)
        for route in routes
        for method in route.methods or ()
        if method != "HEAD"  # Starlette adds HEAD to every GET
    }
    in_document = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert in_app == in_document
    assert ("GET", "/openapi.json") in in_app

    # Every reference resolves and every answer the view gives has its schema's required keys.
    schemas = document["components"]["schemas"]
    text = json.dumps(document)
    for name in {part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]}:
        assert name in schemas
    view = FixedView()
    for schema, data in (("Identity", view.identity()), ("Status", view.status())):
        assert set(schemas[schema]["required"]) <= data.keys()
    for operation in (op for ops in document["paths"].values() for op in ops.values()):
        assert "200" in operation["responses"]


async def test_unknown_route_and_wrong_method_are_json_errors(
    api: ApiAddresses, tmp_path: Path
) -> None:
    async with raw_client(tmp_path) as http:
        missing = await http.get("/v1/nope")
        wrong_method = await http.post("/v1/id")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "no route GET /v1/nope"}}
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    with pytest.raises(ApiError) as caught:
        await in_thread(client_get, tmp_path, "/v1/nope")
    assert (caught.value.status, caught.value.code) == (404, "not_found")


async def test_internal_error_is_json_and_leaks_nothing(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await nursery.start(serve_api, BrokenView(), tmp_path)
    with caplog.at_level(logging.ERROR, logger="meshd.api"):
        async with raw_client(tmp_path) as http:
            response = await http.get("/v1/status")
            still_alive = await http.get("/v1/id")
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal_error", "message": "the daemon failed to serve this request"}
    }
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert still_alive.status_code == 200
    # The details are in the daemon's log instead.
    assert any(r.exc_info and "secret" in str(r.exc_info[1]) for r in caplog.records)


async def test_tcp_needs_the_bearer_token(nursery: trio.Nursery, tmp_path: Path) -> None:
    addresses: ApiAddresses = await nursery.start(
        partial(serve_api, FixedView(), tmp_path, tcp="127.0.0.1:0")
    )
    assert addresses.tcp is not None
    assert addresses.tcp.startswith("127.0.0.1:")
    token_file = tmp_path / API_TOKEN
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32

    async with httpx.AsyncClient(base_url=f"http://{addresses.tcp}", timeout=5.0) as http:
        anonymous = await http.get("/v1/id")
        wrong = await http.get("/v1/id", headers={"Authorization": "Bearer not-the-token"})
        right = await http.get("/v1/id", headers={"Authorization": f"Bearer {token}"})
    for refused in (anonymous, wrong):
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200
    assert right.json() == FixedView().identity()

    # The client reads the token from the data directory; a wrong one is an API error.
    assert await in_thread(client_get, tmp_path, "/v1/id", tcp=addresses.tcp) == right.json()
    with pytest.raises(ApiError) as caught:
        await in_thread(client_get, tmp_path, "/v1/id", tcp=addresses.tcp, token="nope")
    assert caught.value.status == 401
    # The Unix socket needs no token: its file mode is the access control.
    assert await in_thread(client_get, tmp_path, "/v1/id") == right.json()


@pytest.mark.parametrize("tcp", ["0.0.0.0:0", "192.0.2.7:8080", "example.com:80", "127.0.0.1"])
async def test_non_loopback_or_malformed_tcp_is_refused(tmp_path: Path, tcp: str) -> None:
    with pytest.raises(ApiServerError):
        await serve_api(FixedView(), tmp_path, tcp=tcp)
    assert not (tmp_path / API_SOCKET).exists()


async def test_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / API_TOKEN
    token_file.write_text("shared-secret\n")
    token_file.chmod(0o644)
    with pytest.raises(ApiServerError, match="chmod 600"):
        await serve_api(FixedView(), tmp_path, tcp="127.0.0.1:0")


def make_stale_socket(path: Path) -> None:
    """Leave a socket file with nothing behind it, as a killed daemon does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(os.fspath(path))


async def test_stale_socket_is_replaced(nursery: trio.Nursery, tmp_path: Path) -> None:
    make_stale_socket(tmp_path / API_SOCKET)
    with pytest.raises(DaemonNotRunning, match="stale socket"):
        await in_thread(client_get, tmp_path, "/v1/id")
    await nursery.start(serve_api, FixedView(), tmp_path)
    assert await in_thread(client_get, tmp_path, "/v1/health") == {"status": "ok"}


async def test_second_daemon_on_the_same_directory_is_refused(
    api: ApiAddresses, tmp_path: Path
) -> None:
    with pytest.raises(ApiServerError, match="already running"):
        await serve_api(FixedView(), tmp_path)
    # The refused one must not have taken the live daemon's socket away.
    assert await in_thread(client_get, tmp_path, "/v1/health") == {"status": "ok"}


async def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / API_SOCKET).write_text("not a socket")
    with pytest.raises(ApiServerError, match="not a socket"):
        await serve_api(FixedView(), tmp_path)
    assert (tmp_path / API_SOCKET).read_text() == "not a socket"


async def test_socket_is_removed_when_cancelled(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_api, FixedView(), tmp_path)
        assert (tmp_path / API_SOCKET).exists()
        nursery.cancel_scope.cancel()
    assert not (tmp_path / API_SOCKET).exists()


async def test_client_says_when_no_daemon_runs(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning) as caught:
        await in_thread(client_get, tmp_path, "/v1/id")
    message = str(caught.value)
    assert str(tmp_path) in message
    assert f"no socket at {tmp_path / API_SOCKET}" in message


# --- CLI -------------------------------------------------------------------------------------


async def test_cli_commands_print_json(api: ApiAddresses, tmp_path: Path) -> None:
    view = FixedView()
    for command, expected in (
        ("id", view.identity()),
        ("peers", view.peers()),
        ("status", view.status()),
    ):
        result = await in_thread(invoke, command, "--json", "--data-dir", str(tmp_path))
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == expected  # exactly one JSON document
        assert result.stderr == ""


async def test_cli_commands_print_readable_text(api: ApiAddresses, tmp_path: Path) -> None:
    # MESHD_HOME is how scripts usually point at a node.
    env = {"MESHD_HOME": str(tmp_path)}
    shown = await in_thread(invoke, "id", env=env)
    assert shown.exit_code == 0, shown.output
    assert PEER_ID in shown.stdout
    assert f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER_ID}" in shown.stdout

    peers = await in_thread(invoke, "peers", env=env)
    assert peers.exit_code == 0, peers.output
    header, row, count = peers.stdout.splitlines()
    assert header.split() == ["PEER", "ID", "CONNECTED", "ADDRESS"]
    assert row.split() == [OTHER_ID, "2m05s", "/ip4/127.0.0.1/tcp/4002", "(+1", "more)"]
    assert count == "1 connected peer"

    status = await in_thread(invoke, "status", "--all", env=env)
    assert status.exit_code == 0, status.output
    lines = {line.split()[0]: line.split()[-1] for line in status.stdout.splitlines()}
    assert lines["uptime"] == "1h02m"
    assert lines["peers"] == "1"
    assert lines["messages.in"] == "7"
    # Without --all: a few lines of health.
    health = await in_thread(invoke, "status", env=env)
    assert health.exit_code == 0, health.output
    first = {line.split()[0]: line.split()[1] for line in health.stdout.splitlines()}
    assert first["uptime"] == "1h02m"
    assert first["peers"] == "1"
    assert len(health.stdout.splitlines()) <= 10


async def test_cli_peers_when_alone(nursery: trio.Nursery, tmp_path: Path) -> None:
    await nursery.start(serve_api, FixedView(peers=[]), tmp_path)
    result = await in_thread(invoke, "peers", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no connected peers"


@pytest.mark.parametrize("command", ["id", "peers", "status"])
@pytest.mark.parametrize("as_json", [False, True])
async def test_cli_without_daemon_exits_3(tmp_path: Path, command: str, as_json: bool) -> None:
    args = [command, "--data-dir", str(tmp_path), *(["--json"] if as_json else [])]
    result = await in_thread(invoke, *args)
    assert result.exit_code == EXIT_NO_DAEMON
    assert result.stdout == ""
    assert result.stderr == (
        f"meshd: no daemon running for {tmp_path}; start it with `meshd run`\n"
    )
