"""Redis broker: many nodes share rooms, history, presence, likes and DMs through one Redis.

Rooms: a node subscribes to a room's channel while it has local viewers. Each tick it
runs one script per room (redis_scripts.PUBLISH) that assigns the sequence numbers,
appends to the room's capped history stream and publishes the batch frame; every
subscribed node decodes it once (for Room.apply) and writes the same bytes to its
viewers. A batch that does not follow the last one seen (a gap, a new epoch) makes the
node re-read the room from history instead of guessing.

Outages: while Redis is unreachable the node keeps its rooms going alone: it numbers
batches itself under a local epoch, keeps likes owed, and refuses DMs with
BrokerUnavailable (nothing is acknowledged that is not stored). It reconnects with
jittered backoff, resubscribes every channel, then re-reads each room: rooms that
never went local and whose history still covers the gap continue seamlessly; the
others are reset (node.py has their viewers rejoin for a fresh snapshot).

See docs/ARCHITECTURE.md ("Redis broker") for the keys and the recovery rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
from redis.asyncio import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from server import metrics, protocol
from server.broker import redis_scripts as rs
from server.broker.base import (
    BatchHandler,
    Broker,
    BrokerUnavailable,
    DmReceipt,
    Event,
    Publish,
    RoomState,
    Sanction,
    SanctionHandler,
    UserHandler,
    dm_id_key,
)
from server.broker.shards import MAIN, Call, Shards
from server.rooms import Room, system_event

log = logging.getLogger("liveroom.broker.redis")

# Connection failures look like any of these depending on where they happen.
_DOWN = (RedisError, OSError, ConnectionError, TimeoutError)
Batch = tuple[str, bytes, list[Event]]  # (epoch, frame, events)
STICKY_KINDS = {"host": "live", "live": "on"}  # kind -> the boolean field that turns it on
USAGE_TTL_MS = 30_000  # a user's cross-node rate-limit counter outlives a few exchanges
KNOWN_MAX = 10_000  # sanctions remembered for outages; nonces claimed locally during one


@dataclass
class _RoomSub:
    handler: BatchHandler
    view: Room[None]
    pending: list[Batch] | None = None  # batches held while the room is (re)loaded
    local: bool = False  # numbered batches alone during an outage: reset on reconnect
    local_count: int = 0  # last local online count the node reported
    likes_owed: int = 0  # likes counted locally, not yet added in Redis
    joined_owed: list[str] = field(default_factory=list)


@dataclass
class _UserSub:
    handler: UserHandler
    pending: list[tuple[str, bytes]] | None = None  # (id, frame) held while the backlog loads
    last: tuple[int, int] | None = None  # id of the last stored DM delivered (None: backlog owed)


class RedisBroker(Broker):
    multi_node = True

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
        cluster: bool = False,
        sharded: bool | None = None,
        connect_timeout: float = 5.0,
        wait_replicas: int | None = None,
        wait_timeout_ms: int = 500,
    ) -> None:
        self.node_id = node_id
        self._history_size = history_size
        self._recent_size = recent_size
        self._history_ttl = history_ttl
        self._meta_ttl = max(history_ttl * 2, 86400)  # epoch and top seq outlive the history
        self._presence_ttl = presence_ttl
        self._dm_keep = dm_keep
        self._dm_ttl = dm_ttl
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
        self._cluster_known = False  # redis-py's cluster client initialised once
        self._shards = Shards(url, cluster, options)  # per-primary connections: pipelines, pub/sub, WAIT
        # single-key commands; on a cluster redis-py follows MOVED replies by itself
        self._redis: Any = (
            RedisCluster.from_url(url, max_connections=1000, **options)
            if cluster
            else self._shards.client(MAIN)
        )
        self._publish_script = self._redis.register_script(rs.PUBLISH)
        self._load_script = self._redis.register_script(rs.LOAD)
        self._dm_script = self._redis.register_script(rs.SEND_DM)
        for script in (self._publish_script, self._load_script, self._dm_script):
            self._shards.add_script(script.sha, script.script)
        self._rooms: dict[str, _RoomSub] = {}
        self._users: dict[str, _UserSub] = {}
        self._targets: dict[bytes, tuple[str, str]] = {}  # channel -> ("r", room) | ("u", uid)
        self._waiters: dict[bytes, asyncio.Future[bool]] = {}
        self._pubsubs: dict[str, Any] = {}  # shard -> its pub/sub connection (this session)
        self._readers: dict[str, asyncio.Task[None]] = {}  # shard -> the task blocked reading it
        self._connected = False
        self._up = asyncio.Event()
        self._broken = asyncio.Event()
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        # abuse: every node follows every sanction (see _on_sanction_message)
        self._targets[rs.SANCTIONS_CHANNEL.encode()] = ("s", "")
        self._watchers: list[SanctionHandler] = []
        self._known: dict[tuple[str, str, str], Sanction] = {}  # seen on the channel: outage fallback
        self._outage_nonces: dict[str, float] = {}  # claimed here while Redis was unreachable
        self._usage_seen: dict[str, float] = {}  # usage key -> cluster total at the last exchange
        self._fallback_logged = 0.0

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Connect (waiting a little for Redis); the node serves locally until it is up."""
        loop = asyncio.get_running_loop()
        self._supervisor = loop.create_task(self._supervise())
        self._heartbeat = loop.create_task(self._heartbeat_forever())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), self._connect_timeout)

    async def close(self) -> None:
        self._closed = True
        self._broken.set()
        for task in (self._supervisor, self._heartbeat, *self._tasks):
            if task is not None:
                task.cancel()
        for task in (self._supervisor, self._heartbeat):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(Exception):
            await self._redis.aclose()
        await self._shards.aclose()

    @property
    def ready(self) -> bool:
        return self._connected

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
                    log.warning("redis connection lost: %s", exc or type(exc).__name__)
                else:
                    log.debug("redis unreachable: %r", exc)
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
            for sub in self._rooms.values():  # hold batches until each room is re-read
                if sub.pending is None:
                    sub.pending = []
            for user in self._users.values():
                if user.pending is None:
                    user.pending = []
            await self._listen([rs.control_channel(self.node_id).encode(), *self._targets])
            self._connected = True
            self._up.set()
            await asyncio.gather(
                *(self._resync(room_id, sub) for room_id, sub in list(self._rooms.items())),
                *(self._catch_up(uid, user) for uid, user in list(self._users.items())),
            )
            await self._broken.wait()
            failed = [t for t in self._readers.values() if t.done() and not t.cancelled()]
            if failed and failed[0].exception() is not None:
                raise failed[0].exception()  # type: ignore[misc]
            raise ConnectionError("redis connection reported broken")
        finally:
            self._connected = False
            for fut in self._waiters.values():
                if not fut.done():
                    fut.set_result(False)
            self._waiters.clear()
            readers, self._readers = self._readers, {}
            pubsubs, self._pubsubs = self._pubsubs, {}
            for reader in readers.values():
                reader.cancel()
            for reader in readers.values():
                with contextlib.suppress(BaseException):
                    await reader
            for pubsub in pubsubs.values():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 2)

    def _kick(self, exc: BaseException) -> None:
        """A command failed: treat the connection as lost (the supervisor reconnects)."""
        if self._connected:
            log.warning("redis command failed: %s", exc or type(exc).__name__)
        self._connected = False
        self._broken.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- pub/sub ---------------------------------------------------------------------

    async def _read(self, pubsub: Any) -> None:
        """One reader per shard connection, blocked on it: no polling, no timeout.

        Whatever ends the read (a dead primary, a reset connection) ends the session: the
        supervisor re-reads the topology, resubscribes everywhere and re-reads every room.
        """
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=None)
                if message is None:
                    continue
                try:
                    self._on_message(message)
                except Exception:  # one bad message must never stop the reader
                    log.exception("error handling a message from redis")
        finally:
            self._broken.set()

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        kind = kind.decode() if isinstance(kind, bytes) else kind
        channel = message["channel"]
        if kind in ("subscribe", "ssubscribe"):
            fut = self._waiters.pop(channel, None)
            if fut is not None and not fut.done():
                fut.set_result(True)
        elif kind == "sunsubscribe" and channel in self._targets:
            # the server dropped a channel we still follow: its slot moved (resharding or a
            # failover seen by this connection). Start over with the new topology.
            log.info("redis moved sharded channel %r: reconnecting", channel)
            self._broken.set()
        elif kind in ("message", "smessage"):
            target = self._targets.get(channel)
            if target is None:
                return
            if target[0] == "r":
                self._on_room_message(target[1], message["data"])
            elif target[0] == "u":
                self._on_user_message(target[1], message["data"])
            else:
                self._on_sanction_message(message["data"])

    async def _listen(self, channels: list[bytes]) -> None:
        """Subscribe and wait for Redis to confirm: only then can state be read without a gap.

        Each channel goes to the connection of the shard that owns its slot (SSUBSCRIBE on a
        cluster); a shard's connection and its reader start with its first channel.
        """
        if not channels:
            return
        loop = asyncio.get_running_loop()
        waits = []
        by_shard: dict[str, list[bytes]] = {}
        for channel in channels:
            fut = self._waiters.get(channel)
            if fut is None:
                fut = self._waiters[channel] = loop.create_future()
            waits.append(fut)
            by_shard.setdefault(self._shards.name_of(channel), []).append(channel)
        for shard, names in by_shard.items():
            pubsub = self._pubsubs.get(shard)
            if pubsub is None:
                pubsub = self._pubsubs[shard] = self._shards.client(shard).pubsub()
            if self._sharded:  # one SSUBSCRIBE per slot: Redis refuses channels of several slots
                for same_slot in _by_slot(names):
                    await pubsub.ssubscribe(*same_slot)
            else:
                await pubsub.subscribe(*names)
            if shard not in self._readers:
                self._readers[shard] = loop.create_task(self._read(pubsub))
        results = await asyncio.wait_for(asyncio.gather(*waits), 10)
        if not all(results):
            raise ConnectionError("redis connection lost while subscribing")

    async def _unlisten(self, channel: bytes) -> None:
        self._targets.pop(channel, None)
        if not self._connected:
            return
        pubsub = self._pubsubs.get(self._shards.name_of(channel))
        if pubsub is not None:
            try:
                await (pubsub.sunsubscribe(channel) if self._sharded else pubsub.unsubscribe(channel))
            except _DOWN as exc:
                self._kick(exc)

    # -- rooms -----------------------------------------------------------------------

    async def subscribe(self, room_id: str, handler: BatchHandler) -> RoomState:
        keys = rs.room_keys(room_id)
        sub = _RoomSub(handler=handler, view=self._new_view(room_id), pending=[])
        self._rooms[room_id] = sub
        channel = keys.channel.encode()
        self._targets[channel] = ("r", room_id)
        if self._connected:
            try:
                await self._listen([channel])
                view, _ = await self._load(room_id, since=None)
            except _DOWN as exc:
                self._kick(exc)
            else:
                sub.view = view
                # batches that came in while loading: after the node has registered the room
                asyncio.get_running_loop().call_soon(self._flush, room_id, sub)
                return _state_of(view)
        # Redis is down: serve the room alone; it is re-read (and reset) on reconnect
        sub.pending = None
        sub.local = True
        sub.view.epoch = _local_epoch()
        return _state_of(sub.view)

    async def unsubscribe(self, room_id: str) -> None:
        if self._rooms.pop(room_id, None) is not None:
            await self._unlisten(rs.room_keys(room_id).channel.encode())

    async def publish(
        self,
        room_id: str,
        events: list[Event],
        likes_delta: int,
        local_online: int | None,
        now: int,
        joined: Sequence[str] = (),
    ) -> None:
        await self.publish_many([Publish(room_id, events, likes_delta, local_online, now, joined)])

    async def publish_many(self, publishes: Sequence[Publish]) -> None:
        """A whole tick in one pipeline per shard, all shards at once: no room waits on another.

        Rooms that cannot reach Redis (down, or a room sequencing alone since an outage) are
        numbered here instead, and their likes and joins stay owed.
        """
        staged: list[tuple[Publish, _RoomSub, int, int, list[str]]] = []
        for p in publishes:
            sub = self._rooms.get(p.room_id)
            if sub is None:  # the node publishes only for rooms it holds; keep going regardless
                sub = _RoomSub(handler=lambda *_: None, view=self._new_view(p.room_id))
            previous = sub.local_count
            if p.local_online is not None:
                sub.local_count = p.local_online
            likes, sub.likes_owed = sub.likes_owed + p.likes_delta, 0
            uids, sub.joined_owed = [*sub.joined_owed, *p.joined], []
            staged.append((p, sub, previous, likes, uids))
        sent: set[int] = set()
        remote = [i for i, (_, sub, *_rest) in enumerate(staged) if self._connected and not sub.local]
        if remote:
            calls = []
            for i in remote:
                p, _, _, likes, uids = staged[i]
                calls.append(self._publish_call(p.room_id, p.events, likes, p.local_online, p.now, uids))
            try:
                results = await self._shards.pipelined(calls)
            except _DOWN as exc:
                self._kick(exc)
            else:
                metrics.broker_tick_pipelines.inc()
                for i, result in zip(remote, results, strict=True):
                    if isinstance(result, Exception):
                        self._kick(result)
                    else:
                        sent.add(i)
        for i, (p, sub, previous, likes, uids) in enumerate(staged):
            if i in sent:
                continue
            sub.likes_owed += likes
            sub.joined_owed = uids[-10_000:]
            self._publish_locally(p.room_id, sub, p.events, p.likes_delta, p.local_online, previous, p.now)

    def _publish_call(
        self,
        room_id: str,
        events: list[Event],
        likes: int,
        local_online: int | None,
        now: int,
        joined: Sequence[str],
    ) -> Call:
        """The EVALSHA of one room's publish, routed by the room's hash tag."""
        keys = rs.room_keys(room_id)
        args: list[Any] = [
            _new_epoch(),
            self._history_size,
            self._history_ttl,
            self._meta_ttl,
            keys.channel,
            self._publish_cmd,
            rs.batch_head(room_id),
            self.node_id,
            -1 if local_online is None else local_online,
            int(self._presence_ttl * 1000),
            likes,
            self._recent_size,
            now,
            len(events),
            len(joined),
        ]
        for event in events:
            kind, sticky = _classify(event)
            args += [kind, sticky, rs.open_map(event, "seq")]
        args += joined
        script_keys = keys.script_keys
        return keys.meta, ("EVALSHA", self._publish_script.sha, len(script_keys), *script_keys, *args)

    def _publish_locally(
        self,
        room_id: str,
        sub: _RoomSub,
        events: list[Event],
        likes_delta: int,
        local_online: int | None,
        previous: int,
        now: int,
    ) -> None:
        """Redis is unreachable: number the batch here so local viewers still get it."""
        view = sub.view
        if not sub.local:
            sub.local = True
            view.epoch = _local_epoch()  # a resuming client cannot mix these seqs with Redis'
        if likes_delta:
            events.append(system_event("likes", now, total=view.likes_total + likes_delta, delta=likes_delta))
        if local_online is not None and local_online != previous:
            online = max(0, view.online + local_online - previous)
            events.append(system_event("presence", now, online=online, unique=view.unique))
        if not events:
            return
        seq = view.seq
        for event in events:
            seq += 1
            event["seq"] = seq
        view.apply(view.epoch, events)
        metrics.broker_local_batches.inc()
        sub.handler(room_id, view.epoch, protocol.batch_frame(room_id, events), events)

    async def history_since(self, room_id: str, epoch: str, seq: int) -> list[Event] | None:
        if not self._connected:
            return None
        try:
            view, missed = await self._load(room_id, since=seq, want_state=False)
        except _DOWN as exc:
            self._kick(exc)
            return None
        return missed if view.epoch == epoch else None

    async def _load(
        self, room_id: str, since: int | None, want_state: bool = True
    ) -> tuple[Room[None], list[Event] | None]:
        """The room's state (one round trip) and, with `since`, the events after it or None."""
        keys = rs.room_keys(room_id)
        res = await self._load_script(
            keys=[keys.meta, keys.hist, keys.recent, keys.sticky],
            args=[
                _new_epoch(),
                -1 if since is None else since,
                self._history_size,
                int(want_state),
                self._meta_ttl,
            ],
        )
        epoch = res[0].decode()
        top = int(res[1])
        view = self._new_view(room_id)
        if want_state:
            sticky = sorted((_decode_event(raw) for raw in res[6]), key=lambda e: e["seq"])
            view.apply(epoch, sticky)
            view.recent.extend(_decode_event(raw) for raw in res[5])
        view.epoch, view.seq = epoch, top
        view.likes_total, view.online, view.unique = int(res[2]), int(res[3]), int(res[4])
        missed = None if since is None else self._contiguous(since, top, res[7])
        return view, missed

    def _contiguous(self, since: int, top: int, entries: list[Any]) -> list[Event] | None:
        """Every event after `since` up to `top`, or None when some are no longer kept
        (trimmed by size, older than the history TTL) or `since` is not of this stream."""
        if since > top:
            return None
        try:
            # raw script reply: [id, [field, value]] per entry
            events = [_decode_event(fields[1]) for _, fields in entries]
        except (ValueError, IndexError):
            metrics.broker_bad_messages.inc()
            return None
        if len(events) != top - since or any(e["seq"] != since + 1 + i for i, e in enumerate(events)):
            return None
        if events and events[0].get("ts", 0) < protocol.now_ms() - self._history_ttl * 1000:
            return None
        return events

    def _new_view(self, room_id: str) -> Room[None]:
        return Room(room_id, recent_size=self._recent_size)

    # -- room batches from Redis ---------------------------------------------------------

    def _on_room_message(self, room_id: str, data: bytes) -> None:
        sub = self._rooms.get(room_id)
        if sub is None:
            return
        try:
            batch = _parse_batch(room_id, data)
        except ValueError as exc:
            metrics.broker_bad_messages.inc()
            log.warning("dropped an undecodable batch for room %s: %s", room_id, exc)
            return
        if sub.pending is not None:
            sub.pending.append(batch)
        elif not self._accept(room_id, sub, batch):
            sub.pending = [batch]  # a gap or a new epoch: re-read the room, hold what follows
            self._spawn(self._resync(room_id, sub))

    def _accept(self, room_id: str, sub: _RoomSub, batch: Batch) -> bool:
        """Deliver a batch that follows the last one seen; False when the room must be re-read."""
        epoch, frame, events = batch
        if sub.local or epoch != sub.view.epoch:
            return False
        if events[-1]["seq"] <= sub.view.seq:
            return True  # already delivered (history replay overlapped the channel)
        if events[0]["seq"] != sub.view.seq + 1:
            return False
        sub.view.apply(epoch, events)
        sub.handler(room_id, epoch, frame, events)
        return True

    def _flush(self, room_id: str, sub: _RoomSub) -> None:
        """Deliver the batches held during a (re)load, in order, skipping those already seen."""
        pending, sub.pending = sub.pending or [], None
        for i, batch in enumerate(pending):
            if self._rooms.get(room_id) is not sub:
                return
            if not self._accept(room_id, sub, batch):
                sub.pending = pending[i:]
                self._spawn(self._resync(room_id, sub))
                return

    async def _resync(self, room_id: str, sub: _RoomSub) -> None:
        """Re-read a room after a gap or a reconnect: replay what was missed, or reset it."""
        if sub.pending is None:
            sub.pending = []
        try:
            since = None if sub.local else sub.view.seq
            view, missed = await self._load(room_id, since=since)
        except _DOWN as exc:
            self._kick(exc)
            sub.pending = None  # re-read again once reconnected
            return
        if self._rooms.get(room_id) is not sub:
            return
        if not sub.local and missed is not None and view.epoch == sub.view.epoch:
            metrics.broker_resyncs.labels(outcome="recovered").inc()
            if missed:
                sub.view.apply(view.epoch, missed)
                sub.handler(room_id, view.epoch, protocol.batch_frame(room_id, missed), missed)
        else:
            metrics.broker_resyncs.labels(outcome="reset").inc()
            log.info("room %s restarted from redis (epoch %s)", room_id, view.epoch)
            sub.view, sub.local = view, False
            if self.on_room_reset is not None:
                self.on_room_reset(room_id, _state_of(view))
        self._flush(room_id, sub)

    async def _heartbeat_forever(self) -> None:
        """Re-report local online counts (and flush owed likes) before the presence TTL runs out."""
        while True:
            await asyncio.sleep(self._presence_ttl / 3)
            if not self._connected:
                continue
            try:
                await self._heartbeat_once()
            except _DOWN as exc:
                self._kick(exc)
            except Exception:
                log.exception("presence heartbeat failed")

    async def _heartbeat_once(self) -> None:
        rooms = [(r, s) for r, s in self._rooms.items() if not s.local and s.pending is None]
        if not rooms:
            await self._redis.ping()
            return
        calls: list[Call] = []
        owed = []
        now = protocol.now_ms()
        for room_id, sub in rooms:
            likes, sub.likes_owed = sub.likes_owed, 0
            joined, sub.joined_owed = sub.joined_owed, []
            owed.append((sub, likes, joined))
            calls.append(self._publish_call(room_id, [], likes, sub.local_count, now, joined))
        try:  # one pipeline per shard, all shards at once
            for result in await self._shards.pipelined(calls):
                if isinstance(result, Exception):
                    raise result
        except BaseException:
            for sub, likes, joined in owed:
                sub.likes_owed += likes
                sub.joined_owed[:0] = joined
            raise

    # -- users (direct messages) ---------------------------------------------------------

    async def subscribe_user(self, user_id: str, handler: UserHandler) -> list[bytes]:
        keys = rs.user_keys(user_id)
        user = _UserSub(handler=handler, pending=[])
        self._users[user_id] = user
        channel = keys.channel.encode()
        self._targets[channel] = ("u", user_id)
        if self._connected:
            try:
                await self._listen([channel])
                entries = await self._redis.xrange(keys.dms, "-", "+", count=self._dm_keep)
            except _DOWN as exc:
                self._kick(exc)
            else:
                frames = self._backlog(user, entries)
                asyncio.get_running_loop().call_soon(self._flush_user, user_id, user)
                return frames
        user.pending = None  # the backlog is delivered once Redis is back (_catch_up)
        return []

    async def unsubscribe_user(self, user_id: str) -> None:
        if self._users.pop(user_id, None) is not None:
            await self._unlisten(rs.user_keys(user_id).channel.encode())

    async def send_dm(self, user_id: str, frame: bytes) -> bool:
        keys = rs.user_keys(user_id)
        if not self._connected:
            return False  # best effort: these frames (invitations) are not acknowledged DMs
        try:
            res = await self._dm_script(
                keys=[keys.dms],
                args=["f", frame, self._dm_keep, keys.channel, self._publish_cmd, self._dm_ttl, 1],
            )
        except _DOWN as exc:
            self._kick(exc)
            return False
        return int(res[1]) > 0

    async def store_dm(self, user_id: str, dm: Event) -> DmReceipt:
        keys = rs.user_keys(user_id)
        if not self._connected:
            raise BrokerUnavailable("redis is unreachable")
        body = rs.open_map(dm, "id")
        args = ["b", body, self._dm_keep, keys.channel, self._publish_cmd, self._dm_ttl, 0]
        calls: list[Call] = [(keys.dms, ("EVALSHA", self._dm_script.sha, 1, keys.dms, *args))]
        if self._wait_replicas:  # same pipeline, same connection: WAIT covers this very write
            calls.append((keys.dms, ("WAIT", self._wait_replicas, self._wait_timeout_ms)))
        try:
            results = await self._shards.pipelined(calls)
        except _DOWN as exc:
            self._kick(exc)
            raise BrokerUnavailable(str(exc)) from exc
        for result in results:
            if isinstance(result, Exception):
                self._kick(result)
                raise BrokerUnavailable(str(result)) from result
        res = results[0]
        if self._wait_replicas and int(results[1]) < self._wait_replicas:
            # stored on the primary only: a failover now could lose it, so it is not acked.
            # The sender retries (with its cid) once a replica keeps up again.
            metrics.broker_dm_unreplicated.inc()
            raise BrokerUnavailable("DM not yet replicated")
        return DmReceipt(res[0].decode(), int(res[1]) > 0)

    async def ack_dm(self, user_id: str, dm_id: str) -> None:
        keys = rs.user_keys(user_id)
        if not self._connected:
            raise BrokerUnavailable("redis is unreachable")
        ms, n = dm_id_key(dm_id)
        try:  # drop every DM up to and including dm_id
            await self._redis.xtrim(keys.dms, minid=f"{ms}-{n + 1}", approximate=False)
        except ResponseError:
            pass  # an id Redis cannot represent: nothing to drop
        except _DOWN as exc:
            self._kick(exc)
            raise BrokerUnavailable(str(exc)) from exc

    def _backlog(self, user: _UserSub, entries: list[Any]) -> list[bytes]:
        frames = []
        for raw_id, fields in entries:
            dm_id = raw_id.decode()
            key = dm_id_key(dm_id)
            if user.last is not None and key <= user.last:
                continue
            frame = _stored_frame(dm_id, fields)
            user.last = key
            if frame is not None:
                frames.append(frame)
        if user.last is None:
            user.last = (0, 0)
        return frames

    def _flush_user(self, user_id: str, user: _UserSub) -> None:
        pending, user.pending = user.pending or [], None
        for dm_id, frame in pending:
            self._deliver_user(user_id, user, dm_id, frame)

    async def _catch_up(self, user_id: str, user: _UserSub) -> None:
        """After a reconnect: deliver the DMs stored while this node was not listening."""
        keys = rs.user_keys(user_id)
        try:
            entries = await self._redis.xrange(keys.dms, "-", "+", count=self._dm_keep)
        except _DOWN as exc:
            self._kick(exc)
            user.pending = None
            return
        if self._users.get(user_id) is not user:
            return
        for frame in self._backlog(user, entries):
            user.handler(user_id, frame)
        self._flush_user(user_id, user)

    def _on_user_message(self, user_id: str, data: bytes) -> None:
        user = self._users.get(user_id)
        if user is None:
            return
        try:
            dm_id, frame = _parse_user_message(data)
        except ValueError as exc:
            metrics.broker_bad_messages.inc()
            log.warning("dropped an undecodable DM message for %s: %s", user_id, exc)
            return
        if user.pending is not None:
            user.pending.append((dm_id, frame))
        else:
            self._deliver_user(user_id, user, dm_id, frame)

    def _deliver_user(self, user_id: str, user: _UserSub, dm_id: str, frame: bytes) -> None:
        if dm_id:  # stored DMs: at most once per node, in id order
            key = dm_id_key(dm_id)
            if user.last is not None and key <= user.last:
                return
            user.last = key
        user.handler(user_id, frame)

    # -- abuse: sanctions, DM blocks, join nonces, rate-limit usage -------------------------
    # Outages: writes (put_sanction, set_dm_block) raise BrokerUnavailable, so a moderator is
    # never told something applies that was not stored. Reads fail open: a join is not refused
    # because Redis is down (it is counted and logged instead), using what this node knows.

    def watch_sanctions(self, handler: SanctionHandler) -> None:
        self._watchers.append(handler)

    async def put_sanction(self, sanction: Sanction) -> None:
        """SET with the sanction's remaining lifetime (PX), then PUBLISH to every node."""
        if not self._connected:
            raise BrokerUnavailable("redis is unreachable")
        key = rs.sanction_keys(sanction.room, sanction.uid)[rs.SANCTION_KINDS.index(sanction.kind)]
        payload = rs.pack_sanction(sanction, self.node_id)
        ttl = None if sanction.until is None else sanction.until - protocol.now_ms()
        try:
            if sanction.lifted or (ttl is not None and ttl <= 0):
                await self._redis.delete(key)
            else:
                await self._redis.set(key, payload, px=ttl)
            await getattr(self._redis, self._publish_cmd)(rs.SANCTIONS_CHANNEL, payload)
        except _DOWN as exc:
            self._kick(exc)
            raise BrokerUnavailable(str(exc)) from exc
        self._apply_sanction(sanction)  # this node's own echo is skipped: apply it now

    async def sanctions(self, room_id: str, user_id: str) -> list[Sanction]:
        """One MGET (the three kinds share the room's slot); fails open on an outage."""
        try:
            keys = rs.sanction_keys(room_id, user_id)
        except ValueError:
            return []
        now = protocol.now_ms()
        if self._connected:
            try:
                stored = await self._redis.mget(keys)
            except _DOWN as exc:
                self._kick(exc)
            else:
                found = []
                for raw in stored:
                    if raw is None:
                        continue
                    try:
                        sanction, _ = rs.unpack_sanction(raw)
                    except ValueError:
                        metrics.broker_bad_messages.inc()
                        continue
                    if sanction.active(now):
                        found.append(sanction)
                return found
        self._fallback("sanctions")
        known = (self._known.get((room_id, user_id, kind)) for kind in rs.SANCTION_KINDS)
        return [s for s in known if s is not None and s.active(now)]

    def _on_sanction_message(self, data: bytes) -> None:
        try:
            sanction, origin = rs.unpack_sanction(data)
        except ValueError as exc:
            metrics.broker_bad_messages.inc()
            log.warning("dropped an undecodable sanction: %s", exc)
            return
        if origin != self.node_id:  # a node's own puts were applied when they were stored
            self._apply_sanction(sanction)

    def _apply_sanction(self, sanction: Sanction) -> None:
        key = (sanction.room, sanction.uid, sanction.kind)
        self._known.pop(key, None)
        if not sanction.lifted:
            self._known[key] = sanction
            if len(self._known) > KNOWN_MAX:  # forget the expired, then the oldest
                now = protocol.now_ms()
                for old in [k for k, s in self._known.items() if not s.active(now)]:
                    del self._known[old]
                while len(self._known) > KNOWN_MAX:
                    del self._known[next(iter(self._known))]
        for handler in list(self._watchers):
            try:
                handler(sanction)
            except Exception:
                log.exception("sanction watcher failed")

    async def set_dm_block(self, user_id: str, other: str, blocked: bool) -> None:
        if not self._connected:
            raise BrokerUnavailable("redis is unreachable")
        key = rs.user_keys(user_id).blocks
        try:
            await (self._redis.sadd(key, other) if blocked else self._redis.srem(key, other))
        except _DOWN as exc:
            self._kick(exc)
            raise BrokerUnavailable(str(exc)) from exc

    async def dm_blocked(self, recipient: str, sender: str) -> bool:
        """One SISMEMBER. Fails open: while Redis is down store_dm refuses the DM anyway."""
        if self._connected:
            try:
                return bool(await self._redis.sismember(rs.user_keys(recipient).blocks, sender))
            except _DOWN as exc:
                self._kick(exc)
        self._fallback("dm_blocked")
        return False

    async def claim_nonce(self, nonce: str, ttl: float) -> bool:
        """SET NX PX. Fails open during an outage, but still refuses a replay on this node."""
        now = time.monotonic()
        until = self._outage_nonces.get(nonce)
        if until is not None and until > now:
            return False
        if self._connected:
            try:
                key = rs.nonce_key(nonce)
                return bool(await self._redis.set(key, self.node_id, nx=True, px=max(1, int(ttl * 1000))))
            except _DOWN as exc:
                self._kick(exc)
        self._fallback("nonce")
        nonces = self._outage_nonces
        if len(nonces) >= KNOWN_MAX:
            for key in [k for k, deadline in nonces.items() if deadline <= now]:
                del nonces[key]
            if len(nonces) >= KNOWN_MAX:
                del nonces[next(iter(nonces))]
        nonces[nonce] = now + ttl
        return True

    async def exchange_usage(self, usage: dict[str, float]) -> dict[str, float]:
        """One pipeline per call, one or two commands per key, whatever the message rate.

        Each (action, user) has one cumulative counter over every node. A key this node spent
        on gets INCRBYFLOAT (which returns the new total) and a fresh TTL; a key it only
        watches gets GET. The others' spending is the growth of the total since this node's
        last exchange minus its own share. A key seen for the first time only sets that
        baseline, and a counter that expired (or a Redis that restarted) reads as no spending.
        """
        if not usage:
            self._usage_seen = {}
            return {}
        if not self._connected:
            self._fallback("usage")  # local buckets still hold; this period's spending is not shared
            return {}
        pipe = self._redis.pipeline(transaction=False)
        asked: list[tuple[str, float]] = []
        for key, spent in usage.items():
            action, _, uid = key.partition("|")
            try:
                counter = rs.usage_key(action, uid)
            except ValueError:
                continue
            asked.append((key, spent))
            if spent > 0:
                pipe.incrbyfloat(counter, spent)
                pipe.pexpire(counter, USAGE_TTL_MS)
            else:
                pipe.get(counter)
        try:
            results = iter(await pipe.execute())
        except _DOWN as exc:
            self._kick(exc)
            self._fallback("usage")
            return {}
        seen: dict[str, float] = {}
        remote: dict[str, float] = {}
        for key, spent in asked:
            total = float(next(results) or 0.0)
            if spent > 0:
                next(results)  # PEXPIRE's answer
            last = self._usage_seen.get(key)
            if last is not None and total - spent - last > 1e-6:
                remote[key] = total - spent - last
            seen[key] = total
        self._usage_seen = seen  # keys the guard stopped asking about are forgotten
        metrics.broker_usage_exchanges.inc()
        return remote

    def _fallback(self, op: str) -> None:
        """An abuse check answered without Redis: counted always, logged every 10 s at most."""
        metrics.broker_abuse_fallbacks.labels(op=op).inc()
        now = time.monotonic()
        if now - self._fallback_logged > 10:
            self._fallback_logged = now
            log.warning("redis unreachable: abuse check %r answered by this node alone (fail open)", op)


