"""WHIP ingest and WHEP playback sessions: resources addressed by an unguessable id, capped per
user and per address, torn down when ICE never connects, the user is banned, or it is DELETEd.

Why a module of its own: HTTP sessions have a lifecycle a WebSocket does not (no socket whose
close ends them), so their caps and watches live here, apart from the WebSocket signaling.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

from server.abuse.admission import ConcurrencyCap
from server.deadline import within
from server.media import MediaError, Publication, handle_subscribe_offer
from server.media.candidates import advertise_address
from server.media.edges import Edges
from server.media.publishing import Publishing
from server.media.site import MediaSite, Resource, check_offer_kinds, media_error
from server.wire.auth import Identity
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.broker.base import Sanction

log = logging.getLogger("liveroom.media")


class HttpSessions:
    """The node's WHIP and WHEP resources (`site.resources`) and the slots they hold."""

    def __init__(
        self,
        site: MediaSite,
        publishing: Publishing,
        edges: Edges,
        per_user: int,
        per_ip: int,
        ice_timeout: float,
    ) -> None:
        self.site = site
        self.publishing = publishing
        self.edges = edges
        self.ice_timeout = ice_timeout
        # sessions held: per "room|uid" and per client IP (a token must not take every slot)
        self.user_sessions = ConcurrencyCap(per_user)
        self.ip_sessions = ConcurrencyCap(per_ip)
        self._ice_watches: dict[str, asyncio.Task[None]] = {}

    async def whip(
        self, who: Identity, room_id: str, sdp: str, ip: str = "?", *, local: bool = False
    ) -> tuple[str, str]:
        """RFC 9725 ingest: returns (resource id, answer SDP).

        `local`: the node's own publisher (RTMP ingest, server.edge.rtmp) gets the answer's
        candidates as gathered, not rewritten to the public IP (no NAT between us and us).
        """
        self._hold(who, room_id, ip)
        try:
            pub = await self.publishing.publish(who, room_id, sdp)
        except BaseException:
            self._release(room_id, who.uid, ip)
            raise
        rid = secrets.token_urlsafe(16)
        self._add(rid, Resource("whip", room_id, who.uid, who.uid, pub, ip))
        answer = pub.pc.localDescription.sdp
        return rid, answer if local else advertise_address(answer, self.site.public_ip)

    async def whep(
        self,
        who: Identity,
        room_id: str,
        sdp: str,
        ip: str = "?",
        publisher: str | None = None,
        relay: bool = False,
    ) -> tuple[str, str]:
        """WHEP playback: the viewer offers recvonly m-lines; returns (resource id, answer).

        `publisher`: only that publisher's tracks. `relay`: an edge node pulling the room's
        media; answered only where the publication itself lives (no relaying of relays).
        """
        site = self.site
        site.check_viewer_limit()
        check_offer_kinds(sdp)
        if relay:
            room = site.rooms.get(room_id)
            pub = room.publications.get(publisher or "") if room is not None else None
            upstream = site.relays.get(room_id, {}).get(publisher or "")
            fed_by_edge = upstream is not None and (
                upstream.via is not None or upstream.ended or not upstream.ready.is_set()
            )
            if pub is None or fed_by_edge:  # only origins and edges fed by the origin serve edges
                raise ProtocolError(
                    ErrorCode.MEDIA_WRONG_NODE, f"{publisher!r} does not publish on this node"
                )
        else:
            await site.hub.open_room(room_id)  # the room's live events tell where its media is
            self._hold(who, room_id, ip)
            if site.origin_of(room_id) is not None:  # media elsewhere: pull it here (cascade)
                site.room(room_id)
                try:
                    await self.edges.sync(room_id, arriving=True)
                except BaseException:
                    self._release(room_id, who.uid, ip)
                    raise
            room = site.room(room_id)
        viewer_id = f"{who.uid}#whep{next(site.ids)}"
        try:
            answer = await handle_subscribe_offer(
                room, viewer_id, sdp, publisher_ids=[publisher] if publisher else None
            )
        except MediaError as exc:
            if not relay:
                self._release(room_id, who.uid, ip)
            site.maybe_close(room_id)
            raise media_error(exc) from None
        except BaseException:
            if not relay:
                self._release(room_id, who.uid, ip)
            raise
        rid = secrets.token_urlsafe(16)
        self._add(
            rid, Resource("whep", room_id, who.uid, viewer_id, room.subscriptions[viewer_id], ip, relay)
        )
        site.update_gauges()
        return rid, answer if relay else advertise_address(answer, site.public_ip)

    async def delete(self, kind: str, room_id: str, rid: str, who: Identity) -> bool:
        """End a WHIP/WHEP session; only the user who created it may (same token subject)."""
        res = self.site.resources.get(rid)
        if res is None or res.kind != kind or res.room_id != room_id:
            return False
        if res.uid != who.uid:
            raise ProtocolError(ErrorCode.MEDIA_FORBIDDEN, "not your session")
        await self._end(rid, res)
        return True

    def on_sanction(self, sanction: Sanction) -> None:
        """A ban or kick (from any node, watched through the broker) ends the user's WHIP/WHEP
        sessions in the room too; the guard refuses new ones."""
        if sanction.kind == "mute" or sanction.lifted:
            return
        for rid, res in list(self.site.resources.items()):
            if res.room_id == sanction.room and res.uid == sanction.uid:
                self.forget(rid)
                self.site.spawn(self._end_handle(res))

    def on_unpublished(self, room_id: str) -> None:
        """A publisher's ICE failed or it left: forget its WHIP resource."""
        for rid, res in list(self.site.resources.items()):
            pub = res.handle
            if res.room_id == room_id and isinstance(pub, Publication) and pub.ended.is_set():
                self.forget(rid)

    def prune(self) -> None:
        """Forget WHEP sessions whose connection the core closed (ICE failed)."""
        site = self.site
        for rid, res in list(site.resources.items()):
            room = site.rooms.get(res.room_id)
            if res.kind == "whep" and (room is None or room.subscriptions.get(res.peer_id) is not res.handle):
                self.forget(rid)
                if res.room_id in site.relays:
                    site.spawn(self.edges.sync(res.room_id))
                site.maybe_close(res.room_id)

    def forget(self, rid: str) -> Resource | None:
        """Drop a resource and free its slots: every path that ends a session comes here."""
        res = self.site.resources.pop(rid, None)
        if res is not None and not res.relay:
            self._release(res.room_id, res.uid, res.ip)
        watch = self._ice_watches.pop(rid, None)
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
        return res

    def close(self) -> None:
        for watch in self._ice_watches.values():
            watch.cancel()

    def _hold(self, who: Identity, room_id: str, ip: str) -> None:
        """Take a WHIP/WHEP slot of the user in the room and of the IP, or refuse (4612)."""
        key = f"{room_id}|{who.uid}"
        if not self.user_sessions.acquire(key):
            raise ProtocolError(
                ErrorCode.MEDIA_TOO_MANY_SESSIONS,
                f"at most {self.user_sessions.limit} media sessions per user in a room",
            )
        if not self.ip_sessions.acquire(ip):
            self.user_sessions.release(key)
            raise ProtocolError(
                ErrorCode.MEDIA_TOO_MANY_SESSIONS,
                f"at most {self.ip_sessions.limit} media sessions per address",
            )

    def _release(self, room_id: str, uid: str, ip: str) -> None:
        self.user_sessions.release(f"{room_id}|{uid}")
        self.ip_sessions.release(ip)

    def _add(self, rid: str, res: Resource) -> None:
        self.site.resources[rid] = res
        self._ice_watches[rid] = asyncio.get_running_loop().create_task(self._ice_watch(rid, res))

    async def _ice_watch(self, rid: str, res: Resource) -> None:
        """A session whose ICE has not connected within media_ice_timeout is torn down: a client
        that POSTs offers and never connects must not keep viewer slots."""
        pc = res.handle.pc
        connected = asyncio.Event()

        def check() -> None:
            if pc.iceConnectionState in ("connected", "completed"):
                connected.set()

        pc.on("iceconnectionstatechange", check)
        try:
            check()
            await within(connected.wait(), self.ice_timeout)
        except TimeoutError:
            if self.site.resources.get(rid) is res:
                log.info("media: %s session %s of %s did not connect ICE in time", res.kind, rid[:6], res.uid)
                await self._end(rid, res)
        finally:
            pc.remove_listener("iceconnectionstatechange", check)
            if self._ice_watches.get(rid) is asyncio.current_task():
                del self._ice_watches[rid]

    async def _end(self, rid: str, res: Resource) -> None:
        self.forget(rid)
        await self._end_handle(res)

    async def _end_handle(self, res: Resource) -> None:
        if isinstance(res.handle, Publication):
            await self.site.end_publisher(res.room_id, res.handle)
        else:
            await self.site.end_viewer(res.room_id, res.peer_id, res.handle)
