"""Soak: thousands of connections on 3 nodes and a 3+3 Redis Cluster, a fault every minute.

    python -m load_tests.soak                                  # 10 min, 5,000 connections
    python -m load_tests.soak --seconds 120 --connections 600   # a short one

Processes: 3 nodes (`python -m server serve --redis-cluster`, `--tick-ms 50`), a 3+3 Redis
Cluster (load_tests/chaos.py's: AOF fsynced always, cluster-node-timeout 2000,
cluster-require-full-coverage no), and this generator: one process on uvloop with a bare
WebSocket client (load_tests/wsraw.py), so 5,000 sockets cost the generator little of the two
cores. Loopback only; every loop is bounded by `--seconds` and the settle time.

Rooms: per shard two *bulk* rooms (most viewers; a danmaku every `--bulk-every` s) and one
*probe* room (3 viewers, one per node; a danmaku every `--probe-every` s, so a stall of a
tick or two shows). DM traffic: per shard `--recipients` users (two connections each, in bulk
rooms) whose DM stream lives on that shard, and two senders, each sending `--dm-rate` DMs/s
to every recipient in turn, up to 4 unanswered at once. Half the DMs are *retried* (same `cid`
after any close or 4501, until acked: none may be lost or stored twice), half are sent
*once*: retried only while the answer is uncertain (no answer, "may have been stored", "in
progress"); a plain 4501 is final, and such a DM must never be delivered.

Faults, one every `--fault-every` s (first after half of it), in turn: `node_kill` (SIGKILL a
node, start a new one: its viewers reconnect elsewhere and resume), `primary_kill` (SIGKILL
one shard's primary, each shard in turn; its replica takes over and the old one comes back as
a replica), `redis_restart` (SIGKILL all six Redis processes, restart them 2 s later);
`--kinds` picks others (e.g. one kind only, to see what it alone costs).

The client follows docs/PROTOCOL.md alone: it joins with `resume` after any close, tracks
`(epoch, seq)` (a batch naming another epoch that continues its seq is taken over, as
PROTOCOL.md "Stream identity" says; any other jump is resumed), and takes a snapshot without
`recovered: true` as being told it may have missed events, the join's or one arriving on the
live connection (a room reset, `reset: true`: it carries on from it, no reconnect). What is
counted:

- `dm_lost`: acked DMs the recipient never got: no connection showed them, nor a fresh
  connection's backlog at the end; `dm_not_shown_live`: acked DMs no connection showed (they
  may still be in the backlog); `dm_missing_on_connection`: (connection, acked DM) pairs a
  connection never showed (nobody sends `dm_seen`, so every connection gets the backlog);
- `dm_refused_but_delivered`: DMs answered with a final 4501 that a recipient showed anyway;
- `dm_stored_twice`: one DM (`cid`) shown under two ids, or acked under two ids;
- `silent_misses`: (viewer, danmaku) pairs where another viewer of the room showed the danmaku
  and this one never did, although it followed one unbroken stream (no fresh snapshot) from
  before the danmaku was sent until `LATE` s after another viewer showed it, and was never told
  afterwards either (that stream is its last: no `recovered: false` snapshot ended it).
  `misses_told_late`: the same, but a fresh snapshot did end that stream later (told, more
  than `LATE` s after the fact: a long outage). A seq gap the client sees is resumed
  (`visible_gaps_resynced`), so it is never silent by construction;
- `conflicts`: `(epoch, seq)` pairs shown with different events; `shown_twice`;
- per fault, the longest wait between two events of a viewer (the stall), for the failed
  part's rooms (`hit`: the shard's rooms; the killed node's viewers; every room for a Redis
  restart) and for the others, with the same measure over the `QUIET` s before the fault as
  the control; reconnects and DM refusals of the others;
- RSS per node (and the Redis processes') at the start and the end, the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from load_tests import bench, chaos, wsraw
from server.config import DEFAULT_SECRET
from server.deadline import within
from server.wire import auth

FAULTS = ("node_kill", "primary_kill", "redis_restart")
NODE_ENV = {  # 5,000 clients share 127.0.0.1; nobody sends dm_seen, so stores must hold 10 min
    "LIVEROOM_MAX_CONNS_PER_IP": "0",
    "LIVEROOM_MAX_CONNS_PER_USER": "0",
    "LIVEROOM_DM_STORE_PER_SENDER": "100000",
    "LIVEROOM_DM_KEEP": "10000",
}
LATE = 20.0  # s: a danmaku others showed this long ago is missed, not late
QUIET = 20.0  # s before each fault: the control window (a third of --fault-every at most)
WINDOW = 40.0  # s from each fault: the fault's window
SETTLE = 90.0  # s at most, after the traffic, for every connection to catch up
BACKLOG_WAIT = 15.0  # s at most for a fresh connection per recipient to get every acked DM
CONNECT_AT_ONCE = 100  # joins in flight while opening the connections
DM_IN_FLIGHT = 4  # unanswered DMs per sender
MAYBE = ("may have been stored", "in progress")  # 4501 answers that do not say "not stored"


# -- what every client saw ---------------------------------------------------------------------


@dataclass
class RoomPlan:
    index: int
    name: str
    shard: int
    probe: bool
    every: float  # s between two danmaku
    sent_at: list[float] = field(default_factory=list)  # danmaku k -> monotonic send time
    first_shown: dict[int, float] = field(default_factory=dict)  # danmaku k -> first show


@dataclass
class Ledger(chaos.Truth):
    visible_gaps: int = 0
    not_recovered: int = 0
    inband_resets: int = 0  # snapshots on a live connection (a room reset): told, no reconnect
    epoch_adopted: int = 0
    reconnects: int = 0
    refused_joins: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # cid -> recipient: a final 4501
    # (time, sender, recipient, the answer's msg): which 4501s a fault cost whom, and why
    answers_4501: list[tuple[float, str, str, str]] = field(default_factory=list)
    dm_other_errors: int = 0  # answers other than 4501 (none expected)
    dm_sent: int = 0
    danmaku_sent: int = 0
    acked_at: dict[str, float] = field(default_factory=dict)  # dm id -> when its ack came


class Viewer:
    """One user's connection: joins, shows events, and rejoins with `resume` after any close."""

    def __init__(self, soak: Soak, uid: str, room: RoomPlan, prefer: int, dms: bool = False) -> None:
        self.soak = soak
        self.ledger = soak.ledger
        self.uid = uid
        self.room = room
        self.prefer = prefer
        self.token = auth.mint(DEFAULT_SECRET, room=room.name, user=uid, role="viewer", ttl=7200)
        self.ws: wsraw.RawWs | None = None
        self.node: chaos.Node | None = None
        self.ready = asyncio.Event()
        self.epoch: str | None = None
        self.seq = 0
        self.segments: list[list[float]] = []  # [start, last event] of stretches believed whole
        self.shown = bytearray(64)  # danmaku k of the room -> times shown
        self.dms: dict[str, str] | None = {} if dms else None  # dm id -> text
        self.joins: list[tuple[float, str]] = []  # (monotonic time, node id) of each join
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.last_event = 0.0
        self.gap = 0.0  # longest wait between two events since the window began
        self.reconnects = 0  # since the window began
        self.inband = 0  # in-band reset snapshots since the window began

    # -- the window a fault is measured over -----------------------------------------------

    def window(self) -> tuple[float, int, int]:
        """(longest wait between two events, reconnects, in-band reset snapshots) since the last
        call; a wait still running counts as it stands."""
        now = time.monotonic()
        gap = max(self.gap, now - self.last_event) if self.last_event else self.gap
        out = (gap, self.reconnects, self.inband)
        self.gap, self.reconnects, self.inband = 0.0, 0, 0
        return out

    # -- the connection --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._session(stop)
            except wsraw.Refused as exc:
                self.ledger.refused_joins += 1
                await asyncio.sleep(float(exc.retry_after or 0.5))
            except (OSError, TimeoutError):
                pass
            self.ready.clear()
            self.ws = None
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_result({"t": "closed"})
            if not stop.is_set():
                self.ledger.reconnects += 1
                self.reconnects += 1
                await asyncio.sleep(0.2 + random.random())  # jittered: no reconnect storm in step

    async def _session(self, stop: asyncio.Event) -> None:
        node = self.soak.pick(self.prefer)
        join: dict[str, Any] = {"t": "join", "token": self.token}
        if self.epoch is not None:
            join["resume"] = {"epoch": self.epoch, "seq": self.seq}
        resumed = self.epoch is not None

        def on_joined(data: bytes) -> None:
            if not self._on_snapshot(msgpack.unpackb(data), resumed):
                proto.close()  # its `missed` did not follow our seq: resume again
                return
            self.ws, self.node = proto, node
            self.joins.append((time.monotonic(), node.node_id))
            self.ready.set()

        def on_message(buf: bytearray, start: int, end: int) -> None:
            if self.ws is proto and not self._on_frame(msgpack.unpackb(buf[start:end])):
                self.ws = None  # a gap or `dropped`: resume on a new connection
                self.ready.clear()
                proto.close()

        proto = wsraw.RawWs("/ws", f"127.0.0.1:{node.port}", on_message, hello=join, on_joined=on_joined)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(15):
                await loop.create_connection(lambda: proto, "127.0.0.1", node.port)
                await proto.joined
            closed = asyncio.ensure_future(proto.closed)
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([closed, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
        finally:
            if proto.transport is not None:
                proto.transport.close()

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()

    # -- what the client does with frames (docs/PROTOCOL.md) --------------------------------

    def _on_snapshot(self, snap: dict[str, Any], resumed: bool) -> bool:
        now = time.monotonic()
        if resumed and snap.get("recovered"):  # the missed events follow our (epoch, seq)
            return all(self._on_event(event, now) for event in snap.get("missed", ()))
        if resumed:
            self.ledger.not_recovered += 1
        self.epoch, self.seq = snap["epoch"], snap["seq"]
        self.segments.append([now, now])  # told: a new stretch starts here
        return True

    def _on_frame(self, frame: dict[str, Any]) -> bool:
        kind = frame.get("t")
        if kind == "snapshot":  # the room's stream reset (PROTOCOL.md): told, a fresh start
            self.ledger.inband_resets += 1
            self.inband += 1
            return self._on_snapshot(frame, resumed=False)
        if kind == "batch":
            events = frame["events"]
            epoch = frame.get("epoch")
            if epoch is not None and epoch != self.epoch and events and "seq" in events[0]:
                if events[0]["seq"] != self.seq + 1:
                    self.ledger.visible_gaps += 1
                    return False  # another numbering that does not continue ours: resume
                self.ledger.epoch_adopted += 1
                self.epoch = epoch  # continues our stream with no gap: carry on under it
            now = time.monotonic()
            return all(self._on_event(e, now) for e in events)
        if kind == "dm":
            if self.dms is not None:
                self.dms[frame["id"]] = frame["text"]
        elif kind in ("dm_ack", "error"):
            fut = self.waiting.get(str(frame.get("cid", frame.get("ref"))))
            if fut is not None and not fut.done():
                fut.set_result(frame)
        elif kind == "dropped":
            return False
        return True

    def _on_event(self, event: dict[str, Any], now: float) -> bool:
        seq = event.get("seq")
        if seq is None or seq <= self.seq:
            return True  # an unsequenced echo, or already shown
        if seq != self.seq + 1:
            self.ledger.visible_gaps += 1
            return False
        assert self.epoch is not None
        if self.last_event:
            self.gap = max(self.gap, now - self.last_event)
        self.last_event = now
        self.seq = seq
        self.segments[-1][1] = now
        self.ledger.saw(self.epoch, event)
        if event["t"] == "danmaku":
            room, _, k = str(event.get("text", "")).partition(".")
            if room == str(self.room.index) and k.isdigit():
                self._show(int(k), now)
        return True

    def _show(self, k: int, now: float) -> None:
        if k >= len(self.shown):
            self.shown.extend(bytes(max(k + 1 - len(self.shown), len(self.shown))))
        self.shown[k] = min(255, self.shown[k] + 1)
        self.room.first_shown.setdefault(k, now)

    # -- sending ---------------------------------------------------------------------------

    def danmaku(self) -> None:
        ws = self.ws
        if ws is None or not ws.alive:
            return
        k = len(self.room.sent_at)
        self.room.sent_at.append(time.monotonic())
        text = f"{self.room.index}.{k}"
        ws.send({"t": "danmaku", "text": text, "cid": text})
        self.ledger.danmaku_sent += 1

    async def send_dm(self, to: str, cid: str, once: bool) -> None:
        """Until acked (`once`: or refused for sure), with the same cid: stored once."""
        while True:
            await self.ready.wait()
            ws = self.ws
            if ws is None or not ws.alive:
                await asyncio.sleep(0.05)
                continue
            fut = self.waiting[cid] = asyncio.get_running_loop().create_future()
            try:
                ws.send({"t": "dm", "to": to, "text": cid, "cid": cid})
                answer = await within(fut, 20)
            except TimeoutError:
                continue
            finally:
                self.waiting.pop(cid, None)
            if answer["t"] == "dm_ack":
                self.ledger.dm_acked(cid, answer["id"], to)
                self.ledger.acked_at.setdefault(answer["id"], time.monotonic())
                return
            if answer["t"] == "closed":
                await asyncio.sleep(0.05)
                continue
            if answer.get("code") == 4501:
                self.ledger.answers_4501.append((time.monotonic(), self.uid, to, str(answer.get("msg", ""))))
            else:
                self.ledger.dm_other_errors += 1
            message = str(answer.get("msg", ""))
            if once and answer.get("code") == 4501 and not any(m in message for m in MAYBE):
                self.ledger.refused[cid] = to  # final: it must never be delivered
                return
            await asyncio.sleep(float(answer.get("retry_after") or 0.2))


# -- the run -------------------------------------------------------------------------------------


class SoakCluster(chaos.Cluster):
    """chaos.Cluster with the soak's node settings (no per-address caps, stores that hold)."""

    async def _new_node(self) -> chaos.Node:
        self._started += 1
        return await chaos.start_node(self.redis_url, f"n{self._started}", "--redis-cluster", env=NODE_ENV)


class Soak:
    def __init__(self, cluster: SoakCluster, args: argparse.Namespace) -> None:
        self.cluster = cluster
        self.args = args
        self.ledger = Ledger()
        self.rooms: list[RoomPlan] = []
        self.viewers: list[Viewer] = []
        self.talkers: list[Viewer] = []
        self.senders: list[Viewer] = []
        self.recipients: dict[str, list[Viewer]] = {}
        self.user_shard: dict[str, int] = {}
        self.t0 = time.monotonic()  # the traffic's start (set again when it starts)

    def acked_to(self) -> dict[str, set[str]]:
        """Each recipient's acked DM ids."""
        out: dict[str, set[str]] = {}
        for dm_id, (to, _) in self.ledger.acked.items():
            out.setdefault(to, set()).add(dm_id)
        return out

    def pick(self, prefer: int) -> chaos.Node:
        alive = [n for n in self.cluster.nodes if n.alive] or self.cluster.nodes
        return alive[prefer % len(alive)]

    def plan(self) -> None:
        assert self.cluster.shards is not None
        args = self.args
        shards = self.cluster.shards.shards()
        for shard in shards:
            for kind in ("bulk", "bulk", "probe"):
                index = len(self.rooms)
                name = self.cluster.named(f"soak{index}-", "lr:{{r:{}}}:meta", shard)
                every = args.probe_every if kind == "probe" else args.bulk_every
                self.rooms.append(RoomPlan(index, name, shard, kind == "probe", every))
        bulk = [r for r in self.rooms if not r.probe]
        for room in self.rooms:  # the talker is a viewer of its room too
            talker = Viewer(self, f"t{room.index}", room, prefer=room.index)
            self.talkers.append(talker)
            self.viewers.append(talker)
            if room.probe:
                self.viewers += [Viewer(self, f"p{room.index}-{i}", room, prefer=i) for i in range(3)]
        for n, shard in enumerate(shards):
            for i in range(args.recipients):
                uid = self.cluster.named(f"r{n}-{i}-", "lr:{{u:{}}}:dm", shard)
                self.user_shard[uid] = shard
                conns = [
                    Viewer(self, uid, bulk[(n + i + j) % len(bulk)], prefer=i + j, dms=True) for j in range(2)
                ]
                self.recipients[uid] = conns
                self.viewers += conns
            for i in range(2):
                uid = self.cluster.named(f"s{n}-{i}-", "lr:{{u:{}}}:dm", shard)
                self.user_shard[uid] = shard  # its cid claims and DM quota live there
                sender = Viewer(self, uid, bulk[(n + i) % len(bulk)], prefer=n + i)
                self.senders.append(sender)
                self.viewers.append(sender)
        for i in range(max(0, args.connections - len(self.viewers))):
            self.viewers.append(Viewer(self, f"v{i}", bulk[i % len(bulk)], prefer=i))

    async def open_all(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """Start every viewer, CONNECT_AT_ONCE joins at a time; wait until all have joined."""
        gate = asyncio.Semaphore(CONNECT_AT_ONCE)
        tasks = []
        for viewer in self.viewers:
            await gate.acquire()
            tasks.append(asyncio.create_task(viewer.run(stop)))
            joined = asyncio.create_task(within(viewer.ready.wait(), 30))
            joined.add_done_callback(lambda done: (gate.release(), done.cancelled() or done.exception()))
        async with asyncio.timeout(300):
            for viewer in self.viewers:
                await viewer.ready.wait()
        return tasks

    def live(self) -> int:
        return sum(1 for v in self.viewers if v.ready.is_set())


async def _talk(soak: Soak, stop: asyncio.Event) -> None:
    """Danmaku in every room at its pace, and DMs from every sender to every recipient in turn."""

    async def chat(talker: Viewer) -> None:
        every = talker.room.every
        next_at = time.monotonic() + random.random() * every
        while not stop.is_set():
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += every
            talker.danmaku()

    async def dms(n: int, sender: Viewer) -> None:
        targets = list(soak.recipients)
        random.Random(n).shuffle(targets)
        flying: set[asyncio.Task[None]] = set()
        for j in itertools.count():
            if stop.is_set():
                break
            await asyncio.sleep(1 / soak.args.dm_rate)
            if len(flying) >= DM_IN_FLIGHT:
                continue
            once = j % 2 == 1
            cid = f"{sender.uid}.{'o' if once else 'r'}{j}"
            task = asyncio.create_task(sender.send_dm(targets[j % len(targets)], cid, once))
            soak.ledger.dm_sent += 1
            flying.add(task)
            task.add_done_callback(flying.discard)
        with contextlib.suppress(TimeoutError):  # the last retried DMs get their answers
            async with asyncio.timeout(60):
                await asyncio.gather(*flying)

    await asyncio.gather(*(chat(t) for t in soak.talkers), *(dms(n, s) for n, s in enumerate(soak.senders)))


async def inject(soak: Soak, kind: str, turn: int) -> dict[str, Any]:
    """One fault; returns what it was and which viewers it hit (their rooms or their node)."""
    cluster = soak.cluster
    assert cluster.shards is not None
    started = time.monotonic()
    out: dict[str, Any] = {"kind": kind}
    if kind == "node_kill":
        victim = cluster.nodes[turn % len(cluster.nodes)]
        out["node"] = victim.node_id
        out["hit"] = [v for v in soak.viewers if v.node is victim]
        await chaos.stop_node(victim, signal.SIGKILL)
        await cluster.replace(victim)
    elif kind == "primary_kill":
        shards = cluster.shards.shards()
        shard = shards[turn % len(shards)]
        out["shard"] = shard
        out["hit"] = [v for v in soak.viewers if v.room.shard == shard]
        await cluster.shards.kill_primary(shard)
    else:
        out["hit"] = list(soak.viewers)
        await cluster.shards.restart_all(down=2.0)
    out["seconds"] = round(time.monotonic() - started, 2)
    return out


def _stalls(who: str, viewers: list[Viewer], gaps: dict[Viewer, tuple[float, int, int]]) -> dict[str, Any]:
    probe = [gaps[v][0] for v in viewers if v.room.probe]
    bulk = [gaps[v][0] for v in viewers if not v.room.probe]
    return {
        f"stall_{who}_probe_ms": round(max(probe, default=0) * 1000),
        f"stall_{who}_bulk_max_ms": round(max(bulk, default=0) * 1000),
        f"stall_{who}_bulk_p50_ms": round(statistics.median(bulk) * 1000) if bulk else 0,
        f"reconnects_{who}": sum(gaps[v][1] for v in viewers),
        f"inband_{who}": sum(gaps[v][2] for v in viewers),
    }


async def faults(soak: Soak, t0: float, stop: asyncio.Event) -> list[dict[str, Any]]:
    """A fault every --fault-every s (kinds in turn), each measured over its window."""
    args = soak.args
    out: list[dict[str, Any]] = []
    every = args.fault_every
    quiet_s = min(QUIET, every / 3)
    for i in itertools.count():
        at = t0 + every / 2 + i * every
        if at >= t0 + args.seconds:  # the traffic runs on until the last fault's window ends
            break
        await asyncio.sleep(max(0.0, at - quiet_s - time.monotonic()))
        for v in soak.viewers:
            v.window()
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        quiet = {v: v.window() for v in soak.viewers}
        kind = args.kinds[i % len(args.kinds)]
        fault_at = time.monotonic()
        fault = await inject(soak, kind, sum(1 for r in out if r["kind"] == kind))
        await asyncio.sleep(max(0.0, fault_at + min(WINDOW, every - quiet_s - 1) - time.monotonic()))
        hurt = {v: v.window() for v in soak.viewers}
        hit: list[Viewer] = fault.pop("hit")
        hit_set = set(hit)
        others = [v for v in soak.viewers if v not in hit_set]
        hit_users = {
            u for u, s in soak.user_shard.items() if kind == "redis_restart" or s == fault.get("shard")
        }
        # a sender whose own connection the fault closed (its room's stream reset) retries its DM
        # on a new one, and may hear "in progress" while the first try still runs: hit too
        reset_senders = {v.uid for v in hit if v in soak.senders}
        # per 4501 since the fault: True when neither its sender nor its recipient is on the failed
        # shard, and the sender's connection was not closed by the fault
        since = [(frm, to, msg) for at_, frm, to, msg in soak.ledger.answers_4501 if at_ >= fault_at]
        refused = [not {frm, to} & hit_users and frm not in reset_senders for frm, to, _ in since]
        other_why = Counter(msg for (frm, to, msg), other in zip(since, refused, strict=True) if other)
        row = {
            **fault,
            "at_s": round(fault_at - t0, 1),
            "hit_viewers": len(hit),
            **_stalls("hit", hit, hurt),
            **_stalls("other", others, hurt),
            **{f"quiet_{k}": v for k, v in _stalls("other", soak.viewers, quiet).items() if "stall" in k},
            "dm_4501_other": sum(refused),
            "dm_4501_other_why": dict(other_why),  # their answers' messages (e.g. a cid still in progress)
            "dm_4501_hit": len(refused) - sum(refused),
            "live_connections": soak.live(),
        }
        out.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if stop.is_set():
            break
    return out


async def settle(soak: Soak) -> float:
    """A last danmaku per room, then wait until every viewer showed its room's and every
    recipient connection every acked DM (or SETTLE passes). Returns the seconds it took."""
    started = time.monotonic()
    markers = {}
    for talker in soak.talkers:
        await talker.ready.wait()
        markers[talker.room.index] = len(talker.room.sent_at)
        talker.danmaku()

    def done() -> bool:
        for v in soak.viewers:
            k = markers[v.room.index]
            if k >= len(v.shown) or not v.shown[k]:
                return False
        by_uid = soak.acked_to()
        for uid, conns in soak.recipients.items():
            if any(not by_uid.get(uid, set()) <= (c.dms or {}).keys() for c in conns):
                return False
        return True

    resent = started
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SETTLE):
            while not done():
                await asyncio.sleep(0.5)
                if time.monotonic() - resent < 10:
                    continue
                resent = time.monotonic()
                for talker in soak.talkers:  # a marker nobody showed in 10 s: send another
                    if markers[talker.room.index] not in talker.room.first_shown:
                        markers[talker.room.index] = len(talker.room.sent_at)
                        talker.danmaku()
    return time.monotonic() - started


async def backlogs(soak: Soak) -> dict[str, dict[str, str]]:
    """Each recipient's backlog as a fresh connection gets it (dm id -> text): an acked DM a
    connection did not show live is still delivered if it is there (PROTOCOL.md: stored until
    `dm_seen`). Waits until every acked DM is there, or BACKLOG_WAIT s."""
    want = soak.acked_to()
    stop = asyncio.Event()
    fresh = {
        uid: Viewer(soak, uid, conns[0].room, prefer=7, dms=True) for uid, conns in soak.recipients.items()
    }
    tasks = [asyncio.create_task(v.run(stop)) for v in fresh.values()]
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(BACKLOG_WAIT):
                while any(not want.get(uid, set()) <= (v.dms or {}).keys() for uid, v in fresh.items()):
                    await asyncio.sleep(0.1)
    finally:
        stop.set()
        for v in fresh.values():
            v.close()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {uid: dict(v.dms or {}) for uid, v in fresh.items()}


def verdict(soak: Soak, backlog: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    ledger = soak.ledger
    out = {
        "dm_sent": ledger.dm_sent,
        "dm_acked": len(ledger.acked),
        "dm_lost": 0,
        "dm_not_shown_live": 0,
        "dm_missing_on_connection": 0,
        "dm_refused": len(ledger.refused),
        "dm_refused_but_delivered": 0,
        "dm_stored_twice": ledger.ack_changed,
        "dm_4501_answers": len(ledger.answers_4501),
        "dm_other_errors": ledger.dm_other_errors,
        "danmaku_sent": ledger.danmaku_sent,
        "danmaku_never_shown": 0,
        "silent_misses": 0,
        "viewers_with_silent_misses": 0,
        "misses_told_late": 0,
        "conflicts": ledger.conflicts,
        "shown_twice": 0,
        "visible_gaps_resynced": ledger.visible_gaps,
        "resumes_not_recovered": ledger.not_recovered,
        "inband_resets": ledger.inband_resets,
        "epoch_adopted": ledger.epoch_adopted,
        "reconnects": ledger.reconnects,
        "joins_refused_busy": ledger.refused_joins,
    }
    by_uid = soak.acked_to()
    detail: list[dict[str, Any]] = []
    for uid, conns in soak.recipients.items():
        want = by_uid.get(uid, set())
        shown: dict[str, str] = {}
        for c in conns:
            shown.update(c.dms or {})
        out["dm_lost"] += len(want - shown.keys() - (backlog or {}).get(uid, {}).keys())
        out["dm_not_shown_live"] += len(want - shown.keys())
        for j, c in enumerate(conns):
            missing = want - (c.dms or {}).keys()
            out["dm_missing_on_connection"] += len(missing)
            if missing:  # when, and where, this connection was while those DMs were acked
                at = sorted(ledger.acked_at.get(m, 0.0) - soak.t0 for m in missing)
                detail.append(
                    {
                        "uid": uid,
                        "connection": j,
                        "missing": len(missing),
                        "acked_s": [round(at[0], 1), round(at[-1], 1)],
                        "joins": [(round(t - soak.t0, 1), n) for t, n in c.joins],
                        "live": c.ready.is_set(),
                    }
                )
        ids_per_text: dict[str, set[str]] = {}
        for dm_id, text in shown.items():
            ids_per_text.setdefault(text, set()).add(dm_id)
        out["dm_stored_twice"] += sum(len(ids) - 1 for ids in ids_per_text.values())
        out["dm_refused_but_delivered"] += sum(1 for text in ids_per_text if ledger.refused.get(text) == uid)
    for room in soak.rooms:
        out["danmaku_never_shown"] += sum(1 for k in range(len(room.sent_at)) if k not in room.first_shown)
    for v in soak.viewers:
        out["shown_twice"] += sum(1 for n in v.shown if n > 1)
        missed = 0
        for k, first in v.room.first_shown.items():
            if k < len(v.shown) and v.shown[k]:
                continue
            sent = v.room.sent_at[k]
            spans = [i for i, (start, end) in enumerate(v.segments) if start < sent and end > first + LATE]
            if spans and spans[-1] == len(v.segments) - 1:  # its last stream: never told
                missed += 1
            elif spans:
                out["misses_told_late"] += 1
        out["silent_misses"] += missed
        out["viewers_with_silent_misses"] += missed > 0
    out["dm_missing_detail"] = detail  # per connection that missed some: when it joined where
    return out


def rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def resources(soak: Soak) -> dict[str, Any]:
    assert soak.cluster.shards is not None
    return {
        "nodes_rss_mib": {n.node_id: round(rss_kib(n.proc.pid) / 1024, 1) for n in soak.cluster.nodes},
        "redis_rss_mib": round(sum(rss_kib(p.pid) for p in soak.cluster.shards.procs.values()) / 1024, 1),
        "generator_rss_mib": round(rss_kib(os.getpid()) / 1024, 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    bench.raise_nofile()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        cluster = SoakCluster(Path(tmp), nodes=3, redis_cluster=True)
        await cluster.start()
        run = Soak(cluster, args)
        run.plan()
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        loads: list[float] = []
        live: list[int] = []
        try:
            opened = time.monotonic()
            tasks = await run.open_all(stop)
            open_s = time.monotonic() - opened
            await asyncio.sleep(5)  # the joins' presence settles
            start = resources(run)
            talk_stop = asyncio.Event()
            talker = asyncio.create_task(_talk(run, talk_stop))
            t0 = run.t0 = time.monotonic()

            async def sample() -> None:
                while True:
                    loads.append(os.getloadavg()[0])
                    live.append(run.live())
                    await asyncio.sleep(5)

            sampler = asyncio.create_task(sample())
            rounds = await faults(run, t0, talk_stop)
            await asyncio.sleep(max(0.0, t0 + args.seconds - time.monotonic()))
            talk_stop.set()
            with contextlib.suppress(TimeoutError):
                await within(talker, 90)
            sampler.cancel()
            settle_s = await settle(run)
            backlog = await backlogs(run)
            end = resources(run)
            return {
                "seconds": args.seconds,
                "connections": len(run.viewers),
                "open_s": round(open_s, 1),
                "live_min": min(live, default=0),
                "live_median": round(statistics.median(live)) if live else 0,
                "settle_s": round(settle_s, 1),
                "faults": len(rounds),
                "by_kind": {k: sum(1 for r in rounds if r["kind"] == k) for k in FAULTS},
                **verdict(run, backlog),
                "loadavg_max": round(max(loads, default=0.0), 2),
                "start": start,
                "end": end,
                "nodes_restarted": [
                    n.node_id for n in cluster.nodes if n.node_id not in start["nodes_rss_mib"]
                ],
                "rounds": rounds,
            }
        finally:
            stop.set()
            for v in run.viewers:
                v.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await cluster.close()


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{'fault':<14} {'at s':>6} {'took s':>6} {'hit':>5} {'stall hit probe/bulk ms':>24} "
        f"{'stall other probe/bulk ms':>26} {'quiet probe/bulk':>17} {'reconn other':>12} {'4501 other':>10} {'reconn/in-band hit':>18}"
    ]
    for r in result["rounds"]:
        what = r["kind"] + (f" {r['shard']}" if "shard" in r else f" {r['node']}" if "node" in r else "")
        lines.append(
            f"{what:<14} {r['at_s']:>6} {r['seconds']:>6} {r['hit_viewers']:>5} "
            f"{r['stall_hit_probe_ms']:>11}/{r['stall_hit_bulk_max_ms']:<12} "
            f"{r['stall_other_probe_ms']:>12}/{r['stall_other_bulk_max_ms']:<13} "
            f"{r['quiet_stall_other_probe_ms']:>8}/{r['quiet_stall_other_bulk_max_ms']:<8} "
            f"{r['reconnects_other']:>12} {r['dm_4501_other']:>10} "
            f"{r['reconnects_hit']:>9}/{r['inband_hit']:<8}"
        )
    keys = (
        "dm_acked",
        "dm_lost",
        "dm_refused",
        "dm_refused_but_delivered",
        "dm_stored_twice",
        "silent_misses",
    )
    lines.append("")
    lines.append("  ".join(f"{k} {result[k]}" for k in keys))
    lines.append(f"start {result['start']}")
    lines.append(f"end   {result['end']}")
    return "\n".join(lines)


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long the traffic runs")
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--fault-every", type=float, default=60.0, help="s between two faults")
    parser.add_argument("--recipients", type=int, default=12, help="DM recipients per shard")
    parser.add_argument("--dm-rate", type=float, default=7.5, help="DMs per second per sender (6 senders)")
    parser.add_argument("--bulk-every", type=float, default=0.5, help="s between danmaku in a bulk room")
    parser.add_argument("--probe-every", type=float, default=0.05, help="s between danmaku in a probe room")
    parser.add_argument("--kinds", default=",".join(FAULTS), help=f"faults in turn, of {', '.join(FAULTS)}")
    args = parser.parse_args(argv)
    args.kinds = tuple(k for k in args.kinds.split(",") if k)
    if not args.kinds or any(k not in FAULTS for k in args.kinds):
        parser.error(f"--kinds: choose from {', '.join(FAULTS)}")
    if args.fault_every < 10:
        parser.error("--fault-every: 10 s at least")
    return args


def main() -> None:
    args = arguments()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is required")
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(soak(args))
    else:
        result = uvloop.run(soak(args))
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}))
    print(json.dumps(result["rounds"]))
    print()
    print(table(result))


if __name__ == "__main__":
    main()
