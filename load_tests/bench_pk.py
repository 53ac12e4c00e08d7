"""Gifts in a PK: two linked rooms on two nodes (+ Redis), gifts and likes, scores checked exactly.

    python -m load_tests.bench_pk --nodes 2 --viewers 300 --gift-rate 200 --like-rate 1000 --duration 20
    python -m load_tests.bench_pk --nodes 2 --viewers 2000 --viewer-procs 2 --cluster

Starts a redis-server and --nodes node processes (one node and no Redis with --nodes 1). Room
pkA lives on node 0 and room pkB on the last node: their hosts link the rooms and start a PK
round; --viewers viewers per room join the room's node and count the `pk` score events they get
(a byte match on the event's type: at most one per tick is the rule), in --viewer-procs
processes per room (0: in this one); one observer per room
joins the OTHER node and decodes everything. Gifters send --gift-rate gifts/s in total (half per
room, each with a cid that carries its send time) and likers --like-rate likes/s for --duration
seconds; once every gift is acknowledged and every like counted (the observers' like totals), the host ends the link, which closes the round and publishes one `pk_result`.

Checked: gift loss (gifts acknowledged by `gift_ack` vs gifts in `gift` events at each observer,
by cid: must be 0); both rooms' `pk_result` scores are equal, and equal to what was sent (every
acknowledged gift's value + every like x pk_like_weight, per room: exact); `pk` events per
viewer per second and the most `pk` events one batch frame held (<= 1). Latencies: gift ->
its `gift` event at the observer on the other node (the same room), and gift -> the first
`pk` event shown in the OTHER room whose score for the gift's room reaches everything sent to
that room up to and including the gift (a score that cannot be lower than what was sent
includes it). Output: one JSON line, then a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from load_tests import wsraw
from load_tests.bench import LOOPBACK, percentiles, raise_nofile, start_server
from server.config import DEFAULT_SECRET
from server.deadline import within
from server.wire import auth

ROOMS = ("pkA", "pkB")
GIFT = ("rose", 10)  # the built-in catalogue's Rose: 10 coins
PK_EVENT = b"\xa1t\xa2pk"  # msgpack of "t": "pk" (pk_round, pk_result differ after \xa1t)
LIKES_PER_FRAME = 5
SETTLE_S = 2.0  # after the last send, before the round is ended: in-flight credits land


def now() -> float:
    return time.perf_counter()


@dataclass
class Side:
    """One room's bookkeeping: what was sent to it and what its observer saw."""

    room: str
    acked: dict[str, float] = field(default_factory=dict)  # cid -> send time, once gift_ack came
    sent_at: dict[str, float] = field(default_factory=dict)  # cid -> send time
    cumulative: dict[str, int] = field(
        default_factory=dict
    )  # cid -> points (gifts, likes) sent to the room up to it
    points_sent: int = 0  # gift points
    likes_sent: int = 0
    refused: int = 0
    likes_seen: int = 0  # the room's like total, as its observer last saw it
    seen: dict[str, float] = field(default_factory=dict)  # cid -> gift event at the observer
    scores_shown: list[tuple[float, int]] = field(
        default_factory=list
    )  # the OTHER room's pk events: my score
    result: dict[str, Any] | None = None
    link_on: asyncio.Event = field(default_factory=asyncio.Event)
    round_on: asyncio.Event = field(default_factory=asyncio.Event)
    result_in: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Viewer:
    pk_events: int = 0
    max_per_frame: int = 0
    doubles: int = 0  # frames holding more than one pk event (two publishes within one batch)
    first: float = 0.0
    last: float = 0.0


def counting(v: Viewer) -> Callable[[bytearray, int, int], None]:
    """A viewer's handler: counts `pk` events by a byte match, none decoded."""

    def on_message(buf: bytearray, start: int, end: int) -> None:
        n = buf.count(PK_EVENT, start, end)
        if n:
            v.pk_events += n
            v.max_per_frame = max(v.max_per_frame, n)
            v.doubles += n > 1
            v.last = now()
            v.first = v.first or v.last

    return on_message


async def run(args: argparse.Namespace) -> dict[str, Any]:
    redis = None
    nodes = []
    try:
        extra = ["--gift-demo-balance", str(10**9), "--pk-like-weight", str(args.like_weight)]
        if args.nodes > 1:
            from load_tests.bench_redis import _Redis

            redis = _Redis(tempfile.mkdtemp(prefix="liveroom-bench-pk-"), cluster=args.cluster)
            extra += ["--redis", redis.url, *(["--redis-cluster"] if args.cluster else [])]
        for k in range(args.nodes):
            nodes.append(start_server(args.tick_ms, [*extra, "--node-id", f"pk{k}"]))
        ports = [n.port for n in nodes]
        return await measure(args, ports)
    finally:
        for n in nodes:
            n.stop()
        if redis is not None:
            redis.stop()


