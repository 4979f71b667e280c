"""The operations on agents and their inboxes, mixed into `Store`: insert, read, page and
iterate agents, save state under optimistic versioning, change lifecycle and budget, tombstone,
export and import for migration, and the bounded per-agent inbox (an inbox belongs to its
agent: it migrates and is dropped with it). Each operation hands `_read` or `_write` a function
that runs on a worker thread; the functions shared with `meshd.store.messages` (`_save_state`)
are module-level.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import Any

from meshd.store.core import StoreCore, _all, _rowcount
from meshd.store.errors import (
    AgentGone,
    AgentNotFound,
    DuplicateAgent,
    InboxFull,
    StoreConflict,
    StoreError,
    _show,
)
from meshd.store.rows import (
    _STORED_LIFECYCLES,
    AgentExport,
    AgentRow,
    IndexEntry,
    Lifecycle,
    _agent,
    _row_tuple,
    _stored_lifecycle,
)
from meshd.store.schema import _AGENT_COLS, _INSERT_AGENT
from protocol.ids import AGENT_ID_LEN


class AgentOps(StoreCore):
    """`Store`'s operations on agents and their inboxes."""

    # -- agents ---------------------------------------------------------------------------

    async def insert_agents(self, rows: Sequence[AgentRow]) -> None:
        """Insert new agents, all or none; a taken id or name raises `DuplicateAgent`."""
        await self._write("insert_agents", partial(_insert_agents, list(rows)), atomic=True)

    async def get_agent(self, agent_id: bytes) -> AgentRow | None:
        """The agent with this id (tombstones included), or None."""
        sql = f"SELECT {_AGENT_COLS} FROM agents WHERE id = ?"
        return await self._read("get_agent", partial(_fetch_agent, sql, agent_id))

    async def get_agent_by_name(self, name: str) -> AgentRow | None:
        """The live agent with this name, or None (a deleted agent frees its name)."""
        sql = f"SELECT {_AGENT_COLS} FROM agents WHERE name = ?"
        return await self._read("get_agent_by_name", partial(_fetch_agent, sql, name))

    async def list_agents(
        self,
        *,
        lifecycle: Lifecycle | str | None = None,
        kind: str | None = None,
        limit: int = 100,
        after: bytes | None = None,
    ) -> list[AgentRow]:
        """A page of agents in creation order after the agent `after`; None: all but 'gone'."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        stored = None if lifecycle is None else _stored_lifecycle("list_agents", lifecycle)
        fn = partial(_list_agents, stored, kind, limit, after)
        return await self._read("list_agents", fn)

    async def count_agents(self) -> dict[str, int]:
        """Number of agents by stored lifecycle ('dormant', 'suspended', 'gone')."""

        def count(conn: sqlite3.Connection) -> dict[str, int]:
            counts = dict.fromkeys(_STORED_LIFECYCLES, 0)
            sql = "SELECT lifecycle, count(*) FROM agents GROUP BY lifecycle"
            counts.update(conn.execute(sql).fetchall())
            return counts

        return await self._read("count_agents", count)

    async def iter_agent_ids(
        self, batch: int = 100_000, *, include_gone: bool = False
    ) -> AsyncIterator[list[bytes]]:
        """Yield the ids of all agents (tombstones only if asked) in lists of up to `batch`."""
        async for entries in self.iter_agent_index(batch, include_gone=include_gone):
            yield [entry.id for entry in entries]

    async def iter_agent_index(
        self, batch: int = 100_000, *, include_gone: bool = False
    ) -> AsyncIterator[list[IndexEntry]]:
        """Yield (id, lifecycle, kind) of all agents in creation order, in lists of `batch`."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        where = "" if include_gone else "AND lifecycle != 'gone'"
        sql = (
            f"SELECT rowid, id, lifecycle, kind FROM agents WHERE rowid > ? {where} "
            "ORDER BY rowid LIMIT ?"
        )

        def page(last: int, conn: sqlite3.Connection) -> tuple[int, list[IndexEntry]]:
            rows = conn.execute(sql, (last, batch)).fetchall()
            return (rows[-1][0] if rows else last), [IndexEntry(*r[1:]) for r in rows]

        last = 0
        while True:
            last, entries = await self._read("iter_agent_index", partial(page, last))
            if not entries:
                return
            yield entries

    async def save_state(
        self, agent_id: bytes, state: bytes, expected_version: int | None, now_ms: int
    ) -> int:
        """Replace the agent's state if its version is `expected_version` (None: any); return
        the new version, or raise `StoreConflict`."""
        fn = partial(_save_state, "save_state", agent_id, state, expected_version, now_ms)
        return await self._write("save_state", fn, atomic=True)

    async def set_lifecycle(self, agent_id: bytes, lifecycle: Lifecycle | str, now_ms: int) -> None:
        """Record 'dormant' or 'suspended' ('active' is stored as 'dormant'); not 'gone'."""
        stored = _stored_lifecycle("set_lifecycle", lifecycle)
        if stored == "gone":
            raise StoreError("set_lifecycle: use delete_agent to make an agent gone")

        def run(conn: sqlite3.Connection) -> None:
            sql = (
                "UPDATE agents SET lifecycle = ?, updated_ms = ? "
                "WHERE id = ? AND lifecycle != 'gone'"
            )
            if conn.execute(sql, (stored, now_ms, agent_id)).rowcount == 0:
                _raise_missing(conn, "set_lifecycle", agent_id)

        await self._write("set_lifecycle", run, atomic=True)

    async def set_budget(
        self, agent_id: bytes, budget: int, now_ms: int, birth_cert: bytes | None = None
    ) -> None:
        """Set a live agent's remaining spawn budget, pinning its birth certificate if given.

        The certificate names the budget the agent was born with; it is pinned (kept if one
        is already stored) in the same write that first lowers the budget, so the two agree.
        """
        if budget < 0:
            raise StoreError(f"set_budget: agent {_show(agent_id)}: budget {budget} < 0")

        def run(conn: sqlite3.Connection) -> None:
            sql = (
                "UPDATE agents SET budget = ?, birth_cert = COALESCE(birth_cert, ?), "
                "updated_ms = ? WHERE id = ? AND lifecycle != 'gone'"
            )
            if conn.execute(sql, (budget, birth_cert, now_ms, agent_id)).rowcount == 0:
                _raise_missing(conn, "set_budget", agent_id)

        await self._write("set_budget", run, atomic=True)

    async def delete_agent(self, agent_id: bytes, now_ms: int) -> bool:
        """Tombstone the agent: drop its secret, state, name and inbox; False if already gone."""

        def run(conn: sqlite3.Connection) -> bool:
            sql = (
                "UPDATE agents SET lifecycle = 'gone', secret = X'', state = X'', name = NULL, "
                "expires_ms = NULL, updated_ms = ? WHERE id = ? AND lifecycle != 'gone'"
            )
            if conn.execute(sql, (now_ms, agent_id)).rowcount == 0:
                if _exists(conn, agent_id):
                    return False
                raise AgentNotFound("delete_agent", agent_id)
            conn.execute("DELETE FROM inbox WHERE agent = ?", (agent_id,))
            return True

        return await self._write("delete_agent", run)

    async def expired_agents(self, now_ms: int, limit: int) -> list[bytes]:
        """Ids of live agents whose TTL deadline is at or before `now_ms`, soonest first."""
        sql = (
            "SELECT id FROM agents WHERE expires_ms IS NOT NULL AND expires_ms <= ? "
            "AND lifecycle != 'gone' ORDER BY expires_ms LIMIT ?"
        )
        return [r[0] for r in await self._read("expired_agents", _all(sql, now_ms, limit))]

    async def bump_record_seq(self, agent_id: bytes) -> int:
        """Increment and return the agent record's sequence number (tombstones too)."""

        def run(conn: sqlite3.Connection) -> int:
            sql = "UPDATE agents SET record_seq = record_seq + 1 WHERE id = ? RETURNING record_seq"
            row = conn.execute(sql, (agent_id,)).fetchone()
            if row is None:
                raise AgentNotFound("bump_record_seq", agent_id)
            return int(row[0])

        return await self._write("bump_record_seq", run, atomic=True)

    async def export_agent(self, agent_id: bytes) -> AgentExport:
        """The agent's row and waiting inbox frames, read in one snapshot, for migration."""

        def run(conn: sqlite3.Connection) -> AgentExport:
            conn.execute("BEGIN")  # one snapshot for the row and its inbox
            row = _fetch_agent(f"SELECT {_AGENT_COLS} FROM agents WHERE id = ?", agent_id, conn)
            if row is None:
                raise AgentNotFound("export_agent", agent_id)
            if row.lifecycle == "gone":
                raise AgentGone("export_agent", agent_id)
            sql = "SELECT frame FROM inbox WHERE agent = ? ORDER BY seq"
            frames = tuple(r[0] for r in conn.execute(sql, (agent_id,)))
            return AgentExport(row, frames)

        return await self._read("export_agent", run)

    async def import_agent(self, exported: AgentExport, now_ms: int) -> None:
        """Store a migrated agent (replacing a tombstone of the same id) with its inbox."""
        fn = partial(self._import_agent, exported, now_ms)
        await self._write("import_agent", fn)

    def _import_agent(self, exported: AgentExport, now_ms: int, conn: sqlite3.Connection) -> None:
        row = exported.row
        if row.lifecycle == "gone":
            raise AgentGone("import_agent", row.id)
        old = conn.execute("SELECT lifecycle, record_seq FROM agents WHERE id = ?", (row.id,))
        existing = old.fetchone()
        if existing is not None and existing[0] != "gone":
            raise DuplicateAgent("import_agent", row.id, "id already hosted here")
        # Sequence numbers stay monotonic across a round trip A -> B -> A.
        seq = max(row.record_seq, existing[1] if existing else 0)
        values = (*_row_tuple("import_agent", row, {})[:13], seq, now_ms)
        if existing is not None:
            conn.execute("DELETE FROM agents WHERE id = ?", (row.id,))
        try:
            conn.execute(_INSERT_AGENT, values)
        except sqlite3.IntegrityError as exc:
            raise _duplicate("import_agent", [row], conn, exc) from exc
        self._inbox_put("import_agent", row.id, exported.inbox, now_ms, conn)

    # -- inbox ----------------------------------------------------------------------------

    async def inbox_put(self, agent_id: bytes, frames: Sequence[bytes], now_ms: int) -> None:
        """Append frames to the agent's inbox, all or none; past the bound raise `InboxFull`."""
        fn = partial(self._inbox_put, "inbox_put", agent_id, list(frames), now_ms)
        await self._write("inbox_put", fn)

    def _inbox_put(
        self,
        op: str,
        agent_id: bytes,
        frames: Sequence[bytes],
        now_ms: int,
        conn: sqlite3.Connection,
    ) -> None:
        if not frames:
            return
        row = conn.execute("SELECT lifecycle FROM agents WHERE id = ?", (agent_id,)).fetchone()
        if row is None:
            raise AgentNotFound(op, agent_id)
        if row[0] == "gone":
            raise AgentGone(op, agent_id)
        sql = "SELECT count(*), coalesce(sum(length(frame)), 0) FROM inbox WHERE agent = ?"
        count, size = conn.execute(sql, (agent_id,)).fetchone()
        if count + len(frames) > self._inbox_max_frames:
            raise InboxFull(op, agent_id, f"{count} + {len(frames)} > {self._inbox_max_frames}")
        added = sum(len(f) for f in frames)
        if size + added > self._inbox_max_bytes:
            raise InboxFull(op, agent_id, f"{size} + {added} > {self._inbox_max_bytes} bytes")
        conn.executemany(
            "INSERT INTO inbox(agent, frame, received_ms) VALUES (?, ?, ?)",
            [(agent_id, frame, now_ms) for frame in frames],
        )

    async def inbox_put_once(
        self,
        agent_id: bytes,
        frame: bytes,
        sender: bytes,
        msg_id: bytes,
        expires_ms: int,
        now_ms: int,
    ) -> bool:
        """In ONE transaction: queue an at-least-once message and record its dedupe key;
        False (nothing written) if (sender, msg_id) was already recorded."""

        def run(conn: sqlite3.Connection) -> bool:
            if not _dedupe_add(sender, msg_id, expires_ms, conn):
                return False
            self._inbox_put("inbox_put_once", agent_id, [frame], now_ms, conn)
            return True

        return await self._write("inbox_put_once", run)

    async def inbox_take(self, agent_id: bytes, limit: int) -> list[tuple[int, bytes]]:
        """The agent's oldest waiting frames as (seq, frame), without removing them."""
        sql = "SELECT seq, frame FROM inbox WHERE agent = ? ORDER BY seq LIMIT ?"
        return [(r[0], r[1]) for r in await self._read("inbox_take", _all(sql, agent_id, limit))]

    async def inbox_ack(self, agent_id: bytes, up_to_seq: int) -> int:
        """Remove the agent's frames with seq <= `up_to_seq`; return how many."""
        fn = _rowcount("DELETE FROM inbox WHERE agent = ? AND seq <= ?", agent_id, up_to_seq)
        return await self._write("inbox_ack", fn, atomic=True)

    async def inbox_count(self, agent_id: bytes) -> int:
        """Number of frames waiting in the agent's inbox."""
        sql = "SELECT count(*) FROM inbox WHERE agent = ?"
        return int((await self._read("inbox_count", _all(sql, agent_id)))[0][0])


