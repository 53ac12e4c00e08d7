"""Followers told when a host goes live: 10,000 followers on 2 nodes (+ Redis), p99 host -> notice.

    python -m load_tests.bench_live_notice --followers 10000 --runs 3

Starts a redis-server (a 3+3 cluster with --cluster) and --nodes node processes. --followers
connections join --rooms rooms spread over the nodes (round-robin) and follow one host per run
(`follow`, every `follow_ack` awaited). Then the host publishes real video over WHIP into its
own room on node 0 (a pre-encoded clip: no encoding at run time) and every follower waits for
its `live_notice` on its user channel. Latency: from the `live` event's `ts` (the node queues it
when the host's media is up: "the host went live"; read by an observer in the host's room) to
the notice's arrival at the follower, both on this machine's wall clock. Each run uses a new
host (a host's followers are told once per --live-notice-every). The client is one process
reading 10,000 sockets: its own delay is in the numbers. Output: one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import msgpack
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from load_tests import wsraw
from load_tests.bench import LOOPBACK, percentiles, raise_nofile, start_server
from load_tests.bench_media import ClipTrack, encode_clip, only_codec
from server.config import DEFAULT_SECRET
from server.media import use_loopback_candidates
from server.wire import auth
from tests.ports import free_port

NOTICE = b"live_notice"
FOLLOW_ACK = b"follow_ack"
ERROR = b"\xa1t\xa5error"  # msgpack of "t": "error"
FOLLOWS_PER_S = 2000  # follows are clicks spread over time, not one burst of 10,000


def wall_ms() -> float:
    return time.time() * 1000


class Follower:
    __slots__ = ("acked", "conn", "notice_at", "refused", "uid")

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.conn: wsraw.RawWs | None = None
        self.acked = 0
        self.refused = 0  # follows refused (e.g. 4503 while the node's Redis pool is full): resent
        self.notice_at: float | None = None

    def on_message(self, buf: bytearray, start: int, end: int) -> None:
        if buf.find(NOTICE, start, end) >= 0:  # a byte match: no decoding on the measured path
            self.notice_at = self.notice_at or wall_ms()
        elif buf.find(FOLLOW_ACK, start, end) >= 0:
            self.acked += 1
        elif buf.find(ERROR, start, end) >= 0:
            self.refused += 1


async def follow_all(followers: list[Follower], host: str, n: int) -> int:
    """Every follower follows `host`, paced (refused ones again, paced too): the refusals seen."""
    for f in followers:
        f.acked = f.refused = 0
    todo, refused = followers, 0
    async with asyncio.timeout(300):
        while todo:
            t0 = time.perf_counter()
            for i, f in enumerate(todo):
                if i % 100 == 0 and (due := t0 + i / FOLLOWS_PER_S - time.perf_counter()) > 0:
                    await asyncio.sleep(due)
                f.refused = 0
                assert f.conn is not None
                f.conn.send({"t": "follow", "host": host, "cid": f"f{n}"})
            while (waiting := [f for f in todo if not f.acked]) and not all(f.refused for f in waiting):
                await asyncio.sleep(0.2)
            todo = [f for f in waiting if f.refused]
            refused += len(todo)
    return refused


async def publish(
    http: aiohttp.ClientSession, base: str, room: str, user: str, clip: list[bytes]
) -> RTCPeerConnection:
    """A host going live: WHIP, one pre-encoded VP8 track."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(ClipTrack(clip), direction="sendonly").setCodecPreferences(only_codec("video", "VP8"))
    await pc.setLocalDescription(await pc.createOffer())
    token = auth.mint(DEFAULT_SECRET, room=room, user=user, role="host")
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
    async with http.post(f"{base}/whip/{room}", data=pc.localDescription.sdp, headers=headers) as resp:
        if resp.status != 201:
            raise RuntimeError(f"WHIP {resp.status}: {await resp.text()}")
        answer = await resp.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return pc


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from load_tests.bench_redis import _Redis

    redis = _Redis(tempfile.mkdtemp(prefix="liveroom-bench-notice-"), cluster=args.cluster)
    nodes, http_ports = [], []
    try:
        extra = ["--redis", redis.url, *(["--redis-cluster"] if args.cluster else [])]
        for k in range(args.nodes):
            http_ports.append(free_port())
            nodes.append(
                start_server(args.tick_ms, [*extra, "--node-id", f"n{k}", "--http-port", str(http_ports[k])])
            )
        return await measure(args, [n.port for n in nodes], http_ports)
    finally:
        for n in nodes:
            n.stop()
        redis.stop()


