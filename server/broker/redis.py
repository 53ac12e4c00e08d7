"""Redis broker: many nodes share rooms, history, presence, likes and DMs through one Redis.

This module owns what the parts share: the client, the session's connections of our own
(redis_resp3.py: per primary, one for pub/sub with every channel of the node on it and one for
pipelines), reconnection with jittered backoff and resubscription, and the presence heartbeat.
The parts live in their own modules, each implementing one interface of
server/broker/base.py: redis_stream.py (room stream), redis_inbox.py (DMs),
redis_sanctions.py (sanctions and limits); redis_link.py is how they reach this connection.

Outages: while Redis is unreachable the node keeps its rooms going alone (under local epochs
its clients see), refuses DMs and moderation writes with BrokerUnavailable, and answers abuse
checks from what it knows. After reconnecting it resubscribes every channel, re-reads each
room (continue or reset) and catches up each user's DMs.

See docs/ARCHITECTURE.md ("Redis broker") for the keys and the recovery rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import MaxConnectionsError, NoScriptError

from server import metrics
from server.broker import redis_scripts as rs
from server.broker.base import Broker
from server.broker.redis_inbox import RedisInbox
from server.broker.redis_link import DOWN as _DOWN
from server.broker.redis_link import named
from server.broker.redis_resp3 import Resp3Connection, open_resp3
from server.broker.redis_sanctions import RedisSanctions
from server.broker.redis_stream import RedisRoomStream
from server.broker.redis_sturdy import SturdyRedisCluster
from server.broker.shards import MAIN, Call, Shards
from server.deadline import within
from server.logs import Throttle

log = logging.getLogger("liveroom.broker.redis")
HEARTBEAT_SLICES = 10  # the presence heartbeat runs this often per interval, each time on the rooms due
# A primary that answers nothing in this long is hung (its shard is lost). One bound for every
# wait on an answer (a pipeline, a subscription, a PING probe): a shorter one would lose a
# shard that is only slow, e.g. a PING queued behind a big tick pipeline on a loaded machine.
ANSWER_TIMEOUT_S = 10.0


class RedisBroker(Broker):
    """The node's shared Redis connection and the three parts built on it.

    Over 400 lines because one state machine lives here: per-primary connections of our own,
    their loss and jittered reconnection per shard, resubscription, the replicas' WAIT and
    the presence heartbeat all read and change the same `_pubsubs`/`_writers`/`_up`/`_lost`
    state. The per-shard session (pub/sub + writer + its reconnection) is the next piece to
    give a class of its own (issue 22's remainder).
    """

    stream: RedisRoomStream
    inbox: RedisInbox
    limits: RedisSanctions

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        history_size: int = 1000,
        recent_size: int = 50,
        history_ttl: int = 600,
        presence_ttl: float = 6.0,
        dm_keep: int = 1000,
        dm_ttl: int = 30 * 86400,
        dm_per_sender: int = 1000,
        cluster: bool = False,
        sharded: bool | None = None,
        connect_timeout: float = 5.0,
        wait_replicas: int | None = None,
        wait_timeout_ms: int = 500,
        wait_degrade: bool = False,
        replica_check_s: float = 5.0,
    ) -> None:
        self.node_id = node_id
        self._presence_ttl = presence_ttl
        self._cluster = cluster
        self._sharded = cluster if sharded is None else sharded  # SSUBSCRIBE / SPUBLISH
        self._publish_cmd = "spublish" if self._sharded else "publish"
        self._connect_timeout = connect_timeout
        options: dict[str, Any] = {
            "retry": Retry(NoBackoff(), 0),  # this class owns reconnection and resync
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": 10.0,
            "socket_keepalive": True,
        }
        # a DM is acknowledged once this many replicas have it (WAIT on the writing connection)
        self._wait_replicas = (1 if cluster else 0) if wait_replicas is None else wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        # opt-in: a shard without its replicas acks DMs on the primary's AOF alone (replicated=false)
        self._wait_degrade = wait_degrade
        self._replica_check_s = replica_check_s
        self._replicas: dict[str, int] = {}  # shard -> replicas its primary last reported
        self._refused: Counter[str] = Counter()  # shard -> DMs refused for want of a replica, this interval
        self._cluster_known = False  # redis-py's cluster client initialised once
        self._shards = Shards(url, cluster, options)  # per-primary connections: pipelines, pub/sub, WAIT
        # single-key commands; on a cluster redis-py follows MOVED replies by itself
        self._redis: Any = (
            SturdyRedisCluster.from_url(url, max_connections=1000, **options)
            if cluster
            else self._shards.client(MAIN)
        )
        self._targets: dict[bytes, tuple[str, str]] = {}  # channel -> ("r", room) | ("u", uid)
        self._waiters: dict[bytes, asyncio.Future[bool]] = {}
        # per primary, this session's connections of our own (redis_resp3.py): pub/sub, and pipelines
        self._pubsubs: dict[str, Resp3Connection] = {}
        self._writers: dict[str, Resp3Connection] = {}
        self._lost: BaseException | None = None  # why one of them failed
        self._unsubscribing: Counter[bytes] = Counter()  # SUNSUBSCRIBEs sent, not yet confirmed
        self._connected = False
        # shards (primaries) whose connections failed while the others serve: their rooms run
        # locally and their users' DMs are refused until _recover_shards has them back
        self._down: set[str] = set()
        self._recovering: asyncio.Task[None] | None = None
        self._probing = False
        self._up = asyncio.Event()
        self._broken = asyncio.Event()
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._replica_watch: asyncio.Task[None] | None = None
        self.stream = RedisRoomStream(
            self,
            history_size=history_size,
            recent_size=recent_size,
            history_ttl=history_ttl,
            presence_ttl=presence_ttl,
        )
        self.inbox = RedisInbox(self, dm_keep=dm_keep, dm_ttl=dm_ttl, dm_per_sender=dm_per_sender)
        self.limits = RedisSanctions(self)
        scripts = (
            self.stream._publish_script,
            self.stream._load_script,
            self.inbox._dm_script,
            self.inbox._ack_script,
            self.inbox._quota_script,
        )
        for script in (*scripts, self.limits._load_script):
            self._shards.add_script(script.sha, script.script)  # loaded on every primary at connect

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Connect (waiting a little for Redis); the node serves locally until it is up."""
        loop = asyncio.get_running_loop()
        self._supervisor = loop.create_task(self._supervise())
        self._heartbeat = loop.create_task(self._heartbeat_forever())
        if self._wait_replicas:
            self._replica_watch = loop.create_task(self._watch_replicas())
        with contextlib.suppress(TimeoutError):
            await within(self._up.wait(), self._connect_timeout)

    async def close(self) -> None:
        """Stop the background tasks and wait for them. Each loop also checks `_closed`: on
        Python 3.11 `asyncio.wait_for` (redis-py writes a command through one) returns its result
        and drops a cancel that arrives as the command completes, so a `while True` loop ran on
        and this close awaited it forever; and this close swallowed its own caller's cancel, so
        not even a timeout around it ended the wait (the likely cause of a test run that hung
        18 min)."""
        self._closed = True
        self._broken.set()
        for task in (self._supervisor, self._heartbeat, self._replica_watch, *self._tasks):
            if task is not None:
                task.cancel()
        current = asyncio.current_task()
        for task in (self._supervisor, self._heartbeat, self._replica_watch):
            if task is None:
                continue
            try:
                await task
            except asyncio.CancelledError:
                if current is not None and current.cancelling():
                    raise  # our caller is cancelling this close (a timeout): do not swallow it
            except Exception:
                log.exception("a redis broker task failed")
        with contextlib.suppress(Exception):
            await self._redis.aclose()
        await self._shards.aclose()

    @property
    def ready(self) -> bool:
        """Ready while most shards serve (a node that can serve nothing is not)."""
        return self._connected and 2 * len(self._down) < max(1, len(self._shards.names))

    def serving(self, key: str | bytes) -> bool:
        """The shard owning this key is reachable now: its rooms and users use Redis."""
        if not self._connected:
            return False
        return not self._down or self._shards.name_of(key) not in self._down

    async def _supervise(self) -> None:
        """One pub/sub session at a time; after a failure, reconnect with jittered backoff."""
        delay = 0.1
        while not self._closed:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._connected or self._up.is_set():
                    log.warning("redis connection lost: %s", named(exc))
                else:
                    log.debug("redis unreachable: %s", exc)
            if self._up.is_set():  # was connected (the session's teardown cleared _connected)
                metrics.broker_disconnects.inc()
                delay = 0.1
            self._connected = False
            self._up.clear()
            if self._closed:
                return
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    async def _session(self) -> None:
        self._broken.clear()
        await self._shards.refresh()  # the topology as it is now (a failover promotes a replica)
        if self._cluster:  # redis-py's own slot map, for the single-key commands
            if self._cluster_known:
                await self._redis.nodes_manager.initialize()
            else:
                await self._redis.initialize()
                self._cluster_known = True
        try:
            for sub in self.stream._rooms.values():  # hold batches until each room is re-read
                if sub.pending is None:
                    sub.pending = []
            for user in self.inbox._users.values():
                if user.pending is None:
                    user.pending = []
            followed = self.limits._reload_rooms()
            self._lost = None
            await self._open_connections()
            # Rooms and users followed while this runs are not served yet (they wait for the
            # catch-up below) but their channels must be subscribed too: until the last listen
            # returns with nothing new, then serving starts with no await in between. (A soak's
            # users who joined in that window never got a live DM, and rooms missed batches.)
            listened: set[bytes] = set()
            while todo := [
                c for c in [rs.control_channel(self.node_id).encode(), *self._targets] if c not in listened
            ]:
                await self._listen(todo)
                listened.update(todo)
            self._connected = True
            self._up.set()
            await asyncio.gather(
                *(self.stream._resync(room_id, sub) for room_id, sub in list(self.stream._rooms.items())),
                *(self.inbox._catch_up(uid, user) for uid, user in list(self.inbox._users.items())),
                *(self.limits._load_room(room_id) for room_id in followed),
            )
            await self._broken.wait()
            if self._lost is not None:
                raise self._lost
            raise ConnectionError("redis connection reported broken")
        finally:
            self._connected = False
            if self._recovering is not None:
                self._recovering.cancel()
                self._recovering = None
            for name in self._down:
                metrics.broker_shard_up.labels(shard=name).set(0)
            self._down.clear()
            for fut in self._waiters.values():
                if not fut.done():
                    fut.set_result(False)
            self._waiters.clear()
            self._unsubscribing.clear()
            conns = [*self._pubsubs.values(), *self._writers.values()]
            self._pubsubs, self._writers = {}, {}
            for conn in conns:
                conn.close()

    def _kick(self, exc: BaseException, key: str | bytes | None = None) -> None:
        """A command failed: treat the connection as lost (the supervisor reconnects). On a
        cluster only the shard of `key` is lost (or, with no key, the shards that do not answer
        a PING): the others keep serving. A client pool that is full is not a lost shard."""
        if _exhausted(exc):
            return
        if self._cluster and self._connected and len(self._shards.names) > 1:
            if key is not None:
                self._shard_lost(self._shards.name_of(key), exc)
            elif not self._probing:
                self._probing = True
                self._spawn(self._probe(exc))
            return
        if self._connected:
            log.warning("redis command failed: %s", named(exc))
        self._connected = False
        self._broken.set()

    def lose_shard(self, name: str, exc: BaseException) -> None:
        """A command sent to shard `name` failed: on a cluster that shard is lost (one Redis: the
        connection). By the name it was sent to, not by its key: a failover may have handed the
        key's slot to the promoted replica meanwhile, which an old primary's error must not lose
        (a soak saw it: the healthy new primary lost, then the whole session reset)."""
        if _exhausted(exc):
            return
        if self._cluster and self._connected and len(self._shards.names) > 1:
            self._shard_lost(name, exc)  # a name no longer serving (replaced) is ignored there
        else:
            self._kick(exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connections of our own: pub/sub and pipelines -----------------------------------

    async def _open_connections(self) -> None:
        """Two connections per primary for this session (redis_resp3.py): pub/sub, pipelines."""
        for name in self._shards.names:
            metrics.broker_shard_up.labels(shard=name).set(1)
        await self._open(self._shards.names)

    async def _open(self, names: list[str]) -> None:
        """Open both connections of each shard named, all or none: a shard never has half of
        them, and a failed attempt leaves nothing behind (recovery then tries again)."""

        async def one(name: str) -> Resp3Connection:
            return await open_resp3(
                **self._shards.endpoint(name),
                timeout=self._connect_timeout,
                on_push=self._on_push,
                on_lost=lambda exc: self._on_connection_lost(exc, name),
            )

        pairs = [(n, into) for n in names for into in (self._pubsubs, self._writers)]
        opened = await asyncio.gather(*(one(n) for n, _ in pairs), return_exceptions=True)
        conns = [c for c in opened if isinstance(c, Resp3Connection)]
        failed = next((c for c in opened if isinstance(c, BaseException)), None)
        if failed is None and any(c.closed for c in conns):  # lost while the others opened
            failed = ConnectionError("a redis connection closed while opening")
        if failed is not None:
            for conn in conns:
                conn.close()
            raise failed
        for (name, into), conn in zip(pairs, conns, strict=True):
            into[name] = conn

    def _on_connection_lost(self, exc: BaseException, shard: str | None = None) -> None:
        """A connection died (a dead primary, a reset). One Redis: the session ends, and the
        supervisor re-reads the topology, resubscribes everywhere and re-reads every room. A
        cluster: only that shard is lost (_shard_lost), unless it was the last one serving."""
        if shard is not None and self._cluster and self._connected and len(self._shards.names) > 1:
            self._shard_lost(shard, exc)
            return
        if self._lost is None:
            self._lost = exc
        self._broken.set()

    def _shard_lost(self, name: str, exc: BaseException) -> None:
        """One primary is gone: close its connections, hold its rooms and users, and look for
        its replacement (_recover_shards) while every other shard keeps serving."""
        if name in self._down or name not in self._shards.names:
            return
        self._down.add(name)
        metrics.broker_shard_up.labels(shard=name).set(0)
        metrics.broker_disconnects.inc()
        log.warning(
            "redis shard %s lost (%s): its rooms run locally, its users' DMs get 4501; %d of %d shards serve",
            name,
            named(exc),
            len(self._shards.names) - len(self._down),
            len(self._shards.names),
        )
        if len(self._down) == len(self._shards.names):  # nothing serves: start over
            self._on_connection_lost(exc)
            return
        for conns in (self._pubsubs, self._writers):
            conn = conns.pop(name, None)
            if conn is not None:
                conn.close()
        for channel, fut in list(self._waiters.items()):
            if self._shards.name_of(channel) == name and not fut.done():
                fut.set_result(False)
                del self._waiters[channel]
        if self._recovering is None or self._recovering.done():
            self._recovering = asyncio.get_running_loop().create_task(self._recover_shards())

    async def _probe(self, exc: BaseException) -> None:
        """A command without a key failed on a cluster: which shards still answer?"""
        try:

            async def ping(name: str) -> None:
                writer = self._writers.get(name)
                try:
                    if writer is None:
                        raise ConnectionError(f"no connection to redis shard {name}")
                    async with asyncio.timeout(ANSWER_TIMEOUT_S):  # slow is not lost
                        await writer.send((), [("PING",)])[0]
                except (*_DOWN, TimeoutError) as failed:
                    self._shard_lost(name, failed)

            await asyncio.gather(*(ping(n) for n in self._shards.names if n not in self._down))
        finally:
            self._probing = False

    async def _recover_shards(self) -> None:
        """Find the lost shards' replacements (a promoted replica) and bring their rooms and
        users back, with no pause for the others: re-read the slot map, open connections to the
        new primaries, resubscribe the channels now on them, re-read those rooms (continue or
        reset) and catch up those users. Jittered backoff between attempts.

        Once the slot map names a replacement, it counts as lost (instead of the primary it
        replaces) until its connections are open and its channels followed: a command routed to
        it meanwhile fails as any lost shard's does, and does not count as one more lost shard
        (it did, and two of three lost made /readyz 503). A step that fails for a shard loses
        that shard again, to be retried here; it never ends the others' session."""
        delay = 0.1
        while self._down and self._connected:
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)
            healthy = [n for n in self._shards.names if n not in self._down]
            try:
                await self._shards.refresh(keep=healthy)
            except _DOWN as exc:
                log.debug("redis shards not back yet: %s", exc)
                continue
            # the shards without connections now: the lost ones, or the replicas that replaced them
            fresh = [n for n in self._shards.names if n not in self._pubsubs]
            gone, self._down = self._down, set(fresh)
            for name in gone - set(self._shards.names):  # replaced in the failover
                metrics.broker_shard_up.remove(name)
            for name in fresh:
                metrics.broker_shard_up.labels(shard=name).set(0)
            try:
                await self._open(fresh)
            except _DOWN as exc:
                log.debug("redis shards %s not back yet: %s", fresh, exc)
                continue
            if self._cluster_known:
                with contextlib.suppress(*_DOWN):
                    await self._redis.nodes_manager.initialize()
            back = await self._follow(fresh)
            if back:
                log.warning("redis shards %s serving again (lost: %s)", sorted(back), sorted(gone))
                delay = 0.1

    async def _follow(self, names: list[str]) -> list[str]:
        """Bring shards whose connections just opened back into service: subscribe their
        channels again, then re-read their rooms and catch up their users (batches arriving
        meanwhile are held). A shard whose subscription fails is lost again. Returns those back."""
        for name in names:
            self._down.discard(name)
            metrics.broker_shard_up.labels(shard=name).set(1)
        rooms = [
            (r, sub)
            for r, sub in self.stream._rooms.items()
            if self._shards.name_of(rs.room_keys(r).channel) in names
        ]
        users = [
            (u, user)
            for u, user in self.inbox._users.items()
            if self._shards.name_of(rs.user_keys(u).channel) in names
        ]
        for _, sub in rooms:
            if sub.pending is None:
                sub.pending = []
        for _, user in users:
            if user.pending is None:
                user.pending = []
        channels: dict[str, list[bytes]] = {name: [] for name in names}
        for channel in [*self._targets, rs.control_channel(self.node_id).encode()]:
            shard = self._shards.name_of(channel)
            if shard in channels:
                channels[shard].append(channel)
        outcomes = await asyncio.gather(*(self._listen(channels[n]) for n in names), return_exceptions=True)
        back: list[str] = []
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, _DOWN):
                self._shard_lost(name, outcome)  # its rooms and users stay held: retried
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                back.append(name)
        results = await asyncio.gather(
            *(
                self.stream._resync(r, sub)
                for r, sub in rooms
                if self._shards.name_of(rs.room_keys(r).channel) in back
            ),
            *(
                self.inbox._catch_up(u, user)
                for u, user in users
                if self._shards.name_of(rs.user_keys(u).channel) in back
            ),
            return_exceptions=True,
        )
        # a re-read that failed in a way the parts do not turn into a lost shard (redis-py on
        # uvloop raises RuntimeError for a connection closed under it) must not end the
        # recovery: those rooms and users would wait forever (a soak saw DMs held, never shown)
        failed = next((r for r in results if isinstance(r, Exception)), None)
        if failed is not None:
            log.warning(
                "redis shards %s: re-reading after the failover failed (%r): again", sorted(back), failed
            )
            for name in back:
                self._shard_lost(name, failed)
            return []
        return back

    async def pipelined(self, calls: Sequence[Call]) -> list[Any]:
        """The tick's script calls, the heartbeats, analytics' flush: like Shards.pipelined (one
        write per shard, every shard at once, results in call order, a failed command as its
        exception, NOSCRIPT answered by loading the scripts and running those calls again), on
        this session's pipeline connections: packed by hiredis, no per-command timeout. Never
        for a command that blocks (a DM's WAIT): see Shards.

        Raises ConnectionError when a connection is gone or Redis does not answer in 10 s.
        """
        by_shard: dict[str, list[Sequence[Any]]] = {}
        order: dict[str, list[int]] = {}
        for i, (key, command) in enumerate(calls):
            name = self._shards.name_of(key)
            by_shard.setdefault(name, []).append(command)
            order.setdefault(name, []).append(i)
        slots: list[asyncio.Future[Any] | None] = [None] * len(calls)
        loop = asyncio.get_running_loop()
        for name, commands in by_shard.items():
            writer = self._writers.get(name)
            if writer is None:  # a lost shard: its calls fail, the others' go ahead
                if not self._down:
                    raise ConnectionError(f"no connection to redis shard {name}")
                for i in order[name]:
                    slots[i] = failed = loop.create_future()
                    failed.set_result(ConnectionError(f"redis shard {name} is lost"))
                continue
            for i, fut in zip(order[name], writer.send((), commands), strict=True):
                slots[i] = fut
        answers = [f for f in slots if f is not None]
        assert len(answers) == len(calls)  # every call has its answer's future, in call order
        gathered = asyncio.gather(*answers, return_exceptions=True)
        try:
            await asyncio.wait([gathered], timeout=ANSWER_TIMEOUT_S)
        finally:
            unanswered = [n for n in by_shard if any(not answers[i].done() for i in order[n])]
            if not gathered.done():
                gathered.cancel()
        if unanswered:
            hung = ConnectionError("redis did not answer in 10 s")
            if self._cluster and self._connected and len(self._shards.names) > 1:
                for name in unanswered:  # those shards only: one that answered is not lost
                    self._shard_lost(name, hung)
                raise hung
            for name in by_shard:  # a hung primary: its connection is out of step from now on
                if name in self._writers:
                    self._writers[name].close()
            self._on_connection_lost(hung)
            raise hung
        results = gathered.result()
        for name, indexes in order.items():
            failed = next((results[i] for i in indexes if isinstance(results[i], ConnectionError)), None)
            if failed is not None:
                if not self._cluster:
                    raise failed
                self.lose_shard(name, failed)  # that shard only; its calls answer their error
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:  # a promoted replica or a flushed cache: load, then run those again
            for name in {self._shards.name_of(calls[i][0]) for i in missing}:
                await self._shards.load_scripts(name)
            again = await self.pipelined([calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return results

    def _on_push(self, kind: bytes, channel: bytes, data: Any) -> None:
        try:
            if kind in (b"message", b"smessage"):
                target = self._targets.get(channel)
                if target is None:
                    return
                if target[0] == "r":
                    self.stream._on_room_message(target[1], data)
                elif target[0] == "u":
                    self.inbox._on_user_message(target[1], data)
                else:
                    self.limits._on_sanction_message(data)
            elif kind in (b"subscribe", b"ssubscribe"):
                fut = self._waiters.pop(channel, None)
                if fut is not None and not fut.done():
                    fut.set_result(True)
            elif kind == b"sunsubscribe" and self._unsubscribing[channel]:
                self._unsubscribing[channel] -= 1  # ours (the channel may be followed again since)
                if not self._unsubscribing[channel]:
                    del self._unsubscribing[channel]
            elif kind == b"sunsubscribe" and channel in self._targets:
                # the server dropped a channel we still follow: its slot moved (resharding or a
                # failover seen by this connection). Start over with the new topology.
                log.info("redis moved sharded channel %r: reconnecting", channel)
                self._kick(ConnectionError("a followed channel's slot moved"), channel)
        except Exception:  # one bad message must never stop the connection
            log.exception("error handling a message from redis")

    async def _listen(self, channels: list[bytes], read: Sequence[Any] | None = None) -> Any:
        """Subscribe and wait for Redis to confirm: only then can state be read without a gap.

        Each channel goes to the connection of the shard that owns its slot (SSUBSCRIBE on a
        cluster). `read`: a command on the shard of the (single) channel, written right after
        the subscription on the same connection, so Redis runs it once the channel is
        followed: what it reads and what the channel delivers leave no gap, in one round
        trip. Returns its reply.
        """
        if not channels:
            return None
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[Any]] = []
        by_shard: dict[str, list[bytes]] = {}
        for channel in channels:
            fut = self._waiters.get(channel)
            if fut is None:
                fut = self._waiters[channel] = loop.create_future()
            waits.append(fut)
            by_shard.setdefault(self._shards.name_of(channel), []).append(channel)
        assert read is None or len(by_shard) == 1
        for shard, names in by_shard.items():
            pubsub = self._pubsubs.get(shard)
            if pubsub is None:
                raise ConnectionError(f"no pub/sub connection to redis shard {shard}")
            if self._sharded:  # one SSUBSCRIBE per slot: Redis refuses channels of several slots
                pushes = [("SSUBSCRIBE", *same_slot) for same_slot in _by_slot(names)]
            else:
                pushes = [("SUBSCRIBE", *names)]
            waits += pubsub.send(pushes, [read] if read is not None else [])
        async with asyncio.timeout(ANSWER_TIMEOUT_S):  # not wait_for: on 3.11 it can drop a cancel
            results = await asyncio.gather(*waits)
        if not all(results[: len(channels)]):
            raise ConnectionError("redis connection lost while subscribing")
        return results[-1] if read is not None else None

    async def _unlisten(self, channel: bytes) -> None:
        self._targets.pop(channel, None)
        if not self._connected:
            return
        pubsub = self._pubsubs.get(self._shards.name_of(channel))
        if pubsub is not None and not pubsub.closed:
            if self._sharded:
                self._unsubscribing[channel] += 1
            pubsub.send([("SUNSUBSCRIBE" if self._sharded else "UNSUBSCRIBE", channel)])

    async def _heartbeat_forever(self) -> None:
        """Re-report local online counts (and flush owed likes) before the presence TTL runs out.

        Each room every presence_ttl / 3, but spread out: a tenth of that interval at a time
        takes the rooms then due, so thousands of rooms never make one burst that stalls the
        node (and its viewers' latency) every few seconds.
        """
        interval = self._presence_ttl / 3
        while not self._closed:  # not `while True`: see close()
            await asyncio.sleep(interval / HEARTBEAT_SLICES)
            if not self._connected:
                continue
            try:
                await self.stream._heartbeat_once(interval)
            except _DOWN as exc:
                self._kick(exc)
            except Exception:
                log.exception("presence heartbeat failed")

    # -- replicas: a DM is acked once --redis-wait-replicas replicas have it -----------------

    def replicas_short(self, shard: str) -> bool:
        """The shard's primary last reported fewer replicas than a DM must reach."""
        known = self._replicas.get(shard)
        return known is not None and known < self._wait_replicas

    def replicas_seen(self, shard: str, count: int) -> None:
        """What a WAIT or INFO said: fewer replicas makes the next DMs refuse (or degrade) at once
        instead of each waiting out the WAIT timeout; the watch sees them come back."""
        self._replicas[shard] = count
        metrics.broker_shard_replicas.labels(shard=shard).set(count)

    def refused_for_replicas(self, shard: str) -> None:
        metrics.broker_dm_refused.labels(shard=shard, reason="no_replica").inc()
        self._refused[shard] += 1

    async def _watch_replicas(self) -> None:
        """Every interval, ask each primary how many replicas it has (INFO replication): a gauge
        per shard, and one WARNING per interval per shard short of --redis-wait-replicas, with
        the DMs refused for it (docs/ARCHITECTURE.md, "Replica loss", says what to do)."""
        while not self._closed:  # not `while True`: see close()
            await asyncio.sleep(self._replica_check_s)
            for shard in self._shards.names:
                try:
                    info = await self._shards.client(shard).info("replication")
                except asyncio.CancelledError:
                    raise
                except _DOWN:
                    continue  # a dead primary: the session's failover handling owns it
                count = _online_replicas(info)
                before = self._replicas.get(shard)
                self.replicas_seen(shard, count)
                refused, self._refused[shard] = self._refused[shard], 0
                if count < self._wait_replicas:
                    log.warning(
                        "redis shard %s has %d replica(s), --redis-wait-replicas is %d: %s "
                        "(%d DMs refused in the last %.0f s)",
                        shard,
                        count,
                        self._wait_replicas,
                        "DMs acked on the primary alone (replicated=false)"
                        if self._wait_degrade
                        else "its users' DMs are refused with 4501",
                        refused,
                        self._replica_check_s,
                    )
                elif before is not None and before < self._wait_replicas:
                    log.warning("redis shard %s has %d replica(s) again: DMs acked as usual", shard, count)
            for gone in [s for s in self._replicas if s not in self._shards.names]:
                del self._replicas[gone]  # a primary replaced in a failover
                metrics.broker_shard_replicas.remove(gone)


def _online_replicas(info: dict[str, Any]) -> int:
    """Replicas past their initial sync (`slaveN: state=online`): only those can answer a WAIT."""
    count = 0
    for key, value in info.items():
        if key.startswith("slave") and key[5:].isdigit():
            state = value.get("state") if isinstance(value, dict) else None
            count += state == "online"
    return count


def _by_slot(channels: list[bytes]) -> list[list[bytes]]:
    groups: dict[int, list[bytes]] = {}
    for channel in channels:
        groups.setdefault(key_slot(channel), []).append(channel)
    return list(groups.values())


_POOL_FULL = Throttle(rate=1.0, burst=5.0)


def _exhausted(exc: BaseException) -> bool:
    """redis-py refused a command because this node's own pool to a shard stayed full (its
    cluster client's per-node limit: MaxConnectionsError, after redis_sturdy's wait for a free
    connection): the shard is fine, the node is busy. The command fails like any (a DM gets
    4501, an abuse check fails open) but no shard is lost: taking it for lost numbered its rooms
    alone and reset them, which sent more rejoins into the same pool (an in-band soak lost a
    shard that way 89 times in a minute, on a resume storm)."""
    if not isinstance(exc, MaxConnectionsError):
        return False
    dropped = _POOL_FULL.admit(time.monotonic())
    if dropped is not None:
        more = f" ({dropped} more not logged)" if dropped else ""
        log.warning("redis client pool full: a command was refused, its shard still serves%s", more)
    return True
