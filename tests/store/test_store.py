"""The SQLite store on real database files: every API, group commit, bounds, and SIGKILL.

No mocks: each test opens a `Store` on a file in `tmp_path`. Times are plain integers passed
in as `now_ms`; nothing here reads a clock or asserts on elapsed time.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

import meshd.store.schema as store_schema
from meshd.store import (
    SCHEMA_VERSION,
    AgentGone,
    AgentNotFound,
    AgentRow,
    DuplicateAgent,
    InboxFull,
    IndexEntry,
    MessageKey,
    OutboxFull,
    OutboxMessage,
    Store,
    StoreClosed,
    StoreConflict,
    StoreError,
)
from protocol.ids import AgentId
from tests.store.crash_writer import agent_id, state_bytes

REPO = Path(__file__).resolve().parents[2]
CRASH_WRITER = Path(__file__).with_name("crash_writer.py")


def aid(n: int) -> bytes:
    """A deterministic 32-byte agent id."""
    return hashlib.sha256(b"agent:%d" % n).digest()


def agent(n: int, **fields: object) -> AgentRow:
    """A new agent row numbered `n` (fields override the defaults)."""
    values: dict[str, object] = {
        "id": aid(n),
        "kind": "echo",
        "created_ms": 1000 + n,
        "updated_ms": 1000 + n,
        "secret": b"sealed-seed-%d" % n,
        "caps": ("kind:echo",),
    }
    values.update(fields)
    return AgentRow(**values)  # type: ignore[arg-type]


def message(n: int, *, next_attempt_ms: int = 0, expires_ms: int = 10_000) -> OutboxMessage:
    """An outbox message numbered `n`."""
    return OutboxMessage(
        msg_id=b"m%015d" % n,
        sender=aid(1),
        recipient=aid(2),
        frame=b"frame %d" % n,
        next_attempt_ms=next_attempt_ms,
        expires_ms=expires_ms,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "meshd.db", inbox_max_frames=5, inbox_max_bytes=1000) as s:
        yield s


# -- agents -----------------------------------------------------------------------------------


async def test_insert_and_get_round_trip(store: Store) -> None:
    row = agent(
        1, name="alice", caps=("translate", "llm"), expires_ms=9000, parent=aid(0), budget=7,
        birth_cert=b"cert", state=b"\xa0", lifecycle="suspended",
    )  # fmt: skip
    await store.insert_agents([row, agent(2, lifecycle="active")])
    assert await store.get_agent(aid(1)) == row
    assert await store.get_agent_by_name("alice") == row
    # 'active' is runtime state: it is stored as 'dormant'.
    second = await store.get_agent(aid(2))
    assert second is not None
    assert second.lifecycle == "dormant"
    assert await store.get_agent(aid(3)) is None
    assert await store.get_agent_by_name("bob") is None


async def test_duplicate_id_rolls_back_whole_batch(store: Store) -> None:
    await store.insert_agents([agent(1)])
    with pytest.raises(DuplicateAgent, match="id already exists") as info:
        await store.insert_agents([agent(2), agent(3), agent(1), agent(4)])
    assert info.value.agent_id == aid(1)
    assert AgentId(aid(1)).did in str(info.value)
    assert "insert_agents" in str(info.value)
    for n in (2, 3, 4):
        assert await store.get_agent(aid(n)) is None
    with pytest.raises(DuplicateAgent, match="twice in this call"):
        await store.insert_agents([agent(5), agent(5)])
    assert await store.get_agent(aid(5)) is None
    assert (await store.count_agents())["dormant"] == 1


async def test_duplicate_name_names_agent_and_rolls_back(store: Store) -> None:
    await store.insert_agents([agent(1, name="alice")])
    with pytest.raises(DuplicateAgent, match="'alice' is taken") as info:
        await store.insert_agents([agent(2, name="bob"), agent(3, name="alice")])
    assert info.value.agent_id == aid(3)
    assert await store.get_agent_by_name("bob") is None


async def test_bad_rows_raise_store_error_naming_the_operation(store: Store) -> None:
    with pytest.raises(StoreError, match=r"insert_agents: agent id .* is not 32 bytes"):
        await store.insert_agents([agent(1, id=b"short")])
    with pytest.raises(StoreError, match=r"insert_agents: .*NOT NULL"):
        await store.insert_agents([agent(2, kind=None)])
    with pytest.raises(StoreError, match="unknown lifecycle"):
        await store.insert_agents([agent(3, lifecycle="sleeping")])
    assert sum((await store.count_agents()).values()) == 0
    stats = store.statistics()
    assert stats.failed_writes == 3
    assert stats.writes == 0


async def test_list_agents_keyset_pagination_and_filters(store: Store) -> None:
    rows = [
        agent(
            n,
            kind="counter" if n % 3 == 0 else "echo",
            lifecycle="suspended" if n % 5 == 0 else "dormant",
        )
        for n in range(250)
    ]
    for start in range(0, 250, 60):  # several calls: order must still be creation order
        await store.insert_agents(rows[start : start + 60])
    await store.delete_agent(aid(7), now_ms=5000)

    async def all_pages(**filters: object) -> list[bytes]:
        seen: list[bytes] = []
        after = None
        for _ in range(100):  # bounded: 250 rows in pages of 40
            page = await store.list_agents(limit=40, after=after, **filters)  # type: ignore[arg-type]
            if not page:
                return seen
            assert len(page) <= 40
            seen.extend(r.id for r in page)
            after = page[-1].id
        raise AssertionError("pagination did not end")

    live = [r for r in rows if r.id != aid(7)]
    assert await all_pages() == [r.id for r in live]
    assert await all_pages(lifecycle="suspended") == [
        r.id for r in live if r.lifecycle == "suspended"
    ]
    assert await all_pages(kind="counter") == [r.id for r in live if r.kind == "counter"]
    assert await all_pages(kind="counter", lifecycle="suspended") == [
        r.id for r in live if r.kind == "counter" and r.lifecycle == "suspended"
    ]
    assert await all_pages(lifecycle="gone") == [aid(7)]
    with pytest.raises(AgentNotFound, match="list_agents"):
        await store.list_agents(after=aid(999))


async def test_count_and_iter_agent_ids(store: Store) -> None:
    await store.insert_agents([agent(n) for n in range(23)])
    await store.set_lifecycle(aid(3), "suspended", now_ms=2000)
    await store.delete_agent(aid(4), now_ms=2000)
    assert await store.count_agents() == {"dormant": 21, "suspended": 1, "gone": 1}
    batches = [ids async for ids in store.iter_agent_ids(batch=10)]
    assert [len(b) for b in batches] == [10, 10, 2]
    assert [i for b in batches for i in b] == [aid(n) for n in range(23) if n != 4]
    everything = [i async for b in store.iter_agent_ids(include_gone=True) for i in b]
    assert everything == [aid(n) for n in range(23)]
    index = [e async for b in store.iter_agent_index(batch=7) for e in b]
    assert len(index) == 22
    assert index[3] == IndexEntry(aid(3), "suspended", "echo")
    assert IndexEntry(aid(4), "gone", "echo") not in index
    tombs = [e async for b in store.iter_agent_index(include_gone=True) for e in b]
    assert tombs[4] == IndexEntry(aid(4), "gone", "echo")


async def test_save_state_optimistic_versions(store: Store) -> None:
    await store.insert_agents([agent(1)])
    assert await store.save_state(aid(1), b"one", 0, now_ms=2000) == 1
    assert await store.save_state(aid(1), b"two", 1, now_ms=2001) == 2
    with pytest.raises(StoreConflict) as info:
        await store.save_state(aid(1), b"stale", 1, now_ms=2002)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert await store.save_state(aid(1), b"any", None, now_ms=2003) == 3
    row = await store.get_agent(aid(1))
    assert row is not None
    assert (row.state, row.state_version, row.updated_ms) == (b"any", 3, 2003)
    with pytest.raises(AgentNotFound, match="save_state"):
        await store.save_state(aid(2), b"x", None, now_ms=2004)


async def test_group_commit_groups_concurrent_writes(store: Store) -> None:
    await store.insert_agents([agent(n) for n in range(200)])
    before = store.statistics()
    versions: dict[int, int] = {}

    async def write(n: int) -> None:
        versions[n] = await store.save_state(aid(n), b"s%d" % n, 0, now_ms=3000)

    async with trio.open_nursery() as nursery:
        for n in range(200):
            nursery.start_soon(write, n)
    after = store.statistics()
    assert versions == dict.fromkeys(range(200), 1)
    assert after.writes - before.writes == 200
    assert 1 <= after.transactions - before.transactions <= 20
    assert after.largest_group >= 10


async def test_reads_do_not_wait_for_the_writer(store: Store) -> None:
    await store.insert_agents([agent(1)])
    # Another connection holds SQLite's write lock, so the store's writer is stuck.
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.save_state, aid(1), b"new", 0, 2000)
            await trio.testing.wait_all_tasks_blocked()
            row = await store.get_agent(aid(1))  # answered from the last committed state
            assert row is not None
            assert row.state_version == 0
            assert await store.count_agents() == {"dormant": 1, "suspended": 0, "gone": 0}
            blocker.rollback()
    finally:
        blocker.close()
    row = await store.get_agent(aid(1))
    assert row is not None
    assert (row.state, row.state_version) == (b"new", 1)


async def test_failing_write_does_not_spoil_its_group(store: Store) -> None:
    await store.insert_agents([agent(n) for n in range(10)])
    outcomes: dict[int, object] = {}

    async def write(n: int, expected: int) -> None:
        try:
            outcomes[n] = await store.save_state(aid(n), b"x", expected, now_ms=3000)
        except StoreConflict as exc:
            outcomes[n] = exc

    before = store.statistics()
    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(write, n, 5 if n == 4 else 0)
    assert isinstance(outcomes.pop(4), StoreConflict)
    assert set(outcomes.values()) == {1}
    after = store.statistics()
    assert (after.writes - before.writes, after.failed_writes - before.failed_writes) == (9, 1)
    assert after.transactions - before.transactions <= 3


async def test_set_lifecycle(store: Store) -> None:
    await store.insert_agents([agent(1)])
    await store.set_lifecycle(aid(1), "suspended", now_ms=2000)
    row = await store.get_agent(aid(1))
    assert row is not None
    assert (row.lifecycle, row.updated_ms) == ("suspended", 2000)
    await store.set_lifecycle(aid(1), "active", now_ms=2001)
    row = await store.get_agent(aid(1))
    assert row is not None
    assert row.lifecycle == "dormant"
    with pytest.raises(StoreError, match="use delete_agent"):
        await store.set_lifecycle(aid(1), "gone", now_ms=2002)
    with pytest.raises(AgentNotFound):
        await store.set_lifecycle(aid(2), "dormant", now_ms=2002)


async def test_delete_keeps_tombstone_and_drops_secrets(store: Store) -> None:
    await store.insert_agents([agent(1, name="alice", state=b"st", expires_ms=100, caps=("x",))])
    await store.inbox_put(aid(1), [b"f1", b"f2"], now_ms=2000)
    assert await store.delete_agent(aid(1), now_ms=3000) is True
    tomb = await store.get_agent(aid(1))
    assert tomb is not None
    assert (tomb.lifecycle, tomb.secret, tomb.state, tomb.name) == ("gone", b"", b"", None)
    assert (tomb.kind, tomb.caps, tomb.updated_ms, tomb.expires_ms) == ("echo", ("x",), 3000, None)
    assert await store.inbox_count(aid(1)) == 0
    assert await store.expired_agents(now_ms=10**9, limit=10) == []
    assert await store.delete_agent(aid(1), now_ms=3001) is False
    with pytest.raises(AgentGone, match="save_state"):
        await store.save_state(aid(1), b"x", None, now_ms=3002)
    with pytest.raises(AgentGone):
        await store.set_lifecycle(aid(1), "dormant", now_ms=3002)
    with pytest.raises(AgentGone):
        await store.inbox_put(aid(1), [b"late"], now_ms=3002)
    with pytest.raises(DuplicateAgent):
        await store.insert_agents([agent(1)])  # a tombstone still holds its id
    await store.insert_agents([agent(2, name="alice")])  # ...but frees its name
    assert await store.bump_record_seq(aid(1)) == 1  # tombstone records are republished
    with pytest.raises(AgentNotFound):
        await store.delete_agent(aid(3), now_ms=3003)


async def test_expired_agents_ttl(store: Store) -> None:
    await store.insert_agents(
        [agent(1, expires_ms=500), agent(2, expires_ms=100), agent(3), agent(4, expires_ms=900)]
    )
    assert await store.expired_agents(now_ms=99, limit=10) == []
    assert await store.expired_agents(now_ms=500, limit=10) == [aid(2), aid(1)]
    assert await store.expired_agents(now_ms=10_000, limit=2) == [aid(2), aid(1)]
    assert await store.expired_agents(now_ms=10_000, limit=10) == [aid(2), aid(1), aid(4)]


async def test_set_budget(store: Store) -> None:
    await store.insert_agents([agent(1, budget=10)])
    await store.set_budget(aid(1), 4, now_ms=2000)
    row = await store.get_agent(aid(1))
    assert row is not None
    assert (row.budget, row.updated_ms) == (4, 2000)
    with pytest.raises(StoreError, match="budget -1 < 0"):
        await store.set_budget(aid(1), -1, now_ms=2001)
    with pytest.raises(AgentNotFound, match="set_budget"):
        await store.set_budget(aid(2), 1, now_ms=2001)


async def test_bump_record_seq(store: Store) -> None:
    await store.insert_agents([agent(1, record_seq=4)])
    assert [await store.bump_record_seq(aid(1)) for _ in range(3)] == [5, 6, 7]
    with pytest.raises(AgentNotFound, match="bump_record_seq"):
        await store.bump_record_seq(aid(2))


# -- inbox ------------------------------------------------------------------------------------


async def test_inbox_put_take_ack(store: Store) -> None:
    await store.insert_agents([agent(1), agent(2)])
    await store.inbox_put(aid(1), [b"a", b"b", b"c"], now_ms=2000)
    await store.inbox_put(aid(2), [b"other"], now_ms=2000)
    taken = await store.inbox_take(aid(1), limit=2)
    assert [f for _, f in taken] == [b"a", b"b"]
    assert taken[0][0] < taken[1][0]
    assert await store.inbox_ack(aid(1), taken[-1][0]) == 2
    assert await store.inbox_count(aid(1)) == 1
    rest = await store.inbox_take(aid(1), limit=10)
    assert [f for _, f in rest] == [b"c"]
    assert await store.inbox_ack(aid(1), rest[-1][0]) == 1
    # Sequence numbers are never reused, so an old ack cannot remove a new frame.
    await store.inbox_put(aid(1), [b"d"], now_ms=2001)
    assert await store.inbox_ack(aid(1), rest[-1][0]) == 0
    (seq, frame), = await store.inbox_take(aid(1), limit=10)  # fmt: skip
    assert (frame, seq > rest[-1][0]) == (b"d", True)
    assert await store.inbox_count(aid(2)) == 1
    with pytest.raises(AgentNotFound, match="inbox_put"):
        await store.inbox_put(aid(3), [b"x"], now_ms=2002)


async def test_inbox_is_bounded(store: Store) -> None:
    # The fixture allows 5 frames and 1000 bytes per agent.
    await store.insert_agents([agent(1), agent(2)])
    await store.inbox_put(aid(1), [b"x"] * 4, now_ms=2000)
    with pytest.raises(InboxFull, match=r"inbox_put: inbox of agent .* is full") as info:
        await store.inbox_put(aid(1), [b"y", b"z"], now_ms=2001)
    assert info.value.agent_id == aid(1)
    assert await store.inbox_count(aid(1)) == 4
    await store.inbox_put(aid(1), [b"y"], now_ms=2001)
    with pytest.raises(InboxFull, match="bytes"):
        await store.inbox_put(aid(2), [b"b" * 600, b"b" * 600], now_ms=2002)
    assert await store.inbox_count(aid(2)) == 0


# -- outbox and dedupe ------------------------------------------------------------------------


async def test_outbox(tmp_path: Path) -> None:
    path = tmp_path / "out.db"
    async with Store(path, outbox_max=5) as store:
        await store.outbox_put([message(1, next_attempt_ms=300), message(2, next_attempt_ms=100)])
        await store.outbox_put([message(3, next_attempt_ms=200, expires_ms=250)])
        assert await store.outbox_depth() == 3
        due = await store.outbox_due(now_ms=200, limit=10)
        assert [m.msg_id for m in due] == [message(2).msg_id, message(3).msg_id]
        assert due[0] == message(2, next_attempt_ms=100)
        assert await store.outbox_reschedule(message(2).msg_id, next_attempt_ms=1000) is True
        assert [m.msg_id for m in await store.outbox_due(now_ms=300, limit=10)] == [
            message(1).msg_id  # 2 rescheduled, 3 expired at 250
        ]
        (m2,) = [m for m in await store.outbox_due(now_ms=1000, limit=10) if m.attempts]
        assert (m2.msg_id, m2.attempts, m2.next_attempt_ms) == (message(2).msg_id, 1, 1000)
        with pytest.raises(StoreError, match="outbox_put: duplicate message id"):
            await store.outbox_put([message(4), message(1)])
        with pytest.raises(OutboxFull, match="outbox holds 3 of 5"):
            await store.outbox_put([message(n) for n in range(10, 13)])
        assert await store.outbox_depth() == 3
        assert await store.outbox_drop_expired(now_ms=250) == [
            MessageKey(aid(1), message(3).msg_id)
        ]
        assert await store.outbox_ack([message(1).msg_id, b"unknown"]) == 1
        assert await store.outbox_reschedule(message(1).msg_id, next_attempt_ms=5) is False
        assert await store.outbox_depth() == 1
    async with Store(path) as store:  # the depth is counted again at open
        assert await store.outbox_depth() == 1
        assert store.statistics().outbox_depth == 1


async def test_dedupe_and_commit_delivery(store: Store) -> None:
    await store.insert_agents([agent(1)])
    assert await store.dedupe_check_and_add(aid(9), b"m1", expires_ms=500) is True
    assert await store.dedupe_check_and_add(aid(9), b"m1", expires_ms=500) is False
    assert await store.dedupe_contains(aid(9), b"m1") is True

    assert await store.commit_delivery(
        aid(9), b"m2", 700, aid(1), b"state-1", 0, now_ms=2000, outbox=[message(1)]
    )
    row = await store.get_agent(aid(1))
    assert row is not None
    assert (row.state, row.state_version) == (b"state-1", 1)
    assert await store.outbox_depth() == 1
    # A redelivery writes nothing: no state change, no second send.
    assert not await store.commit_delivery(
        aid(9), b"m2", 700, aid(1), b"state-2", 1, now_ms=2001, outbox=[message(2)]
    )
    row = await store.get_agent(aid(1))
    assert row is not None
    assert row.state_version == 1
    assert await store.outbox_depth() == 1
    # A conflict rolls back the dedupe key too, so the message can be handled again.
    with pytest.raises(StoreConflict):
        await store.commit_delivery(aid(9), b"m3", 700, aid(1), b"s", 0, now_ms=2002)
    assert await store.dedupe_contains(aid(9), b"m3") is False
    assert await store.commit_delivery(aid(9), b"m3", 900, aid(1), None, None, now_ms=2003)
    assert await store.dedupe_prune(now_ms=700) == 2
    assert await store.dedupe_contains(aid(9), b"m1") is False
    assert await store.dedupe_contains(aid(9), b"m3") is True


# -- meta, migration, open and close ----------------------------------------------------------


async def test_meta(store: Store) -> None:
    assert await store.get_meta("schema_version") == str(SCHEMA_VERSION).encode()
    assert await store.get_meta("node") is None
    await store.set_meta("node", b"one")
    await store.set_meta("node", b"two")
    assert await store.get_meta("node") == b"two"
    with pytest.raises(StoreError, match="managed by the store"):
        await store.set_meta("schema_version", b"9")


async def test_export_import_round_trip(tmp_path: Path) -> None:
    async with Store(tmp_path / "a.db") as a, Store(tmp_path / "b.db") as b:
        row = agent(1, name="mover", state=b"\xa1ak\x01", caps=("llm",), record_seq=3)
        await a.insert_agents([row])
        await a.save_state(aid(1), b"\xa1ak\x02", 0, now_ms=2000)
        await a.inbox_put(aid(1), [b"w1", b"w2"], now_ms=2000)
        exported = await a.export_agent(aid(1))
        assert exported.inbox == (b"w1", b"w2")
        await b.import_agent(exported, now_ms=3000)
        await a.delete_agent(aid(1), now_ms=3000)
        assert await a.bump_record_seq(aid(1)) == 4  # the tombstone record outranks seq 3

        moved = await b.get_agent(aid(1))
        assert moved is not None
        assert moved == AgentRow(
            id=aid(1), kind="echo", created_ms=row.created_ms, updated_ms=3000,
            secret=row.secret, name="mover", caps=("llm",), state=b"\xa1ak\x02",
            state_version=1, record_seq=3,
        )  # fmt: skip
        assert [f for _, f in await b.inbox_take(aid(1), 10)] == [b"w1", b"w2"]
        with pytest.raises(DuplicateAgent, match="already hosted"):
            await b.import_agent(exported, now_ms=3001)
        with pytest.raises(AgentGone, match="export_agent"):
            await a.export_agent(aid(1))

        # Back to A: the import replaces A's tombstone and keeps record_seq monotonic.
        await a.import_agent(await b.export_agent(aid(1)), now_ms=4000)
        back = await a.get_agent(aid(1))
        assert back is not None
        assert (back.lifecycle, back.state, back.record_seq) == ("dormant", b"\xa1ak\x02", 4)
        assert await a.inbox_count(aid(1)) == 2


async def test_open_rejects_other_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, just some bytes" * 200)
    with pytest.raises(StoreError, match=r"open .*junk\.db: file is not a database"):
        async with Store(junk):
            pass
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t(x)")
    conn.close()
    with pytest.raises(StoreError, match="not a meshd database"):
        async with Store(other):
            pass
    with pytest.raises(StoreError, match="unable to open"):
        async with Store(tmp_path / "missing-dir" / "x.db"):
            pass


@pytest.mark.parametrize(
    ("version", "message"),
    [(SCHEMA_VERSION + 1, "newer than this meshd"), (0, "no migration from schema version 0")],
)
async def test_open_checks_schema_version(tmp_path: Path, version: int, message: str) -> None:
    path = tmp_path / "m.db"
    async with Store(path):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (b"%d" % version,))
    conn.close()
    with pytest.raises(StoreError, match=message):
        async with Store(path):
            pass


async def test_migration_hook_upgrades_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.db"
    async with Store(path) as store:
        await store.insert_agents([agent(1)])

    def add_column(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE agents ADD COLUMN note TEXT")

    # A release with schema version 2 ships MIGRATIONS[1]; it runs once, at the next open.
    monkeypatch.setattr(store_schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(store_schema.MIGRATIONS, SCHEMA_VERSION, add_column)
    async with Store(path) as store:
        assert await store.get_meta("schema_version") == b"%d" % (SCHEMA_VERSION + 1)
        assert await store.get_agent(aid(1)) is not None
    async with Store(path):
        pass  # already at the new version: the migration does not run again
    with sqlite3.connect(path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(agents)")]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    conn.close()
    assert columns.count("note") == 1
    assert app_id == int.from_bytes(b"mesh", "big")


async def test_close_drains_queued_writes(tmp_path: Path) -> None:
    path = tmp_path / "drain.db"
    with trio.CancelScope() as scope:
        # max_group=1: one write per transaction, so the writes queue up behind the first.
        async with Store(path, max_group=1) as store:
            await store.insert_agents([agent(n) for n in range(100)])
            # Another connection holds SQLite's write lock: the writer waits (busy_timeout)
            # inside its first transaction while every other write stays queued.
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            async with trio.open_nursery() as nursery:
                for n in range(100):
                    nursery.start_soon(store.save_state, aid(n), b"last", 0, 5000)
                await trio.testing.wait_all_tasks_blocked()
                assert store.statistics().pending_writes == 99
                scope.cancel()  # the callers give up; their queued writes must still land
                blocker.rollback()
                blocker.close()
    assert scope.cancelled_caught
    async with Store(path) as store:
        rows = await store.list_agents(limit=200)
        assert {(r.state, r.state_version) for r in rows} == {(b"last", 1)}
    with pytest.raises(StoreClosed):
        await store.get_agent(aid(1))
    with pytest.raises(StoreClosed):
        await store.save_state(aid(1), b"x", None, 0)


# -- crash ------------------------------------------------------------------------------------


def _run_and_kill(path: Path, run: int, acks_before_kill: int) -> list[str]:
    """Start the crash writer, SIGKILL it after `acks_before_kill` lines; return every line."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(CRASH_WRITER), str(path), str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    # A watchdog so a stuck writer fails the test instead of hanging it (not a timing check).
    watchdog = threading.Timer(15.0, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while len(lines) < acks_before_kill:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate()
    finally:
        watchdog.cancel()
    assert len(lines) == acks_before_kill, f"writer stopped early: {err[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    # Lines already in the pipe when the kill landed were acknowledged too; a line cut off
    # by the kill (no newline yet) was not fully printed, so it does not count.
    complete = ("".join(lines) + rest).split("\n")[:-1]
    return [line for line in complete if line.strip()]


async def _check_acknowledged(path: Path, run: int, lines: list[str]) -> tuple[int, int]:
    agents: set[int] = set()
    states: dict[int, int] = {}
    for line in lines:
        kind, a, b = line.split()
        if kind == "A":
            agents.update(range(int(a), int(a) + int(b)))
        else:
            states[int(a)] = max(states.get(int(a), 0), int(b))
    async with Store(path) as store:
        stored = {i async for ids in store.iter_agent_ids() for i in ids}
        missing = [index for index in agents if agent_id(run, index) not in stored]
        assert not missing, f"acknowledged agents lost: {missing[:10]}"
        for index, version in states.items():
            row = await store.get_agent(agent_id(run, index))
            assert row is not None
            # Later writes may have committed without being printed; none may be missing.
            assert row.state_version >= version
            assert row.state == state_bytes(run, index, row.state_version)
    return len(agents), len(states)


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    # Three kills at different depths, on the same database file (recovery each time).
    for run, acks in enumerate((25, 150, 400)):
        lines = _run_and_kill(path, run, acks)
        n_agents, n_states = trio.run(_check_acknowledged, path, run, lines)
        assert n_agents > 0
        assert n_states > 0
