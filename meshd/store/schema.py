"""The database file's layout and its checks at open: the tables and indexes (`_SCHEMA`), the
column lists the statements share, the schema version with its upgrade hooks (`MIGRATIONS`),
and the checks that the file is a meshd database in WAL mode. `_prepare_schema` creates the
schema in an empty file or migrates an older one, inside the writer's opening transaction;
tests patch `SCHEMA_VERSION` and `MIGRATIONS` here, where it reads them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from meshd.store.errors import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

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


def _check_file(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a file that is not ours, and switch it to WAL (before the opening transaction)."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id not in (0, _APPLICATION_ID):
        raise StoreError(f"open {path}: not a meshd database (application_id)")
    if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
        raise StoreError(f"open {path}: cannot switch to WAL mode")


def _prepare_schema(conn: sqlite3.Connection, path: str) -> None:
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
        raise StoreError(f"open {path}: not a meshd database (no meta table)")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        version = int(bytes(row[0]))
    except (TypeError, ValueError):
        raise StoreError(f"open {path}: meta has no valid schema_version") from None
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"open {path}: schema version {version} is newer than this meshd "
            f"understands ({SCHEMA_VERSION}); upgrade meshd"
        )
    for v in range(version, SCHEMA_VERSION):
        if v not in MIGRATIONS:
            raise StoreError(f"open {path}: no migration from schema version {v}")
        MIGRATIONS[v](conn)
    if version != SCHEMA_VERSION:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'",
            (str(SCHEMA_VERSION).encode(),),
        )
