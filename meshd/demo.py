"""`make run`: the main job, a short tour of what meshd does today.

Two agents exchange signed envelopes through the wire protocol, and the receiver rejects
replayed, forged and expired ones with a reason. Later milestones replace the in-memory
hand-off below with real daemons on loopback.
"""

from __future__ import annotations

import sys
import time

from protocol.envelope import Envelope, open_envelope
from protocol.errors import RemoteProtocolError
from protocol.ids import SigningKey
from protocol.replay import ReplayWindow


def main() -> int:
    """Run the tour and print what happened."""
    now = int(time.time() * 1000)  # wall-clock ms: envelopes carry real timestamps
    alice, bob = SigningKey.generate(), SigningKey.generate()
    window = ReplayWindow()
    print(f"alice  {alice.agent_id.did}")
    print(f"bob    {bob.agent_id.did}")
    request = Envelope.create(alice, bob.agent_id, "req", {"ask": "ping"}, now_ms=now)
    got = open_envelope(
        request.frame, now_ms=now, hosted=lambda a: a == bob.agent_id, replay=window
    )
    print(f"bob got {got.kind} {got.body} from {got.sender.short()} ({len(request.frame)} bytes)")
    reply = got.reply(bob, {"answer": "pong"}, now_ms=now)
    back = open_envelope(reply.frame, now_ms=now, replay=window)
    print(f"alice got {back.kind} {back.body}, reply_to matches: {back.reply_to == got.msg_id}")
    forged = bytearray(request.frame)
    forged[-2] ^= 1
    attempts = {
        "replay": request.frame,
        "forgery": bytes(forged),
        "expired": Envelope.create(
            alice, bob.agent_id, "req", {}, now_ms=now - 120_000, ttl_ms=60_000
        ).frame,
    }
    for label, frame in attempts.items():
        try:
            env = open_envelope(
                frame, now_ms=now, hosted=lambda a: a == bob.agent_id, replay=window
            )
            print(f"{label:<9} accepted from {env.sender.short()}")
        except RemoteProtocolError as exc:
            print(f"{label:<9} rejected: {exc.reason.value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
