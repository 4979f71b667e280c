"""Each swarm's shared document on this node: sync, persistence, state, task board, decisions.

Part of the swarm service (`meshd.swarms.Swarms` owns one `SharedState`). Per followed swarm
it keeps a `SwarmDoc` (pycrdt) and

- publishes every local change as one node-signed `swarm.upd` on the swarm's topic, and
  merges the updates of other nodes (`protocol.swarm_state`);
- every SYNC_EVERY heartbeats announces its state vector (`swarm.sv`) if it changed since
  its last announce, and every QUIET_EVERY heartbeats anyway. A node that sees an announce
  lacking something it holds answers with the difference (one `swarm.upd`, refused and
  counted when over MAX_UPDATE_BYTES) if it wrote what is lacking or `answerers` ranks it
  among the few that answer this announce; one that sees an announce holding more than it
  has announces its own at once. A joining node catches up within about one sync interval,
  one back from a partition within QUIET_EVERY heartbeats;
- stores the document (meta `swarm_doc/<name>`): at once after a local change, at the next
  heartbeat after a remote one;
- builds the task board and decisions on the document (docs/swarms.md).

A record, update or entry that does not parse is counted and logged, never fatal.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from typing import TYPE_CHECKING, Any

import trio

from meshd.swarm_doc import DocError, SwarmDoc, SwarmError
from protocol.envelope import Envelope
from protocol.errors import RemoteProtocolError
from protocol.ids import AgentId
from protocol.swarm_state import (
    KIND_STATE,
    KIND_UPDATE,
    MAX_STATE_VECTOR_BYTES,
    MAX_UPDATE_BYTES,
    StateAnnounce,
    StateUpdate,
    answerers,
    claim_winner,
    decode_state_vector,
    lacks,
    parse_state_record,
    state_body,
    update_body,
)
from protocol.swarm_vote import (
    KIND_BALLOT,
    KIND_PROPOSAL,
    Proposal,
    ballot_body,
    open_ballot,
    open_proposal,
    proposal_body,
    verify_decision,
)

if TYPE_CHECKING:
    from meshd.swarms import Swarms

__all__ = ["MAX_DOC_BYTES", "META_DOC_PREFIX", "QUIET_EVERY", "SYNC_EVERY", "SharedState"]

log = logging.getLogger("meshd.swarms")

META_DOC_PREFIX = "swarm_doc/"
SYNC_EVERY = 2  # heartbeats between state-vector announces of a changed document
QUIET_EVERY = 10  # heartbeats between announces of an unchanged one
# Local writes stop here, so that a whole document still fits one update envelope.
MAX_DOC_BYTES = 48_000
MAX_KEY_LEN = 128
MAX_VALUE_BYTES = 16_384
_PROOF_TTL_MS = 365 * 24 * 3600 * 1000  # proposals and ballots are kept as proof
_LOG_INTERVAL_S = 60.0
_EMPTY_UPDATE = b"\x00\x00"
_QUEUE = 64  # sync messages waiting to be published
_COUNTERS = (
    "announces_sent",
    "announces_skipped",
    "ballots",
    "claims",
    "proposals",
    "state_ignored",
    "state_update_bytes",
    "state_writes",
    "sync_answers",
    "sync_dropped",
    "sync_left_to_others",
    "tasks_done",
    "update_too_large",
    "updates_sent",
    "vector_too_large",
)
_MAX_FOLLOWERS = 1_024  # nodes remembered per swarm as followers (sync answer ranking)


def _json_text(value: Any, what: str) -> str:
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SwarmError("bad_value", f"{what} is not JSON: {exc}") from None
    if len(text.encode()) > MAX_VALUE_BYTES:
        raise SwarmError("bad_value", f"{what} is over {MAX_VALUE_BYTES} bytes of JSON")
    return text


class SharedState:
    """The shared documents of the swarms this node follows (owned by `Swarms`)."""

    def __init__(self, owner: Swarms) -> None:
        self._owner = owner
        self._docs: dict[str, SwarmDoc] = {}
        self._dirty: set[str] = set()
        self._ticks = 0
        self._vectors: dict[str, bytes] = {}  # state vector at the last periodic announce
        self._answered: dict[tuple[str, bytes], float] = {}
        self._announced: dict[str, float] = {}
        # swarm -> node raw id -> local time of its last announce: who follows the swarm
        self._followers: dict[str, dict[bytes, float]] = {}
        self._queue_in, self._queue_out = trio.open_memory_channel[tuple[str, Envelope]](_QUEUE)
        self._logged: dict[str, float] = {}
        # Every counter listed from the start, so that status readers find each one (at 0).
        self.counters: Counter[str] = Counter(dict.fromkeys(_COUNTERS, 0))
        self.rejected: Counter[str] = Counter()

    # -- documents ------------------------------------------------------------------------

    async def open(self, name: str) -> None:
        """Load (or start) the swarm's document."""
        doc = SwarmDoc()
        raw = await self._owner.store.get_meta(META_DOC_PREFIX + name)
        if raw is not None:
            try:
                doc.apply(raw)
            except DocError as exc:
                log.error("swarms: stored document of %s is unreadable (%s); empty", name, exc)
        self._docs[name] = doc

    def doc(self, name: str) -> SwarmDoc:
        """The swarm's document (KeyError if the swarm is not followed)."""
        return self._docs[name]

    async def _save(self, name: str) -> None:
        self._dirty.discard(name)
        await self._owner.store.set_meta(META_DOC_PREFIX + name, self._docs[name].encode())

    async def _commit(self, name: str, update: bytes) -> None:
        """Persist and publish a local change."""
        self.counters["state_writes"] += 1
        self.counters["state_update_bytes"] += len(update)
        await self._save(name)
        await self._send_update(name, update)

    def _check_room(self, name: str, adding: int) -> None:
        size = len(self._docs[name].encode())
        if size + adding + 256 > MAX_DOC_BYTES:
            raise SwarmError(
                "state_full", f"swarm {name}'s document is {size} bytes; at most {MAX_DOC_BYTES}"
            )

    def _update_envelope(self, name: str, update: bytes) -> Envelope | None:
        if len(update) > MAX_UPDATE_BYTES:
            self.counters["update_too_large"] += 1
            self._log("too_large", f"swarms: an update of {name} is {len(update)} bytes: not sent")
            return None
        if update == _EMPTY_UPDATE:
            return None  # the change changed nothing
        self.counters["updates_sent"] += 1
        body = update_body(name, self._owner.node_id, update)
        return self._owner.node_envelope(name, KIND_UPDATE, body)

    async def _send_update(self, name: str, update: bytes) -> None:
        envelope = self._update_envelope(name, update)
        if envelope is not None:
            await self._owner.publish(name, envelope)

    def _queue(self, name: str, envelope: Envelope | None) -> None:
        """Publish from `send_queued`, or drop (counted) when the queue is full."""
        if envelope is None:
            return
        try:
            self._queue_in.send_nowait((name, envelope))
        except trio.WouldBlock:
            self.counters["sync_dropped"] += 1

    async def send_queued(self) -> None:
        """Publish queued sync messages until cancelled (run by `Swarms.serve`)."""
        async for name, envelope in self._queue_out:
            await self._owner.publish(name, envelope)

    # -- records --------------------------------------------------------------------------

    def on_record(self, name: str, envelope: Envelope) -> None:
        """A `swarm.upd` or `swarm.sv` from another node."""
        try:
            record = parse_state_record(envelope)
        except RemoteProtocolError as exc:
            self._owner.reject(exc)
            return
        doc = self._docs.get(name)
        if doc is None or record.swarm != name or record.node == self._owner.node_id:
            self.counters["state_ignored"] += 1
            return
        if isinstance(record, StateUpdate):
            try:
                changed = doc.apply(record.update)
            except DocError as exc:
                self.rejected["bad_update"] += 1
                self._log("bad_update", f"swarms: refused an update of {name}: {exc}")
                return
            self.counters["updates_applied" if changed else "updates_known"] += 1
            if changed:
                self._dirty.add(name)
            return
        ours = decode_state_vector(doc.vector())
        now = trio.current_time()
        interval = self._owner.heartbeat_s * SYNC_EVERY
        followers = self._followers.setdefault(name, {})
        if record.node.raw not in followers and len(followers) >= _MAX_FOLLOWERS:
            self._forget_followers(name, now)
        if len(followers) < _MAX_FOLLOWERS:
            followers[record.node.raw] = now
        if lacks(record.clocks, ours) and self._answers(name, doc, record, ours):
            key = (name, record.node.raw)
            if now - self._answered.get(key, -math.inf) >= interval / 2:
                self._answered[key] = now
                if len(self._answered) > 4096:
                    self._answered.clear()
                self.counters["sync_answers"] += 1
                self._queue(name, self._update_envelope(name, doc.encode(record.vector)))
        if lacks(ours, record.clocks) and now - self._announced.get(name, -math.inf) >= (
            interval / 2
        ):
            self._queue(name, self._announce_envelope(name))

    def _answers(
        self, name: str, doc: SwarmDoc, record: StateAnnounce, ours: dict[int, int]
    ) -> bool:
        """Whether this node answers the announce (`protocol.swarm_state.answerers`)."""
        if ours.get(doc.client_id, 0) > record.clocks.get(doc.client_id, 0):
            return True  # the announcer lacks our own writes: we surely hold them
        now = trio.current_time()
        self._forget_followers(name, now)
        candidates = {n.raw for n in self._owner.view_nodes(name)} | {self._owner.node_id.raw}
        candidates.update(self._followers.get(name, {}))
        chosen = answerers(record.node.raw, record.created_ms, candidates)
        if self._owner.node_id.raw not in chosen:
            self.counters["sync_left_to_others"] += 1
            return False
        return True

    def _forget_followers(self, name: str, now: float) -> None:
        """Drop nodes not heard announcing for 3 quiet intervals."""
        # A follower whose document does not change announces only every QUIET_EVERY
        # heartbeats: forgotten sooner, it would drop out of some nodes' rankings and not
        # others', and more nodes than ANSWERERS would answer an announce.
        horizon = 3 * QUIET_EVERY * self._owner.heartbeat_s
        followers = self._followers.get(name, {})
        for raw in [r for r, seen in followers.items() if now - seen > horizon]:
            del followers[raw]

    def _announce_envelope(self, name: str) -> Envelope | None:
        self._announced[name] = trio.current_time()
        vector = self._docs[name].vector()
        if len(vector) > MAX_STATE_VECTOR_BYTES:
            self.counters["vector_too_large"] += 1
            return None
        body = state_body(name, self._owner.node_id, vector)
        self.counters["announces_sent"] += 1
        return self._owner.node_envelope(name, KIND_STATE, body)

    async def _announce(self, name: str) -> None:
        envelope = self._announce_envelope(name)
        if envelope is not None:
            await self._owner.publish(name, envelope)

    async def tick(self) -> None:
        """Once per heartbeat: store remotely changed documents; every SYNC_EVERY, announce
        the documents that changed since their last announce (all every QUIET_EVERY)."""
        for name in sorted(self._dirty & set(self._docs)):
            await self._save(name)
        self._ticks += 1
        if self._ticks % SYNC_EVERY == 0:
            for name in sorted(self._docs):
                vector = self._docs[name].vector()
                if vector == self._vectors.get(name) and self._ticks % QUIET_EVERY != 0:
                    self.counters["announces_skipped"] += 1
                    continue
                self._vectors[name] = vector
                await self._announce(name)

    def _log(self, what: str, text: str) -> None:
        now = trio.current_time()
        if now - self._logged.get(what, -math.inf) >= _LOG_INTERVAL_S:
            self._logged[what] = now
            log.info("%s", text)

    # -- key/value state ------------------------------------------------------------------

    def state(self, name: str) -> dict[str, Any]:
        """The swarm's shared key/value state as JSON."""
        return dict(self._docs[name].entries("state"))

    def info(self, name: str) -> dict[str, Any]:
        """The state with the document's size and state vector."""
        doc = self._docs[name]
        return {
            "swarm": name,
            "state": self.state(name),
            "bytes": len(doc.encode()),
            "clients": len(decode_state_vector(doc.vector())),
        }

    def summary(self, name: str) -> dict[str, Any]:
        """The shared document in numbers: keys, bytes, tasks by state, proposals."""
        tasks: Counter[str] = Counter(t["state"] for t in self.tasks(name))
        return {
            "keys": len(self.state(name)),
            "bytes": len(self._docs[name].encode()),
            "tasks": {state: tasks.get(state, 0) for state in ("open", "claimed", "done")},
            "proposals": len(self.proposals(name)),
        }

    async def set_state(self, name: str, key: str, value: Any, *, delete: bool = False) -> None:
        """Write (or delete) one key of the shared state, then publish the change."""
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LEN:
            raise SwarmError("bad_value", f"a state key is 1..{MAX_KEY_LEN} characters")
        doc = self._docs[name]
        if delete:
            if not doc.has("state", key):
                return
            update = doc.change(lambda: doc.remove("state", key))
        else:
            text = _json_text(value, f"value of {key!r:.40}")
            self._check_room(name, len(text) + len(key))
            update = doc.change(lambda: doc.put("state", key, json.loads(text)))
        await self._commit(name, update)

    # -- task board -----------------------------------------------------------------------

    async def add_task(self, name: str, spec: Any, by: AgentId | None) -> str:
        """Put a task on the board; return its id (16 hex digits)."""
        text = _json_text(spec, "a task's spec")
        self._check_room(name, len(text) + 64)
        task = os.urandom(8).hex()
        entry = {"spec": json.loads(text), "by": by.did if by else None, "ms": self._now_ms()}
        doc = self._docs[name]
        await self._commit(name, doc.change(lambda: doc.put("tasks", task, entry)))
        return task

    def _claims(self, name: str) -> dict[str, list[tuple[int, bytes]]]:
        out: dict[str, list[tuple[int, bytes]]] = {}
        for key, value in self._docs[name].entries("claims"):
            task, _, did = key.partition("/")
            try:
                agent = AgentId.from_did(did)
                stamp = value["ms"]
            except (ValueError, TypeError, KeyError):
                self._docs[name].bad_entries["claims"] += 1
                continue
            if isinstance(stamp, int) and not isinstance(stamp, bool):
                out.setdefault(task, []).append((stamp, agent.raw))
        return out

    def tasks(self, name: str) -> list[dict[str, Any]]:
        """The board: every task with its state (open, claimed, done) and claimant."""
        doc = self._docs[name]
        live = {a.raw for a in self._owner.members(name)}
        claims = self._claims(name)
        out = []
        for task, entry in doc.entries("tasks"):
            if not isinstance(entry, dict):
                continue
            done = doc.get("done", task)
            winner = claim_winner(claims.get(task, []), live)
            state = "done" if isinstance(done, dict) else "claimed" if winner else "open"
            out.append(
                {
                    "id": task,
                    "spec": entry.get("spec"),
                    "by": entry.get("by"),
                    "ms": entry.get("ms"),
                    "state": state,
                    "claimant": AgentId(winner).did if winner else None,
                    "claims": len(claims.get(task, [])),
                    "done": done if isinstance(done, dict) else None,
                }
            )
        out.sort(key=lambda t: (t["ms"] if isinstance(t["ms"], int) else 0, t["id"]))
        return out

    def _task(self, name: str, task: str) -> dict[str, Any]:
        for entry in self.tasks(name):
            if entry["id"] == task:
                return entry
        raise SwarmError("unknown_task", f"swarm {name} has no task {task!r:.40}")

    async def claim(self, name: str, task: str, agent: AgentId, settle_s: float) -> bool:
        """Claim a task for a local member; after `settle_s`, whether it won the claim."""
        entry = self._task(name, task)
        if entry["state"] == "done" or entry["claimant"] not in (None, agent.did):
            return False
        doc = self._docs[name]
        key = f"{task}/{agent.did}"
        if agent.raw not in {raw for _, raw in self._claims(name).get(task, [])}:
            self._check_room(name, 160)
            stamp = self._now_ms()
            await self._commit(name, doc.change(lambda: doc.put("claims", key, {"ms": stamp})))
            self.counters["claims"] += 1
        await trio.sleep(settle_s)  # let concurrent claims arrive before deciding
        return bool(self._task(name, task)["claimant"] == agent.did)

    async def complete(self, name: str, task: str, agent: AgentId, result: Any) -> bool:
        """Mark a task done by `agent` with `result`; False if it already was."""
        entry = self._task(name, task)
        if entry["state"] == "done":
            return False
        text = _json_text(result, "a task's result")
        self._check_room(name, len(text) + 128)
        done = {"agent": agent.did, "ms": self._now_ms(), "result": json.loads(text)}
        doc = self._docs[name]
        await self._commit(name, doc.change(lambda: doc.put("done", task, done)))
        self.counters["tasks_done"] += 1
        return True

    # -- decisions ------------------------------------------------------------------------

    async def propose(self, name: str, text: str, agent: AgentId) -> dict[str, Any]:
        """A local member proposes `text` to the swarm's live members; return the proposal."""
        members = list(self._owner.members(name))
        if agent not in members:
            raise SwarmError("not_member", f"{agent.did} is not a live member of {name}")
        try:
            body = proposal_body(name, text, members)
        except ValueError as exc:
            raise SwarmError("bad_value", str(exc)) from None
        self._check_room(name, 64 + len(text.encode()) + 33 * len(members) + 200)
        key = await self._owner.agent_key(agent)
        frame = self._owner.sign(key, name, KIND_PROPOSAL, body, _PROOF_TTL_MS).frame
        proposal = open_proposal(frame)
        doc = self._docs[name]
        pid = proposal.id.hex()
        await self._commit(name, doc.change(lambda: doc.put_frame("proposals", pid, frame)))
        self.counters["proposals"] += 1
        return self.decision(name, pid)

    def _proposal(self, name: str, pid: str) -> Proposal:
        for frame in self._docs[name].frames("proposals", pid):
            try:
                proposal = open_proposal(frame)
            except RemoteProtocolError as exc:
                self.rejected[f"proposal_{exc.reason.value}"] += 1
                continue
            if proposal.id.hex() == pid and proposal.swarm == name:
                return proposal
        raise SwarmError("unknown_proposal", f"swarm {name} has no proposal {pid!r:.40}")

    def decision(self, name: str, pid: str, *, ballots: bool = False) -> dict[str, Any]:
        """A proposal with the verdict its ballots prove (and the ballot frames, hex)."""
        proposal = self._proposal(name, pid)
        frames = self._docs[name].frames("ballots", pid + "/")
        verdict = verify_decision(proposal, frames)
        out: dict[str, Any] = {
            "id": pid,
            "swarm": name,
            "text": proposal.text,
            "proposer": proposal.proposer.did,
            "created_ms": proposal.created_ms,
            "electorate": [a.did for a in proposal.electorate],
            "quorum": verdict.quorum,
            "yes": verdict.yes,
            "no": verdict.no,
            "outcome": verdict.outcome,
            "votes": {a.did: "yes" if v else "no" for a, v in verdict.voters.items()},
            "rejected": verdict.rejected,
        }
        if ballots:
            out["proposal"] = proposal.frame.hex()
            out["ballots"] = [f.hex() for f in frames]
        return out

    def proposals(self, name: str) -> list[dict[str, Any]]:
        """Every proposal of the swarm with its verdict, oldest first."""
        out = []
        for key in {k.split("/")[0] for k in self._docs[name].keys("proposals")}:
            try:
                out.append(self.decision(name, key))
            except ValueError:
                continue
        return sorted(out, key=lambda d: (d["created_ms"], d["id"]))

    async def vote(self, name: str, pid: str, agent: AgentId, yes: bool) -> dict[str, Any]:
        """A local member signs a ballot on a proposal; return the updated decision."""
        proposal = self._proposal(name, pid)
        if agent not in proposal.electorate:
            raise SwarmError("not_member", f"{agent.did} is not in the proposal's electorate")
        if agent.did in self.decision(name, pid)["votes"]:
            raise SwarmError("already_voted", f"{agent.did} already voted on {pid}")
        key = await self._owner.agent_key(agent)
        body = ballot_body(name, proposal.id, yes)
        frame = self._owner.sign(key, name, KIND_BALLOT, body, _PROOF_TTL_MS).frame
        await self._store_ballot(name, pid, frame)
        return self.decision(name, pid)

    async def submit_ballot(self, name: str, frame: bytes) -> dict[str, Any]:
        """Add a ballot signed elsewhere, once it verifies; SwarmError bad_ballot otherwise."""
        try:
            ballot = open_ballot(frame)
        except RemoteProtocolError as exc:
            self.rejected[f"ballot_{exc.reason.value}"] += 1
            raise SwarmError("bad_ballot", f"ballot refused: {exc}") from None
        pid = ballot.proposal.hex()
        proposal = self._proposal(name, pid)
        if ballot.swarm != name or ballot.voter not in proposal.electorate:
            self.rejected["ballot_unauthorized"] += 1
            raise SwarmError("bad_ballot", "ballot refused: its signer is not in the electorate")
        await self._store_ballot(name, pid, frame)
        return self.decision(name, pid)

    async def _store_ballot(self, name: str, pid: str, frame: bytes) -> None:
        self._check_room(name, len(frame) + 64)
        doc = self._docs[name]
        key = SwarmDoc.frame_key(pid, frame)
        await self._commit(name, doc.change(lambda: doc.put_frame("ballots", key, frame)))
        self.counters["ballots"] += 1

    def _now_ms(self) -> int:
        return self._owner.wall_ms()

    def stats(self) -> dict[str, Any]:
        """Counters of the shared documents."""
        out: dict[str, Any] = dict(sorted(self.counters.items()))
        bad: Counter[str] = Counter()
        for doc in self._docs.values():
            bad.update(doc.bad_entries)
        out["bad_entries"] = dict(sorted(bad.items()))
        out["state_rejected"] = dict(sorted(self.rejected.items()))
        return out
