"""The hub: who is connected where on this node, and the broker channels that follow from it.

It owns the rooms with a local connection (or pinned by local media), the users with a
local connection, the rooms changed since the last tick, and the per-room and per-user
locks that keep opening and closing a channel atomic. The tick (server.node.node) reads what
changed here; batches coming back from the broker are applied to the room's view and
handed to the fan-out. Nothing is kept for a room or a user once its last connection left:
the locks are freed with their last holder.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from server import metrics
from server.broker.base import Broker, BrokerUnavailable, Event, RoomState
from server.delivery.budget import Budget, with_own
from server.delivery.dm_cursor import DmCursor
from server.delivery.frames import RoomFrames
from server.room.state import Room
from server.wire import protocol

if TYPE_CHECKING:
    from server.config import Config
    from server.delivery.fanout import RoomFanout
    from server.delivery.peer import Peer
    from server.wire.auth import Identity

log = logging.getLogger("liveroom.hub")


OWED_BACKLOG_FIRST_S = 0.25  # a connection owed its DM backlog asks again after this, doubling
OWED_BACKLOG_MAX_S = 2.0


class KeyedLocks:
    """One asyncio.Lock per key, alive only while someone holds or waits for it."""

    __slots__ = ("_locks",)

    def __init__(self) -> None:
        self._locks: dict[str, _Entry] = {}

    def __call__(self, key: str) -> _Entry:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _Entry(self._locks, key)
        return entry

    def __len__(self) -> int:
        return len(self._locks)


class _Entry:
    __slots__ = ("_key", "_lock", "_owner", "_users")

    def __init__(self, owner: dict[str, _Entry], key: str) -> None:
        self._owner = owner
        self._key = key
        self._lock = asyncio.Lock()
        self._users = 0

    async def __aenter__(self) -> None:
        self._users += 1
        try:
            await self._lock.acquire()
        except BaseException:
            self._release_slot()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()
        self._release_slot()

    def _release_slot(self) -> None:
        self._users -= 1
        if not self._users:
            del self._owner[self._key]


class Hub:
    """Rooms -> local connections, users -> local connections, and their broker channels."""

    def __init__(self, config: Config, broker: Broker, fanout: RoomFanout) -> None:
        self.config = config
        self.broker = broker
        self.fanout = fanout
        self.rooms: dict[str, Room[Peer]] = {}
        self.users: dict[str, dict[Peer, DmCursor]] = {}  # uid -> its local connections and their DM cursors
        self.dirty: set[str] = set()  # rooms with something for the next tick
        self.pinned: set[str] = set()  # rooms kept open by local media (e.g. a WHIP publisher)
        self.live_listeners: list[Callable[[str], None]] = []  # media: a room's `live` state changed
        self.event_listeners: list[Callable[[str, list[Event]], None]] = []  # every sequenced batch
        self.room_locks = KeyedLocks()
        self.user_locks = KeyedLocks()
        self._owed: set[asyncio.Task[None]] = set()  # connections still owed their DM backlog
        # one frame per room per tick to local viewers, however many nodes send batches; a big
        # room's frames paced slower, and carrying a sample of its chat above a rate
        self._tiers = config.frame_tier_list()
        self.frames = RoomFrames(config.tick_ms / 1000, self._send_frame, pace=self._room_period)
        self.budget = Budget(config.sample_above, config.frame_danmaku)
        # a reset room's members get a fresh snapshot on their connection (set by the node)
        self.on_reset: Callable[[Room[Peer]], None] | None = None
        broker.on_room_reset = self._on_room_reset

    # -- rooms -------------------------------------------------------------------------

    async def open_room(self, room_id: str) -> Room[Peer]:
        """The room's view, subscribing to its channel the first time."""
        async with self.room_locks(room_id):
            room = self.rooms.get(room_id)
            if room is None:
                room = Room(room_id, recent_size=self.config.recent_size)
                state = await self.broker.subscribe(room_id, self._on_batch)
                load(room, state)
                self.rooms[room_id] = room
                metrics.rooms.set(len(self.rooms))
            return room

    async def close_room_if_empty(self, room_id: str) -> None:
        async with self.room_locks(room_id):
            room = self.rooms.get(room_id)
            if room is not None and room.empty and not room.dirty and room_id not in self.pinned:
                del self.rooms[room_id]
                self.frames.drop(room_id)
                self.budget.forget(room_id)
                metrics.rooms.set(len(self.rooms))
                await self.broker.unsubscribe(room_id)

    def mark_dirty(self, room_id: str) -> None:
        """Something for the room's next tick (its outbox, presence, a `live` change)."""
        self.dirty.add(room_id)

    def add_member(self, room: Room[Peer], client: Peer, who: Identity, now: int) -> None:
        """A joined connection: into the room's members and presence, for the next tick."""
        room.add_member(client, who, now)
        self.dirty.add(room.room_id)

    def remove_member(self, client: Peer, now: int) -> bool:
        """A joined connection left: out of its room's members; False if it was not in one."""
        room = self.rooms.get(client.room_id or "")
        if room is None or client not in room.members:
            return False
        room.remove_member(client, now)
        self.dirty.add(room.room_id)
        return True

    def add_likes(self, room_id: str, count: int) -> None:
        self.rooms[room_id].add_likes(count)
        self.dirty.add(room_id)

    def set_live(
        self,
        room_id: str,
        who: Identity,
        on: bool,
        node: str,
        url: str | None,
        now: int,
        codec: str | None = None,
    ) -> bool:
        """A publisher's `live` change into the room's outbox; False if the room is not open."""
        room = self.rooms.get(room_id)
        if room is None:
            return False
        room.set_live(who, on, node, url, now, codec)
        self.dirty.add(room_id)
        return True

    def on_live(self, listener: Callable[[str], None]) -> None:
        """Call `listener(room_id)` when a batch changes a room's `live` or `link` state (media follows it)."""
        self.live_listeners.append(listener)

    def on_events(self, listener: Callable[[str, list[Event]], None]) -> None:
        """Call `listener(room_id, events)` with every sequenced batch of a room open here, before
        its viewers get it (a recording keeps the room's danmaku: server.media.hls.archive)."""
        self.event_listeners.append(listener)

    def flush(self, room_id: str) -> None:
        """Write the room's held frame now (before a snapshot that includes it)."""
        self.frames.flush(room_id)

    def flush_all(self) -> None:
        self.frames.flush_all()

    @property
    def changed(self) -> bool:
        """Some room has something for the next tick."""
        return bool(self.dirty)

    def enqueue(self, room_id: str, event: Event) -> None:
        """Queue an event (a moderator's `delete`, a `system` message) for the room's next tick."""
        self.rooms[room_id].add_event(event)
        self.dirty.add(room_id)

    def take_dirty(self) -> set[str]:
        dirty, self.dirty = self.dirty, set()
        return dirty

    def pin(self, room_id: str) -> None:
        """Local media lives in the room: keep it open even with no local connection."""
        self.pinned.add(room_id)

    def unpin(self, room_id: str) -> None:
        self.pinned.discard(room_id)

    def connections(self) -> list[Peer]:
        return [c for room in self.rooms.values() for c in room.members]

    def connections_of(self, uid: str) -> list[Peer]:
        """The user's local connections (any room)."""
        return list(self.users.get(uid, ()))

    # -- users ---------------------------------------------------------------------------

    async def add_user(self, client: Peer) -> None:
        """Follow the user's DMs from its first local connection on; every new connection (not
        only the first on this node) gets the backlog, live DMs waiting behind it."""
        who = client.identity
        assert who is not None
        async with self.user_locks(who.uid):
            cursor = DmCursor()
            local = self.users.get(who.uid)
            if local is None:
                self.users[who.uid] = {client: cursor}
                backlog = await self.broker.subscribe_user(who.uid, self._on_user_frame)
            else:
                local[client] = cursor
                try:
                    backlog = await self.broker.dm_backlog(who.uid)
                except BrokerUnavailable:
                    # The user's shard is down: this connection still owes the DMs stored before.
                    # Opening its cursor empty would let the next live DM skip past them for good
                    # (it did: the connection showed only later DMs); read them once it is back.
                    task = asyncio.create_task(self._owe_backlog(client, cursor))
                    self._owed.add(task)
                    task.add_done_callback(self._owed.discard)
                    return
            for frame in cursor.open(backlog):
                client.send(frame)

    async def _owe_backlog(self, client: Peer, cursor: DmCursor) -> None:
        """Read a connection's DM backlog once the broker serves its user again (live DMs wait
        behind it in the cursor), for as long as the connection stays."""
        who = client.identity
        assert who is not None
        delay = OWED_BACKLOG_FIRST_S
        while self.users.get(who.uid, {}).get(client) is cursor:
            await asyncio.sleep(delay)
            delay = min(delay * 2, OWED_BACKLOG_MAX_S)
            async with self.user_locks(who.uid):
                if self.users.get(who.uid, {}).get(client) is not cursor:
                    return
                try:
                    backlog = await self.broker.dm_backlog(who.uid)
                except BrokerUnavailable:
                    continue
                for frame in cursor.open(backlog):
                    client.send(frame)
                return

    def dm_cursor(self, client: Peer) -> DmCursor | None:
        who = client.identity
        return self.users.get(who.uid, {}).get(client) if who is not None else None

    async def remove_user(self, client: Peer) -> None:
        who = client.identity
        if who is None:
            return
        async with self.user_locks(who.uid):
            local = self.users.get(who.uid)
            if local is not None:
                local.pop(client, None)
                if not local:
                    del self.users[who.uid]
                    await self.broker.unsubscribe_user(who.uid)

    # -- from the broker ---------------------------------------------------------------------

    def _on_batch(self, room_id: str, epoch: str, frame: bytes, events: list[Event]) -> None:
        room = self.rooms.get(room_id)
        if room is None:
            return
        room.apply(epoch, events)
        if any(e["t"] in ("live", "link") for e in events):
            # an edge node follows the room's publishers, and a linked room's (media/linked.py)
            for listener in self.live_listeners:
                listener(room_id)
        for on_events in self.event_listeners:
            on_events(room_id, events)
        metrics.hot.batches += 1
        metrics.batch_events.observe(len(events))
        self.frames.offer(room_id, epoch, frame, events)

    def frame_ms(self, room_id: str) -> int:
        """How often the room's viewers on this node get a frame at most: the tick, or longer for
        a big audience (config.frame_tiers)."""
        room = self.rooms.get(room_id)
        viewers = len(room.members) if room is not None else 0
        for at_least, ms in self._tiers:
            if viewers >= at_least:
                return max(ms, self.config.tick_ms)
        return self.config.tick_ms

    def _room_period(self, room_id: str) -> float:
        return self.frame_ms(room_id) / 1000 if self._tiers else self.config.tick_ms / 1000

    def _send_frame(self, room_id: str, epoch: str, frame: bytes, events: list[Event]) -> None:
        room = self.rooms.get(room_id)
        if room is None:
            return
        metrics.hot.room_frames += 1
        cut = self.budget.cut(room_id, events, asyncio.get_running_loop().time())
        if cut is None:
            self.fanout.write(room.members, frame)
            return
        left = len(cut.left)
        metrics.sampled_danmaku.inc(left)
        frame = protocol.batch_frame(room_id, cut.events, epoch or None, left, cut.upto)
        mine: dict[str, list[Event]] = {}
        for event in cut.left:
            mine.setdefault(event["uid"], []).append(event)
        own: dict[Peer, bytes] = {}  # a sender's connections get its left-out danmaku back
        for uid, theirs in mine.items():
            peers = [p for p in self.users.get(uid, ()) if p.room_id == room_id]
            if peers:
                framed = protocol.batch_frame(
                    room_id, with_own(cut, theirs), epoch or None, left - len(theirs), cut.upto
                )
                own.update(dict.fromkeys(peers, framed))
        self.fanout.write(room.members, frame, own)

    def _on_room_reset(self, room_id: str, state: RoomState, retired: str = "") -> None:
        """The room's stream restarted (Redis lost it, this node sequenced alone through an
        outage, or the shared history no longer reaches this node's seq): viewers' seqs no
        longer mean anything, so reload the view and resync them on their live connections
        (`on_reset`: a fresh snapshot each, server.node.node.Node.resync), not a reconnect storm.

        A client that ignores that snapshot must still be told by the next batch (PROTOCOL.md,
        *Stream identity*): a new epoch whose first seq is not its last + 1, or a seq jump. So
        what the room held for its next frame goes out first (every viewer not skipped for a
        full socket then stands at the view's seq; a skipped one is told `dropped`), and when
        the new stream starts right after that seq under another epoch without being the same
        events renamed (`retired` names the epoch the viewers followed: another node retired
        it), the next batch would pass for a continuation: the room's connections are closed
        with 1012 then, as before (a stream this node numbered alone, a restart that reached
        the same seq by chance)."""
        room = self.rooms.get(room_id)
        if room is None:
            return
        self.frames.flush(room_id)  # the old stream's last events, before its snapshot
        renamed = retired == f"{room.epoch}>{state.epoch}"
        looks_contiguous = state.epoch != room.epoch and state.seq == room.seq and not renamed
        self.frames.drop(room_id)
        self.budget.forget(room_id)
        room.recent.clear()
        room.forget_lost_live()
        load(room, state)
        metrics.room_resets.labels(told="reconnect" if looks_contiguous else "snapshot").inc()
        if looks_contiguous or self.on_reset is None:
            if looks_contiguous:
                log.info(
                    "room %s reset to %s at seq %d: its next batch would pass for a continuation, "
                    "%d connections closed (1012)",
                    room_id,
                    state.epoch,
                    state.seq,
                    len(room.members),
                )
            for client in list(room.members):
                client.close(1012, "room stream reset, rejoin")
            return
        self.on_reset(room)

    def _on_user_frame(self, user_id: str, frame: bytes) -> None:
        # DMs are rare and must not be skipped like danmaku batches: write them directly.
        for client, cursor in list(self.users.get(user_id, {}).items()):
            if (out := cursor.offer(frame)) is not None:
                client.send(out)


def load(room: Room[Peer], state: RoomState) -> None:
    """Set a room's view from the broker's state of its channel."""
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
    room.media_codec = state.media_codec
    room.pins = dict(state.pins)
    room.board, room.link, room.pk, room.pk_penalty = state.board, state.link, state.pk, state.pk_penalty
    room.schedules = dict(state.schedules)
    room.qa.clear()  # a reset stream's questions and answers are the new one's
    room.qa.extend(state.qa)
    room.products = dict(state.products)