# -- helpers ----------------------------------------------------------------------------------


def _by_slot(channels: list[bytes]) -> list[list[bytes]]:
    groups: dict[int, list[bytes]] = {}
    for channel in channels:
        groups.setdefault(key_slot(channel), []).append(channel)
    return list(groups.values())


def _new_epoch() -> str:
    return secrets.token_hex(6)


def _local_epoch() -> str:
    return "local-" + secrets.token_hex(6)


def _classify(event: Event) -> tuple[str, str]:
    """How the publish script files an event: d (recent danmaku), s/x (sticky on/off),
    r (a moderator's delete: drop from recent), o (history only)."""
    kind = event.get("t")
    if kind == "danmaku":
        return "d", ""
    if kind == "delete" and isinstance(event.get("target"), int):
        return "r", str(event["target"])
    flag = STICKY_KINDS.get(kind or "")
    if flag is not None:
        return ("s" if event.get(flag) else "x"), f"{kind}:{event.get('uid')}"
    return "o", ""


def _state_of(view: Room[None]) -> RoomState:
    return RoomState(
        epoch=view.epoch,
        seq=view.seq,
        likes_total=view.likes_total,
        online=view.online,
        hosts=dict(view.hosts),
        recent=list(view.recent),
        unique=view.unique,
        publishers=dict(view.publishers),
        media_node=view.media_node,
        media_url=view.media_url,
    )


