"""One swarm's replicated document: a pycrdt (Yrs) `Doc` and what meshd keeps in it.

Root maps, all keyed by text:

- `state`: user key -> JSON text of the value (`meshd swarm state`, `ctx.swarm(n).state`).
  JSON text rather than CRDT values, so numbers, nulls and nesting come back as written.
- `tasks`: task id -> JSON `{"spec", "by", "ms"}`; `claims`: "<task>/<agent did>" -> JSON
  `{"ms"}`; `done`: task id -> JSON `{"agent", "ms", "result"}` (the task board).
- `proposals`: proposal id hex -> signed `swarm.prop` frame; `ballots`: "<proposal id
  hex>/<hash of the frame>" -> signed `swarm.ballot` frame. One entry per distinct frame, so
  a forged frame can never overwrite a genuine one.

Every entry that a peer wrote is read defensively: an entry that does not parse is skipped
and counted in `bad_entries`. Map entries are last-writer-wins per key, as Yrs resolves them.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from pycrdt import Doc, Map

__all__ = ["DocError", "SwarmDoc", "SwarmError"]

_MAPS = ("state", "tasks", "claims", "done", "proposals", "ballots")


class SwarmError(ValueError):
    """A refused swarm operation; `code` names why (bad_name, max_swarms, state_full, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class DocError(ValueError):
    """An update that pycrdt cannot apply."""


class SwarmDoc:
    """A swarm's CRDT document: apply remote updates, make local ones, read entries."""

    def __init__(self) -> None:
        self._doc: Doc[Any] = Doc()
        self._maps: dict[str, Map[Any]] = {name: self._doc.get(name, type=Map) for name in _MAPS}
        self.bad_entries: Counter[str] = Counter()

    # -- sync -----------------------------------------------------------------------------

    @property
    def client_id(self) -> int:
        """This replica's Yjs client id (its own writes carry it)."""
        return int(self._doc.client_id)

    def vector(self) -> bytes:
        """The encoded state vector (what this replica holds)."""
        return bytes(self._doc.get_state())

    def encode(self, vector: bytes | None = None) -> bytes:
        """The update holding everything not in `vector` (everything when None)."""
        if vector is None:
            return bytes(self._doc.get_update())
        return bytes(self._doc.get_update(vector))

    def apply(self, update: bytes) -> bool:
        """Merge a remote update; return whether it added anything; DocError if it is bad."""
        before = self.vector()
        try:
            self._doc.apply_update(update)
        except BaseException as exc:
            # pycrdt raises ValueError for bad bytes; a Rust panic arrives as pyo3's
            # PanicException, a BaseException. Anything else is not ours to swallow.
            if isinstance(exc, Exception) or type(exc).__name__ == "PanicException":
                raise DocError(f"update refused by pycrdt: {exc}"[:200]) from None
            raise
        return self.vector() != before

    def change(self, edit: Callable[[], None]) -> bytes:
        """Run `edit` in one transaction; return the update it made."""
        before = self._doc.get_state()
        with self._doc.transaction():
            edit()
        return bytes(self._doc.get_update(before))

    # -- entries --------------------------------------------------------------------------

    def _json(self, map_name: str, key: str, raw: object) -> Any:
        if not isinstance(raw, str):
            self.bad_entries[map_name] += 1
            return _BAD
        try:
            return json.loads(raw)
        except ValueError:
            self.bad_entries[map_name] += 1
            return _BAD

    def entries(self, map_name: str) -> Iterator[tuple[str, Any]]:
        """(key, parsed JSON value) of a JSON map, sorted by key, bad entries skipped."""
        m = self._maps[map_name]
        for key in sorted(m.keys()):
            value = self._json(map_name, key, m.get(key))
            if value is not _BAD:
                yield key, value

    def get(self, map_name: str, key: str) -> Any:
        """One JSON entry, or None if absent or bad."""
        raw = self._maps[map_name].get(key)
        if raw is None:
            return None
        value = self._json(map_name, key, raw)
        return None if value is _BAD else value

    def put(self, map_name: str, key: str, value: Any) -> None:
        """Set a JSON entry (inside `change`)."""
        self._maps[map_name][key] = json.dumps(value, separators=(",", ":"), allow_nan=False)

    def remove(self, map_name: str, key: str) -> None:
        """Delete an entry if present (inside `change`)."""
        m = self._maps[map_name]
        if key in m:
            del m[key]

    def keys(self, map_name: str) -> list[str]:
        """The keys of a map, sorted."""
        return sorted(self._maps[map_name].keys())

    def has(self, map_name: str, key: str) -> bool:
        """Whether the map has the key."""
        return key in self._maps[map_name]

    def frames(self, map_name: str, prefix: str = "") -> list[bytes]:
        """The byte entries of a frame map whose keys start with `prefix`."""
        m = self._maps[map_name]
        out = []
        for key in sorted(m.keys()):
            if key.startswith(prefix):
                raw = m.get(key)
                if isinstance(raw, bytes | bytearray):
                    out.append(bytes(raw))
                else:
                    self.bad_entries[map_name] += 1
        return out

    def put_frame(self, map_name: str, key: str, frame: bytes) -> None:
        """Store a signed frame (inside `change`)."""
        self._maps[map_name][key] = frame

    @staticmethod
    def frame_key(prefix: str, frame: bytes) -> str:
        """`prefix/<16 hex digits of the frame's hash>`: one entry per distinct frame."""
        return f"{prefix}/{hashlib.sha256(frame).hexdigest()[:16]}"


_BAD = object()