# -- statement helpers (run on worker threads) ----------------------------------------------


def _exists(conn: sqlite3.Connection, agent_id: bytes) -> bool:
    return conn.execute("SELECT 1 FROM agents WHERE id = ?", (agent_id,)).fetchone() is not None


def _raise_missing(conn: sqlite3.Connection, op: str, agent_id: bytes) -> None:
    if _exists(conn, agent_id):
        raise AgentGone(op, agent_id)
    raise AgentNotFound(op, agent_id)


def _fetch_agent(sql: str, key: object, conn: sqlite3.Connection) -> AgentRow | None:
    row = conn.execute(sql, (key,)).fetchone()
    return None if row is None else _agent(row)


def _list_agents(
    lifecycle: str | None,
    kind: str | None,
    limit: int,
    after: bytes | None,
    conn: sqlite3.Connection,
) -> list[AgentRow]:
    clauses = ["lifecycle != 'gone'" if lifecycle is None else "lifecycle = ?"]
    params: list[Any] = [] if lifecycle is None else [lifecycle]
    if kind is not None:
        clauses.append("kind = ?")
        params.append(kind)
    if after is not None:
        cursor = conn.execute("SELECT rowid FROM agents WHERE id = ?", (after,)).fetchone()
        if cursor is None:
            raise AgentNotFound("list_agents (after)", after)
        clauses.append("rowid > ?")
        params.append(cursor[0])
    sql = f"SELECT {_AGENT_COLS} FROM agents WHERE {' AND '.join(clauses)} ORDER BY rowid LIMIT ?"
    return [_agent(r) for r in conn.execute(sql, [*params, limit])]


