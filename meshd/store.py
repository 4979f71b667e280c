"""The node's SQLite database: agents, their state and inbox, the outbox, dedupe keys, meta.

Lifecycle: `Store` is a resource, not a service. Open it around everything that uses it:

    async with Store(data_dir / "meshd.db") as store:
        async with trio.open_nursery() as nursery:   # the services that use the store
            ...

Leaving the block (normally or by cancellation) stops taking writes, commits every write
already queued, then closes the connections. A `serve()` started in the node's nursery would
be cancelled together with its users, in no defined order; the block guarantees the writer
outlives every caller and drains after them.

Threads: one write connection and a small pool of read connections (WAL lets reads run while
the writer commits). The event loop never touches disk: every sqlite3 call runs on a worker
thread. Writes go through a bounded trio memory channel (callers wait when it is full: that is
the backpressure) to one writer task, which takes everything queued so far as one group, runs
the group on a worker thread in ONE transaction (each write inside its own SAVEPOINT, so a
failing write is rolled back alone and reported to its caller only), commits, and then wakes
every caller of the group: when `await store.x(...)` returns, the write is durable
("acknowledged"). The writer task hands the group to `trio.to_thread.run_sync` with a private
limiter of 1 rather than running a dedicated thread that pulls from trio: errors and
cancellation then follow trio's structure (a transaction in progress always completes, since
the thread call is uncancellable), there is no thread to join or orphan when the loop ends,
and the group travels as an argument, not through a second queue. The cost is one thread hop
per group, shared by the whole group.

Durability: WAL with `synchronous=NORMAL`. A commit writes its WAL frames to the OS before it
returns but does not fsync each time, so a committed transaction survives the death of the
process (SIGKILL, crash), which is the requirement here; a power failure may lose the last
few commits but never corrupts the file. `Store(..., synchronous="FULL")` fsyncs every group
if a deployment needs power-loss durability (group commit keeps that affordable).

Lifecycle values: 'active' versus 'dormant' is runtime state (is the agent in memory?). After
a restart nothing is in memory, so a stored 'active' would be stale: the store records both as
'dormant' ('active' is accepted and stored as 'dormant'). 'gone' is only written by
`delete_agent`, which keeps a tombstone row (id, kind, caps, provenance, record_seq) and drops
the secret, the state, the name and the inbox.

Ordering: agents are listed and iterated in creation order (SQLite's rowid); the pagination
cursor `after` is the id of the last agent of the previous page. Indexes then grow at their
end instead of at random places, which keeps mass inserts fast (see bench/store_bench.py).
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, Generic, Literal, NamedTuple, TypeVar

import trio
import trio.lowlevel

from protocol.ids import AGENT_ID_LEN, AgentId

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AgentExport",
    "AgentGone",
    "AgentNotFound",
    "AgentRow",
    "DuplicateAgent",
    "InboxFull",
    "IndexEntry",
    "Lifecycle",
    "MessageKey",
    "OutboxFull",
    "OutboxMessage",
    "Store",
    "StoreClosed",
    "StoreConflict",
    "StoreError",
    "StoreStatistics",
]

T = TypeVar("T")
Lifecycle = Literal["active", "dormant", "suspended", "gone"]
_STORED_LIFECYCLES = ("dormant", "suspended", "gone")

SCHEMA_VERSION = 1
# Upgrades: MIGRATIONS[v] turns a version-v database into version v+1, inside the opening
# transaction. Bump SCHEMA_VERSION and add an entry here whenever _SCHEMA changes.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}
_APPLICATION_ID = 0x6D657368  # "mesh": marks the file as ours in the SQLite header
_RESERVED_META = frozenset({"schema_version"})
_MAX_PARAMS = 500  # ids per `IN (...)` query, well under SQLite's variable limit

_SCHEMA = (
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
    # A rowid table, not WITHOUT ROWID: rows carry secrets, certificates and state (hundreds
    # of bytes), and random 32-byte keys made WITHOUT ROWID slower to fill (measured).
    """CREATE TABLE agents(
        id BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 32), kind TEXT NOT NULL, name TEXT,
        caps TEXT NOT NULL,
        lifecycle TEXT NOT NULL CHECK (lifecycle IN ('dormant', 'suspended', 'gone')),
        created_ms INTEGER NOT NULL, expires_ms INTEGER, parent BLOB, budget INTEGER NOT NULL,
        secret BLOB NOT NULL, birth_cert BLOB, state BLOB NOT NULL,
        state_version INTEGER NOT NULL, record_seq INTEGER NOT NULL, updated_ms INTEGER NOT NULL)
    """,
    # Secondary indexes hold (key, rowid): new rows land at the end of their key's range.
    "CREATE UNIQUE INDEX agents_name ON agents(name) WHERE name IS NOT NULL",
    "CREATE INDEX agents_lifecycle ON agents(lifecycle)",
    "CREATE INDEX agents_kind ON agents(kind)",
    "CREATE INDEX agents_expiry ON agents(expires_ms) WHERE expires_ms IS NOT NULL",
    # AUTOINCREMENT: a seq is never reused, so a stale `inbox_ack` cannot drop a newer frame.
    """CREATE TABLE inbox(
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        agent BLOB NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
        frame BLOB NOT NULL, received_ms INTEGER NOT NULL)""",
    "CREATE INDEX inbox_agent ON inbox(agent, seq)",
    """CREATE TABLE outbox(
        msg_id BLOB PRIMARY KEY NOT NULL, sender BLOB NOT NULL, recipient BLOB NOT NULL,
        frame BLOB NOT NULL, attempts INTEGER NOT NULL, next_attempt_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL)""",
    "CREATE INDEX outbox_due ON outbox(next_attempt_ms)",
    "CREATE INDEX outbox_expiry ON outbox(expires_ms)",
    """CREATE TABLE dedupe(
        sender BLOB NOT NULL, msg_id BLOB NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (sender, msg_id)) WITHOUT ROWID""",
    "CREATE INDEX dedupe_expiry ON dedupe(expires_ms)",
)
_AGENT_COLS = (
    "id, kind, name, caps, lifecycle, created_ms, expires_ms, parent, budget, secret, "
    "birth_cert, state, state_version, record_seq, updated_ms"
)
_INSERT_AGENT = f"INSERT INTO agents ({_AGENT_COLS}) VALUES ({', '.join('?' * 15)})"
_OUTBOX_COLS = "msg_id, sender, recipient, frame, attempts, next_attempt_ms, expires_ms"


# -- errors ---------------------------------------------------------------------------------


class StoreError(Exception):
    """A store operation failed; the message names the operation."""


class StoreClosed(StoreError):
    """The store is not open."""


class AgentNotFound(StoreError):
    """No agent with this id is stored here."""

    def __init__(self, op: str, agent_id: bytes) -> None:
        super().__init__(f"{op}: no agent {_show(agent_id)}")
        self.agent_id = agent_id


class AgentGone(StoreError):
    """The agent was deleted; only its tombstone remains."""

    def __init__(self, op: str, agent_id: bytes) -> None:
        super().__init__(f"{op}: agent {_show(agent_id)} is gone")
        self.agent_id = agent_id


class DuplicateAgent(StoreError):
    """An agent id or name is already taken; nothing of the call was written."""

    def __init__(self, op: str, agent_id: bytes, detail: str) -> None:
        super().__init__(f"{op}: agent {_show(agent_id)}: {detail}")
        self.agent_id = agent_id


class StoreConflict(StoreError):
    """An optimistic state write found another version than the caller expected."""

    def __init__(self, op: str, agent_id: bytes, expected: int, actual: int) -> None:
        super().__init__(
            f"{op}: agent {_show(agent_id)} has state version {actual}, expected {expected}"
        )
        self.agent_id = agent_id
        self.expected = expected
        self.actual = actual


class InboxFull(StoreError):
    """The agent's inbox is at its bound; nothing of the call was written."""

    def __init__(self, op: str, agent_id: bytes, detail: str) -> None:
        super().__init__(f"{op}: inbox of agent {_show(agent_id)} is full ({detail})")
        self.agent_id = agent_id


