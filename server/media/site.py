"""What this node holds of media: its MediaRooms and everyone signaling into them.

Why a module of its own: the gateway's parts (WebSocket signaling, WHIP/WHEP sessions, edges,
claims, stats) all read and change the same registries; keeping them in one plain holder,
with the room's lifecycle (open, close when empty, one teardown for a viewer), lets each
part be a small class that is handed this holder instead of reaching into the others.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from server import metrics
from server.media import MediaConfig, MediaError, MediaRoom, Publication, Subscription
from server.media.relay import Relay
from server.wire import protocol
from server.wire.auth import Identity
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.delivery.hub import Hub
    from server.delivery.peer import Peer

log = logging.getLogger("liveroom.media")

# MediaError.code from the core -> stable protocol code.
_CODES: dict[str, ErrorCode] = {
    "bad_sdp": ErrorCode.MEDIA_BAD_SDP,
    "no_media": ErrorCode.MEDIA_NO_MEDIA,
    "too_many_tracks": ErrorCode.MEDIA_TOO_MANY_TRACKS,
    "codec_unsupported": ErrorCode.MEDIA_UNSUPPORTED,
    "codec_mismatch": ErrorCode.MEDIA_CODEC_MISMATCH,
    "viewer_codec": ErrorCode.MEDIA_VIEWER_CODEC,
    "too_many_publishers": ErrorCode.MEDIA_TOO_MANY_PUBLISHERS,
    "too_many_viewers": ErrorCode.MEDIA_TOO_MANY_VIEWERS,
    "already_publishing": ErrorCode.MEDIA_ALREADY_PUBLISHING,
    "already_subscribed": ErrorCode.MEDIA_BAD_STATE,
    "unknown_publisher": ErrorCode.MEDIA_BAD_STATE,
    "unknown_viewer": ErrorCode.MEDIA_BAD_STATE,
    "bad_state": ErrorCode.MEDIA_BAD_STATE,
    "room_closed": ErrorCode.MEDIA_UNAVAILABLE,
    "relay_refused": ErrorCode.MEDIA_UNAVAILABLE,
    "relay_full": ErrorCode.MEDIA_TOO_MANY_VIEWERS,
    "relay_closed": ErrorCode.MEDIA_UNAVAILABLE,
}


def media_error(exc: MediaError, ref: Any = None) -> ProtocolError:
    return ProtocolError(_CODES.get(exc.code, ErrorCode.MEDIA_UNAVAILABLE), exc.message, ref)


def check_offer_kinds(sdp: str, ref: Any = None) -> None:
    """Refuse m-lines other than audio/video (data channels, text...) before aiortc sees them."""
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
            if kind not in ("audio", "video"):
                raise ProtocolError(
                    ErrorCode.MEDIA_UNSUPPORTED,
                    f"unsupported track kind {kind[:16]!r}: audio/video only",
                    ref,
                )


@dataclass(eq=False)
class WsViewer:
    """A WebSocket connection that asked for the room's media (server offers, client answers)."""

    client: Peer
    room_id: str
    viewer_id: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    renegotiate: bool = False  # a publisher appeared while an offer was pending


@dataclass(eq=False)
class Resource:
    """A WHIP publication or WHEP playback, addressed by an unguessable id in its URL."""

    kind: Literal["whip", "whep"]
    room_id: str
    uid: str
    peer_id: str  # publisher id (the uid) or viewer id
    handle: Publication | Subscription
    ip: str = "?"
    relay: bool = False  # a WHEP session of an edge node pulling the room's media (no session caps)


async def _nothing(room_id: str) -> None:
    return None