def _insert_agents(rows: list[AgentRow], conn: sqlite3.Connection) -> None:
    caps_cache: dict[tuple[str, ...], str] = {}
    values = []
    for row in rows:
        if not isinstance(row.id, bytes) or len(row.id) != AGENT_ID_LEN:
            raise StoreError(f"insert_agents: agent id {_show(row.id)} is not 32 bytes")
        if row.lifecycle == "gone":
            raise StoreError(f"insert_agents: agent {_show(row.id)}: cannot insert as 'gone'")
        values.append(_row_tuple("insert_agents", row, caps_cache))
    conn.execute("SAVEPOINT ins")
    try:
        conn.executemany(_INSERT_AGENT, values)
    except sqlite3.IntegrityError as exc:
        # Undo the rows inserted before the failure so the diagnosis sees the old table.
        conn.execute("ROLLBACK TO ins")
        raise _duplicate("insert_agents", rows, conn, exc) from exc
    finally:
        conn.execute("RELEASE ins")


def _duplicate(
    op: str, rows: Sequence[AgentRow], conn: sqlite3.Connection, exc: sqlite3.IntegrityError
) -> StoreError:
    """Name the first agent whose id or name is taken (error path only)."""
    ids: set[bytes] = set()
    names: set[str] = set()
    for row in rows:
        if row.id in ids:
            return DuplicateAgent(op, row.id, "id appears twice in this call")
        if row.name is not None and row.name in names:
            return DuplicateAgent(op, row.id, f"name {row.name!r} appears twice in this call")
        ids.add(row.id)
        if row.name is not None:
            names.add(row.name)
    for row in rows:
        if _exists(conn, row.id):
            return DuplicateAgent(op, row.id, "id already exists")
        if row.name is not None:
            taken = conn.execute("SELECT id FROM agents WHERE name = ?", (row.name,)).fetchone()
            if taken is not None:
                return DuplicateAgent(
                    op, row.id, f"name {row.name!r} is taken by {_show(taken[0])}"
                )
    return StoreError(f"{op}: {exc}")


def _save_state(
    op: str,
    agent_id: bytes,
    state: bytes,
    expected_version: int | None,
    now_ms: int,
    conn: sqlite3.Connection,
) -> int:
    sql = (
        "UPDATE agents SET state = ?, state_version = state_version + 1, updated_ms = ? "
        "WHERE id = ? AND lifecycle != 'gone' AND (? IS NULL OR state_version = ?) "
        "RETURNING state_version"
    )
    row = conn.execute(sql, (state, now_ms, agent_id, expected_version, expected_version))
    found = row.fetchone()
    if found is not None:
        return int(found[0])
    current = conn.execute(
        "SELECT lifecycle, state_version FROM agents WHERE id = ?", (agent_id,)
    ).fetchone()
    if current is None:
        raise AgentNotFound(op, agent_id)
    if current[0] == "gone":
        raise AgentGone(op, agent_id)
    assert expected_version is not None
    raise StoreConflict(op, agent_id, expected_version, int(current[1]))


def _dedupe_add(sender: bytes, msg_id: bytes, expires_ms: int, conn: sqlite3.Connection) -> bool:
    sql = "INSERT INTO dedupe(sender, msg_id, expires_ms) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
    return conn.execute(sql, (sender, msg_id, expires_ms)).rowcount == 1
