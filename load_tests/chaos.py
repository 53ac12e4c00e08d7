"""Chaos: real nodes and a real Redis, faults injected under traffic, checked as a user would.

    python -m load_tests.chaos --faults 24 --nodes 3            # repeated faults, JSON + table
    python -m load_tests.chaos --kinds node_kill --faults 1       # one fault of one kind
    python -m load_tests.chaos --redis-cluster --kinds primary_kill --faults 6   # 3+3 cluster

With `--redis-cluster` Redis is a 3+3 Redis Cluster (AOF fsynced always, cluster-node-timeout
2000, cluster-require-full-coverage no), there is one room per primary, and `primary_kill`
SIGKILLs the primary of one room's shard (each in turn), waits for its replica to take over and
restarts it (it rejoins as a replica); `primary_stop` SIGSTOPs it instead (a hung host: the
nodes' connections stay open and nothing answers) and kills it once the replica took over. Per round it also counts, from the clients' side, what
the *other* shards cost: `other_resets` (closes of their viewers), `other_inband` (in-band reset
snapshots they got; `hit_resets`, `hit_inband`: the failed shard's), `other_refused` (4501 to DMs
whose recipient is on another shard) and the longest stall between two events of a room
(`stall_hit_ms` for the failed shard's room, `stall_other_ms` for the others'), and
`redis_spikes`: what Redis' own latency monitor logged (>= 100 ms: an fsync, a fork) meanwhile.

Nodes are `python -m server serve --redis URL` subprocesses (with `CHAOS_LOGS=DIR`, each
node's log goes to DIR/<node id>.log); Redis is `redis-server` with an
AOF fsynced on every write (what "never loses an acked DM" relies on). The client is written
from docs/PROTOCOL.md alone: it joins with `resume`, tracks `(epoch, seq)` (a batch's epoch
included: "Stream identity"), reconnects to
another node after any close, resyncs on a seq jump or `dropped`, takes an in-band `snapshot` (a
room reset, `recovered: false`) as being told and carries on from it, and retries every DM with its
`cid` until it gets a `dm_ack`. Nobody sends `dm_seen`, so every connection a recipient opens
must show every acknowledged DM. What is counted (all must be 0):

- `dm_lost`: acked DMs no connection of the recipient ever showed;
- `dm_missing_on_connection`: (connection, acked DM) pairs the connection never showed;
- `dm_stored_twice`: one DM (one `cid`) that reached a recipient under two ids;
- `silent_gaps`: seqs a viewer never got inside a stretch it believed complete (one epoch,
  from a fresh snapshot on, resumed with `recovered: true` across reconnects);
- `conflicts`: `(epoch, seq)` pairs that carried different events for different viewers;
- `shown_twice`: danmaku a viewer showed twice;
- `silent_misses`: danmaku another viewer of the room showed that a viewer never showed
  although it was never told it might miss some (it followed one stream, with no fresh
  snapshot: a missing event is silent unless the client was told).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import redis
from redis.crc import key_slot
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from load_tests.bench import raise_nofile
from server.config import DEFAULT_SECRET
from server.deadline import within
from server.wire import auth
from tests.ports import cluster_ports, free_port

ROOM = "chaos"
KINDS = ("node_kill", "node_term", "redis_kill")
CLUSTER_KINDS = ("primary_kill", "node_kill", "primary_stop")
NODE_ENV = {  # the abuse limits are not what is tested here
    "LIVEROOM_RATE_LIMITS": "off",
    "LIVEROOM_REPEAT_MAX": "0",
    "LIVEROOM_CONTACT_FILTER": "off",
    "LIVEROOM_ABUSE_STRIKES": "0",
    "LIVEROOM_MAX_LOOP_LAG": "0",
}
ROUND_LIMIT = 240.0  # seconds one round may take at most (start, fault, settle)
SETTLE = 45.0  # seconds to wait, after the traffic stops, for every connection to catch up


# -- processes --------------------------------------------------------------------------------


class Redis:
    """redis-server on a fixed port (nodes keep its URL across restarts), AOF fsynced always."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)]
        self.proc = subprocess.Popen(
            ["redis-server", *args, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        async with asyncio.timeout(30):
            while True:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.write(b"PING\r\n")
                    await writer.drain()
                    writer.close()
                    return
                await asyncio.sleep(0.05)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test froze it
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


SPIKE_MS = 100  # Redis' latency monitor threshold in the cluster runs


class RedisCluster:
    """3 primaries + 3 replicas on loopback (redis-cli --cluster create), AOF fsynced always.

    A shard is named by the first slot of its range, which a failover does not change."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.workdir = workdir
        self.ports = cluster_ports(masters * 2)
        self.masters = masters
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def _spawn(self, port: int) -> None:
        home = self.workdir / f"cluster-{port}"
        home.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
        args += ["--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "2000"]
        args += ["--cluster-require-full-coverage", "no", "--repl-diskless-sync-delay", "0"]
        args += ["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", str(home)]
        args += ["--latency-monitor-threshold", str(SPIKE_MS)]  # see spikes_since
        self.procs[port] = subprocess.Popen(
            ["redis-server", *args, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1)

    def _ask(self, port: int, *command: Any) -> Any:
        """One Redis process's answer to `command`, or None when it is down or will not say."""
        try:
            with self._client(port) as c:
                return c.execute_command(*command)
        except (redis.RedisError, OSError):
            return None

    def _ok(self, port: int) -> bool:
        try:
            with self._client(port) as c:
                return bool(c.ping())
        except (redis.RedisError, OSError):
            return False

    async def _until(self, check: Any, what: str, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while not await asyncio.to_thread(check):
                await asyncio.sleep(0.1)

    async def start(self) -> None:
        for port in self.ports:
            self._spawn(port)
        for port in self.ports:
            await self._until(lambda port=port: self._ok(port), f"redis {port}")
        create = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)]
        create += ["--cluster-replicas", "1", "--cluster-yes"]
        await asyncio.to_thread(subprocess.run, create, check=True, capture_output=True, timeout=60)
        await self._until(self.healthy, "the cluster")

    def spikes_since(self, since: float) -> list[tuple[int, str, int]]:
        """(port, event, ms) of the latency spikes (>= SPIKE_MS) each live Redis logged since
        `since` (unix time; its latest one per event, LATENCY LATEST): a stall every room sees
        at once may be Redis' own (an fsync of the always-fsynced AOF), not the nodes'."""
        out = []
        for port in list(self.procs):
            for event, at, ms, *_ in self._ask(port, "LATENCY LATEST") or ():
                if int(at) >= since:
                    out.append((port, event.decode() if isinstance(event, bytes) else str(event), int(ms)))
        return out

    def slots(self) -> list[tuple[int, int, int, int]]:
        """(first slot, last slot, primary port, replicas) per shard, from any live node."""
        for port in list(self.procs):
            raw = self._ask(port, "CLUSTER SLOTS")
            if raw is None:
                continue
            out = []
            for entry in raw:
                start, end, primary, *replicas = entry
                out.append((int(start), int(end), int(primary[1]), len(replicas)))
            return sorted(out)
        return []

    def healthy(self) -> bool:
        """Every slot served by a live primary that has its replica."""
        table = self.slots()
        live = set(self.procs)
        covered = sum(end - start + 1 for start, end, port, _ in table if port in live)
        if covered != 16384:
            return False
        for _, _, port, _ in table:
            info = self._ask(port, "INFO", "replication")
            if info is None:
                return False
            if not any(isinstance(v, dict) and v.get("state") == "online" for v in info.values()):
                return False
        return True

    def shard_of(self, key: str) -> int:
        slot = key_slot(key.encode())
        return next(start for start, end, _, _ in self.slots() if start <= slot <= end)

    def shards(self) -> list[int]:
        return [start for start, _, _, _ in self.slots()]

    async def kill_primary(self, shard: int, freeze: bool = False) -> None:
        """SIGKILL the shard's primary, wait for its replica to take over, restart the dead one.

        `freeze`: SIGSTOP it instead (a hung host: connections to it stay open, nothing answers),
        and SIGKILL it only once its replica has taken over."""
        port = next(p for start, _, p, _ in self.slots() if start == shard)
        proc = self.procs.pop(port)
        if freeze:
            proc.send_signal(signal.SIGSTOP)
        else:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        await self._until(
            lambda: any(start == shard and p in self.procs for start, _, p, _ in self.slots()), "failover"
        )
        if freeze:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        self._spawn(port)  # it rejoins as a replica of the promoted one
        await self._until(self.healthy, "the replica back")

    async def restart_all(self, down: float) -> None:
        """SIGKILL every Redis process (the whole store goes away), restart them after `down` s
        (each reloads its AOF and its role from nodes.conf) and wait for the cluster to be whole."""
        for proc in self.procs.values():
            proc.kill()
        for proc in self.procs.values():
            await asyncio.to_thread(proc.wait)
        await asyncio.sleep(down)
        for port in list(self.procs):
            self._spawn(port)
        await self._until(self.healthy, "the cluster back", timeout=120)

    async def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
        for proc in self.procs.values():
            await asyncio.to_thread(proc.wait)
        self.procs.clear()


@dataclass
class Node:
    node_id: str
    proc: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


async def start_node(redis_url: str, node_id: str, *extra: str, env: dict[str, str] | None = None) -> Node:
    cmd = [sys.executable, "-m", "server", "serve", "--port", "0", "--http-port", "0"]
    cmd += ["--redis", redis_url, "--node-id", node_id, "--tick-ms", "50", "--presence-ttl", "1.5", *extra]
    logs = os.environ.get("CHAOS_LOGS")  # a directory: each node's log in <node id>.log there
    with open(Path(logs) / f"{node_id}.log", "w") if logs else contextlib.nullcontext() as log:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log if log is not None else subprocess.DEVNULL,
            text=True,
            env={**os.environ, **NODE_ENV, **(env or {})},
            preexec_fn=raise_nofile,
        )
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"node {node_id} did not start: {line!r}")
    return Node(node_id, proc, int(line.split("http://127.0.0.1:")[1].split()[0]))


