"""A node: the rooms with local viewers, the tick that batches them, and the fan-out.

Clients call into the node (join, danmaku, like, dm); once per tick the node
drains every room that changed and hands the events to the broker, which
sequences them and delivers one encoded batch back to every subscribed node;
the node then writes those same bytes to each local viewer of the room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict

import websockets

from server import metrics, protocol
from server.abuse.guard import Guard
from server.analytics.recorder import make_analytics
from server.broker.base import Broker, BrokerUnavailable, Event, Publish, RoomState
from server.client import Client
from server.config import Config
from server.frames import RoomFrames
from server.media_gateway import MediaGateway
from server.protocol import ErrorCode, ProtocolError
from server.rooms import Room
from server.webhooks.sender import make_webhooks

log = logging.getLogger("liveroom.node")


class Node:
    def __init__(self, config: Config, broker: Broker) -> None:
        self.config = config
        self.broker = broker
        self.node_id = config.node_id or broker.node_id
        self.rooms: dict[str, Room[Client]] = {}
        self.users: dict[str, set[Client]] = {}
        self._dirty: set[str] = set()
        self._room_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._user_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._ticker: asyncio.Task[None] | None = None
        # one frame per room per tick to local viewers, however many nodes send batches
        self.frames = RoomFrames(config.tick_ms / 1000, self._send_frame)
        self.limits = {"danmaku_len": config.danmaku_max_len, "dm_len": config.dm_max_len}
        self.draining = False
        self.guard = Guard(self)  # abuse checks: rate limits, admission, content, moderation
        broker.on_room_reset = self._on_room_reset
        self.media = MediaGateway(self)  # WebRTC publish/subscribe of this node's rooms
        self.analytics = make_analytics(  # hooks below only buffer; flushed to the store each second
            config.redis_url,
            config.redis_cluster,
            self.node_id,
            config.analytics_flush,
            config.analytics_funnel,
        )
        self.webhooks = make_webhooks(  # signed POSTs of room/host/viewer/moderation events, or None
            config.webhook_url, config.webhook_secret, self.node_id, config.redis_url, config.redis_cluster
        )
        if self.webhooks is not None:
            self.analytics.listeners.append(self.webhooks.on_records)

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())
        self.guard.start()
        self.analytics.start()
        if self.webhooks is not None:
            self.webhooks.start()

    async def stop(self) -> None:
        """Flush what is queued, then tell every client to reconnect elsewhere (1012)."""
        self.draining = True
        await self.guard.stop()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.tick()
        self.frames.flush_all()
        await self.analytics.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        clients = [c for room in self.rooms.values() for c in room.members]
        loop = asyncio.get_running_loop()
        closing = [loop.create_task(c.ws.close(1012, "server restarting, reconnect")) for c in clients]
        if closing:
            # a client that stopped reading never completes the closing handshake: cut it off
            _, stuck = await asyncio.wait(closing, timeout=5)
            for client, task in zip(clients, closing, strict=True):
                if task in stuck:
                    task.cancel()
                    if client.ws.transport is not None:
                        client.ws.transport.abort()

    @property
    def ready(self) -> bool:
        return self.broker.ready and not self.draining

    # -- membership ------------------------------------------------------------------

    async def join(self, client: Client, resume: tuple[str, int] | None) -> None:
        """Register the client and write its snapshot (or its missed events) first."""
        who = client.identity
        assert who is not None and client.room_id is not None
        room = await self._open_room(client.room_id)
        # read history first: from here to add_member nothing awaits, so no batch slips between
        missed = await self._missed(room, *resume) if resume is not None else None
        now = protocol.now_ms()
        self.frames.flush(room.room_id)  # viewers already in get what the snapshot will include
        snapshot = room.snapshot(who, self.node_id, self.config.tick_ms, self.limits)
        if resume is not None:
            snapshot["recovered"] = missed is not None
            if missed is not None:
                snapshot["missed"] = missed
        self.media.describe(room.room_id, snapshot)
        client.send(protocol.pack(snapshot))
        room.add_member(client, who, now)
        self.analytics.joined(client, room.room_id, who.uid, who.role)
        self._dirty.add(room.room_id)
        await self._open_user(client)

    async def _missed(self, room: Room[Client], epoch: str, seq: int) -> list[Event] | None:
        """Events after seq up to what this node's viewers have been sent (room.seq), or None.

        Batches keep arriving while history is read, so read again until history reaches
        room.seq, then cut at room.seq: the live batches carry on from there with no gap and
        no duplicate. A client ahead of this node's view gets a fresh snapshot instead.
        """
        for _ in range(3):
            if epoch != room.epoch or seq > room.seq:
                return None
            events = await self.broker.history_since(room.room_id, epoch, seq)
            if events is None or epoch != room.epoch:
                return None
            if (events[-1]["seq"] if events else seq) >= room.seq:
                return [e for e in events if e["seq"] <= room.seq]
        return None

    async def leave(self, client: Client) -> None:
        await self.media.leave(client)  # first: the `live` off event rides on this tick
        room = self.rooms.get(client.room_id or "")
        if room is not None and client in room.members:
            room.remove_member(client, protocol.now_ms())
            self.analytics.left(client)
            self._dirty.add(room.room_id)
        who = client.identity
        if who is not None:
            async with self._user_locks[who.uid]:
                local = self.users.get(who.uid)
                if local is not None:
                    local.discard(client)
                    if not local:
                        del self.users[who.uid]
                        await self.broker.unsubscribe_user(who.uid)

    async def open_room(self, room_id: str) -> Room[Client]:
        """Open a room with no local connection yet (a WHIP publisher needs its event channel)."""
        return await self._open_room(room_id)

    def mark_dirty(self, room_id: str) -> None:
        self._dirty.add(room_id)

    async def _open_room(self, room_id: str) -> Room[Client]:
        async with self._room_locks[room_id]:
            room = self.rooms.get(room_id)
            if room is None:
                room = Room(room_id, recent_size=self.config.recent_size)
                state = await self.broker.subscribe(room_id, self._on_batch)
                _load(room, state)
                self.rooms[room_id] = room
                metrics.rooms.set(len(self.rooms))
            return room

    async def _close_room_if_empty(self, room_id: str) -> None:
        async with self._room_locks[room_id]:
            room = self.rooms.get(room_id)
            if room is not None and room.empty and not room.dirty and not self.media.holds(room_id):
                del self.rooms[room_id]
                self.frames.drop(room_id)
                metrics.rooms.set(len(self.rooms))
                await self.broker.unsubscribe(room_id)

    async def _open_user(self, client: Client) -> None:
        who = client.identity
        assert who is not None
        async with self._user_locks[who.uid]:
            local = self.users.get(who.uid)
            if local is None:
                self.users[who.uid] = {client}
                kept = await self.broker.subscribe_user(who.uid, self._on_user_frame)
                for frame in kept:
                    client.send(frame)
            else:
                local.add(client)

    # -- client actions ------------------------------------------------------------------

    def danmaku(self, client: Client, message: protocol.Danmaku) -> None:
        who = client.identity
        assert who is not None and client.room_id is not None
        # message.text was cleaned and filtered by the guard (Guard.check runs before every handler)
        self.rooms[client.room_id].add_danmaku(who, message.text, message.cid, protocol.now_ms())
        self.analytics.danmaku(client.room_id, who.uid)
        self._dirty.add(client.room_id)

    def like(self, client: Client, message: protocol.Like) -> None:
        assert client.room_id is not None
        self.rooms[client.room_id].add_likes(message.count)
        self.analytics.like(client.room_id, client.identity.uid if client.identity else "", message.count)
        self._dirty.add(client.room_id)

    def enqueue(self, room_id: str, event: Event) -> None:
        """Queue an event (a moderator's `delete`) in a local room's outbox for the next tick."""
        self.rooms[room_id].add_event(event)
        self._dirty.add(room_id)

    async def direct_message(self, client: Client, message: protocol.DirectMessage) -> None:
        who = client.identity
        assert who is not None
        if message.to == who.uid:
            raise ProtocolError(ErrorCode.BAD_RECIPIENT, "cannot DM yourself", message.cid)
        await self.guard.dm_allowed(who.uid, message)
        now = protocol.now_ms()  # message.text was cleaned and filtered by Guard.check
        dm = {"t": "dm", "from": who.uid, "name": who.name, "to": message.to, "text": message.text, "ts": now}
        try:
            receipt = await self.broker.store_dm(message.to, dm)  # acked only once stored
        except BrokerUnavailable:
            metrics.rejections.labels(reason="broker_unavailable").inc()
            client.send(
                protocol.error_frame(
                    ErrorCode.BROKER_UNAVAILABLE, "DM not sent: retry", message.cid, retry_after=1.0
                )
            )
            return
        delivered = receipt.delivered
        self.analytics.direct_message(
            who.room, who.uid, message.to in getattr(self.rooms.get(who.room), "hosts", ())
        )
        metrics.dms.labels(delivery="live" if delivered else "kept").inc()
        ack = {"t": "dm_ack", "id": receipt.id, "to": message.to, "ts": now, "delivered": delivered}
        if message.cid is not None:
            ack["cid"] = message.cid
        client.send(protocol.pack(ack))

    async def dm_seen(self, client: Client, message: protocol.DmSeen) -> None:
        """The user has read up to this DM: it and older ones are not sent again on connect."""
        assert client.identity is not None
        with contextlib.suppress(BrokerUnavailable):  # a lost ack only means a resend later
            await self.broker.ack_dm(client.identity.uid, message.id)

    # -- tick and fan-out -------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.config.tick_ms / 1000
        deadline = loop.time()
        while True:
            deadline += period
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            if loop.time() - deadline > period:  # fell behind: skip, don't burst
                deadline = loop.time()
            try:
                await self.tick()
            except Exception:
                log.exception("tick failed")

    async def tick(self) -> None:
        """Publish one batch for every room that changed since the last tick."""
        if not self._dirty:
            return
        started = time.perf_counter()
        dirty, self._dirty = self._dirty, set()
        now = protocol.now_ms()
        publishes: list[Publish] = []
        emptied: list[str] = []
        for room_id in dirty:
            room = self.rooms.get(room_id)
            if room is None:
                continue
            out = room.drain(now, self.config.presence_ms)
            if room.presence_pending:
                self._dirty.add(room_id)  # report the count once its interval has passed
            if out.events or out.likes_delta or out.local_online is not None:
                publishes.append(
                    Publish(room_id, out.events, out.likes_delta, out.local_online, now, out.joined)
                )
            if room.empty:
                emptied.append(room_id)
        if publishes:  # the whole tick at once (Redis: one round trip per shard), never room by room
            await self.broker.publish_many(publishes)
            metrics.tick_seconds.observe(time.perf_counter() - started)
            metrics.tick_rooms.inc(len(publishes))
        for room_id in emptied:
            await self._close_room_if_empty(room_id)

    def _on_batch(self, room_id: str, epoch: str, frame: bytes, events: list[Event]) -> None:
        room = self.rooms.get(room_id)
        if room is None:
            return
        room.apply(epoch, events)
        metrics.batches.inc()
        metrics.batch_events.observe(len(events))
        self.frames.offer(room_id, frame, events)

    def _send_frame(self, room_id: str, frame: bytes) -> None:
        room = self.rooms.get(room_id)
        if room is not None:
            metrics.room_frames.inc()
            self.fanout(room.members, frame)

    def fanout(self, clients: dict[Client, object] | set[Client], frame: bytes) -> None:
        """Write one encoded frame to many sockets, skipping those that cannot keep up."""
        limit = self.config.write_buffer_limit
        ready = []
        for client in clients:
            if client.buffered() > limit:
                client.dropped += 1
                metrics.dropped_batches.inc()
                if client.dropped == self.config.max_dropped_batches:
                    metrics.slow_consumer_closes.inc()
                    client.close(int(ErrorCode.SLOW_CONSUMER), "too slow: reconnect")
                continue
            if client.dropped:
                client.send(protocol.dropped_frame(client.dropped))
                client.dropped = 0
            ready.append(client.ws)
        websockets.broadcast(ready, frame)
        metrics.fanout_writes.inc(len(ready))

    def _on_room_reset(self, room_id: str, state: RoomState) -> None:
        """The room's stream restarted (Redis lost it, or this node sequenced alone through an
        outage): viewers' seqs no longer mean anything, so reload the view and have them rejoin."""
        room = self.rooms.get(room_id)
        if room is None:
            return
        self.frames.drop(room_id)  # held events belong to the old stream
        room.recent.clear()
        _load(room, state)
        for client in list(room.members):
            client.close(1012, "room stream reset, rejoin")

    def _on_user_frame(self, user_id: str, frame: bytes) -> None:
        # DMs are rare and must not be skipped like danmaku batches: write them directly.
        for client in self.users.get(user_id, ()):
            client.send(frame)


def _load(room: Room[Client], state: RoomState) -> None:
    room.epoch = state.epoch
    room.seq = state.seq
    room.likes_total = state.likes_total
    room.online = state.online
    room.unique = state.unique
    room.hosts = dict(state.hosts)
    room.recent.extend(state.recent)
    room.publishers = dict(state.publishers)
    room.media_node = state.media_node
    room.media_url = state.media_url
