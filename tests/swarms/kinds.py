"""An agent kind for the swarm tests: joins, leaves and reads swarms through `ctx.swarm`."""

from __future__ import annotations

from meshd.runtime.sdk import Agent, Context, Message

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
