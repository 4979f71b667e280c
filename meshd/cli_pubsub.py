"""`meshd pubsub publish` and `meshd pubsub subscribe`: topics, through the daemon's control API.

`publish` is `POST /v1/send` with a `topic`. `subscribe` spawns an `external` agent on the
daemon, subscribes it to the topic (`POST /v1/agents/{id}/subscribe`), prints the messages that
reach its inbox as JSON lines (the long poll of `meshd agent attach`), and unsubscribes and
deletes the agent when it stops. Exit statuses are those of `meshd.cli_client`; `publish` also
exits with 1 when the message was not published.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import click

from meshd.api.client import ApiClient, ApiError
from meshd.cli_client import (
    CliError,
    api_client,
    api_options,
    data_dir_option,
    emit,
    inbox_wait_option,
    refused,
)

__all__ = ["pubsub_group"]

_INBOX_LIMIT = 100


class _Stop(Exception):
    """SIGTERM arrived: stop like Ctrl-C, cleaning up."""


@click.group("pubsub")
def pubsub_group() -> None:
    """Publish on topics and subscribe to them (GossipSub across the mesh)."""


@pubsub_group.command("publish")
@click.argument("topic")
@click.argument("body_json", metavar="BODY_JSON")
@click.option("--from", "sender", metavar="AGENT", help="Publish as this hosted agent.")
@click.option("--kind", default="pub", show_default=True, help="Message kind (1..64 chars).")
@api_options
def publish_command(
    topic: str,
    body_json: str,
    sender: str | None,
    kind: str,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Publish BODY_JSON (any JSON value) on TOPIC, signed as --from or the node's operator.

    Best effort: it reaches the agents subscribed to TOPIC on this node and on every node
    GossipSub reaches. Exits with 1 unless the outcome is published.
    """
    try:
        body = json.loads(body_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="BODY_JSON") from exc
    request: dict[str, Any] = {"topic": topic, "body": body, "kind": kind}
    if sender is not None:
        request["from"] = sender
    with api_client(data_dir, timeout=30.0) as client:
        try:
            result = client.post("/v1/send", request)
        except ApiError as exc:
            raise refused(exc, f"publish on {topic!r}") from exc
    emit(
        result,
        as_json,
        lambda r: f"{r['outcome']}: message {r['id']} from {r['from']} on {topic!r}",
    )
    if result.get("outcome") != "published":
        raise CliError(f"message on {topic!r} not published: {result.get('outcome')}")


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """Turn SIGTERM into `_Stop` while inside, so the subscriber cleans up as on Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cleanup(client: ApiClient, agent: str, topic: str) -> None:
    """Unsubscribe and delete the subscriber agent; say so on stderr if that fails."""
    try:
        client.post(f"/v1/agents/{agent}/unsubscribe", {"topic": topic})
        client.post(f"/v1/agents/{agent}/delete")
    except ApiError as exc:
        click.echo(
            f"meshd: could not delete the subscriber agent {agent} ({exc.message}); "
            f"delete it with `meshd agent delete {agent}`",
            err=True,
        )


@pubsub_group.command("subscribe")
@click.argument("topic")
@click.option(
    "--count", type=click.IntRange(min=1), metavar="N", help="Exit after printing N messages."
)
@click.option("--once", is_flag=True, help="Print one batch (waiting up to --wait s), then exit.")
@inbox_wait_option
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Accepted; the output is JSON lines anyway.")
def subscribe_command(
    topic: str,
    count: int | None,
    once: bool,
    wait: float,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Print TOPIC's messages as JSON lines as they come, until Ctrl-C, --count or --once.

    Each line is {"seq", "id", "from", "kind", "body", "reply_to", "topic", "created_ms"}.
    The messages are those published after the subscription is in place, which is when the
    line "subscribed to TOPIC as AGENT" appears on stderr (other nodes hear of it within about
    a second, GossipSub's heartbeat). Behind it is an `external` agent
    spawned for the purpose; it is unsubscribed and deleted on exit (also on SIGTERM). If
    this process is killed outright, delete it with `meshd agent delete AGENT`.
    """
    del as_json  # the output is JSON lines either way
    # The HTTP timeout must outlast the long poll, with room for a slow answer.
    with api_client(data_dir, timeout=wait + 15.0) as client, _sigterm_stops():
        try:
            spawned = client.post("/v1/agents", {"kind": "external"})
        except ApiError as exc:
            raise refused(exc, "cannot spawn a subscriber agent") from exc
        agent = spawned["agents"][0]["id"]
        try:
            try:
                client.post(f"/v1/agents/{agent}/subscribe", {"topic": topic})
            except ApiError as exc:
                raise refused(exc, f"cannot subscribe to {topic!r}") from exc
            click.echo(f"subscribed to {topic!r} as {agent}", err=True)
            _print_messages(client, agent, topic, count, once, wait)
        except (KeyboardInterrupt, _Stop):
            pass  # Ctrl-C or SIGTERM is how a subscription ends
        except BrokenPipeError:
            # The reader went away (e.g. `| head -1`). Point stdout at /dev/null so the
            # interpreter's final flush does not fail again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            _cleanup(client, agent, topic)


def _print_messages(
    client: ApiClient, agent: str, topic: str, count: int | None, once: bool, wait: float
) -> None:
    """Long-poll the agent's inbox, print the topic's messages, ack what was printed."""
    inbox = f"/v1/agents/{agent}/inbox"
    printed = 0
    while count is None or printed < count:
        limit = _INBOX_LIMIT if count is None else min(_INBOX_LIMIT, count - printed)
        try:
            messages = client.get(inbox, params={"wait": wait, "limit": limit})
        except ApiError as exc:
            raise refused(exc, f"cannot read the messages of {topic!r}") from exc
        for message in messages:
            # Anyone may send to the agent directly: only the topic's messages are shown.
            if message.get("topic") == topic:
                click.echo(json.dumps(message, ensure_ascii=False))
                printed += 1
        sys.stdout.flush()  # before the ack: an acked message must have been written
        if messages:
            try:
                client.post(f"{inbox}/ack", {"seq": messages[-1]["seq"]})
            except ApiError as exc:
                raise refused(exc, f"cannot ack the messages of {topic!r}") from exc
        if once:
            return
