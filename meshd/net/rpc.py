"""One-shot requests between nodes: one libp2p stream per request, for rare, large exchanges.

Agent migration (`/meshd/migrate/1.0.0`) is the first user: rare enough that a fresh stream
per request costs nothing worth saving, and large enough (an agent's state and inbox) that
it must not share the message streams. Each protocol has at most one handler.

Wire, on one stream, integers big-endian:

    request   u32 length | payload                       (at most `max_request_bytes`)
    response  u8 status  | u32 length | body             (at most `max_response_bytes`)

Status 0: the body is the handler's answer. Status 1: the request failed at this layer
(too large, handler failed or timed out, node busy) and the body is a short UTF-8 reason.
The requester closes the stream after the response; either side resets it on any failure.

Inbound, at most `max_inbound` requests (and `max_inbound_per_peer` per peer) are served at
once; beyond that the requester gets status 1 `busy`. Reading the request, running the
handler and writing the answer are each bounded in time. A handler's exception never
reaches py-libp2p, which runs every stream handler of a connection in one nursery, so an
escaping exception would cancel the connection's other streams: it is caught, counted and
logged, and the stream is reset.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from meshd.net.types import RequestError, RequestHandler
from protocol.ids import NodeId

__all__ = ["STATUS_ERROR", "STATUS_OK", "RequestSettings", "RequestStreams"]

log = logging.getLogger("meshd.net.rpc")

STATUS_OK = 0
STATUS_ERROR = 1
_LENGTH = struct.Struct(">I")
_RESPONSE_HEAD = struct.Struct(">BI")
_MAX_REASON = 200
_READ_CHUNK = 1024 * 1024
_CLOSE_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class RequestSettings:
    """Sizes, concurrency and timeouts of request streams."""

    max_request_bytes: int = 16 * 1024 * 1024
    max_response_bytes: int = 16 * 1024 * 1024
    max_inbound: int = 4
    max_inbound_per_peer: int = 2
    read_timeout_s: float = 30.0
    handler_timeout_s: float = 60.0
    write_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_response_bytes", "max_inbound"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_inbound_per_peer < 1:
            raise ValueError("max_inbound_per_peer must be at least 1")
        if min(self.read_timeout_s, self.handler_timeout_s, self.write_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")


class _Refused(Exception):
    """The request is answered with status 1 and this reason."""


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


async def _read_exact(stream: Any, size: int) -> bytes:
    """Read exactly `size` bytes; py-libp2p returns whatever has arrived, up to the ask."""
    parts: list[bytes] = []
    left = size
    while left:
        data = await stream.read(min(left, _READ_CHUNK))
        if not data:
            raise EOFError(f"stream ended {left} bytes early")
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


class RequestStreams:
    """Request/response protocols of one libp2p host, outbound and inbound."""

    def __init__(self, host: Any, settings: RequestSettings | None = None) -> None:
        self._host = host
        self._self_id = str(host.get_id())
        self._settings = settings or RequestSettings()
        self._handlers: dict[str, RequestHandler] = {}
        self._inbound = 0
        self._inbound_by_peer: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()

    # -- API ------------------------------------------------------------------------------

    def set_handler(self, protocol: str, handler: RequestHandler | None) -> None:
        """Answer requests on `protocol` with `handler`; None stops accepting them."""
        if handler is None:
            self._handlers.pop(protocol, None)
            self._host.remove_stream_handler(TProtocol(protocol))
            return
        self._handlers[protocol] = handler
        self._host.set_stream_handler(TProtocol(protocol), partial(self._serve, protocol))

    async def request(
        self,
        peer_id: str,
        addrs: Sequence[str],
        protocol: str,
        payload: bytes,
        *,
        timeout: float,
    ) -> bytes:
        """Send one request and return the answer; `RequestError` says why there is none."""
        limit = self._settings.max_request_bytes
        if len(payload) > limit:
            raise RequestError(f"request of {len(payload)} bytes is over the {limit}-byte limit")
        if peer_id == self._self_id:
            raise RequestError("that peer id is this node")
        try:
            peer = ID(NodeId.from_text(peer_id).raw)
        except ValueError as exc:
            raise RequestError(str(exc)) from exc
        self.counters["requests"] += 1
        stream: Any = None
        answered = False
        try:
            with trio.fail_after(timeout):
                stream = await self._open(peer, addrs, protocol)
                await stream.write(_LENGTH.pack(len(payload)) + payload)
                status, length = _RESPONSE_HEAD.unpack(
                    await _read_exact(stream, _RESPONSE_HEAD.size)
                )
                if length > self._settings.max_response_bytes:
                    raise RequestError(f"the answer of {length} bytes is over the limit")
                body = await _read_exact(stream, length)
                answered = True
        except trio.TooSlowError:
            self.counters["request_timeouts"] += 1
            raise RequestError(f"no answer from {peer_id} within {timeout:g} s") from None
        except RequestError:
            self.counters["requests_failed"] += 1
            raise
        except Exception as exc:  # py-libp2p's dial and stream errors have no common base
            self.counters["requests_failed"] += 1
            raise RequestError(f"{protocol} with {peer_id} failed: {_short(exc)}") from exc
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await (self._close(stream) if answered else self._reset(stream))
        if status != STATUS_OK:
            self.counters["requests_refused"] += 1
            reason = body[:_MAX_REASON].decode("utf-8", "replace") or "no reason given"
            raise RequestError(f"{peer_id} could not answer: {reason}")
        self.counters["requests_answered"] += 1
        return body

    def stats(self) -> dict[str, Any]:
        """Counters, and the requests being served now."""
        out: dict[str, Any] = dict(sorted(self.counters.items()))
        out["inbound_now"] = self._inbound
        return out

    # -- outbound -------------------------------------------------------------------------

    async def _open(self, peer: ID, addrs: Sequence[str], protocol: str) -> Any:
        network = self._host.get_network()
        if not network.connections.get(peer) and addrs:
            # py-libp2p refuses for 60 s to redial a peer that failed once; a request is
            # rare and explicit, so it always gets its own dial.
            network.unblock_peer(peer)
            maddrs = [Multiaddr(addr.split("/p2p/")[0]) for addr in addrs]
            await self._host.connect(PeerInfo(peer, maddrs))
        return await self._host.new_stream(peer, [TProtocol(protocol)])

    # -- inbound --------------------------------------------------------------------------

    async def _serve(self, protocol: str, stream: Any) -> None:
        """py-libp2p's handler for one inbound request stream; nothing escapes it."""
        settings = self._settings
        peer_id = str(stream.muxed_conn.peer_id)
        handler = self._handlers.get(protocol)
        if handler is None:
            self.counters["inbound_refused"] += 1
            await self._reset(stream)
            return
        if (
            self._inbound >= settings.max_inbound
            or self._inbound_by_peer[peer_id] >= settings.max_inbound_per_peer
        ):
            self.counters["inbound_busy"] += 1
            if not await self._answer_error(stream, "busy"):
                await self._reset(stream)
            return
        self._inbound += 1
        self._inbound_by_peer[peer_id] += 1
        done = False
        try:
            done = await self._handle(protocol, peer_id, stream, handler)
        except Exception:
            self.counters["inbound_errors"] += 1
            log.exception("request stream %s from %s failed", protocol, peer_id)
        finally:
            self._inbound -= 1
            self._inbound_by_peer[peer_id] -= 1
            if not self._inbound_by_peer[peer_id]:
                del self._inbound_by_peer[peer_id]
            if not done:
                with trio.CancelScope(shield=True):
                    await self._reset(stream)

    async def _handle(
        self, protocol: str, peer_id: str, stream: Any, handler: RequestHandler
    ) -> bool:
        """Read, answer and close one request; False if the stream must be reset."""
        settings = self._settings
        payload: bytes | None = None
        try:
            with trio.move_on_after(settings.read_timeout_s):
                (length,) = _LENGTH.unpack(await _read_exact(stream, _LENGTH.size))
                if length > settings.max_request_bytes:
                    raise _Refused(f"request of {length} bytes is over the limit")
                payload = await _read_exact(stream, length)
        except _Refused as exc:
            self.counters["inbound_too_large"] += 1
            log.info("request %s from %s refused: %s", protocol, peer_id, exc)
            return await self._answer_error(stream, str(exc))
        except Exception as exc:  # EOF or reset: the peer gave up on its request
            self.counters["inbound_broken"] += 1
            log.debug("request %s from %s broke: %s", protocol, peer_id, _short(exc))
            return False
        if payload is None:
            self.counters["inbound_read_timeouts"] += 1
            log.info("request %s from %s not received in time", protocol, peer_id)
            return False
        self.counters["inbound_requests"] += 1
        try:
            with trio.fail_after(settings.handler_timeout_s):
                answer = await handler(peer_id, payload)
        except trio.TooSlowError:
            self.counters["handler_timeouts"] += 1
            log.warning("handler of %s from %s timed out", protocol, peer_id)
            return await self._answer_error(stream, "the handler timed out")
        except Exception:
            self.counters["handler_errors"] += 1
            log.exception("handler of %s from %s failed", protocol, peer_id)
            return await self._answer_error(stream, "the handler failed")
        if not isinstance(answer, bytes) or len(answer) > settings.max_response_bytes:
            self.counters["handler_errors"] += 1
            log.error("handler of %s gave an answer that cannot be sent", protocol)
            return await self._answer_error(stream, "the handler failed")
        return await self._write(stream, STATUS_OK, answer)

    async def _answer_error(self, stream: Any, reason: str) -> bool:
        return await self._write(stream, STATUS_ERROR, reason.encode("utf-8")[:_MAX_REASON])

    async def _write(self, stream: Any, status: int, body: bytes) -> bool:
        """Write a response and close our side; False if that failed."""
        with trio.move_on_after(self._settings.write_timeout_s):
            try:
                await stream.write(_RESPONSE_HEAD.pack(status, len(body)) + body)
            except Exception as exc:  # py-libp2p's stream errors have no common base
                self.counters["inbound_write_failed"] += 1
                log.debug("answer write failed: %s", _short(exc))
                return False
            await self._close(stream)
            return True
        self.counters["inbound_write_timeouts"] += 1
        return False

    # -- shared ---------------------------------------------------------------------------

    async def _reset(self, stream: Any) -> None:
        with trio.move_on_after(_CLOSE_TIMEOUT_S):
            try:
                await stream.reset()
            except Exception as exc:  # already gone: nothing left to reset
                log.debug("stream reset failed: %s", _short(exc))

    async def _close(self, stream: Any) -> None:
        with trio.move_on_after(_CLOSE_TIMEOUT_S):
            try:
                await stream.close()
            except Exception as exc:  # already gone: nothing left to close
                log.debug("stream close failed: %s", _short(exc))
