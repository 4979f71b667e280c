"""The operations on messages and node metadata, mixed into `Store`: the bounded outbox of
at-least-once sends (its depth is counted by the writer, see `StoreCore`), the dedupe keys of
handled messages, `commit_delivery` (dedupe key, handler state and sends in one transaction),
and the meta key-value table. Each operation hands `_read` or `_write` a function that runs on
a worker thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from functools import partial

import trio
import trio.lowlevel

from meshd.store.agents import _dedupe_add, _save_state
from meshd.store.core import StoreCore, _all, _rowcount
from meshd.store.errors import OutboxFull, StoreClosed, StoreError
from meshd.store.rows import MessageKey, OutboxMessage, _outbox_message
from meshd.store.schema import _MAX_PARAMS, _OUTBOX_COLS, _RESERVED_META


class MessageOps(StoreCore):
    """`Store`'s operations on the outbox, dedupe keys and meta."""

    # -- outbox ---------------------------------------------------------------------------

    async def outbox_put(self, messages: Sequence[OutboxMessage]) -> None:
        """Persist messages to send at least once, all or none (`OutboxFull` past the bound)."""
        fn = partial(self._outbox_put, "outbox_put", list(messages))
        await self._write("outbox_put", fn)

    def _outbox_put(
        self, op: str, messages: Sequence[OutboxMessage], conn: sqlite3.Connection
    ) -> None:
        depth = self._outbox_depth + self._outbox_delta
        if depth + len(messages) > self._outbox_max:
            raise OutboxFull(f"{op}: outbox holds {depth} of {self._outbox_max} messages")
        try:
            conn.executemany(
                f"INSERT INTO outbox ({_OUTBOX_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (m.msg_id, m.sender, m.recipient, m.frame, m.attempts,
                     m.next_attempt_ms, m.expires_ms)
                    for m in messages
                ],
            )  # fmt: skip
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"{op}: duplicate message id ({exc})") from exc
        self._outbox_delta += len(messages)

    async def outbox_due(self, now_ms: int, limit: int) -> list[OutboxMessage]:
        """Unexpired messages whose next attempt is due at `now_ms`, earliest first."""
        sql = (
            f"SELECT {_OUTBOX_COLS} FROM outbox WHERE next_attempt_ms <= ? AND expires_ms > ? "
            "ORDER BY next_attempt_ms LIMIT ?"
        )
        rows = await self._read("outbox_due", _all(sql, now_ms, now_ms, limit))
        return [_outbox_message(r) for r in rows]

    async def outbox_reschedule(self, msg_id: bytes, next_attempt_ms: int) -> bool:
        """Count an attempt and set the next one; False if the message is no longer queued."""
        sql = "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ? WHERE msg_id = ?"
        fn = _rowcount(sql, next_attempt_ms, msg_id)
        return await self._write("outbox_reschedule", fn, atomic=True) == 1

    async def outbox_ack(self, msg_ids: Iterable[bytes]) -> int:
        """Remove acknowledged messages; return how many were queued."""
        ids = list(msg_ids)

        def run(conn: sqlite3.Connection) -> int:
            removed = 0
            for i in range(0, len(ids), _MAX_PARAMS):
                chunk = ids[i : i + _MAX_PARAMS]
                sql = f"DELETE FROM outbox WHERE msg_id IN ({', '.join('?' * len(chunk))})"
                removed += conn.execute(sql, chunk).rowcount
            self._outbox_delta -= removed
            return removed

        return await self._write("outbox_ack", run)

    async def outbox_depth(self) -> int:
        """Number of messages in the outbox (committed)."""
        if not self._open:
            raise StoreClosed("outbox_depth: the store is not open")
        await trio.lowlevel.checkpoint()  # counted by the writer: no need to ask SQLite
        return self._outbox_depth

    async def outbox_drop_expired(self, now_ms: int, limit: int = 10_000) -> list[MessageKey]:
        """Remove up to `limit` messages expired at `now_ms`; return their keys to report."""

        def run(conn: sqlite3.Connection) -> list[MessageKey]:
            sql = (
                "DELETE FROM outbox WHERE msg_id IN (SELECT msg_id FROM outbox "
                "WHERE expires_ms <= ? ORDER BY expires_ms LIMIT ?) RETURNING sender, msg_id"
            )
            keys = [MessageKey(r[0], r[1]) for r in conn.execute(sql, (now_ms, limit))]
            self._outbox_delta -= len(keys)
            return keys

        return await self._write("outbox_drop_expired", run, atomic=True)

    # -- dedupe ---------------------------------------------------------------------------

    async def dedupe_contains(self, sender: bytes, msg_id: bytes) -> bool:
        """Whether (sender, msg_id) was already recorded as handled (a read; no write)."""
        sql = "SELECT 1 FROM dedupe WHERE sender = ? AND msg_id = ?"
        return bool(await self._read("dedupe_contains", _all(sql, sender, msg_id)))

    async def dedupe_check_and_add(self, sender: bytes, msg_id: bytes, expires_ms: int) -> bool:
        """Record (sender, msg_id); True if it was new, False if already recorded."""
        fn = partial(_dedupe_add, sender, msg_id, expires_ms)
        return await self._write("dedupe_check_and_add", fn, atomic=True)

    async def commit_delivery(
        self,
        sender: bytes,
        msg_id: bytes,
        expires_ms: int,
        agent: bytes,
        new_state: bytes | None,
        expected_version: int | None,
        *,
        now_ms: int,
        outbox: Sequence[OutboxMessage] = (),
    ) -> bool:
        """In ONE transaction: record the dedupe key, the handler's new state and its sends;
        False (nothing written) if the message was already handled."""
        messages = list(outbox)

        def run(conn: sqlite3.Connection) -> bool:
            if not _dedupe_add(sender, msg_id, expires_ms, conn):
                return False
            if new_state is not None:
                _save_state("commit_delivery", agent, new_state, expected_version, now_ms, conn)
            if messages:
                self._outbox_put("commit_delivery", messages, conn)
            return True

        return await self._write("commit_delivery", run)

    async def dedupe_prune(self, now_ms: int) -> int:
        """Forget dedupe keys expired at `now_ms`; return how many."""
        fn = _rowcount("DELETE FROM dedupe WHERE expires_ms <= ?", now_ms)
        return await self._write("dedupe_prune", fn, atomic=True)

    # -- meta -----------------------------------------------------------------------------

    async def get_meta(self, key: str) -> bytes | None:
        """The value stored under `key`, or None."""
        rows = await self._read("get_meta", _all("SELECT value FROM meta WHERE key = ?", key))
        return bytes(rows[0][0]) if rows else None

    async def set_meta(self, key: str, value: bytes) -> None:
        """Store `value` under `key` (not the reserved 'schema_version')."""
        if key in _RESERVED_META:
            raise StoreError(f"set_meta: {key!r} is managed by the store")
        sql = (
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
        )
        await self._write("set_meta", _rowcount(sql, key, bytes(value)), atomic=True)

    async def delete_meta(self, key: str) -> bool:
        """Remove the value stored under `key` (not 'schema_version'); whether there was one."""
        if key in _RESERVED_META:
            raise StoreError(f"delete_meta: {key!r} is managed by the store")
        sql = "DELETE FROM meta WHERE key = ?"
        return bool(await self._write("delete_meta", _rowcount(sql, key), atomic=True))


# -- statement helpers (run on worker threads) ----------------------------------------------