async def stop_node(node: Node, sig: int = signal.SIGTERM, timeout: float = 30.0) -> float:
    """Signal the node and wait for it to exit; returns seconds to exit."""
    started = time.monotonic()
    if node.alive:
        node.proc.send_signal(sig)
        try:
            await asyncio.to_thread(node.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            await asyncio.to_thread(node.proc.wait)
            raise
    if node.proc.stdout is not None:
        node.proc.stdout.close()
    return time.monotonic() - started


# -- the client ---------------------------------------------------------------------------------


@dataclass
class Truth:
    """What a PROTOCOL.md client can check of the server's answers: no `(epoch, seq)` names two
    events, and a DM's retries are acked with the id of its first ack (else stored twice)."""

    events: dict[tuple[str, int], tuple[Any, ...]] = field(default_factory=dict)
    conflicts: int = 0
    acked: dict[str, tuple[str, str]] = field(default_factory=dict)  # dm id -> (recipient, cid)
    acked_by_cid: dict[str, str] = field(default_factory=dict)  # cid -> dm id of its ack
    ack_changed: int = 0  # a retry got another id than the first ack: stored twice

    def saw(self, epoch: str, event: dict[str, Any]) -> None:
        key = (epoch, event["seq"])
        who = (event["t"], event.get("uid"), event.get("text"), event.get("ts"))
        known = self.events.setdefault(key, who)
        if known != who:
            self.conflicts += 1

    def dm_acked(self, cid: str, dm_id: str, to: str) -> None:
        first = self.acked_by_cid.setdefault(cid, dm_id)
        if first != dm_id:
            self.ack_changed += 1
        self.acked[dm_id] = (to, cid)


@dataclass
class Ledger(Truth):
    """What every client saw, shared, checked at the end."""

    danmaku_sent: int = 0
    sent_at: dict[str, float] = field(default_factory=dict)  # danmaku text -> monotonic send time
    dm_errors: int = 0  # 4501 answers (refused, retried)
    dm_errors_to: dict[str, int] = field(default_factory=dict)  # recipient -> its 4501 answers
    visible_gaps: int = 0  # seq jumps the client saw (and resynced)
    reconnects: int = 0
    not_recovered: int = 0  # resumes answered with recovered: false (fresh snapshot)
    inband_resets: int = 0  # fresh snapshots on a live connection (a room reset): told, no reconnect
    epoch_adopted: int = 0  # batches under a new epoch that continued the stream
    epoch_resyncs: int = 0  # batches under a new epoch that did not: resumed


class Conn:
    """One user's connection that rejoins a live node after any close, resuming its position."""

    def __init__(self, cluster: Cluster, uid: str, prefer: int = 0, room: str = ROOM) -> None:
        self.cluster = cluster
        self.ledger = cluster.ledger
        self.uid = uid
        self.prefer = prefer
        self.room = room
        self.closes: list[int | None] = []  # close codes the server sent (1012: a restart)
        self.inband = 0  # in-band snapshots (a room reset, told on the live connection)
        self.last_event = 0.0  # monotonic time of the last event shown
        self.stall = 0.0  # longest wait between two events while `timing`
        self.timing = False
        # while `timing`: (monotonic time, wait since the previous event) per event, and
        # (monotonic time, send-to-show latency) per danmaku of this process's senders
        self.gaps: list[tuple[float, float]] = []
        self.latencies: list[tuple[float, float]] = []
        self.ws: ClientConnection | None = None
        self.ready = asyncio.Event()
        self.epoch: str | None = None
        self.seq = 0
        self.segments: list[list[Any]] = []  # [epoch, first seq, last seq] stretches believed whole
        self.seen: dict[str, set[int]] = {}
        self.texts: dict[str, int] = {}  # danmaku text -> times shown
        self.dms: dict[str, str] = {}  # dm id -> text, on this logical connection
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}  # cid -> its answer

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._session()
            except ConnectionClosed as exc:
                self.closes.append(exc.rcvd.code if exc.rcvd is not None else None)
            except (OSError, InvalidHandshake, TimeoutError):
                pass
            self.ready.clear()
            self.ws = None
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_result({"t": "closed"})
            if not stop.is_set():
                self.ledger.reconnects += 1
                await asyncio.sleep(0.1 + random.random() * 0.2)

    async def _session(self) -> None:
        url = self.cluster.pick(self.prefer)
        async with connect(url, open_timeout=5, close_timeout=1, max_size=None) as ws:
            join: dict[str, Any] = {"t": "join", "token": self.cluster.token(self.uid, self.room)}
            if self.epoch is not None:
                join["resume"] = {"epoch": self.epoch, "seq": self.seq}
            await ws.send(msgpack.packb(join))
            snapshot = msgpack.unpackb(await within(ws.recv(), 15))
            if snapshot.get("t") != "snapshot":
                await asyncio.sleep(float(snapshot.get("retry_after") or 0.5))
                return
            self._on_snapshot(snapshot, resumed="resume" in join)
            self.ws = ws
            self.ready.set()
            async for data in ws:
                frame = msgpack.unpackb(data)
                if not self._on_frame(frame):
                    await ws.close(3000, "resync")
                    return
            if ws.close_code is not None:  # the server closed cleanly (1012 and the like)
                self.closes.append(ws.close_code)

    def _on_snapshot(self, snap: dict[str, Any], resumed: bool) -> None:
        if resumed and snap.get("recovered"):  # the missed events follow our (epoch, seq)
            for event in snap.get("missed", ()):
                self._on_event(event)
            return
        if resumed:
            self.ledger.not_recovered += 1
        self.epoch, self.seq = snap["epoch"], snap["seq"]
        self.segments.append([self.epoch, self.seq, self.seq])

    def _on_frame(self, frame: dict[str, Any]) -> bool:
        kind = frame.get("t")
        if kind == "snapshot":  # the room's stream reset (PROTOCOL.md): a fresh start, told
            self.inband += 1
            self.ledger.inband_resets += 1
            self._on_snapshot(frame, resumed=False)
            return True
        if kind == "batch":
            events = frame["events"]
            epoch = frame.get("epoch")  # PROTOCOL.md, "Stream identity"
            if epoch is not None and epoch != self.epoch and events and "seq" in events[0]:
                if events[0]["seq"] != self.seq + 1:
                    self.ledger.epoch_resyncs += 1
                    return False  # another numbering, not continuing ours: resume
                self.ledger.epoch_adopted += 1
                self.epoch = epoch  # it continues our stream with no gap: carry on under it
                self.segments.append([epoch, self.seq, self.seq])
            return all(self._on_event(e) for e in events)
        if kind == "dm":
            self.dms[frame["id"]] = frame["text"]
        elif kind in ("dm_ack", "error") and (
            fut := self.waiting.get(str(frame.get("cid", frame.get("ref"))))
        ):
            if not fut.done():
                fut.set_result(frame)
        elif kind == "dropped":
            return False
        return True

    def _on_event(self, event: dict[str, Any]) -> bool:
        seq = event.get("seq")
        if seq is None or seq <= self.seq:
            return True  # unsequenced echo, or already shown
        if seq != self.seq + 1:
            self.ledger.visible_gaps += 1
            return False  # resync: reconnect with resume
        assert self.epoch is not None
        now = time.monotonic()
        if self.timing and self.last_event:
            self.stall = max(self.stall, now - self.last_event)
            self.gaps.append((now, now - self.last_event))
        if self.timing and event["t"] == "danmaku" and (sent := self.ledger.sent_at.get(event["text"])):
            self.latencies.append((now, now - sent))
        self.last_event = now
        self.seq = seq
        self.segments[-1][2] = seq
        self.seen.setdefault(self.epoch, set()).add(seq)
        self.ledger.saw(self.epoch, event)
        if event["t"] == "danmaku":
            self.texts[event["text"]] = self.texts.get(event["text"], 0) + 1
        return True

    async def send_dm(self, to: str, cid: str) -> None:
        """Send until acknowledged: the same cid after a reset or a 4501, so it is stored once."""
        while True:
            await self.ready.wait()
            ws = self.ws
            if ws is None:
                await asyncio.sleep(0.05)
                continue
            fut = self.waiting[cid] = asyncio.get_running_loop().create_future()
            try:
                await ws.send(msgpack.packb({"t": "dm", "to": to, "text": cid, "cid": cid}))
                answer = await within(fut, 20)
            except (ConnectionClosed, TimeoutError):
                await asyncio.sleep(0.05)  # a closed socket raises at once: let the reader see it
                continue
            finally:
                self.waiting.pop(cid, None)
            if answer["t"] == "dm_ack":
                self.ledger.dm_acked(cid, answer["id"], to)
                return
            if answer["t"] == "closed":
                await asyncio.sleep(0.05)
            elif answer["t"] == "error":
                self.ledger.dm_errors += 1
                self.ledger.dm_errors_to[to] = self.ledger.dm_errors_to.get(to, 0) + 1
                await asyncio.sleep(float(answer.get("retry_after") or 0.2))

    async def danmaku(self, text: str) -> None:
        ws = self.ws
        if ws is not None:
            with contextlib.suppress(ConnectionClosed):
                self.ledger.sent_at[text] = time.monotonic()
                await ws.send(msgpack.packb({"t": "danmaku", "text": text, "cid": text}))
                self.ledger.danmaku_sent += 1


