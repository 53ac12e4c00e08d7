"""Fan-out through Redis with 1, 2 and 3 nodes: throughput, end-to-end latency, loss, Redis cost.

    python -m load_tests.bench_redis --nodes 1,2,3 --viewers 120 --rate 200 --duration 8 --repeat 3
    python -m load_tests.bench_redis --nodes 2 --cluster     # a real 3+3 Redis Cluster instead

Starts its own redis-server (no persistence) on a free loopback port and the node
processes (`python -m server serve --redis URL`) against it, spreads the viewers
evenly over the nodes, and has one sender per node post danmaku at --rate in total
for --duration seconds. Each danmaku carries its send time, so every viewer measures
end-to-end latency (sender socket -> node -> Redis -> every node -> viewer socket).
Loss = sent x viewers - received (must be 0). Redis cost = commands executed per
delivered message (INFO commandstats delta, Lua-internal calls included, / deliveries).
Frames per viewer per second count the batch frames a viewer got while the senders were
sending (the rule: at most 1000/tick_ms, whatever the node count). Node CPU (utime+stime
of every node process, /proc) and Redis CPU (INFO cpu, every primary) are divided by the
deliveries. With --repeat, node counts are interleaved (1,2,3,1,2,3,...) so a machine
shared with other work loads every configuration alike. Bounded: a run stops after
--duration plus a drain deadline. Output: one JSON line with the medians over --repeat
runs, then a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import msgpack
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from load_tests.bench import BENCH_SERVER_ENV, sample_server, stop_process
from server.config import DEFAULT_SECRET
from server.deadline import within
from server.wire import auth
from tests.ports import free_port

# the abuse limits off: this measures fan-out, not the guard (the profile of load_tests/bench.py)
NODE_ENV = BENCH_SERVER_ENV
ROOM = "bench"


def _start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", workdir, "--loglevel", "warning"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with redis.Redis(port=port, socket_timeout=1) as client:
                client.ping()
                return proc, port
        except redis.RedisError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


class _Redis:
    """One redis-server, or a 3-primary cluster with `replicas` each (tests/redis_fixtures.py)."""

    def __init__(self, workdir: str, cluster: bool, replicas: int = 1) -> None:
        self.cluster = cluster
        if cluster:
            from pathlib import Path

            from tests.redis_fixtures import RedisClusterServer

            self._cluster = RedisClusterServer(Path(workdir), replicas=replicas)
            self._cluster.start()
            self.url = self._cluster.url
        else:
            self._proc, port = _start_redis(workdir)
            self.url = f"redis://127.0.0.1:{port}/0"
            self._port = port

    def primaries(self) -> list[int]:
        return self._cluster.primaries() if self.cluster else [self._port]

    def commands(self) -> int:
        return sum(_commands(port) for port in self.primaries())

    def cpu(self, replicas: bool = False) -> float:
        """CPU seconds used so far by the primaries (with `replicas`: by every Redis process)."""
        total = 0.0
        for port in self._cluster.ports if self.cluster and replicas else self.primaries():
            with redis.Redis(port=port) as client:
                info = client.info("cpu")
            total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        return total

    def stop(self) -> None:
        if self.cluster:
            self._cluster.stop()
        else:
            stop_process(self._proc)


def _start_node(redis_url: str, node_id: str, *extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "server", "serve", "--port", "0", "--http-port", "0"),
            *("--redis", redis_url, "--node-id", node_id, "--log-level", "WARNING", *extra),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **NODE_ENV},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"node did not start: {line!r}")
    return proc, int(line.split("http://127.0.0.1:")[1].split()[0])


def _commands(port: int) -> int:
    with redis.Redis(port=port) as client:
        stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info",))


async def _join(port: int, user: str) -> ClientConnection:
    token = auth.mint(DEFAULT_SECRET, room=ROOM, user=user, role="viewer")
    ws = await connect(f"ws://127.0.0.1:{port}/ws?token={token}", max_size=None, compression=None)
    snapshot = msgpack.unpackb(await within(ws.recv(), 30))
    assert snapshot["t"] == "snapshot"
    return ws


async def _viewer(
    ws: ClientConnection, expected: int, latencies: list[float], stop: asyncio.Event, frames: list[int]
) -> int:
    got = 0
    while got < expected and not stop.is_set():
        try:
            data = await within(ws.recv(), 0.5)
        except TimeoutError:
            continue
        except ConnectionClosed:
            break
        frame = msgpack.unpackb(data)
        if frame.get("t") != "batch":
            continue
        now = time.perf_counter()
        frames.append(1)
        for event in frame["events"]:
            if event["t"] == "danmaku" and event["text"].startswith("b:"):
                got += 1
                latencies.append(now - float(event["text"][2:]))
    return got


async def _run_once(nodes: int, viewers: int, rate: float, duration: float, cluster: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        store = _Redis(workdir, cluster)
        procs: list[subprocess.Popen[Any]] = []
        sockets: list[ClientConnection] = []
        try:
            url = store.url
            extra = ("--redis-cluster",) if cluster else ()
            ports = []
            for i in range(nodes):
                proc, port = _start_node(url, f"bench{i}", *extra)
                procs.append(proc)
                ports.append(port)
            watchers = [await _join(ports[i % nodes], f"v{i}") for i in range(viewers)]
            senders = [await _join(port, f"s{i}") for i, port in enumerate(ports)]
            sockets = watchers + senders
            total = int(rate * duration) // nodes * nodes
            latencies: list[float] = []
            stop = asyncio.Event()
            before = store.commands()
            redis_cpu = store.cpu()
            node_cpu = [sample_server(p.pid) for p in procs]
            frames: list[list[int]] = [[] for _ in watchers]
            readers = [
                asyncio.create_task(_viewer(ws, total, latencies, stop, frames[i]))
                for i, ws in enumerate(watchers)
            ]
            drains = [asyncio.create_task(_discard(ws, stop)) for ws in senders]
            started = time.perf_counter()
            for n in range(total):
                due = started + n / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await senders[n % nodes].send(
                    msgpack.packb({"t": "danmaku", "text": f"b:{time.perf_counter()!r}"})
                )
            sent_for = time.perf_counter() - started
            frames_sending = sum(len(f) for f in frames)  # frames seen while the senders sent
            done, _ = await asyncio.wait(readers, timeout=30)  # drain deadline
            elapsed = time.perf_counter() - started
            stop.set()
            received = sum(t.result() for t in done)
            await asyncio.gather(*readers, *drains, return_exceptions=True)
            commands = store.commands() - before
            redis_cpu = store.cpu() - redis_cpu
            node_cpu_s = sum(
                (after.cpu_s - start.cpu_s)
                for start, after in zip(node_cpu, (sample_server(p.pid) for p in procs), strict=True)
                if start is not None and after is not None
            )
        finally:
            for ws in sockets:
                await ws.close()
            for proc in procs:
                stop_process(proc)
            store.stop()
    latencies.sort()
    delivered = total * viewers
    return {
        "nodes": nodes,
        "redis": "cluster 3+3" if cluster else "single",
        "viewers": viewers,
        "sent": total,
        "send_rate": round(total / sent_for, 1),
        "delivered_per_s": round(received / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2) if latencies else None,
        "loss": delivered - received,
        "redis_cmds_per_delivered": round(commands / max(received, 1), 4),
        "redis_cmds_per_sent": round(commands / max(total, 1), 3),
        "frames_per_viewer_s": round(frames_sending / len(watchers) / sent_for, 2),
        "node_cpu_us_per_delivered": round(node_cpu_s * 1e6 / max(received, 1), 3),
        "redis_cpu_us_per_delivered": round(redis_cpu * 1e6 / max(received, 1), 3),
        "node_cpu_s": round(node_cpu_s, 2),
    }


async def _discard(ws: ClientConnection, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await within(ws.recv(), 0.5)
        except TimeoutError:
            continue
        except ConnectionClosed:
            return


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and key not in ("nodes", "viewers"):
            out[key] = statistics.median(r[key] for r in runs if r[key] is not None)
    out["loss"] = max(r["loss"] for r in runs)  # the worst run: loss must be 0 in every one
    out["runs"] = len(runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", default="1,2,3", help="comma-separated node counts")
    parser.add_argument("--viewers", type=int, default=120)
    parser.add_argument("--rate", type=float, default=200.0, help="danmaku per second, all senders")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of sending")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cluster", action="store_true", help="a real 3+3 Redis Cluster, not one Redis")
    args = parser.parse_args()
    counts = [int(n) for n in args.nodes.split(",")]
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    for _ in range(args.repeat):  # interleaved: 1,2,3,1,2,3,...
        for nodes in counts:
            runs[nodes].append(
                asyncio.run(_run_once(nodes, args.viewers, args.rate, args.duration, args.cluster))
            )
    results = [_median(runs[n]) for n in counts]
    print(json.dumps({"bench": "redis_fanout", "results": results}))
    print()
    print(
        "| nodes | redis | viewers | sent | delivered msg/s | e2e p50 ms | e2e p99 ms | loss "
        "| frames/viewer/s | node CPU µs/delivered | Redis CPU µs/delivered | Redis cmds/delivered |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['nodes']} | {r['redis']} | {r['viewers']} | {r['sent']} | {r['delivered_per_s']} "
            f"| {r['p50_ms']} | {r['p99_ms']} | {r['loss']} | {r['frames_per_viewer_s']} "
            f"| {r['node_cpu_us_per_delivered']} | {r['redis_cpu_us_per_delivered']} "
            f"| {r['redis_cmds_per_delivered']} |"
        )


if __name__ == "__main__":
    main()
