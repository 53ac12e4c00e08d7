"""Many active rooms on 2 nodes + Redis: tick duration, e2e latency, Redis commands per tick.

    python -m load_tests.bench_rooms --rooms 5000 --nodes 2 --duration 10 --repeat 3
    python -m load_tests.bench_rooms --rooms 5000 --nodes 2 --cluster   # a real 3+3 cluster
    python -m load_tests.bench_rooms --rooms 5000 --nodes 2 --cluster --replicas 0   # 3 primaries only

Every room has one viewer on each node (raw WebSocket clients, load_tests/wsraw.py); the
viewer on node 0 of each room posts a danmaku about every 1/--rate-per-room seconds (spread
evenly over time and rooms), carrying its send time, and the viewer on the last node
measures end-to-end latency (sender socket -> node -> Redis -> other node -> viewer). Tick
figures come from the nodes' /metrics (liveroom_tick_seconds: drain + publish of every
changed room, liveroom_tick_rooms_total), Redis commands from INFO commandstats (every
primary; Lua-internal calls included) and Redis CPU from INFO cpu. Bounded: --duration of
sending, then a 20 s drain deadline. Output: JSON line of medians over --repeat, then a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

import msgpack

from load_tests import wsraw
from load_tests.bench import sample_server, stop_process
from load_tests.bench_redis import _Redis, _start_node
from server.config import DEFAULT_SECRET
from server.wire import auth


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        body = resp.read().decode()
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith(("liveroom_tick_seconds", "liveroom_tick_rooms_total")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _tick_p99(before: dict[str, float], after: dict[str, float]) -> float | None:
    """The upper bound of the bucket holding the 99th percentile tick (from histogram deltas)."""
    buckets = []
    for name, value in after.items():
        if name.startswith("liveroom_tick_seconds_bucket"):
            le = name.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), value - before.get(name, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    for le, count in buckets:
        if count >= 0.99 * total and total:
            return le
    return None


async def _run_once(
    rooms: int,
    nodes: int,
    rate: float,
    duration: float,
    cluster: bool,
    join_batch: int = 200,
    replicas: int = 1,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        store = _Redis(workdir, cluster, replicas)
        # no replica to WAIT for: DMs (none here) would be refused; say so to the nodes
        node_args = (
            *(("--redis-cluster",) if cluster else ()),
            *(("--redis-wait-replicas", "0") if not replicas else ()),
        )
        procs: list[subprocess.Popen[Any]] = []
        conns: list[wsraw.RawWs] = []
        latencies: list[float] = []
        received = 0

        def on_measured(buf: bytearray, start: int, end: int) -> None:
            nonlocal received
            now = time.time()
            frame = msgpack.unpackb(bytes(buf[start:end]))
            if frame.get("t") != "batch":
                return
            for event in frame["events"]:
                if event["t"] == "danmaku":
                    received += 1
                    latencies.append(now - float(event["text"]))

        try:
            ports = []
            for i in range(nodes):
                proc, port = _start_node(store.url, f"rooms{i}", *node_args)
                procs.append(proc)
                ports.append(port)
            senders: list[wsraw.RawWs] = []

            async def join(room: int, node: int) -> wsraw.RawWs:
                token = auth.mint(DEFAULT_SECRET, room=f"room{room}", user=f"u{room}n{node}", role="viewer")
                handler = on_measured if node == nodes - 1 else (lambda *_: None)
                conn, _ = await wsraw.connect("127.0.0.1", ports[node], f"/ws?token={token}", handler, 60)
                return conn

            for first in range(0, rooms, join_batch):  # join_batch rooms' joins in flight at most
                batch = range(first, min(rooms, first + join_batch))
                joined = await asyncio.gather(*(join(r, n) for r in batch for n in range(nodes)))
                conns += joined
                senders += joined[::nodes]
            before = [_metrics(p) for p in ports]
            commands, redis_cpu, redis_cpu_all = store.commands(), store.cpu(), store.cpu(replicas=True)
            node_cpu = [sample_server(p.pid) for p in procs]
            sent = 0
            interval = 1.0 / (rate * rooms)  # one send every interval, rooms in turn
            started = time.perf_counter()
            while time.perf_counter() - started < duration:
                due = int((time.perf_counter() - started) / interval)
                while sent < due:
                    senders[sent % rooms].send({"t": "danmaku", "text": repr(time.time())})
                    sent += 1
                await asyncio.sleep(0.005)
            sent_for = time.perf_counter() - started
            deadline = time.perf_counter() + 20
            while received < sent and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            after = [_metrics(p) for p in ports]
            commands, redis_cpu = store.commands() - commands, store.cpu() - redis_cpu
            redis_cpu_all = store.cpu(replicas=True) - redis_cpu_all
            node_cpu_s = sum(
                b.cpu_s - a.cpu_s
                for a, b in zip(node_cpu, (sample_server(p.pid) for p in procs), strict=True)
                if a is not None and b is not None
            )
        finally:
            for conn in conns:
                conn.close()
            for proc in procs:
                stop_process(proc)
            store.stop()
    ticks = sum(
        a.get("liveroom_tick_seconds_count", 0) - b.get("liveroom_tick_seconds_count", 0)
        for a, b in zip(after, before, strict=True)
    )
    tick_s = sum(
        a.get("liveroom_tick_seconds_sum", 0) - b.get("liveroom_tick_seconds_sum", 0)
        for a, b in zip(after, before, strict=True)
    )
    room_publishes = sum(
        a.get("liveroom_tick_rooms_total", 0) - b.get("liveroom_tick_rooms_total", 0)
        for a, b in zip(after, before, strict=True)
    )
    p99s = [_tick_p99(b, a) for a, b in zip(after, before, strict=True)]
    latencies.sort()
    return {
        "rooms": rooms,
        "nodes": nodes,
        "redis": f"cluster 3+{3 * replicas}" if cluster else "single",
        "sent": sent,
        "send_rate": round(sent / sent_for, 1),
        "loss": sent - received,
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1) if latencies else None,
        "tick_mean_ms": round(tick_s / max(ticks, 1) * 1000, 2),
        "tick_p99_le_ms": max((p for p in p99s if p is not None), default=None)
        and round(max(p for p in p99s if p is not None) * 1000, 1),
        "ticks_per_node_s": round(ticks / nodes / sent_for, 1),
        "rooms_per_tick": round(room_publishes / max(ticks, 1), 1),
        "redis_cmds_per_tick": round(commands / max(ticks, 1), 1),
        "redis_cmds_per_room_publish": round(commands / max(room_publishes, 1), 2),
        "redis_cmds_per_s": round(commands / sent_for, 1),
        "redis_cpu_pct": round(redis_cpu / sent_for * 100, 1),  # primaries
        "redis_cpu_all_pct": round(redis_cpu_all / sent_for * 100, 1),  # replicas too
        "node_cpu_pct": round(node_cpu_s / sent_for * 100, 1),
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and key not in ("rooms", "nodes"):
            out[key] = statistics.median(r[key] for r in runs if r[key] is not None)
    out["loss"] = max(r["loss"] for r in runs)
    out["runs"] = len(runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rooms", type=int, default=5000)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rate-per-room", dest="rate", type=float, default=1.0, help="danmaku/s per room")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cluster", action="store_true", help="a real 3+3 Redis Cluster, not one Redis")
    parser.add_argument("--replicas", type=int, default=1, help="with --cluster: replicas per primary")
    parser.add_argument("--join-batch", type=int, default=200, help="rooms whose joins are in flight at once")
    args = parser.parse_args()
    runs = [
        asyncio.run(
            _run_once(
                args.rooms, args.nodes, args.rate, args.duration, args.cluster, args.join_batch, args.replicas
            )
        )
        for _ in range(args.repeat)
    ]
    result = _median(runs)
    print(json.dumps({"bench": "redis_rooms", "result": result}))
    print()
    print(
        "| rooms | nodes | redis | sent/s | loss | e2e p50 ms | e2e p99 ms | tick mean ms | tick p99 ≤ ms "
        "| rooms/tick | Redis cmds/tick | Redis CPU % (primaries / all) | nodes CPU % |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    r = result
    print(
        f"| {r['rooms']} | {r['nodes']} | {r['redis']} | {r['send_rate']} | {r['loss']} | {r['p50_ms']} "
        f"| {r['p99_ms']} | {r['tick_mean_ms']} | {r['tick_p99_le_ms']} | {r['rooms_per_tick']} "
        f"| {r['redis_cmds_per_tick']} | {r['redis_cpu_pct']} / {r['redis_cpu_all_pct']} | {r['node_cpu_pct']} |"
    )


if __name__ == "__main__":
    main()
