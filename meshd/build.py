"""`build_node`: compose a node's services over a network, once, for the daemon and simnet.

`meshd run` (`meshd.cli_daemon`) and simnet's in-process mode both build their nodes here,
so that what simnet measures is the daemon's own composition: store, runtime, router,
delivery, publisher, summaries, trust, migrator, telemetry and metrics, wired the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from meshd.clock import WallClock, wall_ms
from meshd.config import Config
from meshd.node import ApiRunner, Node
from meshd.paths import DB_FILE

__all__ = ["build_node"]


@asynccontextmanager
async def build_node(
    network: Any,
    directory: Path,
    config: Config,
    seed: bytes,
    guard: Any,
    *,
    api: ApiRunner | None = None,
    log_counters: Any = None,
    clock: WallClock = wall_ms,
) -> AsyncIterator[Node]:
    """The node for `network` with its data in `directory`; its store closes on exit.

    `clock` is the wall clock of every service (envelope and record expiry, TTLs); simnet
    under virtual time hands one that moves with the virtual clock.
    """
    import trio

    from meshd.delivery import Delivery
    from meshd.metrics import NodeMetrics
    from meshd.migration import Migrator
    from meshd.publisher import Publisher
    from meshd.router import Router
    from meshd.runtime.runtime import Listeners, Runtime
    from meshd.store import Store
    from meshd.summaries import Summaries
    from meshd.swarms import Swarms
    from meshd.telemetry import Telemetry
    from meshd.trust import Trust
    from protocol.ids import SigningKey

    # The store outlives the node's nursery: leaving it commits what is queued.
    async with Store(directory / DB_FILE) as store:
        runtime = Runtime(store, SigningKey(seed), config.agents, clock=clock)
        summaries = Summaries(
            runtime,
            network,
            config.summary,
            provide=network.dht_provide,
            find_providers=network.dht_find_providers,
            clock=clock,
        )
        router = Router(
            runtime.hosts,
            network.dht_get,
            lookup_timeout_s=config.dht.lookup_timeout_s,
            summaries=summaries,
            exclude_s=config.summary.exclude_s,
            clock=clock,
        )
        delivery = Delivery(runtime, network, router=router, guard=guard, clock=clock)
        summaries.on_invalid = lambda peer: delivery.guard.penalise(
            peer, "bad_summary", trio.current_time()
        )
        publisher = Publisher(runtime, network.dht_put, network.listen_addrs, clock=clock)
        trust = Trust(config.trust, runtime, network.dht_get, clock=clock)
        await trust.load()
        delivery.trust = trust
        runtime.listener = Listeners(publisher, summaries, trust)
        migrator = Migrator(
            runtime, network, publisher, router=router, policy=trust.migration_policy
        )
        telemetry = Telemetry(
            SigningKey(seed), network, runtime, delivery, config.telemetry, clock=clock
        )
        swarms = Swarms(
            runtime,
            network,
            delivery.topics,
            node_key=SigningKey(seed),
            settings=config.swarm,
            clock=clock,
        )
        runtime.swarms = swarms
        # The collector reads node.status() at scrape time; two hooks feed histograms.
        metrics = NodeMetrics(lambda: node.status())
        router.observe_lookup = metrics.dht_lookup.observe
        delivery.observe_latency = metrics.delivery_latency.observe
        node = Node(
            network,
            api=api,
            runtime=runtime,
            delivery=delivery,
            publisher=publisher,
            migrator=migrator,
            summaries=summaries,
            metrics=metrics,
            telemetry=telemetry,
            trust=trust,
            swarms=swarms,
            log_counters=log_counters,
        )
        yield node