class Cluster:
    def __init__(self, workdir: Path, nodes: int = 3, redis_cluster: bool = False) -> None:
        self.redis = Redis(workdir)
        self.shards: RedisCluster | None = RedisCluster(workdir) if redis_cluster else None
        self.size = nodes
        self.nodes: list[Node] = []
        self.ledger = Ledger()
        self._started = 0
        self.turn = 0  # which shard's primary the next primary_kill takes

    @property
    def redis_url(self) -> str:
        return self.shards.url if self.shards is not None else self.redis.url

    def token(self, uid: str, room: str = ROOM) -> str:
        return auth.mint(DEFAULT_SECRET, room=room, user=uid, role="viewer", ttl=3600)

    def rooms(self) -> list[str]:
        """One room per shard on a Redis Cluster (its keys on that shard), else the one room."""
        if self.shards is None:
            return [ROOM]
        return [
            self.named(f"{ROOM}{n}-", "lr:{{r:{}}}:meta", shard)
            for n, shard in enumerate(self.shards.shards())
        ]

    def named(self, prefix: str, pattern: str, shard: int) -> str:
        """A room or uid starting with `prefix` whose key (`pattern`) lives on `shard`."""
        assert self.shards is not None
        for i in range(10_000):
            name = f"{prefix}{i}"
            if self.shards.shard_of(pattern.format(name)) == shard:
                return name
        raise RuntimeError("no name hashes to that shard")

    def pick(self, prefer: int) -> str:
        alive = [n for n in self.nodes if n.alive] or self.nodes
        return alive[prefer % len(alive)].url

    async def start(self) -> None:
        await (self.shards.start() if self.shards is not None else self.redis.start())
        self.nodes = list(await asyncio.gather(*(self._new_node() for _ in range(self.size))))

    async def _new_node(self) -> Node:
        self._started += 1
        extra = ("--redis-cluster",) if self.shards is not None else ()
        return await start_node(self.redis_url, f"n{self._started}", *extra)

    async def replace(self, node: Node) -> None:
        self.nodes[self.nodes.index(node)] = await self._new_node()

    async def close(self) -> None:
        await asyncio.gather(*(stop_node(n, timeout=30) for n in self.nodes), return_exceptions=True)
        await (self.shards.stop() if self.shards is not None else self.redis.stop())


