"""Cascading and failover benchmark: one origin node, two edge nodes, a real redis-server.

Not a test: it measures, prints one JSON line and a markdown table, and asserts nothing.
Every server runs in its own process (`python -m server serve --redis ...`); receiving
clients are spread over worker processes so the generator is not the limit.

* origin CPU: a WHIP publisher (pre-encoded 640x480 ~1 Mbps VP8, looped, from bench_media)
  on the origin; WHEP viewers on the two edges (1 each, then N each); the origin's CPU over
  a window at each step. With cascading it should not grow with N (one stream per edge).
* added delay per hop: one tapped viewer on the origin and one on an edge, both in this
  process; a frame's payload is forwarded unchanged, so the same bytes arriving at both give
  the edge hop's added delay (p50/p99).
* time to first frame through an edge: a live aiortc encoder publishes on the origin over
  the WebSocket; viewers join an edge one after the other (the edge has no other viewer, so
  each join makes it pull from the origin again: the cold case), timed from `subscribe` to
  the first decoded frame.
* failover: `client_demo.host` publishes with two nodes (origin, spare); a viewer on an edge;
  the origin is SIGKILLed, and the time to the viewer's next decoded frame is measured; the
  killed node is restarted on its port and the next round kills the new origin.

Usage: python load_tests/bench_cascade.py [--viewers 10] [--workers 2] [--window 5]
       [--hops 300] [--joins 10] [--failovers 5] [--claim-ttl 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import aiohttp
import msgpack
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.client import connect

from load_tests.bench import stop_process
from load_tests.bench_media import (
    ROOM,
    STEP_TIMEOUT,
    LiveTrack,
    TappedViewer,
    _one_join,
    _pct,
    encode_clip,
    post_sdp,
    token,
    whep_view,
    whip_publish,
)
from server.deadline import within
from server.media import use_loopback_candidates
from server.media.forward import EncodedFrame, install_receiver_tap
from tests.ports import free_port

NODE_ENV = {"LIVEROOM_RATE_LIMITS": "off", "LIVEROOM_REPEAT_MAX": "0", "LIVEROOM_CONTACT_FILTER": "off"}


class Node:
    """`python -m server serve --redis URL` on fixed ports, so it can be restarted in place."""

    def __init__(self, name: str, redis_url: str, claim_ttl: float) -> None:
        self.name, self.redis_url, self.claim_ttl = name, redis_url, claim_ttl
        self.port, self.http_port = free_port(), free_port()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--port",
            str(self.port),
            "--http-port",
            str(self.http_port),
        ]
        cmd += ["--redis", self.redis_url, "--node-id", self.name, "--tick-ms", "20", "--presence-ttl", "3"]
        cmd += [
            "--media-claim-ttl",
            str(self.claim_ttl),
            "--media-max-viewers",
            "1000",
            "--log-level",
            "WARNING",
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, **NODE_ENV}
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "WHIP" in line:
                return
        raise RuntimeError(f"node {self.name} did not start")

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class Cluster:
    def __init__(self, claim_ttl: float) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-cascade-")
        self.redis_port = free_port()
        self.redis = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{self.redis_port}/0"
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.redis_port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        self.nodes = {name: Node(name, url, claim_ttl) for name in ("origin", "edge1", "edge2", "spare")}
        for node in self.nodes.values():
            node.start()

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.redis.terminate()
        self.redis.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- receiving workers (own processes) ----------------------------------------------------------


async def worker(base: str, count: int, first: int) -> None:
    """Open `count` tapped WHEP viewers on `base`, say "ready", count frames until stdin closes."""
    use_loopback_candidates()
    viewers: list[TappedViewer] = []
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            viewers.append(await whep_view(http, base, first + i))
        async with asyncio.timeout(STEP_TIMEOUT):
            await asyncio.gather(*(v.first.wait() for v in viewers))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        print(json.dumps({"frames": sum(v.frames for v in viewers)}), flush=True)
        for v in viewers:
            await v.pc.close()


async def spawn_workers(
    targets: list[tuple[str, int]], workers: int, first: int
) -> list[subprocess.Popen[str]]:
    procs = []
    for base, count in targets:
        per = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
        for n in per:
            if n:
                cmd = [sys.executable, "-m", "load_tests.bench_cascade", "--worker", base, str(n), str(first)]
                procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
                first += n
    for proc in procs:
        assert proc.stdout is not None
        if (await asyncio.to_thread(proc.stdout.readline)).strip() != "ready":  # the loop keeps publishing
            raise RuntimeError("a receiving worker failed")
    return procs


async def stop_workers(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
    for proc in procs:
        await asyncio.to_thread(proc.wait, 60)


async def origin_cpu(cluster: Cluster, viewers: int, workers: int, window: float) -> list[dict[str, Any]]:
    origin, edges = cluster.nodes["origin"], [cluster.nodes["edge1"], cluster.nodes["edge2"]]
    clip = encode_clip()
    results = []
    async with aiohttp.ClientSession() as http:
        publisher = await whip_publish(http, origin.http, clip)
        try:
            first = 0
            for label, targets in (
                ("2 viewers on the origin", [(origin.http, 1), (origin.http, 1)]),
                ("1 viewer on each edge", [(e.http, 1) for e in edges]),
                (f"{viewers} viewers on each edge", [(e.http, viewers) for e in edges]),
            ):
                procs = await spawn_workers(targets, workers, first)
                first += sum(n for _, n in targets)
                cpu0, t0 = origin.cpu_seconds(), time.monotonic()
                edge0 = [e.cpu_seconds() for e in edges]
                await asyncio.sleep(window)  # the measurement window
                elapsed = time.monotonic() - t0
                row = {
                    "setup": label,
                    "viewers": sum(n for _, n in targets),
                    "origin_cpu_pct": round(100 * (origin.cpu_seconds() - cpu0) / elapsed, 1),
                    "edge_cpu_pct": [
                        round(100 * (e.cpu_seconds() - c) / elapsed, 1)
                        for e, c in zip(edges, edge0, strict=True)
                    ],
                }
                await stop_workers(procs)
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                await asyncio.sleep(2 * cluster.nodes["origin"].claim_ttl)  # edges let go of the origin
        finally:
            await publisher.close()
    return results


# -- added delay per hop ---------------------------------------------------------------------------


async def hop_delay(cluster: Cluster, frames: int) -> list[float]:
    origin, edge = cluster.nodes["origin"], cluster.nodes["edge1"]
    clip = encode_clip()
    seen: dict[bytes, float] = {}
    delays: list[float] = []
    done = asyncio.Event()

    def at_origin(frame: EncodedFrame) -> None:
        seen[hashlib.blake2b(frame.data, digest_size=8).digest()] = time.perf_counter()

    def at_edge(frame: EncodedFrame) -> None:
        t = seen.get(hashlib.blake2b(frame.data, digest_size=8).digest())
        if t is not None and 0 <= time.perf_counter() - t < 1.0:  # the clip loops every 3 s
            delays.append(time.perf_counter() - t)
            if len(delays) >= frames:
                done.set()

    async with aiohttp.ClientSession() as http:
        publisher = await whip_publish(http, origin.http, clip)
        pcs = []
        try:
            for base, handler, n in ((origin.http, at_origin, 900), (edge.http, at_edge, 901)):
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                pcs.append(pc)
                receiver = pc.addTransceiver("video", direction="recvonly").receiver
                install_receiver_tap(receiver, handler, lambda: None)
                await pc.setLocalDescription(await pc.createOffer())
                answer = await post_sdp(
                    http, f"{base}/whep/{ROOM}", pc.localDescription.sdp, f"v{n}", "viewer"
                )
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            async with asyncio.timeout(STEP_TIMEOUT):
                await done.wait()
        finally:
            for pc in pcs:
                await pc.close()
            await publisher.close()
    return delays


# -- time to first frame through an edge -----------------------------------------------------------


async def live_publisher(ws_url: str) -> tuple[Any, RTCPeerConnection]:
    host = await connect(f"{ws_url}?token={token('host', 'host')}")
    msgpack.unpackb(await host.recv())
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(LiveTrack())
    await pc.setLocalDescription(await pc.createOffer())
    await host.send(msgpack.packb({"t": "publish", "sdp": pc.localDescription.sdp}))
    async with asyncio.timeout(STEP_TIMEOUT):
        while (frame := msgpack.unpackb(await host.recv()))["t"] != "answer":
            pass
        await pc.setRemoteDescription(RTCSessionDescription(sdp=frame["sdp"], type="answer"))
        live = False
        while not live:
            live = any(
                e["t"] == "live" and e["on"] for e in msgpack.unpackb(await host.recv()).get("events", ())
            )
    return host, pc


async def edge_ttff(cluster: Cluster, joins: int) -> list[float]:
    host, pc = await live_publisher(cluster.nodes["origin"].ws)
    try:
        return [await _one_join(cluster.nodes["edge1"].ws, i) for i in range(joins)]
    finally:
        await pc.close()
        await host.close()


# -- failover ----------------------------------------------------------------------------------------


async def failover(cluster: Cluster, rounds: int) -> list[float]:
    a, spare, edge = cluster.nodes["origin"], cluster.nodes["spare"], cluster.nodes["edge1"]
    args = ["--server", f"{a.ws},{spare.ws}", "--room", ROOM, "--user", "host", "--no-audio"]
    args += ["--width", "320", "--height", "240", "--fps", "30", "--stats-interval", "0"]
    host = subprocess.Popen([sys.executable, "-m", "client_demo.host", *args], stdout=subprocess.DEVNULL)
    times: list[float] = []
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    frames: asyncio.Queue[float] = asyncio.Queue()

    def on_track(track: Any) -> None:
        async def pump() -> None:
            with contextlib.suppress(Exception):
                while True:
                    await track.recv()
                    frames.put_nowait(time.perf_counter())

        if track.kind == "video":
            pumps.append(asyncio.ensure_future(pump()))

    pumps: list[asyncio.Future[None]] = []
    pc.on("track", on_track)
    try:
        async with connect(f"{edge.ws}?token={token('watcher')}") as ws:
            snapshot = msgpack.unpackb(await ws.recv())
            origin = a
            if not snapshot["live"]:
                async with asyncio.timeout(STEP_TIMEOUT):
                    while not any(
                        e["t"] == "live" and e["on"]
                        for e in msgpack.unpackb(await ws.recv()).get("events", ())
                    ):
                        pass
            await ws.send(msgpack.packb({"t": "subscribe"}))

            async def answer_offers() -> None:
                async for data in ws:
                    frame = msgpack.unpackb(data)
                    if frame["t"] == "offer":
                        await pc.setRemoteDescription(RTCSessionDescription(sdp=frame["sdp"], type="offer"))
                        await pc.setLocalDescription(await pc.createAnswer())
                        await ws.send(msgpack.packb({"t": "answer", "sdp": pc.localDescription.sdp}))

            answering = asyncio.ensure_future(answer_offers())
            try:
                await within(frames.get(), STEP_TIMEOUT)
                for _ in range(rounds):
                    await asyncio.sleep(1.0)  # let the stream settle after the previous round
                    while not frames.empty():
                        frames.get_nowait()
                    killed_at = time.perf_counter()
                    origin.kill()
                    while True:  # frames already in flight before the kill do not count
                        t = await within(frames.get(), STEP_TIMEOUT)
                        if t - killed_at > 0.3:
                            break
                    times.append(t - killed_at)
                    print(json.dumps({"failover_s": round(times[-1], 2)}), file=sys.stderr, flush=True)
                    origin.start()  # back on its ports: the host will come back to it next round
                    origin = spare if origin is a else a
            finally:
                answering.cancel()
    finally:
        await pc.close()
        host.kill()
        host.wait()
    return times


def summary(values: list[float], scale: float = 1000.0) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(scale * statistics.median(values), 1),
        "p95": round(scale * _pct(values, 0.95), 1),
        "p99": round(scale * _pct(values, 0.99), 1),
        "max": round(scale * max(values), 1),
    }


async def main(args: argparse.Namespace) -> None:
    use_loopback_candidates()
    result: dict[str, Any] = {"bench": "cascade", "cores": os.cpu_count(), "claim_ttl_s": args.claim_ttl}
    cluster = Cluster(args.claim_ttl)
    try:
        result["origin_cpu"] = await origin_cpu(cluster, args.viewers, args.workers, args.window)
        await asyncio.sleep(2 * args.claim_ttl)
        result["hop_delay_ms"] = summary(await hop_delay(cluster, args.hops))
        await asyncio.sleep(2 * args.claim_ttl)
        result["edge_ttff_ms"] = summary(await edge_ttff(cluster, args.joins))
        await asyncio.sleep(2 * args.claim_ttl)
        result["failover_ms"] = summary(await failover(cluster, args.failovers))
    finally:
        cluster.close()
    print(json.dumps(result))
    print()
    print("| setup | viewers | origin CPU (% of a core) | edge CPU (%) |")
    print("|---|---|---|---|")
    for row in result["origin_cpu"]:
        print(f"| {row['setup']} | {row['viewers']} | {row['origin_cpu_pct']} | {row['edge_cpu_pct']} |")
    print()
    print("| measure | n | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for key in ("hop_delay_ms", "edge_ttff_ms", "failover_ms"):
        s = result[key]
        if s["n"]:
            print(f"| {key} | {s['n']} | {s['p50']} | {s['p95']} | {s['p99']} | {s['max']} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=10, help="viewers per edge in the big step")
    parser.add_argument("--workers", type=int, default=2, help="receiving processes per node")
    parser.add_argument("--window", type=float, default=5.0, help="seconds of CPU measurement per step")
    parser.add_argument("--hops", type=int, default=300, help="frames matched for the per-hop delay")
    parser.add_argument("--joins", type=int, default=10, help="viewers timed to first frame on an edge")
    parser.add_argument("--failovers", type=int, default=5, help="origin SIGKILLs")
    parser.add_argument("--claim-ttl", type=float, default=3.0, help="--media-claim-ttl of the nodes")
    parser.add_argument(
        "--quick", action="store_true", help="3 viewers/edge, 2 s, 60 frames, 3 joins, 2 kills"
    )
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.viewers, args.window, args.hops, args.joins, args.failovers = 3, 2.0, 60, 3, 2
    return args


if __name__ == "__main__":
    arguments = parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if arguments.worker:
            base, count, first = arguments.worker
            asyncio.run(worker(base, int(count), int(first)))
        else:
            asyncio.run(main(arguments))