async def measure(args: argparse.Namespace, ports: list[int], http_ports: list[int]) -> dict[str, Any]:
    use_loopback_candidates()
    conns: list[wsraw.RawWs] = []

    async def open_(
        room: str, user: str, port: int, cb: Callable[[bytearray, int, int], None]
    ) -> wsraw.RawWs:
        path = f"/ws?token={auth.mint(DEFAULT_SECRET, room=room, user=user, role='viewer')}"
        conn, _ = await wsraw.connect("127.0.0.1", port, path, cb, 120)
        conns.append(conn)
        return conn

    followers = [Follower(f"f{i}") for i in range(args.followers)]
    sem = asyncio.Semaphore(args.concurrency)
    t_join = time.perf_counter()

    async def join(i: int, f: Follower) -> None:
        async with sem:
            f.conn = await open_(f"fans{i % args.rooms}", f.uid, ports[i % len(ports)], f.on_message)

    await asyncio.gather(*(join(i, f) for i, f in enumerate(followers)))
    join_s = time.perf_counter() - t_join
    clip = encode_clip(2)
    runs = []
    async with aiohttp.ClientSession() as http:
        for n in range(args.runs):
            host, room = f"star{n}", f"stage{n}"
            for f in followers:
                f.notice_at = None
            follows_refused = await follow_all(followers, host, n)
            live_ts: list[float] = []

            def on_watch(buf: bytearray, start: int, end: int, live_ts: list[float] = live_ts) -> None:
                frame = msgpack.unpackb(buf[start:end])
                if frame.get("t") == "batch":
                    for ev in frame["events"]:
                        if ev.get("t") == "live" and ev.get("on") and not live_ts:
                            live_ts.append(float(ev["ts"]))

            watcher = await open_(room, f"watch{n}", ports[0], on_watch)
            await asyncio.sleep(1.0)  # quiet before the publish
            posted = wall_ms()
            pc = await publish(http, f"http://127.0.0.1:{http_ports[0]}", room, host, clip)
            try:
                async with asyncio.timeout(args.timeout):
                    while not live_ts or sum(f.notice_at is not None for f in followers) < len(followers):
                        await asyncio.sleep(0.02)
            except TimeoutError:
                pass
            finally:
                await pc.close()
            watcher.close()
            got = [f.notice_at for f in followers if f.notice_at is not None]
            base = live_ts[0] if live_ts else posted
            per_node = {
                f"n{k}": percentiles(
                    [
                        f.notice_at - base
                        for i, f in enumerate(followers)
                        if i % len(ports) == k and f.notice_at
                    ]
                )
                for k in range(len(ports))
            }
            runs.append(
                {
                    "host": host,
                    "follows_refused_then_resent": follows_refused,
                    "notices": len(got),
                    "missing": len(followers) - len(got),
                    "live_event_after_whip_post_ms": round(base - posted, 1) if live_ts else None,
                    "live_to_notice_ms": percentiles([t - base for t in got]),
                    "by_follower_node": per_node,
                }
            )
            await asyncio.sleep(2.0)  # the host's `live` off settles
    for c in conns:
        c.close()
    p99s = [r["live_to_notice_ms"]["p99"] for r in runs if r["live_to_notice_ms"]["p99"] is not None]
    return {
        "scenario": "live_notice",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "nodes": len(ports),
        "redis": "cluster" if args.cluster else "single",
        "followers": args.followers,
        "rooms": args.rooms,
        "join_s": round(join_s, 1),
        "runs": runs,
        "p99_ms_median": round(statistics.median(p99s), 1) if p99s else None,
        "missing_total": sum(r["missing"] for r in runs),
    }


def table(r: dict[str, Any]) -> str:
    rows = [
        "| run | notices / followers | live -> notice p50 / p90 / p99 / max (ms) | live event after WHIP POST (ms) |"
    ]
    rows.append("|---|---|---|---|")
    for i, run in enumerate(r["runs"]):
        p = run["live_to_notice_ms"]
        rows.append(
            f"| {i + 1} | {run['notices']:,} / {r['followers']:,} | {p['p50']} / {p['p90']} / {p['p99']} / {p['max']}"
            f" | {run['live_event_after_whip_post_ms']} |"
        )
    rows.append(f"| median p99 | | {r['p99_ms_median']} | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m load_tests.bench_live_notice", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--nodes", type=int, default=2, help="node processes (with one redis-server)")
    p.add_argument("--cluster", action="store_true", help="a 3+3 Redis Cluster instead of one redis-server")
    p.add_argument("--followers", type=int, default=10_000)
    p.add_argument("--rooms", type=int, default=50, help="rooms the followers are in (none is the host's)")
    p.add_argument("--runs", type=int, default=3, help="hosts going live one after another")
    p.add_argument("--concurrency", type=int, default=100, help="joins in flight")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for every notice")
    p.add_argument("--tick-ms", type=int, default=50)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args(argv)
    if args.host not in LOOPBACK or not 1 <= args.nodes <= 4 or not 1 <= args.followers <= 50_000:
        p.error("loopback only; 1-4 nodes; 1-50,000 followers")
    raise_nofile()
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    print(table(result))
    return 0 if result["missing_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
