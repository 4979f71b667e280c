"""Agent kinds that simnet's workloads spawn (loaded as `simnet.kinds:Class`)."""

from __future__ import annotations

import trio

from meshd.runtime.sdk import Agent, Context, Message

__all__ = ["SwarmWorker"]

_IDLE_POLL_S = 0.05


class SwarmWorker(Agent):
    """A function-as-agent worker of a swarm's task board.

    {"join": NAME} joins the swarm; {"work": NAME, "for_s": S} takes tasks from NAME's board
    until every task there is done (or S seconds pass). Each run is written to the shared
    document as "ran/<task>/<agent>" before the task is completed, so that anyone holding
    the document can count how often each task ran.
    """

    def ran(self, task_id: str, agent_id: str) -> None:
        """Called for each task this agent is about to complete (a hook for subclasses)."""

    async def on_message(self, ctx: Context, msg: Message) -> None:
        """Join, or work through the board."""
        body = msg.body
        if not isinstance(body, dict):
            return
        if "join" in body:
            await ctx.swarm(str(body["join"])).join()
            return
        if "work" not in body:
            return
        swarm = ctx.swarm(str(body["work"]))
        deadline = trio.current_time() + float(body.get("for_s", 30.0))
        while trio.current_time() < deadline:
            task = await swarm.next_task()
            if task is None:
                board = swarm.tasks()
                if board and all(t["state"] == "done" for t in board):
                    return
                await trio.sleep(_IDLE_POLL_S)
                continue
            self.ran(task["id"], ctx.agent_id)
            await swarm.state.set(f"ran/{task['id']}/{ctx.agent_id}", task["spec"])
            await swarm.complete(task["id"], {"by": ctx.agent_id, "spec": task["spec"]})
