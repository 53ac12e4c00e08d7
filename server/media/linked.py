"""Cross-room video: while two rooms are linked (server/node/pk.py), each room's viewers on
this node also get the other room's hosts, pulled like a cascade relay.

Why a module of its own: it follows two rooms at once (this room's `link` and viewers, the
other room's `live` state), which the edge loop (edges.py, one room and its own origin) does
not. Each node that holds viewers of a linked room opens one WHEP pull per host of the other
room from the node that holds that room's media (a loopback WHEP session when that is this
node), with a node credential for the other room, and registers it in this room's MediaRoom
as a publication named `<uid>@<other room>`: no transcoding, the encoded frames are forwarded
by this room's fan-out. The pull stops when the link ends, the other host stops, or the last
viewer here leaves. WebSocket viewers get it by renegotiation; the `offer` frame's `linked`
field names which publishers are the linked room's (docs/PROTOCOL.md). WHEP viewers, which
cannot be re-offered, see only their own room.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from server import metrics
from server.media import MediaError
from server.media.relay import Relay
from server.media.site import MediaSite
from server.wire import auth

log = logging.getLogger("liveroom.media.linked")


def linked_id(uid: str, other: str) -> str:
    """The local publisher id of the linked room's host: never one of this room's uids."""
    return f"{uid}@{other}"


def other_room(link: dict[str, object] | None, room_id: str) -> str | None:
    """The room linked with `room_id` by a `link` event in force, if any."""
    if link is None:
        return None
    rooms = link.get("rooms")
    if not isinstance(rooms, list) or room_id not in rooms:
        return None
    others = [r for r in rooms if r != room_id and isinstance(r, str)]
    return others[0] if others else None


class LinkedMedia:
    """Pulls of a linked room's hosts into the rooms whose viewers are on this node."""

    def __init__(
        self, site: MediaSite, node_secret: str, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.site = site
        self.node_secret = node_secret
        self._http = session
        self._locks: dict[str, asyncio.Lock] = {}
        self._following: dict[str, str] = {}  # other room -> the room of ours that shows it

    def session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    def view_changed(self, room_id: str) -> None:
        """A room's `live` or `link` state changed: follow it here and in the room showing it."""
        site = self.site
        view = site.hub.rooms.get(room_id)
        if room_id in site.linked or (
            view is not None and view.link is not None and site.local_viewers(room_id)
        ):
            site.spawn(self.sync(room_id))
        shown_in = self._following.get(room_id)
        if shown_in is not None:
            site.spawn(self.sync(shown_in))

    def viewer_arrived(self, room_id: str) -> None:
        """A viewer subscribed: a linked host is pulled if not yet (the viewer is re-offered)."""
        view = self.site.hub.rooms.get(room_id)
        if view is not None and view.link is not None:
            self.site.spawn(self.sync(room_id))

    async def sync(self, room_id: str) -> None:
        """Pull the linked room's hosts while linked and viewers are here; stop otherwise."""
        site = self.site
        lock = self._locks.setdefault(room_id, asyncio.Lock())
        async with lock:
            view = site.hub.rooms.get(room_id)
            other = other_room(view.link if view is not None else None, room_id)
            wanted: dict[str, str] = {}  # local id -> the other room's publisher
            origin: tuple[str, str] | None = None
            if other is not None and site.local_viewers(room_id):
                self._following[other] = room_id
                other_view = await site.hub.open_room(other)  # its `live` events: who and where
                site.hub.pin(other)
                if other_view.publishers and other_view.media_node and other_view.media_url:
                    origin = (other_view.media_node, other_view.media_url)
                    wanted = {linked_id(uid, other): uid for uid in other_view.publishers}
            pulls = site.linked.setdefault(room_id, {})
            for pid, relay in list(pulls.items()):
                if pid not in wanted or relay.ended or origin is None or relay.origin_node != origin[0]:
                    del pulls[pid]
                    await relay.close(self.session())
                    metrics.media_relays.labels(event="linked_stopped").inc()
            for pid in sorted(wanted.keys() - pulls.keys()):
                assert origin is not None and other is not None
                room = site.room(room_id)
                if pid in room.publications:
                    continue
                relay = Relay(room, pid, *origin, source=(other, wanted[pid]))
                pulls[pid] = relay  # before it publishes: not this room's own media (origin_of)
                token = auth.mint_node(self.node_secret, room=other, node=site.node_id)
                try:
                    await relay.start(self.session(), token)
                    metrics.media_relays.labels(event="linked").inc()
                except (TimeoutError, MediaError, aiohttp.ClientError, OSError) as exc:
                    pulls.pop(pid, None)
                    log.warning("media: linked pull of %s/%s into %s failed: %s", other, pid, room_id, exc)
                    metrics.media_relays.labels(event="failed").inc()
            if not pulls:
                site.linked.pop(room_id, None)
            if other is None:
                self._forget(room_id)
        site.maybe_close(room_id)
        site.update_gauges()

    def _forget(self, room_id: str) -> None:
        for followed, shown_in in list(self._following.items()):
            if shown_in == room_id:
                del self._following[followed]
                self.site.hub.unpin(followed)

    def linked_rooms(self, room_id: str) -> dict[str, str]:
        """publisher id -> the linked room it comes from, for this room's `offer` frames."""
        return {pid: relay.source[0] for pid, relay in self.site.linked.get(room_id, {}).items()}

    async def close(self) -> None:
        pulls = [r for by_pub in self.site.linked.values() for r in by_pub.values()]
        self.site.linked = {}
        if pulls:
            await asyncio.gather(*(r.close(self.session()) for r in pulls), return_exceptions=True)
        if self._http is not None:
            await self._http.close()
