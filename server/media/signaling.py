"""SDP offer/answer helpers that connect peers to a :class:`~server.media.room.MediaRoom`.

Meant to sit behind the WebSocket protocol and WHIP/WHEP; all SDP is complete (aiortc
gathers candidates before returning a description, so no trickle ICE is needed):

* publish: client ``{"t": "publish", "sdp": offer}`` -> :func:`handle_publish_offer` ->
  ``{"t": "answer", "sdp": answer}`` (also WHIP).
* subscribe, server offers: :func:`create_subscribe_offer` -> client answers ->
  :func:`handle_subscribe_answer`. Call :func:`create_subscribe_offer` again for the same
  viewer to add tracks published since (renegotiation on the same connection).
* subscribe, client offers (WHEP): :func:`handle_subscribe_offer` -> answer.

Errors are :class:`~server.media.errors.MediaError` with a ``code``; on error nothing is
left registered for that peer.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import OperationError
from aiortc.sdp import SessionDescription

from .codecs import choose_publish_codec, offered_video_codecs
from .errors import MediaError
from .room import KINDS, MediaRoom, Subscription, close_connection


def mline_kinds(sdp: str) -> list[str]:
    """Audio/video m-line kinds of an SDP, in order."""
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:
        raise MediaError("bad_sdp", f"cannot parse offer: {exc}") from exc
    return [m.kind for m in parsed.media if m.kind in KINDS]


def offered_kinds(sdp: str) -> list[str]:
    """Media kinds in a publisher's offer, in m-line order; at most one of each kind."""
    kinds = mline_kinds(sdp)
    for kind in KINDS:
        if kinds.count(kind) > 1:
            raise MediaError("too_many_tracks", f"at most one {kind} track per publisher")
    if not kinds:
        raise MediaError("no_media", "offer has no audio or video")
    return kinds


def _sdp_error(exc: Exception, room: MediaRoom | None = None) -> MediaError:
    """A MediaError for what went wrong; ``room`` given: a viewer's (no codec in common is theirs)."""
    if isinstance(exc, MediaError):
        return exc
    if isinstance(exc, OperationError):  # aiortc: no codec in common
        if room is not None:
            return _viewer_codec_error(room)
        return MediaError("codec_unsupported", str(exc))
    return MediaError("bad_sdp", f"{type(exc).__name__}: {exc}")


def _viewer_codec_error(room: MediaRoom) -> MediaError:
    codecs = sorted({str(p.video_codec) for p in room.publications.values() if p.video_codec})
    return MediaError(
        "viewer_codec",
        f"this room sends {', '.join(codecs) or 'a codec'} + Opus, which the viewer does not take",
    )


def _check_viewer_answer(room: MediaRoom, sub: Subscription, sdp: str) -> None:
    """A viewer that rejects one of its video tracks' m-lines (port 0) cannot decode the codec."""
    ours = {t.transceiver.mid for t in sub.tracks if t.active and t.kind == "video"}
    parsed = SessionDescription.parse(sdp)
    for media in parsed.media:
        rejected = media.port == 0 or not media.rtp.codecs
        if media.kind == "video" and rejected and (media.rtp.muxId in ours or not media.rtp.muxId):
            raise _viewer_codec_error(room)


async def handle_publish_offer(room: MediaRoom, publisher_id: str, sdp: str) -> str:
    """Accept a publisher's offer (up to one audio + one video) and return the answer SDP.

    The answer allows one video codec: the room's (``codec_mismatch`` if the offer lacks
    it), or for the room's first video publisher the first of ``MediaConfig.video_preference``
    the offer has (see :mod:`server.media.codecs`), and Opus; media starts flowing to current
    and future viewers once ICE/DTLS complete.
    """
    kinds = offered_kinds(sdp)
    codec = None
    if "video" in kinds:
        codec = choose_publish_codec(
            offered_video_codecs(sdp), room.video_codec, room.config.video_preference
        )
    pc = RTCPeerConnection(room.config.rtc_configuration())
    try:
        pub = room.add_publisher(publisher_id, pc, kinds, codec)
    except MediaError:
        await pc.close()
        raise
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        ours = set(pub.transceivers.values())
        for transceiver in pc.getTransceivers():
            if transceiver not in ours:  # untapped: must never receive (it would decode)
                transceiver.direction = "inactive"
        await pc.setLocalDescription(await pc.createAnswer())
        room.publication_ready(publisher_id)
    except Exception as exc:
        await room.remove_publisher(publisher_id, pub)
        raise _sdp_error(exc) from exc
    return pc.localDescription.sdp


async def create_subscribe_offer(
    room: MediaRoom, viewer_id: str, publisher_ids: Iterable[str] | None = None
) -> str:
    """Offer SDP for a viewer receiving the published tracks (all, or ``publisher_ids``).

    For a viewer that is already connected, adds tracks published since and returns a
    renegotiation offer on the same connection. Raises ``no_media`` if nothing is
    published yet (subscribe again on the room's ``"published"`` event).
    """
    existing = room.subscriptions.get(viewer_id)
    pc = existing.pc if existing is not None else RTCPeerConnection(room.config.rtc_configuration())
    try:
        sub = room.subscribe(viewer_id, pc, publisher_ids)
        if not any(t.active for t in sub.tracks):
            raise MediaError("no_media", "nothing is published in this room yet")
        if pc.signalingState != "stable":
            raise MediaError("bad_state", f"viewer {viewer_id!r} has a negotiation in progress")
        await pc.setLocalDescription(await pc.createOffer())
    except Exception as exc:
        if existing is None:
            await room.remove_viewer(viewer_id)
            await close_connection(pc)
        raise _sdp_error(exc) from exc
    return pc.localDescription.sdp


async def handle_subscribe_answer(room: MediaRoom, viewer_id: str, sdp: str) -> None:
    """Apply a viewer's answer to :func:`create_subscribe_offer`."""
    sub = _subscription(room, viewer_id)
    if sub.pc.signalingState != "have-local-offer":
        raise MediaError("bad_state", f"no offer pending for viewer {viewer_id!r}")
    try:
        _check_viewer_answer(room, sub, sdp)
        await sub.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
    except Exception as exc:
        await room.remove_viewer(viewer_id)
        raise _sdp_error(exc, room) from exc


async def handle_subscribe_offer(
    room: MediaRoom, viewer_id: str, sdp: str, publisher_ids: Iterable[str] | None = None
) -> str:
    """WHEP-style: answer a viewer's recvonly offer with published tracks.

    The offer's audio/video m-lines are filled in publication order (first publisher's
    audio and video first); published tracks without a matching m-line are not sent,
    m-lines without a track are answered inactive.
    """
    if viewer_id in room.subscriptions:
        raise MediaError("already_subscribed", f"{viewer_id!r} already has a connection")
    kinds = mline_kinds(sdp)
    pc = RTCPeerConnection(room.config.rtc_configuration())
    try:
        sub = room.subscribe(viewer_id, pc, publisher_ids, mline_kinds=kinds)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for t in list(sub.tracks):
            if t.transceiver.mid is None:  # no m-line for it in the offer
                t.active = False
                t.track.stop()
                sub.tracks.remove(t)
        if not sub.tracks:
            raise MediaError("no_media", "nothing published matches the offer")
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:
        await room.remove_viewer(viewer_id)
        await close_connection(pc)
        raise _sdp_error(exc, room) from exc
    return pc.localDescription.sdp


def _subscription(room: MediaRoom, viewer_id: str) -> Subscription:
    sub = room.subscriptions.get(viewer_id)
    if sub is None:
        raise MediaError("unknown_viewer", f"no viewer {viewer_id!r}")
    return sub
