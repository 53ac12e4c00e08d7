"""Media over a joined WebSocket: publish/unpublish (client offers), subscribe/answer (server
offers, re-offers when a publisher appears), invitations of co-hosts.

Why a module of its own: a WebSocket viewer negotiates in the other direction from WHEP and
lives as long as its connection, so its offers, locks and teardown on leave belong together.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from server import metrics
from server.media import MediaError, create_subscribe_offer, handle_subscribe_answer
from server.media.candidates import advertise_address
from server.media.edges import Edges
from server.media.linked import LinkedMedia
from server.media.publishing import Publishing
from server.media.site import MediaSite, WsViewer, media_error
from server.wire import protocol
from server.wire.auth import Identity
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.broker.base import Inbox
    from server.delivery.peer import Peer

log = logging.getLogger("liveroom.media")

MAX_INVITES_PER_ROOM = 32


class WsSignaling:
    """The media messages of joined connections (`site.ws_publishers`, `site.ws_viewers`)."""

    def __init__(
        self, site: MediaSite, publishing: Publishing, edges: Edges, inbox: Inbox, linked: LinkedMedia
    ) -> None:
        self.site = site
        self.publishing = publishing
        self.edges = edges
        self.inbox = inbox
        self.linked = linked

    async def handle(self, client: Peer, message: protocol.ClientMessage) -> None:
        """Dispatch one media message of a joined connection (see docs/PROTOCOL.md)."""
        op = type(message).__name__.lower()
        try:
            if isinstance(message, protocol.Publish):
                await self._publish(client, message)
            elif isinstance(message, protocol.Unpublish):
                await self._unpublish(client, message.cid)
            elif isinstance(message, protocol.Subscribe):
                await self._subscribe(client, message.cid)
            elif isinstance(message, protocol.Answer):
                await self._answer(client, message)
            elif isinstance(message, protocol.Unsubscribe):
                await self._unsubscribe(client)
            elif isinstance(message, protocol.Invite):
                await self._invite(client, message)
        except ProtocolError as error:
            metrics.media_signaling.labels(op=op, result=error.code.name.lower()).inc()
            raise
        metrics.media_signaling.labels(op=op, result="ok").inc()

    async def leave(self, client: Peer) -> None:
        """The connection is gone: end its publication (viewers told at once) and its viewing."""
        site = self.site
        pub = site.ws_publishers.pop(client, None)
        if pub is not None:
            await site.end_publisher(client.room_id or "", pub)
        await self._unsubscribe(client)
        who = client.identity
        if who is not None and who.role == "host" and not self._other_host_here(client):
            site.invites.pop(who.room, None)  # invitations end with the host's session
        site.update_gauges()

    def on_published(self, room_id: str) -> None:
        """A publisher appeared: offer its tracks to the room's WebSocket viewers."""
        for viewer in list(self.site.ws_viewers.values()):
            if viewer.room_id == room_id:
                self.site.spawn(self.offer(viewer))

    def on_unpublished(self, room_id: str, publisher_id: str) -> None:
        """A publisher's ICE failed or it left: forget its WebSocket publication."""
        publishers = self.site.ws_publishers
        for client, pub in list(publishers.items()):
            if client.room_id == room_id and pub.publisher_id == publisher_id and pub.ended.is_set():
                del publishers[client]

    async def offer(self, viewer: WsViewer, cid: Any = None) -> bool:
        """(Re)offer the room's tracks to a WS viewer; False when there is nothing to offer."""
        site = self.site
        async with viewer.lock:
            if site.ws_viewers.get(viewer.client) is not viewer:
                return False
            room = site.rooms.get(viewer.room_id)
            if room is None:
                return False
            sub = room.subscriptions.get(viewer.viewer_id)
            if sub is not None and sub.pc.signalingState != "stable":
                viewer.renegotiate = True  # answered later: re-offer then
                return True
            new = [
                (pid, kind)
                for pid, pub in room.publications.items()
                for kind in pub.kinds
                if pub.ready and (sub is None or not sub.has(pid, kind))
            ]
            if not new:
                return False
            try:
                sdp = await create_subscribe_offer(
                    room, viewer.viewer_id, [p.publisher_id for p in room.publications.values() if p.ready]
                )
            except MediaError as exc:
                if cid is None:  # a renegotiation nobody asked for: log, the viewer keeps what it has
                    log.info("media: re-offer to %s failed: %s", viewer.viewer_id, exc)
                    return True
                raise media_error(exc, cid) from None
            tracks = room.subscriptions[viewer.viewer_id].track_map()
            frame: dict[str, Any] = {
                "t": "offer",
                "sdp": advertise_address(sdp, site.public_ip),
                "tracks": tracks,
            }
            linked = self.linked.linked_rooms(viewer.room_id)
            if linked:  # publisher id -> the linked room whose host it is (shown beside ours)
                frame["linked"] = {
                    pid: r
                    for pid, r in linked.items()
                    if any(t["publisher_id"] == pid for t in tracks.values())
                }
            if cid is not None:
                frame["cid"] = cid
            viewer.client.send(protocol.pack(frame))
            return True

    async def _publish(self, client: Peer, message: protocol.Publish) -> None:
        who, room_id = self._who(client)
        if client in self.site.ws_publishers:
            raise ProtocolError(ErrorCode.MEDIA_ALREADY_PUBLISHING, "this connection publishes", message.cid)
        pub = await self.publishing.publish(who, room_id, message.sdp, message.cid)
        self.site.ws_publishers[client] = pub
        answer = advertise_address(pub.pc.localDescription.sdp, self.site.public_ip)
        frame: dict[str, Any] = {"t": "answer", "sdp": answer}
        if message.cid is not None:
            frame["cid"] = message.cid
        client.send(protocol.pack(frame))

    async def _unpublish(self, client: Peer, cid: Any) -> None:
        pub = self.site.ws_publishers.pop(client, None)
        if pub is None:
            raise ProtocolError(ErrorCode.MEDIA_BAD_STATE, "this connection is not publishing", cid)
        await self.site.end_publisher(client.room_id or "", pub)

    async def _subscribe(self, client: Peer, cid: Any) -> None:
        site = self.site
        who, room_id = self._who(client)
        if client in site.ws_viewers:
            raise ProtocolError(ErrorCode.MEDIA_BAD_STATE, "already subscribed", cid)
        site.check_viewer_limit(cid)
        if site.origin_of(room_id) is not None:  # media elsewhere: pull it here (cascade)
            site.room(room_id)
            await self.edges.sync(room_id, arriving=True)
        if client.closing:  # it left while this edge connected to the origin: maybe stop the pull
            site.spawn(self.edges.sync(room_id))
            return
        if client in site.ws_viewers:  # a second subscribe raced the first
            raise ProtocolError(ErrorCode.MEDIA_BAD_STATE, "already subscribed", cid)
        viewer = WsViewer(client, room_id, f"{who.uid}#{next(site.ids)}")
        site.ws_viewers[client] = viewer
        site.room(room_id)
        site.update_gauges()
        self.linked.viewer_arrived(room_id)  # a linked room's host: pulled, then re-offered
        if not await self.offer(viewer, cid):
            frame: dict[str, Any] = {"t": "subscribed", "live": False}
            if cid is not None:
                frame["cid"] = cid
            client.send(protocol.pack(frame))

    async def _answer(self, client: Peer, message: protocol.Answer) -> None:
        site = self.site
        viewer = site.ws_viewers.get(client)
        room = site.rooms.get(viewer.room_id) if viewer is not None else None
        if viewer is None or room is None:
            raise ProtocolError(ErrorCode.MEDIA_BAD_STATE, "no offer to answer: subscribe first", message.cid)
        async with viewer.lock:
            try:
                await handle_subscribe_answer(room, viewer.viewer_id, message.sdp)
            except MediaError as exc:
                if exc.code != "bad_state":  # the core dropped the viewer's connection
                    site.ws_viewers.pop(client, None)
                    site.update_gauges()
                raise media_error(exc, message.cid) from None
            again, viewer.renegotiate = viewer.renegotiate, False
        if again:
            site.spawn(self.offer(viewer))

    async def _unsubscribe(self, client: Peer) -> None:
        viewer = self.site.ws_viewers.pop(client, None)
        if viewer is not None:
            await self.site.end_viewer(viewer.room_id, viewer.viewer_id)

    async def _invite(self, client: Peer, message: protocol.Invite) -> None:
        who, room_id = self._who(client)
        if who.role != "host":
            raise ProtocolError(ErrorCode.MEDIA_FORBIDDEN, "only a host may invite co-hosts", message.cid)
        if message.uid == who.uid:
            raise ProtocolError(ErrorCode.BAD_RECIPIENT, "cannot invite yourself", message.cid)
        invited = self.site.invites.setdefault(room_id, set())
        if message.uid not in invited and len(invited) >= MAX_INVITES_PER_ROOM:
            raise ProtocolError(ErrorCode.MEDIA_TOO_MANY_PUBLISHERS, "too many invitations", message.cid)
        invited.add(message.uid)
        now = protocol.now_ms()
        frame = {"t": "invited", "room": room_id, "uid": who.uid, "name": who.name, "ts": now}
        delivered = await self.inbox.send_dm(message.uid, protocol.pack(frame))
        ack: dict[str, Any] = {"t": "invite_ack", "uid": message.uid, "delivered": delivered, "ts": now}
        if message.cid is not None:
            ack["cid"] = message.cid
        client.send(protocol.pack(ack))

    def _who(self, client: Peer) -> tuple[Identity, str]:
        who = client.identity
        assert who is not None and client.room_id is not None
        return who, client.room_id

    def _other_host_here(self, client: Peer) -> bool:
        """Another connection of the same host is still in the room on this node."""
        room = self.site.hub.rooms.get(client.room_id or "")
        who = client.identity
        if room is None or who is None:
            return False
        return any(c is not client and w.uid == who.uid for c, w in room.members.items())
