"""The broker interface: everything a node shares with other nodes goes through it.

A node never talks to another node directly. It publishes one sequenced batch
per room per tick, receives batches of rooms it has local viewers in, and asks
the broker for shared state (like totals, online counts, history, DMs). The
in-memory broker implements it for one node; a Redis broker implements it for
many. Modelled on Centrifugo's split of node / broker / history.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Event = dict[str, Any]
# Called with (room_id, epoch, encoded batch frame, decoded events).
BatchHandler = Callable[[str, str, bytes, list[Event]], None]
# Called with (user_id, encoded dm frame).
UserHandler = Callable[[str, bytes], None]


@dataclass(slots=True)
class RoomState:
    """Shared state of a room, read when a node gets its first local viewer."""

    epoch: str
    seq: int = 0
    likes_total: int = 0
    online: int = 0
    hosts: dict[str, str] = field(default_factory=dict)
    recent: list[Event] = field(default_factory=list)
    publishers: dict[str, str] = field(default_factory=dict)  # uid -> name, from `live` events
    media_node: str | None = None  # node holding the room's media (last `live` on event)
    media_url: str | None = None


class BrokerUnavailable(Exception):
    """The broker cannot take a write now; callers answer with a retryable error."""


class Broker(ABC):
    node_id: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect; the in-memory broker has nothing to do."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect and release resources."""

    @property
    def ready(self) -> bool:
        return True

    # -- rooms -----------------------------------------------------------------

    @abstractmethod
    async def subscribe(self, room_id: str, handler: BatchHandler) -> RoomState:
        """Start receiving the room's batches; return its current shared state."""

    @abstractmethod
    async def unsubscribe(self, room_id: str) -> None: ...

    @abstractmethod
    async def publish(
        self,
        room_id: str,
        events: list[Event],
        likes_delta: int,
        local_online: int | None,
        now: int,
    ) -> None:
        """Sequence and publish one tick of a room.

        Adds the like total (after adding likes_delta) and the online count
        (after recording this node's local count) as events, assigns each event
        the room's next sequence number, keeps them in history and delivers the
        batch, encoded once, to every subscribed node.
        """

    @abstractmethod
    async def history_since(self, room_id: str, epoch: str, seq: int) -> list[Event] | None:
        """Events after seq, or None when they are no longer all kept (or the epoch changed)."""

    # -- users (direct messages) ---------------------------------------------------

    @abstractmethod
    async def subscribe_user(self, user_id: str, handler: UserHandler) -> list[bytes]:
        """Receive DMs for a user; returns the DMs kept while the user was offline."""

    @abstractmethod
    async def unsubscribe_user(self, user_id: str) -> None: ...

    @abstractmethod
    async def send_dm(self, user_id: str, frame: bytes) -> bool:
        """Deliver or keep a DM frame; True when a connection of the user got it live."""