class OutboxFull(StoreError):
    """The outbox is at its bound; nothing of the call was written."""


def _show(agent_id: object) -> str:
    """An agent id as text for messages: its did:key, else whatever was passed, shortened."""
    if isinstance(agent_id, bytes):
        return AgentId(agent_id).did if len(agent_id) == AGENT_ID_LEN else f"0x{agent_id.hex()}"
    return f"{agent_id!r:.80}"


# -- rows -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRow:
    """One agent as stored; `secret` is the seed encrypted by the caller, `state` opaque CBOR."""

    id: bytes
    kind: str
    created_ms: int
    updated_ms: int
    secret: bytes
    name: str | None = None
    caps: tuple[str, ...] = ()
    lifecycle: Lifecycle = "dormant"
    expires_ms: int | None = None
    parent: bytes | None = None
    budget: int = 0
    birth_cert: bytes | None = None
    state: bytes = b""
    state_version: int = 0
    record_seq: int = 0


@dataclass(frozen=True, slots=True)
class AgentExport:
    """What migrates: the agent's row (with state and secret) and its waiting inbox frames."""

    row: AgentRow
    inbox: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxMessage:
    """One at-least-once message waiting for its recipient's acknowledgement."""

    msg_id: bytes
    sender: bytes
    recipient: bytes
    frame: bytes
    next_attempt_ms: int
    expires_ms: int
    attempts: int = 0