class MediaSite:
    """The node's MediaRooms, who publishes and views them, and the rooms' lifecycle."""

    def __init__(self, hub: Hub, node_id: str, media_config: MediaConfig, max_viewers: int) -> None:
        self.hub = hub
        self.node_id = node_id
        self.media_config = media_config
        self.max_viewers = max_viewers
        self.url: str | None = None  # set by App once the HTTP port is known
        self.public_ip: str | None = None
        self.rooms: dict[str, MediaRoom] = {}
        self.identities: dict[tuple[str, str], Identity] = {}  # (room, publisher uid) -> who
        self.invites: dict[str, set[str]] = {}  # room -> uids invited to co-stream
        self.ws_publishers: dict[Peer, Publication] = {}
        self.ws_viewers: dict[Peer, WsViewer] = {}
        self.resources: dict[str, Resource] = {}
        self.relays: dict[str, dict[str, Relay]] = {}  # room -> publisher -> stream pulled from its origin
        # room -> publishers whose relay is being set up: their publication here is not local
        self.pulling: dict[str, set[str]] = {}
        # room -> local ids of a linked room's hosts pulled into it (server/media/linked.py)
        self.linked: dict[str, dict[str, Relay]] = {}
        self.ids = itertools.count(1)
        self.tasks: set[asyncio.Task[Any]] = set()
        # set by the gateway: the edges follow the room's viewers; room events go to every part
        self.sync_relays: Callable[[str], Awaitable[None]] = _nothing
        self.sync_linked: Callable[[str], Awaitable[None]] = _nothing
        self.on_room_event: Callable[[str, str, str], None] = lambda room_id, event, pid: None

    # -- who is here ----------------------------------------------------------------------

    @property
    def viewer_count(self) -> int:
        return len(self.ws_viewers) + sum(1 for r in self.resources.values() if r.kind == "whep")

    def local_publishers(self, room_id: str) -> bool:
        room = self.rooms.get(room_id)
        relayed, pulling = self.relays.get(room_id, {}), self.pulling.get(room_id, ())
        linked = self.linked.get(room_id, {})
        return room is not None and any(
            pid not in relayed and pid not in pulling and pid not in linked for pid in room.publications
        )

    def local_viewers(self, room_id: str) -> bool:
        """Viewers here: WS subscribers and WHEP sessions (an edge we feed counts as one)."""
        return any(v.room_id == room_id for v in self.ws_viewers.values()) or any(
            r.room_id == room_id and r.kind == "whep" for r in self.resources.values()
        )

    def origin_of(self, room_id: str) -> tuple[str, str] | None:
        """(node, media URL) of the room's media when another node holds it, else None."""
        view = self.hub.rooms.get(room_id)
        if view is None or not view.publishers or view.media_node in (None, self.node_id):
            return None
        if not view.media_url or (room_id in self.rooms and self.local_publishers(room_id)):
            return None
        return view.media_node, view.media_url

    # -- checks -------------------------------------------------------------------------------

    def check_node(self, room_id: str, ref: Any = None) -> None:
        """A room's publishers share one node: refuse a publisher here if another node holds them."""
        view = self.hub.rooms.get(room_id)
        owner = view.media_node if view is not None else None
        if owner is not None and self.origin_of(room_id) is not None:
            raise ProtocolError(
                ErrorCode.MEDIA_WRONG_NODE, f"media of this room is on node {owner} ({view.media_url})", ref
            )

    def check_viewer_limit(self, ref: Any = None) -> None:
        if self.viewer_count >= self.max_viewers:
            raise ProtocolError(
                ErrorCode.MEDIA_TOO_MANY_VIEWERS,
                f"this node serves at most {self.max_viewers} media viewers",
                ref,
            )

    # -- rooms ----------------------------------------------------------------------------------

    def room(self, room_id: str) -> MediaRoom:
        """The room's MediaRoom, opened (and the hub's room pinned) on first use."""
        room = self.rooms.get(room_id)
        if room is None:
            room = MediaRoom(room_id, self.media_config)
            room.listeners.append(lambda event, pid: self.on_room_event(room_id, event, pid))
            self.rooms[room_id] = room
            self.hub.pin(room_id)
        return room

    def maybe_close(self, room_id: str) -> None:
        """Forget a MediaRoom with nobody in it, so the node may close the room too."""
        room = self.rooms.get(room_id)
        if room is None or room.publications or room.subscriptions:
            return
        if any(v.room_id == room_id for v in self.ws_viewers.values()):
            return
        if any(r.room_id == room_id for r in self.resources.values()):
            return
        del self.rooms[room_id]
        self.hub.unpin(room_id)
        self.spawn(room.close())

    async def end_viewer(self, room_id: str, viewer_id: str, handle: Subscription | None = None) -> None:
        """The one teardown of a viewer (WebSocket or WHEP), once it is out of the registries:
        out of the MediaRoom, the edge's pull stopped with the last viewer, the room closed."""
        room = self.rooms.get(room_id)
        if room is not None:
            await room.remove_viewer(viewer_id, handle)
        if room_id in self.relays:
            await self.sync_relays(room_id)  # the last viewer here stops the pull
        if room_id in self.linked:
            await self.sync_linked(room_id)  # and the linked host's
        self.maybe_close(room_id)
        self.update_gauges()

    async def end_publisher(self, room_id: str, pub: Publication) -> None:
        """The one teardown of a publication (WebSocket or WHIP): viewers are told at once."""
        room = self.rooms.get(room_id)
        if room is not None:
            await room.remove_publisher(pub.publisher_id, pub)  # "unpublished" -> live off
        if room_id in self.relays:
            await self.sync_relays(room_id)
        self.maybe_close(room_id)
        self.update_gauges()

    def emit_live(self, room_id: str, who: Identity, on: bool) -> None:
        """A publisher of ours went live or stopped: into the room's outbox, sequenced like any event."""
        media = self.rooms.get(room_id)
        codec = media.video_codec if media is not None else None
        if not self.hub.set_live(room_id, who, on, self.node_id, self.url, protocol.now_ms(), codec):
            # not expected: the room stays open while media is held here
            log.warning("media: live event for room %s that is not open", room_id)

    # -- background work and gauges -------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("media: background task failed", exc_info=task.exception())

    def update_gauges(self) -> None:
        metrics.media_rooms.set(len(self.rooms))
        metrics.media_publishers.set(sum(len(r.publications) for r in self.rooms.values()))
        metrics.media_viewers.set(self.viewer_count)
        metrics.media_relayed.set(sum(len(r) for r in self.relays.values()))
