"""H.264 rooms end to end: a real server, real aiortc peers on 127.0.0.1 (no mocks).

The first publisher with video fixes a room's codec: an H.264-only WHIP publisher (what OBS,
FFmpeg and hardware encoders send) makes an H.264 room; WHEP and WebSocket viewers receive
H.264 as is and decode it; a VP8-only publisher is then refused 4608, a VP8-only viewer 4609;
the `live` event and the snapshot say the room's codec. Every wait is on an event or a decoded
frame with a timeout; no durations are asserted.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack

from server.app import App
from server.media.codecs import (
    H264,
    VideoCodec,
    answered_video_codec,
    choose_publish_codec,
    offered_video_codecs,
)
from server.media.errors import MediaError
from server.wire.protocol import ErrorCode
from tests.conftest import token
from tests.media.pattern import PatternTrack
from tests.test_media_signaling import (  # noqa: F401 - fixtures
    HEIGHT,
    WIDTH,
    assert_forwarded_not_decoded,
    config,
    decoded,
    is_live,
    loopback,
    member,
)

SDP = {"Content-Type": "application/sdp"}


def only(kind: str, name: str) -> list[Any]:
    """aiortc capabilities restricted to one codec (and RTX), as an encoder that has only it."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    return [c for c in caps if c.name.upper() == name.upper() or c.name == "rtx"]


async def whip_offer(video_codec: str) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = pc.addTransceiver(PatternTrack(WIDTH, HEIGHT), direction="sendonly")
    video.setCodecPreferences(only("video", video_codec))
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    return pc


async def whep_offer(video_codec: str | None, tracks: list[MediaStreamTrack]) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.on("track", tracks.append)
    video = pc.addTransceiver("video", direction="recvonly")
    if video_codec is not None:
        video.setCodecPreferences(only("video", video_codec))
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc


def auth(room: str, user: str, role: str = "viewer") -> dict[str, str]:
    return {**SDP, "Authorization": f"Bearer {token(room, user, role)}"}  # type: ignore[arg-type]


async def h264_whip_publisher(app: App) -> RTCPeerConnection:
    """An H.264-only WHIP publisher (user `obs`) answered in room r1: the room is H.264."""
    publisher = await whip_offer("H264")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{app.http_port}/whip/r1",
            data=publisher.localDescription.sdp,
            headers=auth("r1", "obs", "host"),
        ) as resp,
    ):
        assert resp.status == 201
        await publisher.setRemoteDescription(RTCSessionDescription(sdp=await resp.text(), type="answer"))
    return publisher


async def test_h264_whip_room_whep_and_ws_viewers_decode(app: App, member) -> None:  # noqa: F811
    base = f"http://127.0.0.1:{app.http_port}"
    watcher = await member("watcher")
    pcs: list[RTCPeerConnection] = []
    try:
        publisher = await whip_offer("H264")
        pcs.append(publisher)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{base}/whip/r1", data=publisher.localDescription.sdp, headers=auth("r1", "obs", "host")
            ) as resp:
                assert resp.status == 201, await resp.text()
                answer = await resp.text()
            assert "H264/90000" in answer and "VP8" not in answer
            await publisher.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            live = await watcher.event(is_live("obs", True))
            assert live["codec"] == "H264"
            late = await member("late")
            assert late.snapshot["media_codec"] == "H264"
            assert app.media.rooms["r1"].video_codec == H264

            # a WHEP viewer offering everything gets H.264 and decodes it
            tracks: list[MediaStreamTrack] = []
            player = await whep_offer(None, tracks)
            pcs.append(player)
            async with http.post(
                f"{base}/whep/r1", data=player.localDescription.sdp, headers=auth("r1", "wendy")
            ) as resp:
                assert resp.status == 201
                body = await resp.text()
            assert answered_video_codec(body) is not None and answered_video_codec(body).name == H264
            await player.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
            frame = await decoded(next(t for t in tracks if t.kind == "video"))
            assert (frame.width, frame.height) == (WIDTH, HEIGHT)
            assert isinstance(await decoded(next(t for t in tracks if t.kind == "audio")), av.AudioFrame)

            # a WebSocket viewer: the server's offer carries H.264, the client decodes
            ws_viewer = await member("vera")
            await ws_viewer.send(t="subscribe", cid="s")
            offer = await ws_viewer.accept_offer()
            assert "H264/90000" in offer["sdp"] and "VP8/90000" not in offer["sdp"]
            await decoded(next(t for t in ws_viewer.tracks if t.kind == "video"))

            # a VP8-only viewer cannot take the room's codec: 4609, nothing left registered
            vp8_tracks: list[MediaStreamTrack] = []
            vp8_player = await whep_offer("VP8", vp8_tracks)
            pcs.append(vp8_player)
            async with http.post(
                f"{base}/whep/r1", data=vp8_player.localDescription.sdp, headers=auth("r1", "otto")
            ) as resp:
                assert resp.status == 422
                refusal = await resp.json()
            assert refusal["code"] == ErrorCode.MEDIA_VIEWER_CODEC and "H264" in refusal["msg"]
            assert not any(v.startswith("otto#") for v in app.media.rooms["r1"].subscriptions)

            # a second publisher that only has VP8 is refused 4608; the first one is untouched
            invited = await whip_offer("VP8")
            pcs.append(invited)
            async with http.post(
                f"{base}/whip/r1", data=invited.localDescription.sdp, headers=auth("r1", "cohost", "host")
            ) as resp:
                assert resp.status == 409
                refusal = await resp.json()
            assert refusal["code"] == ErrorCode.MEDIA_CODEC_MISMATCH and "H264" in refusal["msg"]
            assert set(app.media.rooms["r1"].publications) == {"obs"}
            assert_forwarded_not_decoded(app)
    finally:
        for pc in pcs:
            await pc.close()