@dataclass
class Traffic:
    """Viewers, two recipients with two connections each (one on a shared node), DM senders."""

    cluster: Cluster
    viewers: list[Conn]
    recipients: dict[str, list[Conn]]
    senders: list[Conn]

    @classmethod
    def make(cls, cluster: Cluster, tag: str) -> Traffic:
        if cluster.shards is not None:
            return cls.per_shard(cluster, tag)
        viewers = [Conn(cluster, f"{tag}v{i}", prefer=i) for i in range(3)]
        # each recipient's two connections start on the same node: the backlog must reach both
        recipients = {
            f"{tag}r{i}": [Conn(cluster, f"{tag}r{i}", prefer=i) for _ in range(2)] for i in range(2)
        }
        senders = [Conn(cluster, f"{tag}s{i}", prefer=i + 1) for i in range(2)]
        return cls(cluster, viewers, recipients, senders)

    @classmethod
    def per_shard(cls, cluster: Cluster, tag: str) -> Traffic:
        """A Redis Cluster: per shard a room with 3 viewers (one per node) and a sender in it, and
        a recipient whose DMs live on that shard, so each shard's cost can be told apart."""
        assert cluster.shards is not None
        viewers, recipients, senders = [], {}, []
        for n, (shard, room) in enumerate(zip(cluster.shards.shards(), cluster.rooms(), strict=True)):
            viewers += [Conn(cluster, f"{tag}v{n}-{i}", prefer=i, room=room) for i in range(3)]
            uid = cluster.named(f"{tag}r{n}-", "lr:{{u:{}}}:dm", shard)
            recipients[uid] = [Conn(cluster, uid, prefer=n + i, room=room) for i in range(2)]
            senders.append(Conn(cluster, cluster.named(f"{tag}s{n}-", "lr:{{u:{}}}:dm", shard), n + 1, room))
        return cls(cluster, viewers, recipients, senders)

    @property
    def all(self) -> list[Conn]:
        return [*self.viewers, *(c for conns in self.recipients.values() for c in conns), *self.senders]


