"""Cascading: an edge node pulls one publisher's media from the origin node over WHEP.

Why: a room's media lives on the node its host publishes to (the origin), and one node can
serve only so many viewers. A node whose own viewers want a room whose media is elsewhere
becomes an edge: it opens one WHEP session per publisher to the origin, authorised by a node
credential (:func:`server.wire.auth.mint_node`, a key no client-facing endpoint signs with), and
registers that session in its own MediaRoom as a publication. The receivers are tapped like
any publisher's, so the edge forwards the encoded frames to its viewers with its own fan-out;
the origin carries one stream per edge and publisher, whatever the edge's audience. Keyframe
requests follow the same path up: an edge viewer's request reaches the relay's
KeyframeRequester (coalesced), which sends a PLI to the origin, whose sender routes it to the
publisher's requester (coalesced again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import quote

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

from server.media import MediaError, MediaRoom, Publication


def answered_directions(sdp: str) -> list[tuple[str, str]]:
    """(kind, direction) of each audio/video m-line of an answer."""
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:
        raise MediaError("relay_refused", f"origin answered unparsable SDP: {exc}") from exc
    return [(m.kind, m.direction or "sendrecv") for m in parsed.media if m.kind in KINDS]


log = logging.getLogger("liveroom.media.relay")

KINDS = ("audio", "video")
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=15)


class Relay:
    """One publisher's media pulled from the origin into a local MediaRoom."""

    def __init__(
        self,
        room: MediaRoom,
        publisher_id: str,
        origin_node: str,
        origin_url: str,
        via: str | None = None,
        source: tuple[str, str] | None = None,
    ) -> None:
        self.room = room
        self.publisher_id = publisher_id
        # (room, publisher) pulled, when not this room's own publisher: a linked room's host
        # (server/media/linked.py) shows here under another id
        self.source = source or (room.room_id, publisher_id)
        self.origin_node = origin_node
        self.origin_url = origin_url.rstrip("/")  # where we pull from: the origin, or the edge `via`
        self.via = via  # None: straight from the origin (such an edge may feed other edges)
        self.publication: Publication | None = None
        self.location: str | None = None  # the WHEP session on the origin, to DELETE it
        self.ready = asyncio.Event()
        self.closed = False
        self._token = ""
        self._deleting: asyncio.Future[None] | None = None

    async def start(self, session: aiohttp.ClientSession, token: str) -> None:
        """Offer recvonly m-lines to the origin's WHEP endpoint and tap what it sends.

        The edge does not know which kinds the publisher sends; it offers audio and video,
        and if the origin leaves one inactive it offers again with the other only: with
        max-bundle, aiortc stops the bundle's transport when its first m-line carries nothing.
        """
        self._token = token
        kinds: tuple[str, ...] = KINDS
        for _ in range(2):
            sent = await self._negotiate(session, kinds)
            if sent == kinds:
                break
            kinds = sent
        else:
            raise MediaError("relay_refused", "origin kept changing its tracks")
        self.ready.set()

    async def _negotiate(self, session: aiohttp.ClientSession, kinds: tuple[str, ...]) -> tuple[str, ...]:
        """One offer/answer; returns the kinds the origin sends (the offer's when all are)."""
        pc = RTCPeerConnection(self.room.config.rtc_configuration())
        try:
            pub = self.room.add_publisher(self.publisher_id, pc, kinds)
        except MediaError:
            await pc.close()
            raise
        self.publication = pub
        try:
            await pc.setLocalDescription(await pc.createOffer())
            src_room, src_pub = self.source
            url = f"{self.origin_url}/whep/{quote(src_room)}?publisher={quote(src_pub)}"
            headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/sdp"}
            async with session.post(
                url, data=pc.localDescription.sdp, headers=headers, timeout=HTTP_TIMEOUT
            ) as resp:
                body = await resp.text()
                if resp.status == 503:  # the node we asked serves all the viewers it may
                    raise MediaError("relay_full", f"{url} is full: {body[:200]}")
                if resp.status != 201:
                    raise MediaError("relay_refused", f"origin answered {resp.status}: {body[:200]}")
                self.location = resp.headers.get("Location")
            if self.closed:
                raise MediaError("relay_closed", "relay closed while connecting")
            sending = tuple(k for k, d in answered_directions(body) if d in ("sendonly", "sendrecv"))
            if not sending:
                raise MediaError("relay_refused", "origin sends nothing for this publisher")
            if sending != kinds:
                await self.room.remove_publisher(self.publisher_id, pub)
                await self._delete_session(session)
                return sending
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
            self.room.publication_ready(self.publisher_id)
        except Exception:
            await self.room.remove_publisher(self.publisher_id, pub)
            await self._delete_session(session)
            raise
        return kinds

    @property
    def ended(self) -> bool:
        """The origin ended the stream (publisher left, origin gone): the room dropped it."""
        pub = self.publication
        return pub is not None and pub.ended.is_set()

    async def close(self, session: aiohttp.ClientSession) -> None:
        """Stop pulling: end the local publication and the origin's WHEP session."""
        self.closed = True
        pub = self.publication
        if pub is not None:
            await self.room.remove_publisher(self.publisher_id, pub)
        # in the background: a dead origin must not hold up the edge's next relay
        self._deleting = asyncio.ensure_future(self._delete_session(session))

    async def _delete_session(self, session: aiohttp.ClientSession) -> None:
        location, self.location = self.location, None
        if location is None:
            return
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError, RuntimeError):
            async with session.delete(
                self.origin_url + location,
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=aiohttp.ClientTimeout(total=3),
            ):
                pass
