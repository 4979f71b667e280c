"""Messaging benchmark: signed messages between two nodes in separate processes, on loopback.

Two processes (multiprocessing, spawn), each running a real node: `Libp2pNetwork` (TCP,
Noise, yamux), `Store`, `Runtime` and `Delivery`. The receiver hosts sink agents (a no-op
handler) and an echo agent; the sender sends through `Delivery.send`, so every message goes
the whole way: located, queued on the peer's message stream, batched into writes, read
64 KiB at a time, parsed, verified in two worker threads (signature, expiry, skew, replay,
recipient), handed to the runtime, the agent's handler run, and the ACK back to the sender.

Measured in one run, then printed as ratios to ceilings measured in the same run:
1. throughput: pre-signed messages, many concurrent senders; delivered (ACKed) per second;
2. latency at light load: one message at a time, send -> delivery report (ACK), p50/p99;
   and an echo request -> reply round trip (`Runtime.send_as(wait=True)`, which signs the
   request, and the echo agent signs its reply);
3. the two-core Ed25519 verify ceiling: two threads running PyNaCl verify;
4. py-libp2p's stream rate with one write() per message, and with 64 messages per write,
   between the same two processes.

Everything is bounded in time; the last line is a JSON summary.
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# Run as a script, this file's directory comes first on sys.path, where bench/protocol.py would
# shadow the protocol package; the repository root must win.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nacl.bindings
import trio

from meshd.runtime.sdk import Agent, Context, Message
from protocol.envelope import Envelope
from protocol.ids import AgentId, SigningKey

THROUGHPUT_MESSAGES = 60_000
CONCURRENCY = 512
SENDER_KEYS = 8  # the replay window holds at most 50,000 live ids per sender
SINKS = 16
LATENCY_MESSAGES = 2_000
ECHO_ROUND_TRIPS = 500
RAW_MESSAGES = 6_000
RAW_SIZE = 256
VERIFY_SECONDS = 1.5
PHASE_TIMEOUT_S = 180.0
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
RAW_PROTOCOL = "/meshd/bench/raw/1.0.0"
BODY = {"task": "translate", "text": "The quick brown fox jumps over the lazy dog.",
        "lang": "fr", "priority": 3}  # fmt: skip


class Sink(Agent):
    """Takes every message and does nothing with it."""

    async def on_message(self, ctx: Context, msg: Message) -> None:
        """Nothing: the benchmark measures delivery, not handlers."""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the node each process runs --------------------------------------------------------


async def _with_node(conn: Connection, body: Any) -> None:
    """Run a node (network, store, runtime, delivery) around `body(node, conn)`."""
    from meshd.delivery import Delivery
    from meshd.logs import configure_logging
    from meshd.net.libp2p_net import Libp2pNetwork
    from meshd.net.types import NetEvent
    from meshd.runtime.runtime import Runtime
    from meshd.store import Store

    configure_logging("warning", "text").quiet = True
    events, _unread = trio.open_memory_channel[NetEvent](10_000)
    seed = SigningKey.generate().seed
    with tempfile.TemporaryDirectory(prefix="meshd-msgbench-") as tmp:
        async with Store(Path(tmp) / "meshd.db") as store, trio.open_nursery() as nursery:
            net = Libp2pNetwork(seed, listen=[LOOPBACK])
            runtime = Runtime(store, SigningKey(seed))
            delivery = Delivery(runtime, net)
            await nursery.start(net.serve, events)
            await nursery.start(runtime.serve)
            await nursery.start(delivery.serve)
            await body({"net": net, "runtime": runtime, "delivery": delivery}, conn)
            nursery.cancel_scope.cancel()


async def _recv(conn: Connection) -> Any:
    return await trio.to_thread.run_sync(conn.recv)


def receiver_main(conn: Connection) -> None:
    """The receiving process: sink agents, an echo agent and a raw byte sink."""
    trio.run(_with_node, conn, _receive)


async def _receive(node: dict[str, Any], conn: Connection) -> None:
    runtime, net = node["runtime"], node["net"]
    sinks = [info["id"] for info in await runtime.spawn("bench.messaging:Sink", count=SINKS)]
    (echo,) = await runtime.spawn("echo")
    cpu: list[tuple[float, float]] = []

    async def raw_sink(stream: Any) -> None:
        # Count bytes; answer with the total when the sender asks (a zero byte). Nothing may
        # escape a py-libp2p handler: it would wedge the whole connection (see streams.py).
        total = 0
        try:
            while True:
                data = await stream.read(65536)
                total += len(data)
                if data.endswith(b"\x00"):
                    await stream.write(str(total).encode())
        except Exception:  # the sender reset the stream: done
            return

    net.host.set_stream_handler(RAW_PROTOCOL, raw_sink)

    async def sample_cpu() -> None:
        while True:
            cpu.append((time.time(), time.process_time()))
            await trio.sleep(0.1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_cpu)
        hello = {"peer_id": net.peer_id, "addrs": net.listen_addrs(), "sinks": sinks}
        conn.send({**hello, "echo": echo["id"]})
        assert await _recv(conn) == "stop"
        nursery.cancel_scope.cancel()
    stats = {"delivery": node["delivery"].stats(), "runtime": runtime.stats_dict()}
    conn.send({**stats, "streams": net.stats()["messages"], "cpu": cpu})


def sender_main(conn: Connection) -> None:
    """The sending process: pre-signs messages and drives every measurement."""
    trio.run(_with_node, conn, _send)


async def _send(node: dict[str, Any], conn: Connection) -> None:
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    net, runtime, delivery = node["net"], node["runtime"], node["delivery"]
    peer = await _recv(conn)
    sinks = [AgentId.from_did(did) for did in peer["sinks"]]
    echo = AgentId.from_did(peer["echo"])
    for agent in [*sinks, echo]:
        delivery.learn(agent, peer["peer_id"], peer["addrs"])
    out: dict[str, Any] = {}

    def sign(count: int) -> list[Envelope]:
        keys = [SigningKey.generate() for _ in range(SENDER_KEYS)]
        now = runtime.clock()
        return [
            Envelope.create(keys[i % SENDER_KEYS], sinks[i % SINKS], "msg", BODY, now_ms=now)
            for i in range(count)
        ]

    with trio.fail_after(PHASE_TIMEOUT_S):
        # Warm up: connection, streams, activations of every sink.
        for envelope in sign(2_000):
            await delivery.send(envelope, reliable=False)

        # py-libp2p's own stream: one write() per message, then 64 per write.
        raw_peer = ID.from_base58(peer["peer_id"])
        stream = await net.host.new_stream(raw_peer, [TProtocol(RAW_PROTOCOL)])
        payload = b"m" * RAW_SIZE
        for per_write, key in ((1, "raw_one_per_write"), (64, "raw_64_per_write")):
            count = RAW_MESSAGES if per_write == 1 else RAW_MESSAGES * 10
            began = time.perf_counter()
            for _ in range(count // per_write):
                await stream.write(payload * per_write)
            await stream.write(b"\x00")
            await stream.read(64)  # the receiver's byte count: everything arrived
            out[key] = count / (time.perf_counter() - began)
        await stream.reset()

        # Light load: one message at a time, send -> ACK.
        latencies = []
        for envelope in sign(LATENCY_MESSAGES):
            began = time.perf_counter()
            report = await delivery.send(envelope, reliable=False)
            latencies.append(time.perf_counter() - began)
            assert report.outcome == "delivered", report
        out["latency_ms"] = [x * 1000 for x in latencies]

        # Request -> reply through the echo agent (both envelopes signed on the way).
        operator = await runtime.operator()
        round_trips = []
        for i in range(ECHO_ROUND_TRIPS):
            began = time.perf_counter()
            result = await runtime.send_as(operator, echo, {"n": i}, wait=True, timeout=5.0)
            round_trips.append(time.perf_counter() - began)
            assert result["outcome"] == "delivered", result
            assert result["reply"]["body"] == {"n": i}, result
        out["echo_ms"] = [x * 1000 for x in round_trips]

        # Throughput: many concurrent senders, pre-signed envelopes.
        began_sign = time.perf_counter()
        envelopes = sign(THROUGHPUT_MESSAGES)
        out["sign_s"] = time.perf_counter() - began_sign
        outcomes: Counter[str] = Counter()
        queue = iter(envelopes)

        async def worker() -> None:
            for envelope in queue:
                outcomes[(await delivery.send(envelope, reliable=False)).outcome] += 1

        out["window"] = [time.time()]
        cpu0 = time.process_time()
        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(CONCURRENCY):
                nursery.start_soon(worker)
        elapsed = time.perf_counter() - began
        out["sender_cpu_s"] = time.process_time() - cpu0
        out["window"].append(time.time())
        out["throughput_s"] = elapsed
        out["outcomes"] = dict(outcomes)
        out["delivered_per_s"] = outcomes["delivered"] / elapsed
        out["streams"] = net.stats()["messages"]
    conn.send(out)


# -- the ceilings measured in the parent -----------------------------------------------


def verify_ceiling() -> tuple[float, float]:
    """Ed25519 verifies per second: one thread, then two threads (PyNaCl releases the GIL)."""
    key = SigningKey.generate()
    envelope = Envelope.create(key, key.agent_id, "msg", BODY, now_ms=1_800_000_000_000)
    signed = envelope.signature + envelope.signed_bytes
    public = key.public_key

    def spin(counts: list[int], slot: int, stop: float) -> None:
        n = 0
        while time.perf_counter() < stop:
            for _ in range(200):
                nacl.bindings.crypto_sign_open(signed, public)
            n += 200
        counts[slot] = n

    rates = []
    for threads in (1, 2):
        counts = [0] * threads
        stop = time.perf_counter() + VERIFY_SECONDS
        workers = [threading.Thread(target=spin, args=(counts, i, stop)) for i in range(threads)]
        began = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        rates.append(sum(counts) / (time.perf_counter() - began))
    return rates[0], rates[1]


def _cpu_share(samples: list[tuple[float, float]], window: list[float]) -> float:
    """CPU seconds per second (1.0 = one core) the receiver used within `window`."""
    inside = [s for s in samples if window[0] <= s[0] <= window[1]]
    if len(inside) < 2:
        return float("nan")
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def main() -> int:
    """Start both processes, run every measurement, print figures and ratios."""
    one_core, two_cores = verify_ceiling()
    ctx = multiprocessing.get_context("spawn")
    recv_parent, recv_child = ctx.Pipe()
    send_parent, send_child = ctx.Pipe()
    receiver = ctx.Process(target=receiver_main, args=(recv_child,), daemon=True)
    sender = ctx.Process(target=sender_main, args=(send_child,), daemon=True)
    receiver.start()
    sender.start()
    try:
        if not recv_parent.poll(60):
            raise SystemExit("the receiver did not start")
        send_parent.send(recv_parent.recv())
        if not send_parent.poll(PHASE_TIMEOUT_S * 2):
            raise SystemExit("the sender did not finish")
        sent = send_parent.recv()
        recv_parent.send("stop")
        if not recv_parent.poll(30):
            raise SystemExit("the receiver did not report")
        received = recv_parent.recv()
    finally:
        for proc in (sender, receiver):
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()

    rate = sent["delivered_per_s"]
    lat, echo = sent["latency_ms"], sent["echo_ms"]
    receiver_cpu = _cpu_share(received["cpu"], sent["window"])
    streams = sent["streams"]
    sender_cpu = sent["sender_cpu_s"] / sent["throughput_s"]
    figures = {
        "delivered_per_s": round(rate),
        "messages": THROUGHPUT_MESSAGES,
        "concurrency": CONCURRENCY,
        "outcomes": sent["outcomes"],
        "latency_p50_ms": round(statistics.median(lat), 3),
        "latency_p99_ms": round(_percentile(lat, 0.99), 3),
        "echo_p50_ms": round(statistics.median(echo), 3),
        "echo_p99_ms": round(_percentile(echo, 0.99), 3),
        "verify_1_thread_per_s": round(one_core),
        "verify_2_threads_per_s": round(two_cores),
        "raw_one_write_per_msg_per_s": round(sent["raw_one_per_write"]),
        "raw_64_per_write_per_s": round(sent["raw_64_per_write"]),
        "ratio_to_verify_ceiling": round(rate / two_cores, 3),
        "ratio_to_one_write_per_msg": round(rate / sent["raw_one_per_write"], 2),
        "sender_cpu_cores": round(sender_cpu, 2),
        "receiver_cpu_cores": round(receiver_cpu, 2),
        "msgs_per_write": round(streams["msgs_sent"] / max(1, streams["writes"]), 1),
        "receiver_rejected": received["delivery"]["rejected"],
        "sink_handled": received["runtime"]["handled"],
    }
    print(
        f"signed messages delivered (ACKed)   {rate:>10,.0f} /s   "
        f"({THROUGHPUT_MESSAGES:,} messages, {CONCURRENCY} concurrent senders; target >= 10,000)"
    )
    print(f"  outcomes                          {sent['outcomes']}")
    print(f"  messages per write                {figures['msgs_per_write']:>10}")
    print(
        f"  CPU: sender {sender_cpu:.2f} cores, receiver {receiver_cpu:.2f} cores "
        f"(main thread + 2 verify threads)"
    )
    print(
        f"latency at light load, send -> ACK  p50 {figures['latency_p50_ms']:.2f} ms   "
        f"p99 {figures['latency_p99_ms']:.2f} ms   (target p99 < 5 ms)"
    )
    print(
        f"echo request -> reply (both signed) p50 {figures['echo_p50_ms']:.2f} ms   "
        f"p99 {figures['echo_p99_ms']:.2f} ms"
    )
    print(f"Ed25519 verify, 1 thread            {one_core:>10,.0f} /s")
    print(f"Ed25519 verify, 2 threads (ceiling) {two_cores:>10,.0f} /s")
    print(f"py-libp2p stream, 1 write/message   {sent['raw_one_per_write']:>10,.0f} /s")
    print(f"py-libp2p stream, 64 msgs/write     {sent['raw_64_per_write']:>10,.0f} /s")
    print(f"  ratio delivered / verify ceiling  {figures['ratio_to_verify_ceiling']:.3f}")
    print(f"  ratio delivered / 1 write per msg {figures['ratio_to_one_write_per_msg']:.2f}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
