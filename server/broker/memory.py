"""In-memory broker: one node, no Redis. The default for `serve` and the demo."""

from __future__ import annotations

import itertools
import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from server import protocol
from server.broker.base import (
    BatchHandler,
    Broker,
    DmReceipt,
    Event,
    RoomState,
    Sanction,
    SanctionHandler,
    UserHandler,
    dm_id_key,
)
from server.rooms import Room, system_event


@dataclass
class _Channel:
    view: Room[None]
    history: deque[Event]
    handler: BatchHandler | None = None
    presence: dict[str, int] = field(default_factory=dict)
    viewers: set[str] = field(default_factory=set)  # exact here; a HyperLogLog in Redis


class MemoryBroker(Broker):
    def __init__(
        self, node_id: str = "local", history_size: int = 1000, recent_size: int = 50, dm_keep: int = 100
    ) -> None:
        self.node_id = node_id
        self._history_size = history_size
        self._recent_size = recent_size
        self._dm_keep = dm_keep
        self._rooms: dict[str, _Channel] = {}
        self._users: dict[str, UserHandler] = {}
        # per user: (dm id, frame) kept until acknowledged, oldest first (Redis: a capped stream)
        self._kept: dict[str, deque[tuple[str, bytes]]] = {}
        self._dm_counter = itertools.count(1)
        # abuse state: one process is the whole deployment, so plain dicts are complete
        self._sanctions: dict[tuple[str, str, str], Sanction] = {}
        self._watchers: list[SanctionHandler] = []
        self._blocks: dict[str, set[str]] = {}
        self._nonces: dict[str, float] = {}  # nonce -> monotonic deadline

    def _channel(self, room_id: str) -> _Channel:
        channel = self._rooms.get(room_id)
        if channel is None:
            view: Room[None] = Room(room_id, recent_size=self._recent_size)
            view.epoch = secrets.token_hex(4)
            channel = _Channel(view=view, history=deque(maxlen=self._history_size))
            self._rooms[room_id] = channel
        return channel

    async def subscribe(self, room_id: str, handler: BatchHandler) -> RoomState:
        channel = self._channel(room_id)
        channel.handler = handler
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
            pins=dict(view.pins),
        )

    async def unsubscribe(self, room_id: str) -> None:
        channel = self._rooms.get(room_id)
        if channel is not None:
            channel.handler = None

    async def publish(
        self,
        room_id: str,
        events: list[Event],
        likes_delta: int,
        local_online: int | None,
        now: int,
        joined: Sequence[str] = (),
    ) -> None:
        channel = self._channel(room_id)
        view = channel.view
        channel.viewers.update(joined)
        if likes_delta:
            events.append(system_event("likes", now, total=view.likes_total + likes_delta, delta=likes_delta))
        if local_online is not None:
            channel.presence[self.node_id] = local_online
            online = sum(channel.presence.values())
            events.append(system_event("presence", now, online=online, unique=len(channel.viewers)))
        seq = view.seq
        for event in events:
            seq += 1
            event["seq"] = seq
        view.apply(view.epoch, events)
        channel.history.extend(events)
        if channel.handler is not None:
            channel.handler(room_id, view.epoch, protocol.batch_frame(room_id, events), events)

    async def history_since(self, room_id: str, epoch: str, seq: int) -> list[Event] | None:
        channel = self._rooms.get(room_id)
        if channel is None or channel.view.epoch != epoch or seq > channel.view.seq:
            return None
        if seq == channel.view.seq:
            return []
        history = channel.history
        if not history or history[0]["seq"] > seq + 1:
            return None  # the oldest missed event was already dropped
        return [e for e in history if e["seq"] > seq]

    async def subscribe_user(self, user_id: str, handler: UserHandler) -> list[bytes]:
        self._users[user_id] = handler
        return [frame for _, frame in self._kept.get(user_id, ())]

    async def unsubscribe_user(self, user_id: str) -> None:
        self._users.pop(user_id, None)

    async def send_dm(self, user_id: str, frame: bytes) -> bool:
        handler = self._users.get(user_id)
        if handler is not None:
            handler(user_id, frame)
            return True
        self._keep(user_id, self._next_dm_id(), frame)
        return False

    def _next_dm_id(self) -> str:
        return f"{protocol.now_ms()}-{next(self._dm_counter)}"

    def _keep(self, user_id: str, dm_id: str, frame: bytes) -> None:
        kept = self._kept.get(user_id)
        if kept is None:
            kept = self._kept[user_id] = deque(maxlen=self._dm_keep)
        kept.append((dm_id, frame))

    async def store_dm(self, user_id: str, dm: Event) -> DmReceipt:
        dm_id = self._next_dm_id()
        frame = protocol.pack({**dm, "id": dm_id})
        self._keep(user_id, dm_id, frame)
        handler = self._users.get(user_id)
        if handler is not None:
            handler(user_id, frame)
        return DmReceipt(dm_id, handler is not None)

    async def ack_dm(self, user_id: str, dm_id: str) -> None:
        kept = self._kept.get(user_id)
        if kept is None:
            return
        upto = dm_id_key(dm_id)
        while kept and dm_id_key(kept[0][0]) <= upto:
            kept.popleft()
        if not kept:
            del self._kept[user_id]

    # -- abuse ------------------------------------------------------------------------

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
