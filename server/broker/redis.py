"""Redis broker: many nodes share rooms, history, presence, likes and DMs through one Redis.

This module owns what the parts share: the client, the pub/sub session (one per node, every
channel on it), reconnection with jittered backoff and resubscription, and the presence
heartbeat. The parts live in their own modules, each implementing one interface of
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
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server import metrics
from server.broker import redis_scripts as rs
from server.broker.base import Broker
from server.broker.redis_inbox import RedisInbox
from server.broker.redis_link import DOWN as _DOWN
from server.broker.redis_sanctions import RedisSanctions
from server.broker.redis_stream import RedisRoomStream

log = logging.getLogger("liveroom.broker.redis")


class RedisBroker(Broker):
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
        cluster: bool = False,
        sharded: bool | None = None,
        connect_timeout: float = 5.0,
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
        self._redis: Any = (
            RedisCluster.from_url(url, **options) if cluster else Redis.from_url(url, **options)
        )
        self._targets: dict[bytes, tuple[str, str]] = {}  # channel -> ("r", room) | ("u", uid)
        self._waiters: dict[bytes, asyncio.Future[bool]] = {}
        self._pubsub: Any = None
        self._connected = False
        self._up = asyncio.Event()
        self._broken = asyncio.Event()
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.stream = RedisRoomStream(
            self,
            history_size=history_size,
            recent_size=recent_size,
            history_ttl=history_ttl,
            presence_ttl=presence_ttl,
        )
        self.inbox = RedisInbox(self, dm_keep=dm_keep, dm_ttl=dm_ttl)
        self.limits = RedisSanctions(self)

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
                    log.debug("redis unreachable: %s", exc)
            if self._connected:
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
        if not self._cluster:  # pooled connections to a restarted Redis are all dead
            await self._redis.connection_pool.disconnect()
        await self._redis.ping()
        pubsub = self._redis.pubsub()
        self._pubsub = pubsub
        reader: asyncio.Task[None] | None = None
        try:
            ctl = rs.control_channel(self.node_id)
            await (pubsub.ssubscribe(ctl) if self._sharded else pubsub.subscribe(ctl))
            reader = asyncio.get_running_loop().create_task(self._read(pubsub))
            for sub in self.stream._rooms.values():  # hold batches until each room is re-read
                if sub.pending is None:
                    sub.pending = []
            for user in self.inbox._users.values():
                if user.pending is None:
                    user.pending = []
            await self._listen(list(self._targets))
            self._connected = True
            self._up.set()
            await asyncio.gather(
                *(self.stream._resync(room_id, sub) for room_id, sub in list(self.stream._rooms.items())),
                *(self.inbox._catch_up(uid, user) for uid, user in list(self.inbox._users.items())),
            )
            broken = asyncio.get_running_loop().create_task(self._broken.wait())
            try:
                await asyncio.wait({reader, broken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                broken.cancel()
            if reader.done() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
            raise ConnectionError("redis connection reported broken")
        finally:
            self._connected = False
            self._pubsub = None
            for fut in self._waiters.values():
                if not fut.done():
                    fut.set_result(False)
            self._waiters.clear()
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
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
        while True:
            if self._cluster:
                message = await pubsub.get_sharded_message(ignore_subscribe_messages=False, timeout=0.01)
            else:
                message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=None)
            if message is None:
                continue
            try:
                self._on_message(message)
            except Exception:  # one bad message must never stop the reader
                log.exception("error handling a message from redis")

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        kind = kind.decode() if isinstance(kind, bytes) else kind
        channel = message["channel"]
        if kind in ("subscribe", "ssubscribe"):
            fut = self._waiters.pop(channel, None)
            if fut is not None and not fut.done():
                fut.set_result(True)
        elif kind in ("message", "smessage"):
            target = self._targets.get(channel)
            if target is None:
                return
            if target[0] == "r":
                self.stream._on_room_message(target[1], message["data"])
            elif target[0] == "u":
                self.inbox._on_user_message(target[1], message["data"])
            else:
                self.limits._on_sanction_message(message["data"])

    async def _listen(self, channels: list[bytes]) -> None:
        """Subscribe and wait for Redis to confirm: only then can state be read without a gap."""
        pubsub = self._pubsub
        if pubsub is None:
            raise ConnectionError("redis is not connected")
        if not channels:
            return
        loop = asyncio.get_running_loop()
        waits = []
        for channel in channels:
            fut = self._waiters.get(channel)
            if fut is None:
                fut = self._waiters[channel] = loop.create_future()
            waits.append(fut)
        await (pubsub.ssubscribe(*channels) if self._sharded else pubsub.subscribe(*channels))
        results = await asyncio.wait_for(asyncio.gather(*waits), 10)
        if not all(results):
            raise ConnectionError("redis connection lost while subscribing")

    async def _unlisten(self, channel: bytes) -> None:
        self._targets.pop(channel, None)
        pubsub = self._pubsub
        if pubsub is not None and self._connected:
            try:
                await (pubsub.sunsubscribe(channel) if self._sharded else pubsub.unsubscribe(channel))
            except _DOWN as exc:
                self._kick(exc)

    async def _heartbeat_forever(self) -> None:
        """Re-report local online counts (and flush owed likes) before the presence TTL runs out."""
        while True:
            await asyncio.sleep(self._presence_ttl / 3)
            if not self._connected:
                continue
            try:
                await self.stream._heartbeat_once()
            except _DOWN as exc:
                self._kick(exc)
            except Exception:
                log.exception("presence heartbeat failed")
