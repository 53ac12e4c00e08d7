"""A node: the tick that batches this node's rooms, joins and leaves, and client actions.

Clients call into the node (join, danmaku, like, dm); once per tick the node
drains every room that changed (the hub knows which) and hands the events to the
broker, which sequences them and delivers one encoded batch back to every subscribed
node; the hub applies it and the fan-out writes those same bytes to each local viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from server import metrics
from server.broker.base import Broker, BrokerUnavailable, Event, Publish
from server.broker.idempotency import Claimed, SendInProgress, SendLog, dm_send
from server.deadline import within
from server.room.state import Room, system_event, you_of
from server.wire import protocol
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.abuse.guard import Guard
    from server.analytics.recorder import Analytics
    from server.config import Config
    from server.delivery.hub import Hub
    from server.delivery.peer import Peer
    from server.media.gateway import MediaGateway

log = logging.getLogger("liveroom.node")
_MAYBE = "DM may have been stored: retry with the same cid for its outcome"


class Node:
    def __init__(
        self,
        config: Config,
        broker: Broker,
        hub: Hub,
        guard: Guard,
        media: MediaGateway,
        analytics: Analytics,
        sends: SendLog,
    ) -> None:
        self.config = config
        self.broker = broker
        self.hub = hub
        self.guard = guard
        self.media = media
        self.analytics = analytics
        self.sends = sends  # cid -> first answer (idempotent dm)
        self.node_id = config.node_id or broker.node_id
        self._ticker: asyncio.Task[None] | None = None
        self.limits = {
            "danmaku_len": config.danmaku_max_len,
            "dm_len": config.dm_max_len,
            "reply_ms": int(config.reply_interval * 1000),  # the assistant paces itself by these
            "reply_repeat_ms": int(config.reply_repeat_window * 1000),
        }
        self.draining = False
        self.gift_catalogue: list[dict[str, object]] = []  # the gifts a snapshot offers (app.py sets it)
        # called with (room, `live` event) when a publisher goes live here (followers are told)
        self.on_live: list[Callable[[str, Event], None]] = []
        # awaited with (room, likes) before a tick's likes are published (PK scores count them)
        self.on_likes: list[Callable[[str, int], Awaitable[None]]] = []
        hub.on_reset = self.resync

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def stop(self) -> None:
        """Flush what is queued, then tell every client to reconnect elsewhere (1012)."""
        self.draining = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        try:  # the last batches; a hung Redis must not keep clients from their 1012
            await within(self.tick(), 3.0)
        except TimeoutError:
            log.warning("last tick did not finish within 3 s: its events are not published")
        self.hub.flush_all()

    async def close_connections(self) -> None:
        """Close every local connection with 1012 (reconnect elsewhere), bounded in time."""
        clients = self.hub.connections()
        loop = asyncio.get_running_loop()
        closing = [loop.create_task(c.close_and_wait(1012, "server restarting, reconnect")) for c in clients]
        if closing:
            # a client that stopped reading never completes the closing handshake: cut it off
            _, stuck = await asyncio.wait(closing, timeout=5)
            for client, task in zip(clients, closing, strict=True):
                if task in stuck:
                    task.cancel()
                    client.abort()

    @property
    def ready(self) -> bool:
        return self.broker.ready and not self.draining

    # -- membership ------------------------------------------------------------------

    async def join(self, client: Peer, resume: tuple[str, int] | None) -> None:
        """Register the client and write its snapshot (or its missed events) first."""
        who = client.identity
        assert who is not None and client.room_id is not None
        room = await self.hub.open_room(client.room_id)
        # read history first: from here to add_member nothing awaits, so no batch slips between
        missed = await self._missed(room, *resume) if resume is not None else None
        now = protocol.now_ms()
        self.hub.flush(room.room_id)  # viewers already in get what the snapshot will include
        snapshot = room.snapshot(who, self.node_id, self.hub.frame_ms(room.room_id), self.limits)
        if resume is not None:
            snapshot["recovered"] = missed is not None
            if missed is not None:
                snapshot["missed"] = missed
        self.media.describe(room.room_id, snapshot)
        snapshot["gifts"] = self.gift_catalogue
        client.send(protocol.pack(snapshot))
        self.hub.add_member(room, client, who, now)
        self.analytics.joined(client, room.room_id, who.uid, who.role)
        await self.hub.add_user(client)

    def resync(self, room: Room[Peer]) -> None:
        """The room's stream restarted under this node (server.delivery.hub): every member gets a
        fresh snapshot on its live connection (`reset: true`, `recovered: false`) instead of a
        1012 and a rejoin each. The room's part is encoded once; per connection only `you`, its
        `ice_servers` and, for the staff, `qa`/`products` are added (PROTOCOL.md, `snapshot`)."""
        shared = room.shared_snapshot(self.node_id, self.hub.frame_ms(room.room_id), self.limits)
        self.media.locate(shared)
        shared["gifts"] = self.gift_catalogue
        shared["recovered"] = False
        shared["reset"] = True
        fields = protocol.SharedFields(shared)
        staff: dict[str, object] | None = None
        for client, who in room.members.items():
            if client.closing:
                continue
            own = {"you": you_of(who), "ice_servers": self.media.ice_servers(who.uid)}
            if who.can_answer:
                staff = staff if staff is not None else room.staff_snapshot()
                client.send(fields.pack(own, staff))
            else:
                client.send(fields.pack(own))
            # a connection skipped for a full socket keeps its count of `dropped` batches: it is
            # told once it catches up, so a client that ignores this snapshot still resumes

    async def _missed(self, room: Room[Peer], epoch: str, seq: int) -> list[Event] | None:
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

    async def leave(self, client: Peer) -> None:
        await self.media.leave(client)  # first: the `live` off event rides on this tick
        if self.hub.remove_member(client, protocol.now_ms()):
            self.analytics.left(client)
        await self.hub.remove_user(client)

    # -- client actions ------------------------------------------------------------------

    async def danmaku(self, client: Peer, message: protocol.Danmaku) -> None:
        who = client.identity
        assert who is not None and client.room_id is not None
        # a retry (same `cid`) of a danmaku already sequenced is dropped by the room stream, which
        # numbers it: the broker keeps the room's danmaku cids (idempotency.DanmakuCids, or Redis)
        # message.text was cleaned and filtered by the guard (Guard.check runs before every handler)
        room = self.hub.rooms[client.room_id]
        if who.role == "viewer" and (wait := room.slow_wait(who.uid, time.monotonic())):
            raise ProtocolError(
                ErrorCode.SLOW_MODE,
                f"slow mode: one message every {room.slow_mode} s",
                message.cid,
                round(wait, 2),
            )
        room.add_danmaku(who, message.text, message.cid, protocol.now_ms())
        self.analytics.danmaku(client.room_id, who.uid)
        self.hub.mark_dirty(client.room_id)

    def slow_mode(self, client: Peer, message: protocol.SlowMode) -> None:
        """A host or moderator sets the room's slow mode: a sequenced event every node applies."""
        who = client.identity
        assert who is not None and client.room_id is not None
        if who.role not in ("host", "moderator"):
            raise ProtocolError(ErrorCode.FORBIDDEN, "only hosts and moderators set slow mode", message.cid)
        event = system_event("slow_mode", protocol.now_ms(), seconds=message.seconds, by=who.uid)
        self.hub.enqueue(client.room_id, event)

    def viewers(self, client: Peer, message: protocol.Viewers) -> None:
        """Who is in the room, for hosts and moderators: this node's connections, one entry per user."""
        who = client.identity
        assert who is not None and client.room_id is not None
        if who.role not in ("host", "moderator"):
            raise ProtocolError(ErrorCode.FORBIDDEN, "only hosts and moderators list viewers", message.cid)
        room = self.hub.rooms[client.room_id]
        users = {w.uid: {"uid": w.uid, "name": w.name, "role": w.role} for w in room.members.values()}
        listed = sorted(users.values(), key=lambda u: (u["role"] != "host", u["name"].lower()))
        frame: dict[str, object] = {
            "t": "viewers",
            "users": listed[: protocol.MAX_VIEWER_LIST],
            "count": len(users),
            "online": room.online,
            "node": self.node_id,
        }
        if message.cid is not None:
            frame["cid"] = message.cid
        client.send(protocol.pack(frame))

    def like(self, client: Peer, message: protocol.Like) -> None:
        assert client.room_id is not None
        self.hub.add_likes(client.room_id, message.count)
        self.analytics.like(client.room_id, client.identity.uid if client.identity else "", message.count)

    async def direct_message(self, client: Peer, message: protocol.DirectMessage) -> None:
        who = client.identity
        assert who is not None
        if message.to == who.uid:
            raise ProtocolError(ErrorCode.BAD_RECIPIENT, "cannot DM yourself", message.cid)
        await self.guard.dm_allowed(who.uid, message)
        now = protocol.now_ms()  # message.text was cleaned and filtered by Guard.check
        dm = {"t": "dm", "from": who.uid, "name": who.name, "to": message.to, "text": message.text, "ts": now}
        uncertain = False  # a first attempt of this cid may be stored: never release its claim
        if message.cid is not None:
            claimed = await self._claim(who.uid, "dm", message.cid, {"to": message.to, "ts": now})
            if claimed.answer is None and claimed.orphan:  # its node died mid-send: stored or not?
                # the store below tells: it records each send with its DM (Inbox.store_dm)
                uncertain = True
                now = dm["ts"] = claimed.orphan.get("ts", now)  # every attempt stores the same ts
            if claimed.answer is not None:
                client.send(claimed.answer)  # a retry: the original dm_ack, the DM is not stored twice
                return
        send = None if message.cid is None else dm_send(who.uid, message.cid)
        try:  # acked only once stored; a send stored before gets its first receipt back
            receipt = await self.broker.store_dm(message.to, dm, send)
        except ProtocolError as error:  # 4502: a full store or sender quota, nothing stored or sent
            if message.cid is not None and not uncertain:
                await self.sends.release(who.uid, "dm", message.cid)  # the retry stores it
            raise ProtocolError(error.code, error.message, message.cid, error.retry_after) from None
        except BrokerUnavailable as exc:
            text = "DM not stored or sent: retry"
            if message.cid is not None:
                if exc.maybe_stored or uncertain:  # the retry looks for the first copy first
                    await self.sends.abandon(who.uid, "dm", message.cid, {"to": message.to, "ts": now})
                    text = _MAYBE  # by this attempt, or an earlier one of this cid
                else:
                    await self.sends.release(who.uid, "dm", message.cid)
            elif exc.maybe_stored:
                text = "DM may have been stored: its outcome is unknown"
            metrics.rejections.labels(reason="broker_unavailable").inc()
            client.send(
                protocol.error_frame(ErrorCode.BROKER_UNAVAILABLE, text, message.cid, retry_after=1.0)
            )
            return
        delivered = receipt.delivered
        if receipt.ts is not None:  # stored before by this send: the first copy's ack
            now = receipt.ts
        self.analytics.direct_message(
            who.room, who.uid, message.to in getattr(self.hub.rooms.get(who.room), "hosts", ())
        )
        metrics.dms.labels(delivery="live" if delivered else "kept").inc()
        ack = {"t": "dm_ack", "id": receipt.id, "to": message.to, "ts": now, "delivered": delivered}
        if not receipt.replicated:  # stored on a Redis primary alone (PROTOCOL.md, `dm_ack`)
            ack["replicated"] = False
        if message.cid is not None:
            ack["cid"] = message.cid
        frame = protocol.pack(ack)
        if message.cid is not None:
            await self.sends.answer(who.uid, "dm", message.cid, frame)
        client.send(frame)

    async def _claim(self, uid: str, kind: str, cid: str | int, note: dict | None = None) -> Claimed:
        """The first answer to this (sender, cid), or a claim on it (see idempotency.py)."""
        try:
            return await self.sends.claim(uid, kind, cid, note)
        except SendInProgress:
            raise ProtocolError(
                ErrorCode.BROKER_UNAVAILABLE,
                "a send with this cid is in progress: retry",
                cid,
                retry_after=1.0,
            ) from None

    async def dm_seen(self, client: Peer, message: protocol.DmSeen) -> None:
        """The user has read up to this DM: it and older ones are not sent again on connect."""
        assert client.identity is not None
        cursor = self.hub.dm_cursor(client)
        upto = cursor.ackable(message.id) if cursor is not None else None
        if upto is None:  # this connection was sent no DM: it cannot have read any
            return
        with contextlib.suppress(BrokerUnavailable):  # a lost ack only means a resend later
            await self.broker.ack_dm(client.identity.uid, upto)

    # -- tick -------------------------------------------------------------------------------

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
        hub = self.hub
        if not hub.changed:
            return
        started = time.perf_counter()
        dirty = hub.take_dirty()
        now = protocol.now_ms()
        publishes: list[Publish] = []
        emptied: list[str] = []
        credits: list[Awaitable[None]] = []
        for room_id in dirty:
            room = hub.rooms.get(room_id)
            if room is None:
                continue
            out = room.drain(now, self.config.presence_ms)
            if self.on_live:
                for event in out.events:
                    if event["t"] == "live" and event.get("on"):
                        for call in self.on_live:
                            call(room_id, event)
            if out.likes_delta:
                credits.extend(listener(room_id, out.likes_delta) for listener in self.on_likes)
            if room.presence_pending:
                hub.mark_dirty(room_id)  # report the count once its interval has passed
            if out.events or out.likes_delta or out.local_online is not None:
                publishes.append(
                    Publish(room_id, out.events, out.likes_delta, out.local_online, now, out.joined)
                )
            if room.empty:
                emptied.append(room_id)
        if credits:  # a PK round counts the likes before any viewer sees them
            for failed in await asyncio.gather(*credits, return_exceptions=True):
                if isinstance(failed, Exception):
                    log.warning("PK like credit failed: %r", failed)
        if publishes:  # the whole tick at once (Redis: one round trip per shard), never room by room
            await self.broker.publish_many(publishes)
            metrics.tick_seconds.observe(time.perf_counter() - started)
            metrics.tick_rooms.inc(len(publishes))
        for room_id in emptied:
            await hub.close_room_if_empty(room_id)
