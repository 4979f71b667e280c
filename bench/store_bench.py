"""Store benchmark: mass agent inserts and concurrent state writes, against raw sqlite3.

One run measures, on fresh database files with the store's own schema and pragmas (WAL,
synchronous=NORMAL):

- inserting n agent rows through `Store.insert_agents` (chunks submitted concurrently, so the
  writer group-commits them) versus raw `sqlite3` `executemany` of the same rows, as tuples
  built before timing, in ONE transaction: the ceiling for this schema;
- `save_state` from 1,000 concurrent writers versus raw UPDATEs committed one by one (what a
  store without group commit would do) and all in one transaction (the ceiling);
- the same with `synchronous=FULL` (an fsync per commit), where group commit matters most.

Rows are derived from a seeded generator and built before any timing starts.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

# Run as a script, this file's directory comes first on sys.path, where bench/protocol.py would
# shadow the protocol package; the repository root must win.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from meshd.store import AgentRow, Store

SEED = 20240601
CHUNK = 5_000  # rows per insert_agents call (what a spawn of many agents would submit)
WRITERS = 1_000
SAVES_PER_WRITER = 10
FULL_RAW_COMMITS = 200
STATE = b"\xa2ecount\x18\x2aelast\x58\x40" + bytes(64)  # a small CBOR map, as agents keep


def make_rows(n: int, seed: int = SEED) -> list[AgentRow]:
    """`n` agent rows shaped like real spawns: random key, sealed seed, birth certificate."""
    rng = random.Random(seed)
    return [
        AgentRow(
            id=rng.randbytes(32),
            kind="echo",
            created_ms=1_700_000_000_000 + i,
            updated_ms=1_700_000_000_000 + i,
            secret=rng.randbytes(72),  # 32-byte seed + SecretBox nonce and MAC
            caps=("kind:echo",),
            birth_cert=rng.randbytes(160),
        )
        for i in range(n)
    ]


def _as_tuple(row: AgentRow) -> tuple[object, ...]:
    return (
        row.id, row.kind, row.name, '["kind:echo"]', row.lifecycle, row.created_ms,
        row.expires_ms, row.parent, row.budget, row.secret, row.birth_cert, row.state,
        row.state_version, row.record_seq, row.updated_ms,
    )  # fmt: skip


async def _store_inserts(path: Path, rows: list[AgentRow]) -> tuple[float, int]:
    async with Store(path) as store:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(0, len(rows), CHUNK):
                nursery.start_soon(store.insert_agents, rows[i : i + CHUNK])
        seconds = time.perf_counter() - start
        return seconds, store.statistics().transactions


def _raw_inserts(path: Path, rows: list[AgentRow]) -> float:
    trio.run(_create_schema, path)
    values = [_as_tuple(r) for r in rows]
    conn = _raw_connection(path)
    try:
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(f"INSERT INTO agents VALUES ({', '.join('?' * 15)})", values)
        conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


async def _create_schema(path: Path) -> None:
    async with Store(path):
        pass


def _raw_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA cache_size = -32768")
    return conn


async def _store_saves(
    path: Path, ids: list[bytes], synchronous: Literal["NORMAL", "FULL"]
) -> tuple[float, int, int]:
    async with Store(path, synchronous=synchronous) as store:

        async def writer(agent_id: bytes) -> None:
            for i in range(SAVES_PER_WRITER):
                await store.save_state(agent_id, STATE, None, now_ms=i)

        before = store.statistics()
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for agent_id in ids:
                nursery.start_soon(writer, agent_id)
        seconds = time.perf_counter() - start
        after = store.statistics()
        return seconds, after.writes - before.writes, after.transactions - before.transactions


def _raw_saves(
    path: Path, ids: list[bytes], *, one_transaction: bool, synchronous: str = "NORMAL"
) -> float:
    """Seconds for one UPDATE per id, committed one by one or all in one transaction."""
    sql = "UPDATE agents SET state = ?, state_version = state_version + 1 WHERE id = ?"
    conn = _raw_connection(path)
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    try:
        start = time.perf_counter()
        if one_transaction:
            conn.execute("BEGIN IMMEDIATE")
        for agent_id in ids:
            conn.execute(sql, (STATE, agent_id))  # autocommit: one commit per write
        if one_transaction:
            conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


def run_store_bench(n: int = 100_000) -> dict[str, float]:
    """Insert n agents through the store and raw sqlite3; then 1,000 concurrent state writers."""
    rows = make_rows(n)
    ids = [r.id for r in rows[:WRITERS]]
    with tempfile.TemporaryDirectory(prefix="meshd-store-bench-") as tmp:
        store_path, raw_path = Path(tmp) / "store.db", Path(tmp) / "raw.db"
        store_s, insert_txns = trio.run(_store_inserts, store_path, rows)
        raw_s = _raw_inserts(raw_path, rows)
        save_s, writes, save_txns = trio.run(_store_saves, store_path, ids, "NORMAL")
        full_s, full_writes, full_txns = trio.run(_store_saves, store_path, ids, "FULL")
        many = ids * SAVES_PER_WRITER
        raw_each_s = _raw_saves(raw_path, many, one_transaction=False)
        raw_one_s = _raw_saves(raw_path, many, one_transaction=True)
        # An fsync per commit costs milliseconds: a few hundred commits give the rate.
        few = ids[:FULL_RAW_COMMITS]
        raw_full_s = _raw_saves(raw_path, few, one_transaction=False, synchronous="FULL")
    return {
        "rows": float(n),
        "store_insert_rows_per_s": n / store_s,
        "raw_insert_rows_per_s": n / raw_s,
        "insert_ratio": raw_s / store_s,
        "insert_transactions": float(insert_txns),
        "save_state_per_s": writes / save_s,
        "save_state_transactions": float(save_txns),
        "save_state_writes_per_txn": writes / save_txns,
        "raw_save_commit_each_per_s": len(many) / raw_each_s,
        "raw_save_one_txn_per_s": len(many) / raw_one_s,
        "save_vs_commit_each_ratio": raw_each_s / save_s,
        "save_vs_one_txn_ratio": raw_one_s / save_s,
        "full_save_state_per_s": full_writes / full_s,
        "full_save_state_writes_per_txn": full_writes / full_txns,
        "full_raw_commit_each_per_s": len(few) / raw_full_s,
        "full_save_vs_commit_each_ratio": (full_writes / full_s) / (len(few) / raw_full_s),
    }


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    for name, value in run_store_bench(count).items():
        print(f"store {name:<28s}{value:>14,.4g}")