async def measure(args: argparse.Namespace, ports: list[int]) -> dict[str, Any]:
    home = {ROOMS[0]: ports[0], ROOMS[1]: ports[-1]}
    away = {ROOMS[0]: ports[-1], ROOMS[1]: ports[0]}
    sides = {r: Side(r) for r in ROOMS}
    other = {ROOMS[0]: ROOMS[1], ROOMS[1]: ROOMS[0]}
    conns: list[wsraw.RawWs] = []

    async def open_(
        room: str, user: str, port: int, cb: Callable[[bytearray, int, int], None], role: auth.Role = "viewer"
    ) -> wsraw.RawWs:
        path = f"/ws?token={auth.mint(DEFAULT_SECRET, room=room, user=user, role=role)}"
        conn, _ = await wsraw.connect("127.0.0.1", port, path, cb, 60)
        conns.append(conn)
        return conn

    def observer(room: str) -> Callable[[bytearray, int, int], None]:
        side, them = sides[room], sides[other[room]]

        def on_message(buf: bytearray, start: int, end: int) -> None:
            at = now()
            frame = msgpack.unpackb(buf[start:end])
            if frame.get("t") != "batch":
                return
            for ev in frame["events"]:
                kind = ev["t"]
                if kind == "gift":
                    for cid in ev.get("cids", []):
                        side.seen.setdefault(cid, at)
                elif kind == "pk":
                    them.scores_shown.append((at, int(ev["scores"].get(them.room, 0))))
                elif kind == "likes":
                    side.likes_seen = max(side.likes_seen, int(ev.get("total", 0)))
                elif kind == "link" and ev.get("on"):
                    side.link_on.set()
                elif kind == "pk_round" and ev.get("on"):
                    side.round_on.set()
                elif kind == "pk_result":
                    side.result = ev
                    side.result_in.set()

        return on_message

    def acks(room: str) -> Callable[[bytearray, int, int], None]:
        side = sides[room]

        def on_message(buf: bytearray, start: int, end: int) -> None:
            frame = msgpack.unpackb(buf[start:end])
            if frame.get("t") == "gift_ack" and frame.get("cid") in side.sent_at:
                side.acked.setdefault(frame["cid"], side.sent_at[frame["cid"]])
            elif frame.get("t") == "error":
                side.refused += 1

        return on_message

    viewers: list[Viewer] = []

    hosts = {r: await open_(r, f"host-{r}", home[r], _noop, "host") for r in ROOMS}
    for r in ROOMS:
        await open_(r, f"obs-{r}", away[r], observer(r))
    sem = asyncio.Semaphore(100)

    async def viewer(r: str, i: int) -> None:
        v = Viewer()
        async with sem:
            await open_(r, f"v{i}-{r}", home[r], counting(v))
        viewers.append(v)

    procs: list[subprocess.Popen[str]] = []
    if args.viewer_procs:  # the counting viewers in their own processes: one client cannot read 4,000
        for r in ROOMS:
            per = [
                args.viewers // args.viewer_procs + (i < args.viewers % args.viewer_procs)
                for i in range(args.viewer_procs)
            ]
            first = 0
            for n in filter(None, per):
                cmd = [
                    sys.executable,
                    "-m",
                    "load_tests.bench_pk",
                    "--viewer-worker",
                    r,
                    str(home[r]),
                    str(first),
                    str(n),
                ]
                procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
                first += n
        for proc in procs:
            assert proc.stdout is not None
            if (await asyncio.to_thread(proc.stdout.readline)).strip() != "ready":
                raise RuntimeError("a viewer worker failed to join its viewers")
    else:
        await asyncio.gather(*(viewer(r, i) for r in ROOMS for i in range(args.viewers)))
    gifters = {r: [await open_(r, f"g{i}-{r}", home[r], acks(r)) for i in range(args.gifters)] for r in ROOMS}
    likers = {r: [await open_(r, f"l{i}-{r}", home[r], _noop) for i in range(2)] for r in ROOMS}

    a, b = ROOMS
    hosts[a].send({"t": "link", "action": "invite", "room": b, "cid": "i"})
    await asyncio.sleep(0.5)  # the invitation is in pkB's stream before the accept
    hosts[b].send({"t": "link", "action": "accept", "room": a, "cid": "a"})
    await within(sides[b].link_on.wait(), 30)
    seconds = max(30, int(args.duration + SETTLE_S + 150))  # ended by `end` before it runs out
    hosts[a].send({"t": "link", "action": "pk", "seconds": seconds, "cid": "p"})
    await asyncio.gather(*(within(sides[r].round_on.wait(), 30) for r in ROOMS))

    t0 = now()
    gifts_total = int(args.gift_rate * args.duration)
    like_frames = int(args.like_rate * args.duration / LIKES_PER_FRAME)
    steps = max(gifts_total, like_frames)
    for k in range(steps):  # one loop paces both: gifts and like frames spread evenly
        due = t0 + k * args.duration / steps
        if due > now():
            await asyncio.sleep(due - now())
        if k * gifts_total // steps != (k + 1) * gifts_total // steps:
            g = k * gifts_total // steps
            r = ROOMS[g % 2]
            side, cid = sides[r], f"c{g}"
            side.points_sent += GIFT[1]
            side.cumulative[cid] = side.points_sent + side.likes_sent * args.like_weight
            side.sent_at[cid] = now()
            gifters[r][g // 2 % args.gifters].send({"t": "gift", "gift": GIFT[0], "count": 1, "cid": cid})
        if k * like_frames // steps != (k + 1) * like_frames // steps:
            f = k * like_frames // steps
            r = ROOMS[f % 2]
            sides[r].likes_sent += LIKES_PER_FRAME
            likers[r][f // 2 % 2].send({"t": "like", "count": LIKES_PER_FRAME})
    send_s = now() - t0
    with contextlib.suppress(TimeoutError):  # a loaded node catches up: every gift acked, every like counted
        async with asyncio.timeout(120):
            while any(
                len(s.acked) + s.refused < len(s.sent_at) or s.likes_seen < s.likes_sent
                for s in sides.values()
            ):
                await asyncio.sleep(0.1)
    caught_up_s = now() - t0 - send_s
    await asyncio.sleep(SETTLE_S)
    hosts[a].send({"t": "link", "action": "end", "cid": "e"})
    await asyncio.gather(*(within(sides[r].result_in.wait(), 30) for r in ROOMS))
    with contextlib.suppress(TimeoutError):  # the last gift events (already in the score) land
        async with asyncio.timeout(10):
            while any(len(s.seen) < len(s.acked) for s in sides.values()):
                await asyncio.sleep(0.1)
    for proc in procs:  # the workers' viewers, counted as this process counts its own
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        for row in json.loads(await asyncio.to_thread(proc.stdout.readline)):
            viewers.append(Viewer(*row))
        await asyncio.to_thread(proc.wait, 60)
    for c in conns:
        c.close()
    return {**report(args, sides, viewers, send_s), "catch_up_s": round(caught_up_s, 2)}


async def viewer_worker(room: str, port: int, first: int, count: int) -> None:
    """`count` counting viewers of `room`: "ready" once joined, their counts (JSON) when stdin closes."""
    viewers = [Viewer() for _ in range(count)]
    sem = asyncio.Semaphore(100)
    conns = []

    async def join(i: int, v: Viewer) -> None:
        path = f"/ws?token={auth.mint(DEFAULT_SECRET, room=room, user=f'v{first + i}-{room}', role='viewer')}"
        async with sem:
            conn, _ = await wsraw.connect("127.0.0.1", port, path, counting(v), 120)
        conns.append(conn)

    await asyncio.gather(*(join(i, v) for i, v in enumerate(viewers)))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    rows = [[v.pk_events, v.max_per_frame, v.doubles, v.first, v.last] for v in viewers]
    print(json.dumps(rows), flush=True)
    for c in conns:
        c.close()


def _noop(buf: bytearray, start: int, end: int) -> None:
    pass


def report(
    args: argparse.Namespace, sides: dict[str, Side], viewers: list[Viewer], send_s: float
) -> dict[str, Any]:
    expected = {
        r: s.points_sent - GIFT[1] * (len(s.sent_at) - len(s.acked)) + s.likes_sent * args.like_weight
        for r, s in sides.items()
    }
    results = [s.result["scores"] if s.result else None for s in sides.values()]
    to_gift_event: list[float] = []
    to_other_room: list[float] = []
    for s in sides.values():
        to_gift_event += [(s.seen[c] - t) * 1000 for c, t in s.acked.items() if c in s.seen]
        shown = s.scores_shown  # in order of arrival; scores only grow
        i = 0
        for cid, sent in sorted(s.acked.items(), key=lambda x: x[1]):
            need = s.cumulative[cid]
            while i < len(shown) and shown[i][1] < need:
                i += 1
            if i < len(shown):
                to_other_room.append((shown[i][0] - sent) * 1000)
    rates = [v.pk_events / max(1e-3, v.last - v.first + args.tick_ms / 1000) for v in viewers if v.pk_events]
    rates.sort()
    return {
        "scenario": "pk",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "nodes": args.nodes,
        "redis": ("cluster" if args.cluster else "single") if args.nodes > 1 else None,
        "viewers_per_room": args.viewers,
        "tick_ms": args.tick_ms,
        "duration_s": round(send_s, 2),
        "gifts_sent": sum(len(s.sent_at) for s in sides.values()),
        "gifts_acked": sum(len(s.acked) for s in sides.values()),
        "gifts_refused": sum(s.refused for s in sides.values()),
        "gift_loss": sum(len([c for c in s.acked if c not in s.seen]) for s in sides.values()),
        "likes_sent": sum(s.likes_sent for s in sides.values()),
        "gift_rate": round(sum(len(s.sent_at) for s in sides.values()) / send_s, 1),
        "like_rate": round(sum(s.likes_sent for s in sides.values()) / send_s, 1),
        "result_scores": results,
        "expected_scores": expected,
        "scores_equal": results[0] == results[1],
        "scores_exact": results[0] == expected,
        "viewers_counted": len(viewers),
        "viewers_with_pk_events": len(rates),
        "pk_events_per_viewer_s_median": round(rates[len(rates) // 2], 2) if rates else None,
        "pk_events_per_viewer_s_max": round(rates[-1], 2) if rates else None,
        "pk_events_max_per_frame": max((v.max_per_frame for v in viewers), default=0),
        "frames_with_2_pk_events": sum(v.doubles for v in viewers),
        "ticks_per_s": round(1000 / args.tick_ms, 1),
        "gift_to_event_ms": percentiles(to_gift_event),
        "gift_to_other_room_score_ms": percentiles(to_other_room),
    }


def table(r: dict[str, Any]) -> str:
    ev, other = r["gift_to_event_ms"], r["gift_to_other_room_score_ms"]
    rows = [
        ("nodes / Redis", f"{r['nodes']} / {r['redis']}"),
        ("viewers per room", r["viewers_per_room"]),
        ("gifts/s, likes/s sent", f"{r['gift_rate']}, {r['like_rate']}"),
        ("gifts sent / acked / lost", f"{r['gifts_sent']} / {r['gifts_acked']} / {r['gift_loss']}"),
        ("pk_result scores (both rooms)", json.dumps(r["result_scores"])),
        ("expected (sent)", json.dumps(r["expected_scores"])),
        ("equal / exact", f"{r['scores_equal']} / {r['scores_exact']}"),
        (
            "pk events per viewer per s (median, max; ticks/s)",
            f"{r['pk_events_per_viewer_s_median']}, {r['pk_events_per_viewer_s_max']}; {r['ticks_per_s']}",
        ),
        (
            "most pk events in one frame (frames with 2+)",
            f"{r['pk_events_max_per_frame']} ({r['frames_with_2_pk_events']})",
        ),
        ("gift -> gift event, other node (p50/p99 ms)", f"{ev.get('p50')} / {ev.get('p99')}"),
        ("gift -> other room's score (p50/p99 ms)", f"{other.get('p50')} / {other.get('p99')}"),
    ]
    return "\n".join(["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load_tests.bench_pk", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=2, help="node processes (2+: with a redis-server)")
    p.add_argument("--cluster", action="store_true", help="a 3+3 Redis Cluster instead of one redis-server")
    p.add_argument("--viewers", type=int, default=300, help="viewers per room")
    p.add_argument("--gifters", type=int, default=10, help="gift senders per room")
    p.add_argument("--gift-rate", type=float, default=200, help="gifts/s, both rooms together")
    p.add_argument("--like-rate", type=float, default=1000, help="likes/s, both rooms together")
    p.add_argument("--like-weight", type=int, default=1, help="PK points per like")
    p.add_argument("--duration", type=float, default=20, help="seconds of sending")
    p.add_argument("--tick-ms", type=int, default=50)
    p.add_argument(
        "--viewer-procs",
        type=int,
        default=0,
        help="processes per room for the counting viewers (0: this one)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--viewer-worker", nargs=4, metavar=("ROOM", "PORT", "FIRST", "COUNT"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.viewer_worker:
        room, port, first, count = args.viewer_worker
        raise_nofile()
        asyncio.run(viewer_worker(room, int(port), int(first), int(count)))
        return 0
    if args.host not in LOOPBACK or not 1 <= args.nodes <= 4 or not 0 < args.duration <= 600:
        p.error("loopback only; 1-4 nodes; duration 0-600 s")
    raise_nofile()
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    print(table(result))
    ok = result["gift_loss"] == 0 and result["scores_equal"] and result["scores_exact"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
