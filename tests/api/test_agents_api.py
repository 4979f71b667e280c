"""The agent routes of the control API over a real Runtime and Store, served by hypercorn.

No node and no network: the view hands the API a real `Runtime` over a SQLite store in
`tmp_path`, and the tests talk HTTP to the Unix socket with an async httpx client.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from meshd.api.agents import AGENT_ENDPOINTS, jsonable
from meshd.api.server import ENDPOINTS, build_app, serve_api
from meshd.paths import API_SOCKET
from meshd.runtime import Runtime, RuntimeSettings
from meshd.store import Store
from protocol.ids import SigningKey

NODE_KEY = SigningKey.from_seed(b"A" * 32)
STRANGER = SigningKey.from_seed(b"S" * 32).agent_id.did


class AgentNode:
    """The smallest view with agents: fixed identity, no peers, a real runtime."""

    def __init__(self, runtime: Runtime | None) -> None:
        self._runtime = runtime

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("this node runs no agent runtime")
        return self._runtime

    def identity(self) -> dict[str, Any]:
        return {"peer_id": "12D3KooWtest", "addrs": [], "version": "0.1.0"}

    def peers(self) -> list[dict[str, Any]]:
        return []

    def status(self) -> dict[str, Any]:
        return {"peer_id": "12D3KooWtest", "version": "0.1.0", "uptime_s": 0.0, "peers": 0}


class Api:
    """An HTTP client of the served API, and the runtime behind it."""

    def __init__(self, runtime: Runtime, http: httpx.AsyncClient) -> None:
        self.runtime = runtime
        self.http = http

    async def get(self, path: str, status: int = 200, **params: Any) -> Any:
        response = await self.http.get(path, params=params)
        assert response.status_code == status, response.text
        return response.json()

    async def post(self, path: str, body: Any = None, status: int = 200) -> Any:
        response = await self.http.post(path, json=body)
        assert response.status_code == status, response.text
        return response.json()

    async def error(self, method: str, path: str, status: int, **kwargs: Any) -> str:
        """Make a request that must fail with `status`; return the error code."""
        response = await self.http.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["message"]
        code: str = error["code"]
        return code

    async def spawn(self, kind: str = "echo", **fields: Any) -> list[dict[str, Any]]:
        result = await self.post("/v1/agents", {"kind": kind, **fields})
        agents: list[dict[str, Any]] = result["agents"]
        return agents


def _client(data_dir: Path) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=os.fspath(data_dir / API_SOCKET))
    return httpx.AsyncClient(transport=transport, base_url="http://meshd", timeout=30.0)


@asynccontextmanager
async def serving(tmp_path: Path, **settings: Any) -> AsyncIterator[Api]:
    async with Store(tmp_path / "meshd.db") as store, trio.open_nursery() as nursery:
        runtime = Runtime(store, NODE_KEY, RuntimeSettings(**settings))
        await nursery.start(runtime.serve)
        await nursery.start(serve_api, AgentNode(runtime), tmp_path)
        try:
            async with _client(tmp_path) as http:
                yield Api(runtime, http)
        finally:
            nursery.cancel_scope.cancel()


async def test_spawn_list_show_and_lifecycle(tmp_path: Path) -> None:
    async with serving(tmp_path) as api:
        result = await api.post(
            "/v1/agents", {"kind": "echo", "count": 3, "caps": ["x"], "state": {"a": 1}}
        )
        assert result["count"] == 3
        ids = [agent["id"] for agent in result["agents"]]
        assert all(agent["caps"] == ["echo", "x"] for agent in result["agents"])
        (named,) = await api.spawn("counter", name="c1", ttl=3600, budget=7)
        assert named["name"] == "c1"
        assert named["budget"] == 7
        assert named["expires_ms"] is not None

        listing = await api.get("/v1/agents")
        assert [a["id"] for a in listing["agents"]] == [*ids, named["id"]]
        assert listing["next"] is None
        assert listing["counts"]["total"] == 4
        page = await api.get("/v1/agents", limit=2)
        assert [a["id"] for a in page["agents"]] == ids[:2]
        rest = await api.get("/v1/agents", limit=2, after=page["next"])
        assert [a["id"] for a in rest["agents"]] == [ids[2], named["id"]]
        counters = await api.get("/v1/agents", kind="counter")
        assert [a["id"] for a in counters["agents"]] == [named["id"]]

        shown = await api.get(f"/v1/agents/{ids[0]}")
        assert shown["id"] == ids[0]
        assert shown["state"] == "dormant"
        assert shown["inbox"] == 0
        assert (await api.get("/v1/agents/c1"))["id"] == named["id"]

        suspended = await api.post("/v1/agents/c1/suspend")
        assert suspended == {"id": named["id"], "state": "suspended"}
        assert await api.error("POST", "/v1/agents/c1/suspend", 409) == "illegal_transition"
        assert await api.error("POST", f"/v1/agents/{ids[0]}/resume", 409) == "illegal_transition"
        only = await api.get("/v1/agents", state="suspended")
        assert [a["id"] for a in only["agents"]] == [named["id"]]
        sent = await api.post("/v1/send", {"to": "c1", "body": {"add": 5}})
        assert sent["outcome"] == "queued"
        resumed = await api.post("/v1/agents/c1/resume")
        assert resumed["state"] in ("dormant", "active")
        assert resumed["delivered"] == 1
        # Let the counter's handler finish and save its state first: deleting an agent while
        # its handler saves races in the runtime (StoreConflict, reported).
        with trio.fail_after(10):
            while (await api.get("/v1/agents/c1"))["state_version"] < 1:  # noqa: ASYNC110
                await trio.sleep(0.01)

        assert await api.post("/v1/agents/c1/delete") == {"id": named["id"], "state": "gone"}
        assert await api.error("GET", "/v1/agents/c1", 404) == "unknown_agent"
        assert await api.error("GET", f"/v1/agents/{named['id']}", 404) == "unknown_agent"
        assert await api.error("POST", f"/v1/agents/{named['id']}/resume", 404) == "unknown_agent"
        # The three echo agents and the operator agent that `send` created.
        assert (await api.get("/v1/agents"))["counts"]["total"] == 4


async def test_send_waits_for_the_echo_reply(tmp_path: Path) -> None:
    async with serving(tmp_path) as api:
        (echo,) = await api.spawn("echo", name="e")
        result = await api.post("/v1/send", {"to": "e", "body": {"x": [1, "two"]}, "wait": True})
        assert result["outcome"] == "delivered"
        assert result["reply"]["from"] == echo["id"]
        assert result["reply"]["body"] == {"x": [1, "two"]}
        operator = result["from"]
        assert (await api.get("/v1/agents/operator"))["id"] == operator
        # Sent as another hosted agent; an agent hosted nowhere here is not_here, not an error.
        (other,) = await api.spawn("external")
        as_other = await api.post("/v1/send", {"to": echo["id"], "body": 1, "from": other["id"]})
        assert as_other["from"] == other["id"]
        missing = await api.post("/v1/send", {"to": STRANGER, "body": 1})
        assert missing["outcome"] == "not_here"
        await api.post(f"/v1/agents/{echo['id']}/delete")
        gone = await api.post("/v1/send", {"to": echo["id"], "body": 1})
        assert gone["outcome"] in ("not_here", "gone")


async def test_bad_input_is_400_with_a_clear_message(tmp_path: Path) -> None:
    async with serving(tmp_path) as api:
        (echo,) = await api.spawn("echo")
        bad_spawns: list[Any] = [
            {"count": 1},
            {"kind": "echo", "count": 0},
            {"kind": "echo", "count": "3"},
            {"kind": "echo", "count": 100_001},
            {"kind": "echo", "caps": "x"},
            {"kind": "echo", "caps": [""]},
            {"kind": "echo", "ttl": -1},
            {"kind": "echo", "ttl": True},
            {"kind": "echo", "name": "has space"},
            {"kind": "echo", "name": "operator"},
            {"kind": "echo", "name": "n", "count": 2},
            {"kind": "echo", "state": [1]},
            {"kind": "echo", "budget": -1},
            {"kind": "echo", "colour": "red"},
            [1, 2],
        ]
        for body in bad_spawns:
            assert await api.error("POST", "/v1/agents", 400, json=body) == "bad_request", body
        assert await api.error("POST", "/v1/agents", 400, content=b"{nope") == "bad_request"
        assert await api.error("GET", "/v1/agents/did:key:zzz", 400) == "bad_agent_id"
        for params in ({"limit": "0"}, {"limit": "x"}, {"state": "sleepy"}, {"colour": "red"}):
            assert await api.error("GET", "/v1/agents", 400, params=params) == "bad_request"
        unknown_cursor = {"after": STRANGER}
        assert await api.error("GET", "/v1/agents", 400, params=unknown_cursor) == "bad_request"
        bad_sends: list[dict[str, Any]] = [
            {"body": 1},
            {"to": echo["id"]},
            {"to": echo["id"], "body": 1, "timeout": 0},
            {"to": echo["id"], "body": 1, "wait": "yes"},
            {"to": echo["id"], "body": 1, "kind": ""},
            {"to": echo["id"], "body": 1, "reply_to": "abc"},
            {"to": echo["id"], "body": 1, "reply_to": "00" * 16, "wait": True},
        ]
        for body in bad_sends:
            assert await api.error("POST", "/v1/send", 400, json=body) == "bad_request", body
        deep: Any = 1
        for _ in range(100):
            deep = [deep]
        assert await api.error("POST", "/v1/send", 400, json={"to": echo["id"], "body": deep})
        inbox = f"/v1/agents/{echo['id']}/inbox"
        assert await api.error("GET", inbox, 400, params={"wait": "-1"}) == "bad_request"
        assert await api.error("POST", f"{inbox}/ack", 400, json={"seq": "1"}) == "bad_request"


async def test_unknown_agents_kinds_and_names(tmp_path: Path) -> None:
    async with serving(tmp_path) as api:
        for method, path in (
            ("GET", f"/v1/agents/{STRANGER}"),
            ("GET", "/v1/agents/nobody"),
            ("POST", f"/v1/agents/{STRANGER}/suspend"),
            ("POST", "/v1/agents/nobody/delete"),
            ("GET", f"/v1/agents/{STRANGER}/inbox"),
        ):
            assert await api.error(method, path, 404) == "unknown_agent", path
        assert await api.error("POST", "/v1/send", 404, json={"to": "nobody", "body": 1})
        code = await api.error(
            "POST", "/v1/send", 404, json={"to": STRANGER, "body": 1, "from": STRANGER}
        )
        assert code == "unknown_agent"
        assert await api.error("POST", "/v1/agents", 422, json={"kind": "nope"}) == "unknown_kind"
        bad_module = {"kind": "no.such.module:Agent"}
        assert await api.error("POST", "/v1/agents", 422, json=bad_module) == "unknown_kind"
        await api.spawn("echo", name="taken")
        taken = {"kind": "echo", "name": "taken"}
        assert await api.error("POST", "/v1/agents", 409, json=taken) == "name_taken"


async def test_quotas_answer_429_with_their_reason(tmp_path: Path) -> None:
    async with serving(tmp_path, max_agents=5, spawn_rate=0.01, spawn_burst=4) as api:
        over = {"kind": "echo", "count": 6}
        assert await api.error("POST", "/v1/agents", 429, json=over) == "max_agents"
        (parent,) = await api.spawn("echo", budget=2)
        child = {"kind": "echo", "parent": parent["id"], "budget": 5}
        assert await api.error("POST", "/v1/agents", 429, json=child) == "budget"
        (kid,) = await api.spawn("echo", parent=parent["id"], budget=0)
        assert kid["parent"] == parent["id"]
        # The bucket holds 4 tokens and refills at 1 per 100 s; a few more spawns use it up.
        for _ in range(3):
            response = await api.http.post("/v1/agents", json={"kind": "echo"})
            if response.status_code != 200:
                break
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "spawn_rate"
        assert api.runtime.stats.quota_refusals == {"max_agents": 1, "budget": 1, "spawn_rate": 1}


async def test_external_agent_reads_acks_and_answers(tmp_path: Path) -> None:
    async with serving(tmp_path) as api:
        (ext,) = await api.spawn("external", name="ext")
        inbox = f"/v1/agents/{ext['id']}/inbox"
        for n in range(3):
            sent = await api.post("/v1/send", {"to": "ext", "body": {"n": n}, "kind": "job"})
            assert sent["outcome"] == "queued"
        messages = await api.get(inbox)
        assert [m["body"] for m in messages] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert {m["kind"] for m in messages} == {"job"}
        assert all(m["reply_to"] is None and len(m["id"]) == 32 for m in messages)
        # Not acked (the client "died"): the same messages come again, and limit pages them.
        assert await api.get(inbox, limit=2) == messages[:2]
        assert (await api.get("/v1/agents/ext"))["inbox"] == 3
        acked = await api.post(f"{inbox}/ack", {"seq": messages[1]["seq"]})
        assert acked == {"acked": 2, "waiting": 1}
        assert await api.get(inbox) == messages[2:]
        await api.post(f"{inbox}/ack", {"seq": messages[2]["seq"]})
        assert await api.get(inbox) == []

        # A long poll returns as soon as a message arrives.
        got: list[Any] = []

        async def poll() -> None:
            got.extend(await api.get(inbox, wait=30))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await trio.sleep(0.2)
                await api.post("/v1/send", {"to": "ext", "body": "wake"})
        assert [m["body"] for m in got] == ["wake"]
        await api.post(f"{inbox}/ack", {"seq": got[-1]["seq"]})

        # The attached process answers a request: the waiting sender gets the reply.
        answer: dict[str, Any] = {}

        async def ask() -> None:
            body = {"to": "ext", "body": "ping", "wait": True, "timeout": 20}
            answer.update(await api.post("/v1/send", body))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                (request,) = await api.get(inbox, wait=10)
                reply = {
                    "from": "ext",
                    "to": request["from"],
                    "body": {"pong": True},
                    "reply_to": request["id"],
                    "kind": "reply",
                }
                assert (await api.post("/v1/send", reply))["outcome"] == "delivered"
                await api.post(f"{inbox}/ack", {"seq": request["seq"]})
        assert answer["outcome"] == "queued"  # in the external agent's inbox, then answered
        assert answer["reply"] == {
            "from": ext["id"],
            "kind": "reply",
            "body": {"pong": True},
            "id": answer["reply"]["id"],
        }

        # Suspended: the inbox is held; resumed: it is handed out again.
        await api.post("/v1/send", {"to": "ext", "body": "held"})
        await api.post("/v1/agents/ext/suspend")
        assert await api.get(inbox, wait=0) == []
        await api.post("/v1/agents/ext/resume")
        assert [m["body"] for m in await api.get(inbox)] == ["held"]


async def test_inbox_is_only_for_external_agents(tmp_path: Path) -> None:
    async with serving(tmp_path) as api:
        (echo,) = await api.spawn("echo")
        assert await api.error("GET", f"/v1/agents/{echo['id']}/inbox", 409) == "not_external"
        ack = {"json": {"seq": 1}}
        assert await api.error("POST", f"/v1/agents/{echo['id']}/inbox/ack", 409, **ack)


async def test_without_a_runtime_the_agent_routes_answer_503(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    await nursery.start(serve_api, AgentNode(None), tmp_path)
    async with _client(tmp_path) as http:
        assert (await http.get("/v1/id")).status_code == 200
        response = await http.get("/v1/agents")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "no_runtime"


def test_openapi_describes_every_agent_route() -> None:
    app = build_app(AgentNode(None))
    document = app.state.openapi
    for endpoint in AGENT_ENDPOINTS:
        assert endpoint in ENDPOINTS
        operation = document["paths"][endpoint.path][endpoint.method.lower()]
        assert operation["operationId"] == endpoint.operation_id
        assert "400" in operation["responses"]
        if endpoint.method == "POST" and endpoint.request_body is not None:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert schema["$ref"].rsplit("/", 1)[1] == endpoint.request_body
        if "{id}" in endpoint.path:
            assert "404" in operation["responses"]
    schemas = document["components"]["schemas"]
    assert set(schemas["SpawnRequest"]["properties"]) >= {"kind", "count", "caps", "ttl", "name"}
    assert set(schemas["SendRequest"]["properties"]) >= {"to", "body", "from", "wait", "timeout"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": b"\x00\xff", 3: [1.5, None]}, {"a": {"$base64": "AP8="}, "3": [1.5, None]}),
        ([float("inf"), float("-inf")], ["Infinity", "-Infinity"]),
        ("text", "text"),
    ],
)
def test_cbor_values_become_json(value: Any, expected: Any) -> None:
    assert jsonable(value) == expected


async def test_an_attached_external_agent_answers_a_waiting_request(tmp_path: Path) -> None:
    async with serving(tmp_path) as api:
        (worker,) = await api.spawn("external", name="worker")
        answer: dict[str, Any] = {}

        async def requester() -> None:
            result = await api.post(
                "/v1/send", {"to": "worker", "body": {"q": 6}, "wait": True, "timeout": 10}
            )
            answer.update(result)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(requester)
            # The external process: read the inbox (long-poll), answer as the agent, ack.
            messages: list[dict[str, Any]] = []
            with trio.fail_after(10):
                while not messages:
                    messages = await api.get(f"/v1/agents/{worker['id']}/inbox", wait=1)
            (request,) = messages
            assert request["body"] == {"q": 6}
            reply = await api.post(
                "/v1/send",
                {
                    "from": "worker",
                    "to": request["from"],
                    "body": {"a": request["body"]["q"] * 7},
                    "reply_to": request["id"],
                },
            )
            assert reply["outcome"] == "delivered"
            await api.post(f"/v1/agents/{worker['id']}/inbox/ack", {"seq": request["seq"]})
        assert answer["outcome"] == "queued"  # an external agent's inbox holds the request
        assert answer["reply"]["body"] == {"a": 42}
        assert answer["reply"]["from"] == worker["id"]
