"""The broker's interfaces: everything a node shares with other nodes goes through them.

A node never talks to another node directly. It publishes one sequenced batch per room per
tick and receives the batches of rooms it has local viewers in (RoomStream: publish,
subscribe, history, recovery, presence counts), stores and receives DMs (Inbox), and checks
sanctions and limits (Sanctions). Each part has an in-memory version (one node) and a Redis
one (many); `Broker` is the facade a node holds. Modelled on centrifuge, which keeps its
Broker (publish + history, atomic for stream positions) apart from its PresenceManager.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from server.wire.protocol import ErrorCode, ProtocolError

log = logging.getLogger("liveroom.broker")

Event = dict[str, Any]
# Called with (room_id, epoch, encoded batch frame, decoded events).
BatchHandler = Callable[[str, str, bytes, list[Event]], None]
# Called with (user_id, encoded dm frame).
UserHandler = Callable[[str, bytes], None]
# Called when a room's shared stream restarted under this node's feet (Redis lost it, or
# this node sequenced locally during an outage), with (room, its new state, retired): local
# viewers must resync (server.delivery.hub). `retired`: `<old>><new>` when the new stream's
# epoch came from retiring epoch `old` (the same events seq for seq, renamed), else ''.
RoomResetHandler = Callable[[str, "RoomState", str], None]


@dataclass(slots=True)
class RoomState:
    """Shared state of a room, read when a node gets its first local viewer."""

    epoch: str
    seq: int = 0
    likes_total: int = 0
    online: int = 0
    hosts: dict[str, str] = field(default_factory=dict)
    recent: list[Event] = field(default_factory=list)
    unique: int = 0  # distinct viewers that ever joined (approximate with Redis: HyperLogLog)
    publishers: dict[str, str] = field(default_factory=dict)  # uid -> name, from `live` events
    media_node: str | None = None  # node holding the room's media (last `live` on event)
    media_url: str | None = None
    media_codec: str | None = None  # the room's video codec (last `live` on event's `codec`)
    pins: dict[str, Event] = field(default_factory=dict)  # pin id -> `pin` event (server.node.answers)
    board: Event | None = None  # the newest leaderboard (server/room/gifts.py)
    link: Event | None = None  # the link with another room in force, and its PK round
    pk: Event | None = None
    pk_penalty: Event | None = None  # the penalty after a round's result
    schedules: dict[str, Event] = field(default_factory=dict)  # lives the room's host scheduled
    qa: list[Event] = field(default_factory=list)  # `question`/`reply` events, for the staff
    products: dict[str, Event] = field(default_factory=dict)  # product id -> its edits, merged


@dataclass(frozen=True, slots=True)
class Sanction:
    """A moderation decision on a user in a room (server.abuse.moderation), shared by every node.

    kind: "mute" (cannot send danmaku), "ban" (cannot join), "kick" (disconnected,
    cannot rejoin until `until`). until: ms since the epoch, None for no end.
    lifted: an unmute/unban, sent to the watchers and removing the stored one.
    """

    room: str
    uid: str
    kind: str
    until: int | None
    by: str = ""
    lifted: bool = False

    def active(self, now_ms: int) -> bool:
        return not self.lifted and (self.until is None or now_ms < self.until)


SanctionHandler = Callable[[Sanction], None]


@dataclass(slots=True)
class Publish:
    """One room's share of a tick, as `RoomStream.publish` (and `publish_many`) take it."""

    room_id: str
    events: list[Event]
    likes_delta: int
    local_online: int | None
    now: int
    joined: Sequence[str] = ()


class BrokerUnavailable(Exception):
    """The broker cannot take a write now; callers answer with a retryable error.

    `maybe_stored`: the write was sent and its answer lost (the connection died mid-call), so
    it may have been applied: a DM's cid claim must then not be freed (the retry looks first).
    """

    def __init__(self, message: str = "", *, maybe_stored: bool = False) -> None:
        super().__init__(message)
        self.maybe_stored = maybe_stored


@dataclass(frozen=True, slots=True)
class DmReceipt:
    """A stored DM: its id (ordered per recipient, what `dm_seen` acknowledges) and whether
    some connection of the recipient got it live. `replicated` is False when the DM is stored
    on its Redis primary but no replica confirmed it in time (WAIT): a failover of that primary
    right now could lose it (docs/PROTOCOL.md, `dm_ack`). `ts`: set when this send was stored
    before (a retry with its `cid`), the first copy's."""

    id: str
    delivered: bool
    replicated: bool = True
    ts: int | None = None


DM_FULL_RETRY = 60.0  # seconds a sender refused 4502 is told to wait


def sender_quota_full(limit: int) -> ProtocolError:
    """4502 for a DM to an offline user whose sender has `limit` DMs waiting (every broker)."""
    return ProtocolError(
        ErrorCode.DM_STORE_FULL,
        f"DM not stored: {limit} of your DMs are waiting to be read",
        None,
        DM_FULL_RETRY,
    )