async def _talk(
    traffic: Traffic, stop: asyncio.Event, tag: str, rate: float, danmaku_every: float | None = None
) -> None:
    """Each sender: a danmaku every `danmaku_every` s (1/rate unless given: a short interval
    lets a stall of less than 100 ms be seen), and a DM (to each recipient in turn) every 1/rate s
    while none of its DMs is waiting for an answer. A DM being retried (its recipient's shard
    failing over) does not hold up the sender's danmaku: a room's stall is the room's."""
    every = danmaku_every or 1 / rate

    async def chat(n: int, sender: Conn) -> None:
        i = 0
        while not stop.is_set():
            await sender.ready.wait()
            await sender.danmaku(f"{tag}-d{n}-{i}")
            i += 1
            await asyncio.sleep(every)

    async def one(n: int, sender: Conn) -> None:
        j = 0
        targets = list(traffic.recipients)
        dm: asyncio.Task[None] | None = None
        chatter = asyncio.create_task(chat(n, sender))
        try:
            while not stop.is_set():
                await sender.ready.wait()
                if dm is None or dm.done():
                    dm = asyncio.create_task(sender.send_dm(targets[j % len(targets)], f"{tag}-m{n}-{j}"))
                    j += 1
                await asyncio.sleep(1 / rate)
        finally:
            await chatter
            if dm is not None:  # the last DM is retried until acked
                await dm

    await asyncio.gather(*(one(n, s) for n, s in enumerate(traffic.senders)))


