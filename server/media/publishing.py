"""Who may publish a room's media here, and answering a publisher's offer (WebSocket or WHIP).

Why a module of its own: both doors publish through the same checks (role or invitation, the
room's node, track kinds, the room's claim), so they live once, apart from either door.
"""

from __future__ import annotations

from typing import Any

from server.media import MediaError, Publication, handle_publish_offer
from server.media.failover import Failover
from server.media.site import MediaSite, check_offer_kinds, media_error
from server.wire.auth import Identity
from server.wire.protocol import ErrorCode, ProtocolError


class Publishing:
    """Admits publishers: hosts and invited co-hosts, on the node that holds the room's media."""

    def __init__(self, site: MediaSite, failover: Failover) -> None:
        self.site = site
        self.failover = failover

    def may_publish(self, who: Identity, room_id: str) -> bool:
        return who.role == "host" or who.uid in self.site.invites.get(room_id, ())

    async def publish(self, who: Identity, room_id: str, sdp: str, ref: Any = None) -> Publication:
        """Answer a publisher's offer; raises ProtocolError with a MEDIA_* code."""
        site = self.site
        if not self.may_publish(who, room_id):
            raise ProtocolError(ErrorCode.MEDIA_FORBIDDEN, "only hosts and invited co-hosts may publish", ref)
        site.check_node(room_id, ref)
        check_offer_kinds(sdp, ref)
        await site.hub.open_room(room_id)  # a WHIP-only room still needs its event channel
        await self.failover.claim(room_id, ref)
        room = site.room(room_id)
        if who.uid in room.publications:
            raise ProtocolError(ErrorCode.MEDIA_ALREADY_PUBLISHING, f"{who.uid!r} already publishes", ref)
        site.identities[(room_id, who.uid)] = who
        try:
            await handle_publish_offer(room, who.uid, sdp)
        except MediaError as exc:
            if who.uid not in room.publications:
                site.identities.pop((room_id, who.uid), None)
            self.failover.release_if_unused(room_id)
            site.maybe_close(room_id)
            raise media_error(exc, ref) from None
        site.update_gauges()
        return room.publications[who.uid]