class IndexEntry(NamedTuple):
    """What the runtime keeps in memory per agent, loaded by `iter_agent_index` at startup."""

    id: bytes
    lifecycle: Lifecycle
    kind: str


class MessageKey(NamedTuple):
    """A message's identity: its sender and the sender's message id."""

    sender: bytes
    msg_id: bytes


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """Counters since the store opened (trio-style `statistics()`)."""

    transactions: int  # write transactions committed
    writes: int  # writes acknowledged (committed)
    failed_writes: int  # writes that raised and were rolled back
    largest_group: int  # most writes committed in one transaction
    pending_writes: int  # writes queued or waiting to queue, not yet taken by the writer
    outbox_depth: int


def _row_tuple(op: str, row: AgentRow, caps_cache: dict[tuple[str, ...], str]) -> tuple[Any, ...]:
    caps = caps_cache.get(row.caps)
    if caps is None:
        # Most agents of a spawn share their tags: encode each distinct tuple once.
        caps = caps_cache[row.caps] = json.dumps(list(row.caps), separators=(",", ":"))
    return (
        row.id, row.kind, row.name, caps, _stored_lifecycle(op, row.lifecycle),
        row.created_ms, row.expires_ms, row.parent, row.budget, row.secret, row.birth_cert,
        row.state, row.state_version, row.record_seq, row.updated_ms,
    )  # fmt: skip


def _agent(r: Sequence[Any]) -> AgentRow:
    return AgentRow(
        id=r[0], kind=r[1], name=r[2], caps=tuple(json.loads(r[3])), lifecycle=r[4],
        created_ms=r[5], expires_ms=r[6], parent=r[7], budget=r[8], secret=r[9],
        birth_cert=r[10], state=r[11], state_version=r[12], record_seq=r[13], updated_ms=r[14],
    )  # fmt: skip


def _stored_lifecycle(op: str, lifecycle: str) -> str:
    if lifecycle == "active":
        return "dormant"  # in-memory state only: see the module docstring
    if lifecycle not in _STORED_LIFECYCLES:
        raise StoreError(f"{op}: unknown lifecycle {lifecycle!r}")
    return lifecycle