async def inject(cluster: Cluster, kind: str) -> dict[str, Any]:
    """One fault; returns what it cost (seconds the faulted part was away)."""
    started = time.monotonic()
    if kind in ("primary_kill", "primary_stop"):
        assert cluster.shards is not None
        shards = cluster.shards.shards()
        shard = shards[cluster.turn % len(shards)]
        cluster.turn += 1
        await cluster.shards.kill_primary(shard, freeze=kind == "primary_stop")
        return {"kind": kind, "shard": shard, "seconds": round(time.monotonic() - started, 2)}
    if kind == "redis_kill":
        await cluster.redis.kill()
        await asyncio.sleep(1.0 + random.random())
        await cluster.redis.start()
    else:
        victim = random.choice([n for n in cluster.nodes if n.alive])
        if kind == "node_kill":
            await stop_node(victim, signal.SIGKILL)
        else:
            await stop_node(victim, signal.SIGTERM)
        await cluster.replace(victim)
    return {"kind": kind, "seconds": round(time.monotonic() - started, 2)}


async def settle(traffic: Traffic, tag: str) -> float:
    """After the traffic: a marker danmaku, then wait until every connection has it and every
    recipient connection has every acked DM (or SETTLE passes). Returns the seconds it took."""
    started = time.monotonic()
    ledger = traffic.cluster.ledger
    marker = f"{tag}-end"
    sender = traffic.senders[0]

    def done() -> bool:
        watching = traffic.viewers + [c for v in traffic.recipients.values() for c in v]
        if not all(c.texts.get(marker) for c in watching if c.room == sender.room):
            return False
        for uid, conns in traffic.recipients.items():
            want = {i for i, (to, _) in ledger.acked.items() if to == uid}
            if any(not want <= c.dms.keys() for c in conns):
                return False
        return True

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SETTLE):
            while True:
                if not any(c.texts.get(marker) for c in traffic.viewers if c.room == sender.room):
                    await sender.ready.wait()
                    await sender.danmaku(marker)
                if done():
                    break
                await asyncio.sleep(0.2)
    return time.monotonic() - started


def verdict(traffic: Traffic) -> dict[str, int]:
    ledger = traffic.cluster.ledger
    out = {
        "dm_acked": 0,
        "dm_lost": 0,
        "dm_missing_on_connection": 0,
        "dm_stored_twice": ledger.ack_changed,
        "silent_gaps": 0,
        "conflicts": ledger.conflicts,
        "shown_twice": 0,
        "silent_misses": 0,
    }
    for uid, conns in traffic.recipients.items():
        want = {i for i, (to, _) in ledger.acked.items() if to == uid}
        out["dm_acked"] += len(want)
        shown = set().union(*(c.dms.keys() for c in conns))
        out["dm_lost"] += len(want - shown)
        out["dm_missing_on_connection"] += sum(len(want - c.dms.keys()) for c in conns)
        ids_per_text: dict[str, set[str]] = {}
        for c in conns:
            for dm_id, text in c.dms.items():
                ids_per_text.setdefault(text, set()).add(dm_id)
        out["dm_stored_twice"] += sum(len(ids) - 1 for ids in ids_per_text.values())
    for conn in traffic.all:
        for epoch, first, last in conn.segments:
            seen = conn.seen.get(epoch, set())
            out["silent_gaps"] += sum(1 for s in range(first + 1, last + 1) if s not in seen)
        out["shown_twice"] += sum(n - 1 for n in conn.texts.values() if n > 1)
    watching = [*traffic.viewers, *(c for conns in traffic.recipients.values() for c in conns)]
    for conn in watching:
        if len(conn.segments) != 1:  # told: a fresh snapshot (or an epoch it took over)
            continue
        others = set().union(*(c.texts.keys() for c in watching if c is not conn and c.room == conn.room))
        out["silent_misses"] += len(others - conn.texts.keys())
    return out


def _ms(values: list[float], q: float = 1.0) -> int:
    """The q-quantile of `values` (seconds) in ms; 0 when there are none."""
    if not values:
        return 0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000)


def _timed(conns: list[Conn], fault_at: float) -> dict[str, list[float]]:
    """The conns' gaps and latencies, split at the fault: before it (the control) and from it on."""
    out: dict[str, list[float]] = {"gap_quiet": [], "gap": [], "late_quiet": [], "late": []}
    for c in conns:
        for name, pairs in (("gap", c.gaps), ("late", c.latencies)):
            for at, value in pairs:
                out[name if at >= fault_at else f"{name}_quiet"].append(value)
    return out


