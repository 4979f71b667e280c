"""Fuzzing the control API with schemathesis, from our own OpenAPI document, against a real
`meshd run` daemon on loopback TCP (with its bearer token): valid and invalid requests to every
operation; no 5xx, responses as documented, and the daemon still serves afterwards.

Bounded for CI: a few dozen examples per operation, the daemon capped at 2,000 agents, and the
long-poll and wait parameters clamped to 0.2 s so that no request can hold the run.
MESHD_FUZZ_EXAMPLES raises the number of examples for a longer campaign.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from meshd import __version__
from meshd.api.openapi import build_openapi
from meshd.api.server import ENDPOINTS
from meshd.localmesh import LocalDaemon, daemon_env

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).parent / "corpus"

SCHEMA = schemathesis.openapi.from_dict(build_openapi(ENDPOINTS, version=__version__))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
CAMPAIGN = os.environ.get("MESHD_FUZZ_EXAMPLES")
EXAMPLES = max(1, int(CAMPAIGN) // 6) if CAMPAIGN else 12
# Fields that make a request wait (long polls, replies): clamped so no call holds the run.
_WAITS = {"wait": 0.2, "timeout": 0.2, "wait_s": 0.2}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[str, dict[str, str], LocalDaemon]]:
    """A real daemon serving the API on loopback TCP: (base URL, auth headers, daemon)."""
    root = Path(tempfile.mkdtemp(prefix="meshd-fuzz-"))
    daemon = LocalDaemon(root / "n")
    daemon.init()
    port = _free_port()
    env = daemon_env(
        MESHD_API_TCP=f"127.0.0.1:{port}",
        MESHD_AGENTS_MAX="2000",
        MESHD_AGENTS_SPAWN_BURST="2000",
    )
    daemon.start(env=env)
    try:
        daemon.wait_ready()
        # Something to find by name and to message.
        daemon.post("/v1/agents", {"kind": "echo", "name": "fuzz-echo"})
        daemon.post("/v1/agents", {"kind": "external", "name": "fuzz-ext"})
        token = (daemon.data_dir / "api.token").read_text().strip()
        yield f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}, daemon
        assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.kill()
        shutil.rmtree(root, ignore_errors=True)


def _clamp(values: Any) -> None:
    if isinstance(values, dict):
        for key, limit in _WAITS.items():
            value = values.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > limit:
                values[key] = limit


@SCHEMA.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    derandomize=CAMPAIGN is None,  # CI runs the same inputs each time; campaigns explore
)
def test_api_never_fails_on_any_request(
    case: schemathesis.Case[Any], api: tuple[str, dict[str, str], LocalDaemon]
) -> None:
    base_url, headers, daemon = api
    _clamp(case.query)
    _clamp(case.body)
    try:
        case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=15)
    finally:
        # The process is alive after every request, whatever it was.
        assert daemon.proc is not None
        assert daemon.proc.poll() is None, daemon.log_tail()


def _corpus() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((CORPUS / "api.json").read_text())
    return entries


@pytest.mark.parametrize("entry", _corpus(), ids=lambda entry: entry["method"] + entry["path"])
def test_api_corpus(api: tuple[str, dict[str, str], LocalDaemon], entry: dict[str, Any]) -> None:
    """Requests that once got an answer the document did not allow, replayed."""
    base_url, headers, _daemon = api
    operation = SCHEMA[entry["path"]][entry["method"]]
    kwargs: dict[str, Any] = {}
    if entry["query"] is not None:
        kwargs["query"] = entry["query"]
    if entry["body"] is not None:
        kwargs["body"] = entry["body"]
    if "{id}" in entry["path"]:
        kwargs["path_parameters"] = {"id": "fuzz-echo"}
    response = operation.Case(**kwargs).call_and_validate(
        base_url=base_url, headers=headers, checks=CHECKS
    )
    assert 400 <= response.status_code < 500, entry["found"]