# -- the write path -------------------------------------------------------------------------


class _Write(Generic[T]):
    """One queued write: a function run on the write connection, and its outcome."""

    __slots__ = ("atomic", "done", "error", "fn", "op", "result")

    def __init__(self, op: str, fn: Callable[[sqlite3.Connection], T], atomic: bool) -> None:
        self.op = op
        self.fn = fn
        self.atomic = atomic
        self.done = trio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


def _as_store_error(op: str, exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        err = StoreError(f"{op}: {exc}")
        err.__cause__ = exc
        return err
    return exc


class Store:
    """The node's database; use as `async with Store(path) as store:` (see the module doc)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_connections: int = 2,
        write_queue: int = 1024,
        max_group: int = 1024,
        inbox_max_frames: int = 1000,
        inbox_max_bytes: int = 8 * 1024 * 1024,
        outbox_max: int = 100_000,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        cache_mib: int = 32,
    ) -> None:
        if min(read_connections, write_queue, max_group, inbox_max_frames) < 1:
            raise ValueError("read_connections, write_queue, max_group, inbox_max_frames >= 1")
        self.path = os.fspath(path)
        if self.path == ":memory:" or self.path.startswith("file:"):
            raise ValueError("Store needs a file path: readers use their own connections")
        self._n_readers = read_connections
        self._write_queue = write_queue
        self._max_group = max_group
        self._inbox_max_frames = inbox_max_frames
        self._inbox_max_bytes = inbox_max_bytes
        self._outbox_max = outbox_max
        self._synchronous = synchronous
        self._cache_kib = cache_mib * 1024
        self._writer: sqlite3.Connection | None = None
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._read_limiter = trio.CapacityLimiter(read_connections)
        # Our own limiter: the writer must never wait behind other users of trio's default one.
        self._write_limiter = trio.CapacityLimiter(1)
        self._send: trio.MemorySendChannel[_Write[Any]] | None = None
        self._cm: AbstractAsyncContextManager[Store] | None = None
        self._open = False
        # Counters: the outbox depth is kept here (the writer is its only mutator) so that
        # bounding it costs nothing per put; `_outbox_delta` is the uncommitted change.
        self._outbox_depth = 0
        self._outbox_delta = 0
        self._transactions = 0
        self._writes = 0
        self._failed = 0
        self._largest_group = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Store:
        if self._cm is not None:
            raise StoreError("open: this Store was already opened once")
        self._cm = self._lifetime()
        return await self._cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._cm is not None
        return await self._cm.__aexit__(exc_type, exc, tb)

    @asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[Store]:
        await trio.to_thread.run_sync(self._open_sync, limiter=self._write_limiter)
        try:
            send, receive = trio.open_memory_channel[_Write[Any]](self._write_queue)
            self._send = send
            self._open = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, receive)
                try:
                    yield self
                finally:
                    self._open = False
                    send.close()  # the writer commits what is queued, then returns
        finally:
            with trio.CancelScope(shield=True):
                # Wait for reads in flight (each holds a token) before closing connections;
                # the tokens are never given back: reads now raise StoreClosed.
                for _ in range(self._n_readers):
                    await self._read_limiter.acquire_on_behalf_of(object())
                await trio.to_thread.run_sync(self._close_sync, limiter=self._write_limiter)

    def _connect(self, *, writer: bool) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False: a
        # connection moves between worker threads but is never used by two at once.
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=64
        )
        try:
            conn.execute(f"PRAGMA cache_size = -{self._cache_kib if writer else 8192}")
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA temp_store = MEMORY")  # savepoint journals stay in RAM
            if writer:
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")
                conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_sync(self) -> None:
        conns: list[sqlite3.Connection] = []
        try:
            writer = self._connect(writer=True)
            conns.append(writer)
            app_id = writer.execute("PRAGMA application_id").fetchone()[0]
            if app_id not in (0, _APPLICATION_ID):
                raise StoreError(f"open {self.path}: not a meshd database (application_id)")
            if writer.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise StoreError(f"open {self.path}: cannot switch to WAL mode")
            writer.execute("BEGIN IMMEDIATE")
            self._prepare_schema(writer)
            self._outbox_depth = writer.execute("SELECT count(*) FROM outbox").fetchone()[0]
            writer.execute("COMMIT")
            for _ in range(self._n_readers):
                reader = self._connect(writer=False)
                conns.append(reader)
                self._readers.put(reader)
            self._writer = writer
        except BaseException as exc:
            for conn in conns:
                conn.close()
            while not self._readers.empty():
                self._readers.get_nowait()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"open {self.path}: {exc}") from exc
            raise

    def _prepare_schema(self, conn: sqlite3.Connection) -> None:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
        if not tables:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION).encode(),),
            )
            return
        if "meta" not in tables:
            raise StoreError(f"open {self.path}: not a meshd database (no meta table)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            version = int(bytes(row[0]))
        except (TypeError, ValueError):
            raise StoreError(f"open {self.path}: meta has no valid schema_version") from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"open {self.path}: schema version {version} is newer than this meshd "
                f"understands ({SCHEMA_VERSION}); upgrade meshd"
            )
        for v in range(version, SCHEMA_VERSION):
            if v not in MIGRATIONS:
                raise StoreError(f"open {self.path}: no migration from schema version {v}")
            MIGRATIONS[v](conn)
        if version != SCHEMA_VERSION:
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'",
                (str(SCHEMA_VERSION).encode(),),
            )

    def _close_sync(self) -> None:
        while not self._readers.empty():
            self._readers.get_nowait().close()
        if self._writer is not None:
            try:
                # Refresh planner statistics, sampling so that a big table costs little.
                self._writer.execute("PRAGMA analysis_limit = 1000")
                self._writer.execute("PRAGMA optimize")
            except sqlite3.Error as exc:
                raise StoreError(f"close {self.path}: {exc}") from exc
            finally:
                self._writer.close()
                self._writer = None

    # -- the writer -----------------------------------------------------------------------

    async def _write(
        self, op: str, fn: Callable[[sqlite3.Connection], T], *, atomic: bool = False
    ) -> T:
        """Queue a write and wait until its group commits; `atomic`: `fn` runs one statement
        or raises before its first change, so it needs no savepoint of its own."""
        if self._send is None or not self._open:
            raise StoreClosed(f"{op}: the store is not open")
        await trio.lowlevel.checkpoint_if_cancelled()
        write = _Write(op, fn, atomic)
        try:
            # Without a schedule point when there is room: `done.wait()` is the checkpoint,
            # and this halves the scheduler round trips per write (bench).
            self._send.send_nowait(write)
        except trio.WouldBlock:
            try:
                await self._send.send(write)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise StoreClosed(f"{op}: the store closed") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise StoreClosed(f"{op}: the store closed") from None
        await write.done.wait()
        if write.error is not None:
            raise write.error
        return write.result  # type: ignore[return-value]  # set when error is None

    async def _write_loop(self, receive: trio.MemoryReceiveChannel[_Write[Any]]) -> None:
        # Shielded: the loop ends only when the send side closes (on leaving the store's
        # block), so writes already queued are committed even when the node is cancelled.
        with trio.CancelScope(shield=True):
            async with receive:
                while True:
                    try:
                        group = [await receive.receive()]
                    except trio.EndOfChannel:
                        return
                    while len(group) < self._max_group:
                        try:
                            group.append(receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    try:
                        await trio.to_thread.run_sync(
                            self._run_group, group, limiter=self._write_limiter
                        )
                    except BaseException as exc:
                        # A bug in the writer: fail every waiting caller, then crash loudly.
                        while True:
                            try:
                                group.append(receive.receive_nowait())
                            except (trio.WouldBlock, trio.EndOfChannel):
                                break
                        for write in group:
                            write.error = StoreError(f"{write.op}: the writer failed: {exc!r}")
                            write.done.set()
                        raise
                    for write in group:
                        write.done.set()

    def _run_group(self, group: list[_Write[Any]]) -> None:
        """Run a group of writes in one transaction (on a worker thread)."""
        conn = self._writer
        assert conn is not None
        self._outbox_delta = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in group:
                if not write.atomic:
                    conn.execute("SAVEPOINT w")
                delta = self._outbox_delta
                try:
                    write.result = write.fn(conn)
                except Exception as exc:
                    # Transported to the caller, not swallowed; only this write is undone.
                    write.error = _as_store_error(write.op, exc)
                    self._outbox_delta = delta
                    if not conn.in_transaction:
                        # SQLite rolled the whole transaction back (disk full, I/O error).
                        raise sqlite3.OperationalError(f"transaction aborted by {exc}") from exc
                    if not write.atomic:
                        conn.execute("ROLLBACK TO w")
                if not write.atomic:
                    conn.execute("RELEASE w")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # BEGIN, a savepoint or COMMIT failed (disk full, I/O error): nothing committed.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as rollback_exc:
                    exc.add_note(f"and ROLLBACK failed: {rollback_exc}")
            for write in group:
                write.result = None
                write.error = StoreError(f"{write.op}: transaction failed: {exc}")
                write.error.__cause__ = exc
            self._failed += len(group)
            return
        ok = sum(1 for write in group if write.error is None)
        self._outbox_depth += self._outbox_delta
        self._transactions += 1
        self._writes += ok
        self._failed += len(group) - ok
        self._largest_group = max(self._largest_group, ok)

    # -- reads ----------------------------------------------------------------------------

    async def _read(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        if not self._open:
            raise StoreClosed(f"{op}: the store is not open")
        return await trio.to_thread.run_sync(self._run_read, op, fn, limiter=self._read_limiter)

    def _run_read(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        # One connection per limiter token, so the pool is never empty here.
        conn = self._readers.get_nowait()
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"{op}: {exc}") from exc
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")  # end a snapshot read; nothing was written
            self._readers.put(conn)

    def statistics(self) -> StoreStatistics:
        """Counters of transactions and writes since the store opened."""
        pending = 0
        if self._send is not None and self._open:
            stats = self._send.statistics()
            pending = stats.current_buffer_used + stats.tasks_waiting_send
        return StoreStatistics(
            transactions=self._transactions,
            writes=self._writes,
            failed_writes=self._failed,
            largest_group=self._largest_group,
            pending_writes=pending,
            outbox_depth=self._outbox_depth,
        )

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

    async def set_budget(self, agent_id: bytes, budget: int, now_ms: int) -> None:
        """Set a live agent's remaining spawn budget."""
        if budget < 0:
            raise StoreError(f"set_budget: agent {_show(agent_id)}: budget {budget} < 0")

        def run(conn: sqlite3.Connection) -> None:
            sql = (
                "UPDATE agents SET budget = ?, updated_ms = ? WHERE id = ? AND lifecycle != 'gone'"
            )
            if conn.execute(sql, (budget, now_ms, agent_id)).rowcount == 0:
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


# -- statement helpers (run on worker threads) ----------------------------------------------


def _all(sql: str, *params: Any) -> Callable[[sqlite3.Connection], list[Any]]:
    """A query returning all its rows."""
    return lambda conn: conn.execute(sql, params).fetchall()


def _rowcount(sql: str, *params: Any) -> Callable[[sqlite3.Connection], int]:
    """A statement returning how many rows it changed."""
    return lambda conn: conn.execute(sql, params).rowcount


def _outbox_message(r: Sequence[Any]) -> OutboxMessage:
    return OutboxMessage(
        msg_id=r[0], sender=r[1], recipient=r[2], frame=r[3], attempts=r[4],
        next_attempt_ms=r[5], expires_ms=r[6],
    )  # fmt: skip


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