def shard_costs(traffic: Traffic, fault: dict[str, Any], fault_at: float = 0.0) -> dict[str, Any]:
    """On a Redis Cluster with a primary killed: what the failed shard and the others cost.

    `stall_*_ms`: the longest wait between two events of a viewer from the kill on; `late_*`: a
    danmaku's send-to-show latency from the kill on (max and p99); `*_quiet_ms`: the same before
    the kill, the control (what the loaded machine costs with no fault)."""
    cluster = traffic.cluster
    if cluster.shards is None or "shard" not in fault:
        return {}
    hit_room = cluster.rooms()[cluster.shards.shards().index(fault["shard"])]
    hit = [c for c in traffic.viewers if c.room == hit_room]
    other = [c for c in traffic.viewers if c.room != hit_room]
    other_users = [
        u for u in traffic.recipients if cluster.shards.shard_of(f"lr:{{u:{u}}}:dm") != fault["shard"]
    ]
    return {
        "other_resets": sum(len(c.closes) for c in other),
        "other_refused": sum(cluster.ledger.dm_errors_to.get(u, 0) for u in other_users),
        "hit_resets": sum(len(c.closes) for c in hit),
        "other_inband": sum(c.inband for c in other),
        "hit_inband": sum(c.inband for c in hit),
        **_summary("hit", _timed(hit, fault_at)),
        **_summary("other", _timed(other, fault_at)),
    }


def _summary(who: str, timed: dict[str, list[float]]) -> dict[str, int]:
    return {
        f"stall_{who}_ms": _ms(timed["gap"]),
        f"stall_{who}_quiet_ms": _ms(timed["gap_quiet"]),
        f"late_{who}_ms": _ms(timed["late"]),
        f"late_{who}_p99_ms": _ms(timed["late"], 0.99),
        f"late_{who}_quiet_ms": _ms(timed["late_quiet"]),
        f"late_{who}_quiet_p99_ms": _ms(timed["late_quiet"], 0.99),
    }


async def run_round(
    cluster: Cluster,
    kind: str,
    tag: str,
    before: float,
    after: float,
    rate: float,
    danmaku_every: float | None = None,
) -> dict[str, Any]:
    """Traffic, one fault of `kind` after `before` s, more traffic for `after` s, settle, verdict."""
    cluster.ledger = Ledger()  # counted per round
    traffic = Traffic.make(cluster, tag)
    stop = asyncio.Event()
    runners = [asyncio.create_task(c.run(stop)) for c in traffic.all]
    try:
        async with asyncio.timeout(60):
            for c in traffic.all:
                await c.ready.wait()
        talk_stop = asyncio.Event()
        talker = asyncio.create_task(_talk(traffic, talk_stop, tag, rate, danmaku_every))
        await asyncio.sleep(before)
        for c in traffic.all:
            c.timing, c.closes = True, []
        control_wall = time.time()
        await asyncio.sleep(before)  # the control: as long again with the timing on, no fault
        fault_at = time.monotonic()
        fault = await inject(cluster, kind)
        await asyncio.sleep(after)
        if cluster.shards is not None:
            spikes = await asyncio.to_thread(cluster.shards.spikes_since, control_wall)
            fault["redis_spikes"] = [f"{port} {event} {ms} ms" for port, event, ms in spikes]
        for c in traffic.all:
            c.timing = False
        talk_stop.set()
        with contextlib.suppress(TimeoutError):  # the last DMs being retried get their acks
            await within(talker, 30)
        talker.cancel()
        fault["settle_s"] = round(await settle(traffic, tag), 2)
        ledger = cluster.ledger
        counts = {
            "danmaku_sent": ledger.danmaku_sent,
            "events_seen": len(ledger.events),
            "dm_refused_retried": ledger.dm_errors,
            "visible_gaps_resynced": ledger.visible_gaps,
            "reconnects": ledger.reconnects,
            "resumes_not_recovered": ledger.not_recovered,
            "inband_resets": ledger.inband_resets,
            "epoch_adopted": ledger.epoch_adopted,
            "epoch_resyncs": ledger.epoch_resyncs,
        }
        return {**fault, **verdict(traffic), **counts, **shard_costs(traffic, fault, fault_at)}
    finally:
        stop.set()
        for c in traffic.all:
            if c.ws is not None:
                with contextlib.suppress(Exception):
                    await c.ws.close()
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)


async def shutdown_with_redis_frozen(cluster: Cluster) -> float:
    """SIGSTOP Redis (it accepts connections and never answers), SIGTERM a node: seconds to exit."""
    cluster.redis.signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(0.5)
        return await stop_node(cluster.nodes[0], signal.SIGTERM, timeout=60)
    finally:
        cluster.redis.signal(signal.SIGCONT)