def dm_id_key(dm_id: str) -> tuple[int, int]:
    """DM ids are `<ms>-<n>` (Redis stream ids); compare them as numbers, not strings."""
    ms, _, n = dm_id.partition("-")
    return int(ms), int(n or 0)


class RoomStream(ABC):
    """A room's event stream: sequence and publish each tick, deliver batches to subscribed
    nodes, keep history for recovery. Presence counts live here too: a `presence` event is
    sequenced with the tick that changed it (server/room/sequencing.py), in one atomic step."""

    on_room_reset: RoomResetHandler | None = None  # set by the node

    @abstractmethod
    async def subscribe(self, room_id: str, handler: BatchHandler) -> RoomState:
        """Start receiving the room's batches; return its current shared state."""

    @abstractmethod
    async def unsubscribe(self, room_id: str) -> None: ...

    @abstractmethod
    async def publish(self, tick: Publish) -> None:
        """Sequence and publish one tick of a room (server/room/sequencing.py's rule).

        Adds the like total (after adding `likes_delta`) and the online count (after recording
        this node's `local_online`) as events, assigns each event the room's next sequence
        number, keeps them in history and delivers the batch, encoded once, to every
        subscribed node. `joined`: uids that joined locally this tick (unique viewers).
        """

    async def publish_many(self, publishes: Sequence[Publish]) -> None:
        """Publish a whole tick: every room that changed. A broker with a network in between
        sends them together (RedisBroker: one pipeline per shard); this default does one by one,
        and a room that fails costs that room only: the other rooms of the tick still go out."""
        for p in publishes:
            try:
                await self.publish(p)
            except BrokerUnavailable:
                raise
            except Exception:
                log.exception("publish of room %s failed: its batch is lost", p.room_id)

    @abstractmethod
    async def history_since(self, room_id: str, epoch: str, seq: int) -> list[Event] | None:
        """Events after seq, or None when they are no longer all kept (or the epoch changed)."""


class Inbox(ABC):
    """Direct messages: stored per recipient until acknowledged, delivered live where the
    recipient is connected."""

    @abstractmethod
    async def subscribe_user(self, user_id: str, handler: UserHandler) -> list[bytes]:
        """Receive DMs for a user; returns the DMs kept while the user was offline."""

    @abstractmethod
    async def unsubscribe_user(self, user_id: str) -> None: ...

    @abstractmethod
    async def dm_backlog(self, user_id: str) -> list[bytes]:
        """The user's DMs not yet acknowledged, oldest first (for a further connection on a node
        already subscribed to the user); raises BrokerUnavailable."""

    @abstractmethod
    async def send_dm(self, user_id: str, frame: bytes) -> bool:
        """Deliver or keep a frame for a user; True when a connection of the user got it live."""

    async def send_dms(self, frames: dict[str, bytes]) -> list[str]:
        """send_dm to many users (a host's live notice to its followers): the users no
        connection got. One call each here; the Redis inbox sends them in one pipeline per shard."""
        return [uid for uid, frame in frames.items() if not await self.send_dm(uid, frame)]

    @abstractmethod
    async def store_dm(self, user_id: str, dm: Event, send: str | None = None) -> DmReceipt:
        """Store a DM durably, give it its id, then deliver it live; raises BrokerUnavailable.

        Stored DMs come back from subscribe_user (in order) until acknowledged with ack_dm.
        `send` (idempotency.dm_send: its sender and `cid`) is recorded with the DM for the
        idempotency WINDOW: the same send again stores nothing and gets the first receipt, even
        after the DM was acknowledged and whatever the sender's node forgot.
        """

    @abstractmethod
    async def ack_dm(self, user_id: str, dm_id: str) -> None:
        """The user has seen every DM up to dm_id: drop them from its backlog."""


class Sanctions(ABC):
    """Sanctions and limits (server.abuse): bans/mutes/kicks, DM blocks, one-time join nonces,
    per-user rate-limit usage. The memory version is complete for one node; the Redis one
    shares them, so a ban on one node applies on every node at once. None of them may raise
    on an outage except put_sanction/set_dm_block (BrokerUnavailable: the moderator retries)."""

    # True when other nodes share this state: the guard then reconciles per-user rate limits.
    multi_node: ClassVar[bool] = False

    @abstractmethod
    def watch_sanctions(self, handler: SanctionHandler) -> None:
        """Call handler on this node for every sanction put on any node (lifts too)."""

    @abstractmethod
    async def put_sanction(self, sanction: Sanction) -> None:
        """Store (or, when lifted, remove) a sanction and tell every node's watchers.

        Raises BrokerUnavailable when it cannot be stored: a moderator must not be told a ban
        applies everywhere when it does not.
        """

    @abstractmethod
    async def sanctions(self, room_id: str, user_id: str) -> list[Sanction]:
        """The user's active sanctions in the room (read at join: no round trip for a followed
        room, one at most otherwise)."""

    @abstractmethod
    async def follow_room(self, room_id: str) -> None:
        """The node opened the room: keep its sanctions at hand for the joins that follow."""

    @abstractmethod
    def unfollow_room(self, room_id: str) -> None:
        """The node closed the room: forget what follow_room kept."""

    @abstractmethod
    async def set_dm_block(self, user_id: str, other: str, blocked: bool) -> None:
        """user_id blocks (or unblocks) DMs from `other`; raises BrokerUnavailable."""

    @abstractmethod
    async def dm_blocked(self, recipient: str, sender: str) -> bool:
        """Whether recipient blocked sender (checked before every DM is stored)."""

    @abstractmethod
    async def claim_nonce(self, nonce: str, ttl: float) -> bool:
        """True the first time a nonce is claimed within ttl seconds (one-time join tokens)."""

    @abstractmethod
    async def exchange_usage(self, usage: dict[str, float]) -> dict[str, float]:
        """Swap per-user rate-limit spending with the other nodes (keys `action|uid`).

        `usage`: what this node spent since the last call, plus 0.0 for every key it still
        cares about (a bucket that has not refilled). Returns, for those keys, what the other
        nodes spent since this node last asked. Called about once a second, never per message.
        """


