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

Layout: `core` (`StoreCore`: open, writer task, read pool, close), `schema` (tables, version,
migrations, checks at open), `rows` (the row types), `errors`, and the operations mixed into
`Store` here: `agents` (agents and their inboxes) and `messages` (outbox, dedupe, meta).
"""

from __future__ import annotations

from meshd.store.agents import AgentOps
from meshd.store.errors import (
    AgentGone,
    AgentNotFound,
    DuplicateAgent,
    InboxFull,
    OutboxFull,
    StoreClosed,
    StoreConflict,
    StoreError,
)
from meshd.store.messages import MessageOps
from meshd.store.rows import (
    AgentExport,
    AgentRow,
    IndexEntry,
    Lifecycle,
    MessageKey,
    OutboxMessage,
    StoreStatistics,
)
from meshd.store.schema import MIGRATIONS, SCHEMA_VERSION

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


class Store(AgentOps, MessageOps):
    """The node's database; use as `async with Store(path) as store:` (see the module doc)."""