async def chaos(
    faults: int,
    kinds: tuple[str, ...],
    nodes: int,
    rate: float,
    budget: float,
    redis_cluster: bool = False,
    danmaku_every: float | None = None,
) -> dict[str, Any]:
    """`faults` rounds (kinds in turn), stopping early when `budget` seconds have passed."""
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        cluster = Cluster(Path(tmp), nodes, redis_cluster)
        await cluster.start()
        started = time.monotonic()
        rounds = []
        try:
            for i in range(faults):
                if time.monotonic() - started > budget:
                    break
                async with asyncio.timeout(ROUND_LIMIT):  # a hung round ends the run, loudly
                    rounds.append(
                        await run_round(
                            cluster, kinds[i % len(kinds)], f"f{i}", 1.5, 1.5, rate, danmaku_every
                        )
                    )
            shutdown_s = await shutdown_with_redis_frozen(cluster) if not redis_cluster else 0.0
        finally:
            await cluster.close()
        keys = ["dm_acked", "dm_lost", "dm_missing_on_connection", "dm_stored_twice", "silent_gaps"]
        keys += [
            "conflicts",
            "shown_twice",
            "silent_misses",
            "danmaku_sent",
            "events_seen",
            "dm_refused_retried",
        ]
        keys += [
            "visible_gaps_resynced",
            "reconnects",
            "resumes_not_recovered",
            "inband_resets",
            "epoch_adopted",
            "epoch_resyncs",
        ]
        return {
            "faults": len(rounds),
            "by_kind": {k: sum(1 for r in rounds if r["kind"] == k) for k in kinds},
            **{k: sum(r[k] for r in rounds) for k in keys},
            "sigterm_exit_s_redis_frozen": round(shutdown_s, 2),
            "settle_s_max": max((r["settle_s"] for r in rounds), default=0.0),
            "wall_s": round(time.monotonic() - started, 1),
            **{k: max((r.get(k, 0) for r in rounds), default=0) for k in _STALL_KEYS},
            **{
                k: sum(r.get(k, 0) for r in rounds)
                for k in ("other_resets", "other_refused", "hit_resets", "other_inband", "hit_inband")
            },
            "rounds": rounds,
        }


_STALL_KEYS = tuple(
    f"{kind}_{who}_{rest}"
    for kind, rests in (("stall", ("ms", "quiet_ms")), ("late", ("ms", "p99_ms", "quiet_ms", "quiet_p99_ms")))
    for who in ("hit", "other")
    for rest in rests
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faults", type=int, default=24)
    parser.add_argument(
        "--kinds",
        help=f"comma-separated, of {', '.join(KINDS)} (all); with --redis-cluster of {', '.join(CLUSTER_KINDS)}",
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rate", type=float, default=10.0, help="DMs per second per sender")
    parser.add_argument(
        "--danmaku-ms", type=float, default=20.0, help="a danmaku per sender every this many ms"
    )
    parser.add_argument("--budget", type=float, default=300.0, help="seconds; no new fault after this")
    parser.add_argument(
        "--redis-cluster", action="store_true", help="a 3+3 Redis Cluster, one room per shard"
    )
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is required")
    allowed = CLUSTER_KINDS if args.redis_cluster else KINDS
    kinds = tuple(k for k in args.kinds.split(",") if k) if args.kinds else allowed
    if not kinds or any(k not in allowed for k in kinds):
        sys.exit(f"--kinds: choose from {', '.join(allowed)}")
    result = asyncio.run(
        chaos(
            args.faults,
            kinds,
            args.nodes,
            args.rate,
            args.budget,
            args.redis_cluster,
            args.danmaku_ms / 1000,
        )
    )
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}))
    print()
    print(
        f"{'kind':<11} {'s':>5} {'settle':>6} {'acked':>6} {'lost':>4} {'miss':>4} {'dup':>4} {'gaps':>4} {'confl':>5}"
    )
    for r in result["rounds"]:
        if "shard" in r:
            print(
                f"  shard {r['shard']}: other_resets {r['other_resets']} other_inband {r['other_inband']} "
                f"hit_resets {r['hit_resets']} hit_inband {r['hit_inband']} other_refused {r['other_refused']} "
                f"stall_hit_ms {r['stall_hit_ms']} stall_other_ms {r['stall_other_ms']} "
                f"(no fault: {r['stall_other_quiet_ms']}) late_other_ms {r['late_other_ms']} "
                f"p99 {r['late_other_p99_ms']} (no fault: {r['late_other_quiet_ms']} "
                f"p99 {r['late_other_quiet_p99_ms']}) redis spikes {r.get('redis_spikes') or 'none'}"
            )
        print(
            f"{r['kind']:<11} {r['seconds']:>5} {r['settle_s']:>6} {r['dm_acked']:>6} {r['dm_lost']:>4} "
            f"{r['dm_missing_on_connection']:>4} {r['dm_stored_twice']:>4} {r['silent_gaps']:>4} {r['conflicts']:>5}"
        )


if __name__ == "__main__":
    main()
