"""Who can make a node host an agent: the local API (socket mode or token), agents within their
budget, and peers only through migration, which the trust policy can close or narrow.

Budget and quota refusals of local spawns are covered where they are enforced:
tests/runtime/test_runtime.py (`test_spawn_budget_of_parent_agents`, rate and max_agents) and
tests/api/test_agents_api.py (429 with the reason as error code, counted in status).
"""

from __future__ import annotations

import stat
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
import trio

from meshd.api.server import ApiAddresses, serve_api
from meshd.migration import MigrationError
from meshd.paths import API_SOCKET, API_TOKEN
from meshd.runtime.runtime import Runtime
from meshd.trust import Trust
from meshd.trust_settings import TRUSTED_ROOTS, TrustSettings
from tests.runtime.test_migration_offer import KEY_A, KEY_B, node, rt, spawn, two_nodes


class StatusView:
    """The least a NodeView needs for /v1/status."""

    def identity(self) -> dict[str, Any]:
        return {"peer_id": "p", "addrs": [], "version": "0"}

    def peers(self) -> list[dict[str, Any]]:
        return []

    def status(self) -> dict[str, Any]:
        return {"peer_id": "p", "version": "0", "uptime_s": 0.0, "peers": 0}


async def test_api_socket_is_private_and_tcp_needs_the_token_counted(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    addresses: ApiAddresses = await nursery.start(
        partial(serve_api, StatusView(), tmp_path, tcp="127.0.0.1:0")
    )
    assert stat.S_IMODE((tmp_path / API_SOCKET).stat().st_mode) == 0o600
    token = (tmp_path / API_TOKEN).read_text().strip()
    async with httpx.AsyncClient(base_url=f"http://{addresses.tcp}", timeout=5.0) as http:
        spawn_body = {"kind": "echo"}
        for headers in ({}, {"Authorization": "Bearer guess"}, {"Authorization": "Basic x"}):
            refused = await http.post("/v1/agents", json=spawn_body, headers=headers)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "unauthorized"
        status = await http.get("/v1/status", headers={"Authorization": f"Bearer {token}"})
    assert status.status_code == 200
    assert status.json()["api"] == {"unauthorized": 3}


def trust_of(key: Any, settings: TrustSettings) -> Trust:
    """A Trust for node `key`: migration decisions need only the settings and the node id."""

    async def no_dht(key: str) -> bytes | None:
        return None

    return Trust(settings, cast(Runtime, SimpleNamespace(node_key=key)), no_dht)


@pytest.mark.parametrize(
    ("settings", "refusal"),
    [
        (TrustSettings(accept_migrations=False), "accepts no migrations"),
        (TrustSettings(policy=TRUSTED_ROOTS), "not a trusted root"),
    ],
)
async def test_peers_cannot_push_agents_unasked(
    tmp_path: Path, settings: TrustSettings, refusal: str
) -> None:
    trust = trust_of(KEY_B, settings)
    async with two_nodes(tmp_path, policy=trust.migration_policy) as (a, b, moved):
        agent = await spawn(rt(a), "echo")
        with pytest.raises(MigrationError) as caught:
            await a.migrate(agent, node(b).peer_id)
        assert caught.value.reason == "untrusted"
        assert refusal in str(caught.value)
        assert rt(a).hosts(agent)  # it stays where it was
        assert not rt(b).hosts(agent)
        assert moved.agents == []
        assert b.stats()["received"]["refused:untrusted"] == 1
        assert trust.counts["refused:migration"] == 1


async def test_trusted_roots_takes_agents_of_listed_nodes(tmp_path: Path) -> None:
    trust = trust_of(KEY_B, TrustSettings(policy=TRUSTED_ROOTS, roots=(KEY_A.node_id.text,)))
    async with two_nodes(tmp_path, policy=trust.migration_policy) as (a, b, _moved):
        agent = await spawn(rt(a), "echo")
        await a.migrate(agent, node(b).peer_id)
        assert rt(b).hosts(agent)
        assert trust.counts["refused:migration"] == 0
