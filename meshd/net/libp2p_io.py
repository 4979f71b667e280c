"""Three I/O fixes for py-libp2p 0.8.1 that cut the CPU each small message costs.

At light load a message costs a few reads and writes through Noise and yamux on each
daemon, and those are most of its latency. On a ping-pong of 300-byte messages between two
hosts in one process, the fixes take about half the CPU off a round trip
(`bench/libp2p_io.py`).

- **Yamux window credit, go-yamux's way.** `YamuxStream._auto_tune_and_send_window_update`
  runs after every read, and its "partial slack" branch credits any positive shortfall of
  the window: a stream of small messages sends a WINDOW_UPDATE after every other read,
  whatever `PY_YAMUX_RELEASE_ON_READ` says. Each is a frame, a Noise encryption and a
  syscall on one side and a frame to read on the other. Ours counts the bytes read and
  credits them in one update once they reach half the receive window (py-libp2p's own
  `_grow_threshold`), and grows the window when updates come fast, as py-libp2p's
  auto-tuning does (`_apply_autotune_epoch`, up to 16 MiB). A writer can have a full
  window in flight before it waits, as with any go-yamux peer.
- **Buffered TCP reads.** `TrioTCPStream.read(n)` asks the socket for at most `n` bytes,
  and Noise reads each message as a 2-byte length and then its body: two `recv` calls, each
  behind a lock and a checkpoint, per frame. Ours takes up to 64 KiB from the socket and
  serves the following reads from it, in order.
- **Free locks take no schedule point.** One small write passes `NetStream`'s state lock,
  the yamux stream's writer and window locks, the connection's frame lock and the TCP
  stream's write lock; `trio.Lock.acquire` yields to the scheduler even when the lock is
  free, so each is a pass of the event loop (about 15 us here) that does nothing. Those
  locks become `QuickLock`s, which yield only when they must wait; `send_all` and the
  socket reads still yield, so no I/O loop can run without schedule points.

`install()` applies all three; it is idempotent, and refuses a py-libp2p whose classes lack what
the replacements rely on, like `meshd.net.kad`'s protocol id.
"""

from __future__ import annotations

import importlib
from typing import Any

import trio

__all__ = ["READ_SIZE", "QuickLock", "install"]

READ_SIZE = 65536  # what one socket read may take: a Noise message is at most 65,535 bytes

# What the replacements read and call on py-libp2p 0.8.1's classes.
_YAMUX_REQUIRED = (
    "_auto_tune_and_send_window_update",
    "_grow_threshold",
    "_apply_autotune_epoch",
    "send_window_update",
)
# The trio.Lock attributes that `QuickLock` replaces, by class (module, name).
_QUICK_LOCKS = (
    ("libp2p.network.stream.net_stream", "NetStream", ("_state_lock",)),
    ("libp2p.stream_muxer.yamux.yamux", "YamuxStream", ("window_lock", "close_lock")),
    ("libp2p.stream_muxer.yamux.yamux", "Yamux", ("streams_lock", "_write_lock")),
    ("libp2p.io.trio", "TrioTCPStream", ("read_lock", "write_lock")),
)
_originals: dict[str, Any] = {}


async def _take(lock: Any) -> None:
    """Take `lock` (a trio Lock or Semaphore) at once if it is free, else wait for it."""
    await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller still stops here
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


class QuickLock:
    """A `trio.Lock` that takes no schedule point when it is free."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def acquire(self) -> None:
        """Take the lock: at once if it is free, else wait for it as `trio.Lock` does."""
        await _take(self._lock)

    def acquire_nowait(self) -> None:
        """Take the lock or raise `trio.WouldBlock`."""
        self._lock.acquire_nowait()

    def release(self) -> None:
        """Release the lock (only its owner may)."""
        self._lock.release()

    def locked(self) -> bool:
        """Whether some task holds the lock."""
        return self._lock.locked()

    def statistics(self) -> Any:
        """`trio.Lock.statistics()` of the lock underneath."""
        return self._lock.statistics()

    async def __aenter__(self) -> None:
        await _take(self._lock)

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


async def _acquire_write_quickly(self: Any) -> None:
    """`ReadWriteLock.acquire_write` with no schedule point when the writer slot is free."""
    await _take(self._writer_lock)


def _with_quick_locks(init: Any, names: tuple[str, ...]) -> Any:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        for name in names:
            setattr(self, name, QuickLock())

    __init__.__wrapped__ = init  # type: ignore[attr-defined]
    __init__.__module__ = __name__
    return __init__


async def _credit_half_window(self: Any, *, bytes_read: int = 0) -> None:
    """Credit read bytes back to the peer once they reach half the receive window."""
    if bytes_read > 0:
        self._pending_recv_release += bytes_read
    if self._pending_recv_release < self._grow_threshold():
        # Nothing to send: no lock and no schedule point (the read around us has its own).
        # py-libp2p never holds `window_lock` across an await, so this is as atomic.
        return
    increment = 0
    async with self.window_lock:
        if self._pending_recv_release >= self._grow_threshold():
            increment, self._pending_recv_release = self._pending_recv_release, 0
            self.recv_window += increment
            self._window_update_pending_flush += 1
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            increment += self._apply_autotune_epoch(buffered)
    # Outside the lock, as py-libp2p does: an inbound WINDOW_UPDATE needs it meanwhile.
    if increment > 0:
        await self.send_window_update(increment, skip_lock=True)


async def _buffered_read(self: Any, n: int | None = None) -> bytes:
    """Up to `n` bytes (all that is at hand when None), from the bytes held back first."""
    if n == 0:
        return b""
    held: bytes = getattr(self, "_meshd_held", b"")
    start: int = getattr(self, "_meshd_start", 0)
    if start >= len(held):
        got = await _originals["read"](self, READ_SIZE if n is None else max(n, READ_SIZE))
        # Another reader may have held bytes back while this one waited for the socket's
        # lock: those came off the socket first, so they go first.
        held = getattr(self, "_meshd_held", b"")[getattr(self, "_meshd_start", 0) :] + got
        start = 0
        if not held:
            return b""  # end of stream
    end = len(held) if n is None else min(len(held), start + n)
    if end == len(held):
        self._meshd_held, self._meshd_start = b"", 0
    else:
        self._meshd_held, self._meshd_start = held, end
    return held[start:end]  # slicing copies only what is returned


def install() -> None:
    """Apply the fixes to py-libp2p's classes (idempotent)."""
    from libp2p.io.trio import TrioTCPStream
    from libp2p.stream_muxer.rw_lock import ReadWriteLock
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    missing = [name for name in _YAMUX_REQUIRED if not hasattr(YamuxStream, name)]
    if not hasattr(TrioTCPStream, "read"):
        missing.append("TrioTCPStream.read")
    if not hasattr(ReadWriteLock, "acquire_write"):
        missing.append("ReadWriteLock.acquire_write")
    if missing:
        raise RuntimeError(
            f"py-libp2p lacks {', '.join(missing)}: unknown layout, see meshd/net/libp2p_io.py"
        )
    for module, name, locks in _QUICK_LOCKS:
        cls = getattr(importlib.import_module(module), name)
        if cls.__init__.__module__ != __name__:
            cls.__init__ = _with_quick_locks(cls.__init__, locks)
    ReadWriteLock.acquire_write = _acquire_write_quickly  # type: ignore[method-assign]
    YamuxStream._auto_tune_and_send_window_update = _credit_half_window  # type: ignore[method-assign]
    if TrioTCPStream.read is not _buffered_read:
        _originals["read"] = TrioTCPStream.read
        TrioTCPStream.read = _buffered_read  # type: ignore[method-assign]