async def test_ws_publisher_offering_both_joins_the_h264_room(app: App, member) -> None:  # noqa: F811
    """A browser offers VP8 and H.264: in an H.264 room it is answered H.264, not refused."""
    publisher = await h264_whip_publisher(app)
    try:
        cohost = await member("cora", role="host")
        pc = cohost.new_pc()
        pc.addTrack(PatternTrack(WIDTH, HEIGHT))  # default preferences: VP8 first, H.264 too
        await pc.setLocalDescription(await pc.createOffer())
        await cohost.send(t="publish", sdp=pc.localDescription.sdp, cid="pub")
        answer = await cohost.next("answer")
        chosen = answered_video_codec(answer["sdp"])
        assert chosen is not None and chosen.name == H264
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await cohost.event(is_live("cora", True))
    finally:
        await publisher.close()


def test_codec_choice_rules() -> None:
    """Pure rules: profiles and packetization mode, the room's codec first, the preference next."""
    offer = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99\r\n"
        "c=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtpmap:96 H264/90000\r\n"
        "a=fmtp:96 packetization-mode=0;profile-level-id=42e01f\r\n"
        "a=rtpmap:97 H264/90000\r\na=fmtp:97 packetization-mode=1;profile-level-id=640c1f\r\n"
        "a=rtpmap:98 H264/90000\r\na=fmtp:98 packetization-mode=1;profile-level-id=4d001f\r\n"
        "a=rtpmap:99 VP8/90000\r\n"
    )
    offered = offered_video_codecs(offer)
    assert offered == [VideoCodec(H264, "main"), VideoCodec("VP8")]  # mode 0 and High are not forwarded
    assert choose_publish_codec(offered, None) == VideoCodec("VP8")
    assert choose_publish_codec(offered, None, ("H264", "VP8")) == VideoCodec(H264, "main")
    assert choose_publish_codec(offered, "H264") == VideoCodec(H264, "main")
    for room, expected in ((None, "codec_unsupported"), ("VP8", "codec_mismatch")):
        try:
            choose_publish_codec([], room)
        except MediaError as exc:
            assert exc.code == expected
        else:
            raise AssertionError("no refusal")


async def test_ws_viewer_that_rejects_the_video_is_told_4609(app: App, member) -> None:  # noqa: F811
    """A browser without H.264 answers the server's offer with the video m-line rejected (port
    0): it is told 4609 MEDIA_VIEWER_CODEC (its page says so) instead of getting a black video."""
    viewer = await member("nora")  # in the room first: it sees the `live` event
    publisher = await h264_whip_publisher(app)
    try:
        await viewer.event(is_live("obs", True))
        await viewer.send(t="subscribe", cid="s")
        offer = await viewer.next("offer")
        pc = viewer.new_pc()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        rejected = re.sub(r"^m=video \d+ ", "m=video 0 ", pc.localDescription.sdp, flags=re.MULTILINE)
        assert rejected != pc.localDescription.sdp
        await viewer.send(t="answer", sdp=rejected)
        assert await viewer.error() == ErrorCode.MEDIA_VIEWER_CODEC
    finally:
        await publisher.close()
