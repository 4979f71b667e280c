"""An agent kind for the swarm tests: joins, leaves and reads swarms through `ctx.swarm`."""

from __future__ import annotations

import trio

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


RAN: list[tuple[str, str]] = []  # (task id, agent id) for every task a Worker ran


class Worker(Agent):
    """A function-as-agent worker: {"join": NAME} joins; {"work": NAME, "for_s": S} takes
    tasks from NAME's board until every task is done (or S seconds pass), recording each run
    in RAN and in the shared state (key "ran/<task>/<agent>"), then completing the task."""

    async def on_message(self, ctx: Context, msg: Message) -> None:
        body = msg.body
        if not isinstance(body, dict):
            return
        if "join" in body:
            await ctx.swarm(body["join"]).join()
            return
        if "work" not in body:
            return
        swarm = ctx.swarm(body["work"])
        deadline = trio.current_time() + float(body.get("for_s", 30.0))
        while trio.current_time() < deadline:
            task = await swarm.next_task()
            if task is None:
                board = swarm.tasks()
                if board and all(t["state"] == "done" for t in board):
                    return
                await trio.sleep(0.05)
                continue
            RAN.append((task["id"], ctx.agent_id))
            await swarm.state.set(f"ran/{task['id']}/{ctx.agent_id}", task["spec"])
            await swarm.complete(task["id"], {"by": ctx.agent_id, "spec": task["spec"]})


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