def _decode_event(raw: bytes) -> Event:
    try:
        event = msgpack.unpackb(raw, raw=False)
    except Exception as exc:  # msgpack raises many types; all mean "not an event"
        raise ValueError(f"undecodable event: {type(exc).__name__}") from None
    if not isinstance(event, dict) or not isinstance(event.get("seq"), int) or "t" not in event:
        raise ValueError("not an event")
    return event


def _parse_batch(room_id: str, data: bytes) -> Batch:
    """`<epoch>|<batch frame>` from the room channel, checked before anyone sees it."""
    epoch, sep, frame = data.partition(b"|")
    if not sep or not epoch:
        raise ValueError("no epoch")
    try:
        obj = msgpack.unpackb(frame, raw=False)
    except Exception as exc:
        raise ValueError(f"undecodable frame: {type(exc).__name__}") from None
    if not isinstance(obj, dict) or obj.get("t") != "batch" or obj.get("room") != room_id:
        raise ValueError("not a batch of this room")
    events = obj.get("events")
    if not isinstance(events, list) or not events:
        raise ValueError("no events")
    first = events[0].get("seq") if isinstance(events[0], dict) else None
    if not isinstance(first, int):
        raise ValueError("bad seq")
    for i, event in enumerate(events):
        if (
            not isinstance(event, dict)
            or event.get("seq") != first + i
            or not isinstance(event.get("t"), str)
        ):
            raise ValueError("events are not consecutive")
    return epoch.decode("ascii", "replace"), frame, events


def _stored_frame(dm_id: str, fields: dict[bytes, bytes]) -> bytes | None:
    if b"b" in fields:
        return rs.close_with(fields[b"b"], dm_id)
    return fields.get(b"f")


def _parse_user_message(data: bytes) -> tuple[str, bytes]:
    """`b<id>|<body>` (a stored DM) or `f|<frame>` (a frame delivered live only)."""
    head, sep, payload = data.partition(b"|")
    if not sep or head[:1] not in (b"b", b"f"):
        raise ValueError("bad envelope")
    dm_id = head[1:].decode("ascii", "replace")
    if head[:1] == b"b":
        if not protocol.valid_dm_id(dm_id):
            raise ValueError("bad DM id")
        frame = rs.close_with(payload, dm_id)
    else:
        frame = payload
    try:
        obj = msgpack.unpackb(frame, raw=False)
    except Exception as exc:
        raise ValueError(f"undecodable frame: {type(exc).__name__}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        raise ValueError("not a frame")
    return dm_id, frame
