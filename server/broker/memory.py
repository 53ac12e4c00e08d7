"""In-memory broker: one node, no Redis. The default for `serve` and the demo.

One class per part of the broker (server/broker/base.py): room stream, inbox, sanctions and
limits; MemoryBroker puts them behind the Broker facade.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace

from server.broker.base import (
    DM_FULL_RETRY,
    BatchHandler,
    Broker,
    DmReceipt,
    Event,
    Inbox,
    Publish,
    RoomState,
    RoomStream,
    Sanction,
    SanctionHandler,
    Sanctions,
    UserHandler,
    dm_id_key,
    sender_quota_full,
)
from server.broker.idempotency import MEMORY_MAX, WINDOW, DanmakuCids
from server.broker.unencodable import sequence_and_encode
from server.room.sequencing import StreamState, Tick
from server.room.state import Room
from server.wire import protocol
from server.wire.protocol import ErrorCode, ProtocolError


@dataclass
class _Channel:
    view: Room[None]
    stream: StreamState
    history: deque[Event]
    handler: BatchHandler | None = None
    viewers: set[str] = field(default_factory=set)  # exact here; a HyperLogLog in Redis
    last_write: float = 0.0  # monotonic: the history expires history_ttl after it
    expiry: asyncio.TimerHandle | None = None


class MemoryRoomStream(RoomStream):
    """Rooms of one node: sequenced by server/room/sequencing.py, history in a capped deque."""

    def __init__(self, node_id: str, history_size: int, recent_size: int, history_ttl: float) -> None:
        self.node_id = node_id
        self._history_size = history_size
        self._recent_size = recent_size
        self._history_ttl = history_ttl
        self._rooms: dict[str, _Channel] = {}
        self._cids = DanmakuCids()  # danmaku cids numbered in the last idempotency.WINDOW s

    def _channel(self, room_id: str) -> _Channel:
        channel = self._rooms.get(room_id)
        if channel is None:
            view: Room[None] = Room(room_id, recent_size=self._recent_size)
            view.epoch = secrets.token_hex(6)
            channel = _Channel(
                view=view,
                stream=StreamState(view.epoch),
                history=deque(maxlen=self._history_size),
                last_write=time.monotonic(),
            )
            self._rooms[room_id] = channel
        return channel

    @property
    def rooms_kept(self) -> int:
        """Rooms whose stream (history, like total, epoch) this broker still holds."""
        return len(self._rooms)

    async def subscribe(self, room_id: str, handler: BatchHandler) -> RoomState:
        channel = self._channel(room_id)
        channel.handler = handler
        if channel.expiry is not None:
            channel.expiry.cancel()
            channel.expiry = None
        view = channel.view
        return RoomState(
            epoch=view.epoch,
            seq=view.seq,
            likes_total=view.likes_total,
            online=view.online,
            hosts=dict(view.hosts),
            recent=list(view.recent),
            unique=len(channel.viewers),
            publishers=dict(view.publishers),
            media_node=view.media_node,
            media_url=view.media_url,
            media_codec=view.media_codec,
            pins=dict(view.pins),
            board=view.board,
            link=view.link,
            pk=view.pk,
            pk_penalty=view.pk_penalty,
            schedules=dict(view.schedules),
            qa=list(view.qa),
            products=dict(view.products),
        )

    async def unsubscribe(self, room_id: str) -> None:
        """Nobody here follows the room: its stream is forgotten history_ttl after its last event
        (as Redis expires a room's history); a resume after that gets a fresh snapshot."""
        channel = self._rooms.get(room_id)
        if channel is not None:
            channel.handler = None
            self._schedule_expiry(room_id, channel)

    def _schedule_expiry(self, room_id: str, channel: _Channel) -> None:
        if channel.expiry is not None:
            channel.expiry.cancel()
        delay = max(0.0, channel.last_write + self._history_ttl - time.monotonic())
        channel.expiry = asyncio.get_running_loop().call_later(delay, self._expire, room_id, channel)

    def _expire(self, room_id: str, channel: _Channel) -> None:
        channel.expiry = None
        if self._rooms.get(room_id) is not channel or channel.handler is not None:
            return
        if time.monotonic() - channel.last_write < self._history_ttl:
            self._schedule_expiry(room_id, channel)  # written to since the timer was set
            return
        del self._rooms[room_id]

    async def publish(self, tick: Publish) -> None:
        room_id, events, now = tick.room_id, tick.events, tick.now
        channel = self._channel(room_id)
        channel.viewers.update(tick.joined)
        events = self._cids.fresh(room_id, events)  # a danmaku retried with its cid: numbered once
        one = Tick(
            self.node_id, now, events, tick.likes_delta, tick.local_online, unique=len(channel.viewers)
        )
        view = channel.view
        sequenced, stream, frame = sequence_and_encode(room_id, channel.stream, one, view.epoch)
        channel.stream = stream
        if not sequenced:
            return
        view.apply(view.epoch, sequenced)
        channel.history.extend(sequenced)
        channel.last_write = time.monotonic()
        if channel.handler is not None:
            channel.handler(room_id, view.epoch, frame, sequenced)
        elif channel.expiry is None:
            self._schedule_expiry(room_id, channel)

    async def history_since(self, room_id: str, epoch: str, seq: int) -> list[Event] | None:
        channel = self._rooms.get(room_id)
        if channel is None or channel.view.epoch != epoch or seq > channel.view.seq:
            return None
        if seq == channel.view.seq:
            return []
        history = channel.history
        if not history or history[0]["seq"] > seq + 1:
            return None  # the oldest missed event was already dropped
        missed = [e for e in history if e["seq"] > seq]
        if missed[0].get("ts", 0) < protocol.now_ms() - self._history_ttl * 1000:
            return None  # older than the history TTL, as with Redis
        return missed


class MemoryInbox(Inbox):
    """DMs of one node: kept per user until acknowledged (Redis: a capped stream)."""

    def __init__(
        self, dm_keep: int, dm_store_users: int, dm_store_bytes: int, dm_ttl: int, dm_per_sender: int = 1000
    ) -> None:
        self._dm_keep = dm_keep
        self._users: dict[str, UserHandler] = {}
        # per user: (dm id, frame, sender) kept until acknowledged, oldest first (Redis: a capped
        # stream). Bounded in total (users, bytes) and in time: DMs to 20,000 users who never come
        # back must not grow the process without end. Per recipient at most dm_keep (the oldest
        # goes), per sender at most dm_per_sender, checked first: one sender fills its own quota,
        # never the store. Past a bound a DM to an online user is still delivered live, not kept;
        # to an offline one it is refused (4502). docs/PROTOCOL.md "DM store".
        self._kept: dict[str, deque[tuple[str, bytes, str]]] = {}
        self._dm_per_sender = dm_per_sender
        self._by_sender: dict[str, int] = {}  # DMs kept, per sender
        self._dm_users_max = dm_store_users
        self._dm_bytes_max = dm_store_bytes
        self._dm_ttl_ms = dm_ttl * 1000
        self.dm_bytes = 0
        self._dm_count = 0
        self._dm_order: deque[tuple[int, str, str]] = deque()  # (expires ms, user, dm id), oldest first
        self._dm_counter = itertools.count(1)
        # sends with a cid (user, idempotency.dm_send) -> (expires, receipt): a repeat stores nothing
        self._sends: OrderedDict[tuple[str, str], tuple[float, DmReceipt]] = OrderedDict()

    async def subscribe_user(self, user_id: str, handler: UserHandler) -> list[bytes]:
        self._users[user_id] = handler
        self._expire(protocol.now_ms())
        return [frame for _, frame, _ in self._kept.get(user_id, ())]

    async def unsubscribe_user(self, user_id: str) -> None:
        self._users.pop(user_id, None)

    async def dm_backlog(self, user_id: str) -> list[bytes]:
        self._expire(protocol.now_ms())
        return [frame for _, frame, _ in self._kept.get(user_id, ())]

    async def send_dm(self, user_id: str, frame: bytes) -> bool:
        handler = self._users.get(user_id)
        if handler is not None:
            handler(user_id, frame)
            return True
        if self._has_room(user_id, len(frame)):  # best effort (invitations): not kept when full
            self._keep(user_id, self._next_dm_id(), frame, "")
        return False

    def _next_dm_id(self) -> str:
        return f"{protocol.now_ms()}-{next(self._dm_counter)}"

    def _has_room(self, user_id: str, size: int) -> bool:
        self._expire(protocol.now_ms())
        if user_id not in self._kept and len(self._kept) >= self._dm_users_max:
            return False
        return self.dm_bytes + size <= self._dm_bytes_max

    def _sender_full(self, sender: str) -> bool:
        return bool(sender) and self._by_sender.get(sender, 0) >= self._dm_per_sender

    def _keep(self, user_id: str, dm_id: str, frame: bytes, sender: str) -> None:
        kept = self._kept.get(user_id)
        if kept is None:
            kept = self._kept[user_id] = deque()
        if len(kept) >= self._dm_keep:
            self._forget(kept.popleft())
        kept.append((dm_id, frame, sender))
        self.dm_bytes += len(frame)
        self._dm_count += 1
        if sender:
            self._by_sender[sender] = self._by_sender.get(sender, 0) + 1
        self._dm_order.append((dm_id_key(dm_id)[0] + self._dm_ttl_ms, user_id, dm_id))
        if len(self._dm_order) > 2 * self._dm_count + 1000:
            self._reindex()

    def _expire(self, now_ms: int) -> None:
        """Drop stored DMs older than the TTL (each user's oldest come first, like the order)."""
        order = self._dm_order
        while order and order[0][0] <= now_ms:
            _, user_id, dm_id = order.popleft()
            kept = self._kept.get(user_id)
            if kept and kept[0][0] == dm_id:
                self._drop_first(user_id, kept)

    def _forget(self, entry: tuple[str, bytes, str]) -> None:
        """The accounting of a DM no longer kept (acknowledged, expired, pushed out)."""
        _, frame, sender = entry
        self.dm_bytes -= len(frame)
        self._dm_count -= 1
        if sender:
            left = self._by_sender[sender] - 1
            if left:
                self._by_sender[sender] = left
            else:
                del self._by_sender[sender]

    def _drop_first(self, user_id: str, kept: deque[tuple[str, bytes, str]]) -> None:
        self._forget(kept.popleft())
        if not kept:
            del self._kept[user_id]

    def _reindex(self) -> None:
        """The expiry order without the entries already acknowledged."""
        entries = [
            (dm_id_key(dm_id)[0] + self._dm_ttl_ms, user_id, dm_id)
            for user_id, kept in self._kept.items()
            for dm_id, _, _ in kept
        ]
        self._dm_order = deque(sorted(entries))

    async def store_dm(self, user_id: str, dm: Event, send: str | None = None) -> DmReceipt:
        if send is not None and (known := self._sent(user_id, send)) is not None:
            return known
        dm_id = self._next_dm_id()
        frame = protocol.pack({**dm, "id": dm_id})
        sender = str(dm.get("from", ""))
        handler = self._users.get(user_id)
        refusal: ProtocolError | None = None
        if self._sender_full(sender):
            refusal = sender_quota_full(self._dm_per_sender)
        elif not self._has_room(user_id, len(frame)):
            refusal = ProtocolError(
                ErrorCode.DM_STORE_FULL, "DM not stored: the message store is full", None, DM_FULL_RETRY
            )
        else:
            self._keep(user_id, dm_id, frame, sender)
        if refusal is not None and handler is None:
            raise refusal
        if handler is not None:  # live even when not kept: no durability promise then
            handler(user_id, frame)
        receipt = DmReceipt(dm_id, handler is not None)
        if send is not None:
            first = replace(receipt, ts=dm.get("ts"))
            self._sends[(user_id, send)] = (time.monotonic() + WINDOW, first)
            if len(self._sends) > MEMORY_MAX:  # bounded: the oldest record goes first
                self._sends.popitem(last=False)
        return receipt

    def _sent(self, user_id: str, send: str) -> DmReceipt | None:
        """The receipt of this send if it was stored in the last WINDOW (oldest expire first)."""
        now = time.monotonic()
        while self._sends and next(iter(self._sends.values()))[0] <= now:
            self._sends.popitem(last=False)
        known = self._sends.get((user_id, send))
        return known[1] if known is not None else None

    async def ack_dm(self, user_id: str, dm_id: str) -> None:
        kept = self._kept.get(user_id)
        if kept is None:
            return
        upto = dm_id_key(dm_id)
        while kept and dm_id_key(kept[0][0]) <= upto:
            self._drop_first(user_id, kept)


class MemorySanctions(Sanctions):
    """Sanctions and limits of one node: one process is the whole deployment, so plain dicts
    are complete."""

    def __init__(self) -> None:
        self._sanctions: dict[tuple[str, str, str], Sanction] = {}
        self._watchers: list[SanctionHandler] = []
        self._blocks: dict[str, set[str]] = {}
        self._nonces: dict[str, float] = {}  # nonce -> monotonic deadline

    def watch_sanctions(self, handler: SanctionHandler) -> None:
        self._watchers.append(handler)

    async def put_sanction(self, sanction: Sanction) -> None:
        key = (sanction.room, sanction.uid, sanction.kind)
        if sanction.lifted:
            self._sanctions.pop(key, None)
        else:
            self._sanctions[key] = sanction
        for handler in list(self._watchers):
            handler(sanction)

    async def follow_room(self, room_id: str) -> None:
        """Every sanction is already in this process."""

    def unfollow_room(self, room_id: str) -> None:
        """Nothing was loaded for the room."""

    async def sanctions(self, room_id: str, user_id: str) -> list[Sanction]:
        now = int(time.time() * 1000)
        found = []
        for kind in ("ban", "kick", "mute"):
            sanction = self._sanctions.get((room_id, user_id, kind))
            if sanction is not None:
                if sanction.active(now):
                    found.append(sanction)
                else:
                    del self._sanctions[(room_id, user_id, kind)]
        return found

    async def set_dm_block(self, user_id: str, other: str, blocked: bool) -> None:
        blocks = self._blocks
        if blocked:
            blocks.setdefault(user_id, set()).add(other)
        elif user_id in blocks:
            blocks[user_id].discard(other)
            if not blocks[user_id]:
                del blocks[user_id]

    async def dm_blocked(self, recipient: str, sender: str) -> bool:
        return sender in self._blocks.get(recipient, ())

    async def claim_nonce(self, nonce: str, ttl: float) -> bool:
        nonces = self._nonces
        now = time.monotonic()
        if len(nonces) > 10_000:
            for key in [k for k, until in nonces.items() if until <= now]:
                del nonces[key]
        until = nonces.get(nonce)
        if until is not None and until > now:
            return False
        nonces[nonce] = now + ttl
        return True

    async def exchange_usage(self, usage: dict[str, float]) -> dict[str, float]:
        """One node: nobody else spends (the guard does not even call this: multi_node is False)."""
        return {}


class MemoryBroker(Broker):
    """One node, no Redis: the default for `serve` and the demo."""

    stream: MemoryRoomStream
    inbox: MemoryInbox
    limits: MemorySanctions

    def __init__(
        self,
        node_id: str = "local",
        history_size: int = 1000,
        recent_size: int = 50,
        dm_keep: int = 100,
        history_ttl: float = 600,
        *,
        dm_store_users: int = 10_000,
        dm_store_bytes: int = 16 * 1024 * 1024,
        dm_ttl: int = 30 * 86400,
        dm_per_sender: int = 1000,
    ) -> None:
        self.node_id = node_id
        self.stream = MemoryRoomStream(node_id, history_size, recent_size, history_ttl)
        self.inbox = MemoryInbox(dm_keep, dm_store_users, dm_store_bytes, dm_ttl, dm_per_sender)
        self.limits = MemorySanctions()

    @property
    def rooms_kept(self) -> int:
        """Rooms whose stream (history, like total, epoch) this broker still holds."""
        return self.stream.rooms_kept

    @property
    def dm_bytes(self) -> int:
        """Bytes of DMs kept for users who have not acknowledged them (bounded: dm_store_bytes)."""
        return self.inbox.dm_bytes
