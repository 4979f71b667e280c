"""An agent kind for the swarm tests: joins, leaves and reads swarms through `ctx.swarm`."""

from __future__ import annotations

from meshd.runtime.sdk import Agent, Context, Message
from simnet.kinds import SwarmWorker

SEEN: list[dict[str, object]] = []


class Member(Agent):
    """On {"join": NAME} or {"leave": NAME}, does it and records what it then sees."""

    async def on_message(self, ctx: Context, msg: Message) -> None:
        body = msg.body
        if not isinstance(body, dict):
            return
        for op in ("join", "leave"):
            if op in body:
                swarm = ctx.swarm(body[op])
                changed = await (swarm.join() if op == "join" else swarm.leave())
                SEEN.append(
                    {
                        "agent": ctx.agent_id,
                        "op": op,
                        "changed": changed,
                        "members": swarm.members(),
                        "coordinator": swarm.coordinator(),
                    }
                )


RAN: list[tuple[str, str]] = []  # (task id, agent id) for every task a Worker ran


class Worker(SwarmWorker):
    """simnet's task-board worker ({"join": NAME}; {"work": NAME, "for_s": S}), recording
    each task it runs in RAN."""

    def ran(self, task_id: str, agent_id: str) -> None:
        """Record the run."""
        RAN.append((task_id, agent_id))


class Voter(Agent):
    """On {"propose": NAME, "text": T} proposes; on {"vote": NAME, "proposal": P, "yes": B}
    votes; records each answer in DECIDED."""

    async def on_message(self, ctx: Context, msg: Message) -> None:
        body = msg.body
        if not isinstance(body, dict):
            return
        if "propose" in body:
            DECIDED.append({"proposal": await ctx.swarm(body["propose"]).propose(body["text"])})
        elif "vote" in body:
            swarm = ctx.swarm(body["vote"])
            DECIDED.append(await swarm.vote(body["proposal"], bool(body["yes"])))


DECIDED: list[dict[str, object]] = []
