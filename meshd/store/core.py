"""The store's machinery, shared by every operation: `StoreCore` opens and checks the file,
keeps one write connection and a pool of read connections, runs the writer task that commits
queued writes in groups (one transaction per group, one savepoint per write), and closes
after draining; the operations (`meshd.store.agents`, `meshd.store.messages`) only call
`_write` and `_read`. The `meshd.store` package docstring explains the design: lifecycle,
threads, durability.
"""

from __future__ import annotations

import os
import queue
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

import trio
import trio.lowlevel

from meshd.store.errors import StoreClosed, StoreError
from meshd.store.rows import StoreStatistics
from meshd.store.schema import _check_file, _prepare_schema

T = TypeVar("T")


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


class StoreCore:
    """Lifecycle, writer and read pool of `Store`, which adds the operations (see `Store`)."""

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
        self._cm: AbstractAsyncContextManager[Self] | None = None
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

    async def __aenter__(self) -> Self:
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
    async def _lifetime(self) -> AsyncIterator[Self]:
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
            _check_file(writer, self.path)
            writer.execute("BEGIN IMMEDIATE")
            _prepare_schema(writer, self.path)
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


# -- statement helpers (run on worker threads) ----------------------------------------------


def _all(sql: str, *params: Any) -> Callable[[sqlite3.Connection], list[Any]]:
    """A query returning all its rows."""
    return lambda conn: conn.execute(sql, params).fetchall()


def _rowcount(sql: str, *params: Any) -> Callable[[sqlite3.Connection], int]:
    """A statement returning how many rows it changed."""
    return lambda conn: conn.execute(sql, params).rowcount