class Broker:
    """What a node shares with other nodes: the room stream, the inbox, sanctions and limits.

    A facade over the three parts (each an interface with a memory and a Redis version), so
    callers keep one object; new code can take the part it needs (`broker.stream`, ...).
    Subclasses build the parts and own the connection they share.
    """

    node_id: str
    stream: RoomStream
    inbox: Inbox
    limits: Sanctions

    async def start(self) -> None:
        """Connect; the in-memory broker has nothing to do."""

    async def close(self) -> None:
        """Disconnect and release resources."""

    @property
    def ready(self) -> bool:
        return True

    @property
    def multi_node(self) -> bool:
        return self.limits.multi_node

    @property
    def on_room_reset(self) -> RoomResetHandler | None:
        return self.stream.on_room_reset

    @on_room_reset.setter
    def on_room_reset(self, handler: RoomResetHandler | None) -> None:
        self.stream.on_room_reset = handler

    # -- room stream ----------------------------------------------------------------

    async def subscribe(self, room_id: str, handler: BatchHandler) -> RoomState:
        # sanctions first: the stream hands over the batches that arrived while it loaded right
        # after the caller registers the room (call_soon), so nothing may await in between.
        # With Redis this is one more round trip per room opened on a node, not per join.
        await self.limits.follow_room(room_id)
        return await self.stream.subscribe(room_id, handler)

    async def unsubscribe(self, room_id: str) -> None:
        self.limits.unfollow_room(room_id)
        await self.stream.unsubscribe(room_id)

    async def publish(self, tick: Publish) -> None:
        await self.stream.publish(tick)

    async def publish_many(self, publishes: Sequence[Publish]) -> None:
        await self.stream.publish_many(publishes)

    async def history_since(self, room_id: str, epoch: str, seq: int) -> list[Event] | None:
        return await self.stream.history_since(room_id, epoch, seq)

    # -- inbox ------------------------------------------------------------------------

    async def subscribe_user(self, user_id: str, handler: UserHandler) -> list[bytes]:
        return await self.inbox.subscribe_user(user_id, handler)

    async def unsubscribe_user(self, user_id: str) -> None:
        await self.inbox.unsubscribe_user(user_id)

    async def dm_backlog(self, user_id: str) -> list[bytes]:
        return await self.inbox.dm_backlog(user_id)

    async def send_dm(self, user_id: str, frame: bytes) -> bool:
        return await self.inbox.send_dm(user_id, frame)

    async def send_dms(self, frames: dict[str, bytes]) -> list[str]:
        return await self.inbox.send_dms(frames)

    async def store_dm(self, user_id: str, dm: Event, send: str | None = None) -> DmReceipt:
        return await self.inbox.store_dm(user_id, dm, send)

    async def ack_dm(self, user_id: str, dm_id: str) -> None:
        await self.inbox.ack_dm(user_id, dm_id)

    # -- sanctions and limits ---------------------------------------------------------------

    def watch_sanctions(self, handler: SanctionHandler) -> None:
        self.limits.watch_sanctions(handler)

    async def put_sanction(self, sanction: Sanction) -> None:
        await self.limits.put_sanction(sanction)

    async def sanctions(self, room_id: str, user_id: str) -> list[Sanction]:
        return await self.limits.sanctions(room_id, user_id)

    async def set_dm_block(self, user_id: str, other: str, blocked: bool) -> None:
        await self.limits.set_dm_block(user_id, other, blocked)

    async def dm_blocked(self, recipient: str, sender: str) -> bool:
        return await self.limits.dm_blocked(recipient, sender)

    async def claim_nonce(self, nonce: str, ttl: float) -> bool:
        return await self.limits.claim_nonce(nonce, ttl)

    async def exchange_usage(self, usage: dict[str, float]) -> dict[str, float]:
        return await self.limits.exchange_usage(usage)
