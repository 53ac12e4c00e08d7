"""Which video codec a room forwards, and what an offer gets.

Why one codec per room: the SFU forwards encoded frames as they come (never transcodes), so a
viewer must decode exactly what a publisher sends, and a viewer's connection carries every
publisher of the room. The first publisher with video fixes the room's codec (VP8 or H.264)
until the room has no video publisher left; a later publisher whose offer lacks that codec is
refused (``codec_mismatch``), and a viewer that cannot take it is refused (``viewer_codec``).
Browsers offer both and get the room's codec; FFmpeg and OBS offer H.264 only.

H.264 is forwarded in packetization-mode 1 with the constrained-baseline, baseline or main
profile (what every browser decodes). B-frames are not supported: aiortc packetizes in decode
order with the RTP timestamp of each frame, and WebRTC receivers expect presentation order.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import H264Profile, SessionDescription, parse_h264_profile_level_id

from .errors import MediaError

VP8 = "VP8"
H264 = "H264"
#: room codec preference when a first publisher offers both (browsers do)
DEFAULT_PREFERENCE: tuple[str, ...] = (VP8, H264)

_PROFILES = {
    H264Profile.PROFILE_CONSTRAINED_BASELINE: "constrained-baseline",
    H264Profile.PROFILE_BASELINE: "baseline",
    H264Profile.PROFILE_MAIN: "main",
}
#: one profile-level-id per forwarded profile (level 3.1: what aiortc and browsers announce)
PROFILE_LEVEL_IDS = {"constrained-baseline": "42e01f", "baseline": "42001f", "main": "4d001f"}


@dataclass(frozen=True, slots=True)
class VideoCodec:
    """A forwardable video codec; ``profile`` is the H.264 profile (None for VP8)."""

    name: str
    profile: str | None = None

    def __str__(self) -> str:
        return self.name if self.profile is None else f"{self.name} ({self.profile})"


def h264_profile(params: RTCRtpCodecParameters) -> str | None:
    """The forwarded profile an H.264 payload type announces, or None if it is not forwarded."""
    if str(params.parameters.get("packetization-mode", "0")) != "1":
        return None
    try:
        profile, _ = parse_h264_profile_level_id(str(params.parameters.get("profile-level-id", "42e01f")))
    except ValueError:
        return None
    return _PROFILES.get(profile)


def video_codec_of(params: RTCRtpCodecParameters) -> VideoCodec | None:
    """The forwardable codec of one SDP payload type, or None."""
    name = params.name.upper()
    if name == VP8:
        return VideoCodec(VP8)
    if name == H264:
        profile = h264_profile(params)
        return VideoCodec(H264, profile) if profile else None
    return None


def offered_video_codecs(sdp: str) -> list[VideoCodec]:
    """Forwardable codecs of the first video m-line, in the offer's order (empty: no video)."""
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:
        raise MediaError("bad_sdp", f"cannot parse SDP: {exc}") from exc
    media = next((m for m in parsed.media if m.kind == "video"), None)
    if media is None:
        return []
    found: list[VideoCodec] = []
    for params in media.rtp.codecs:
        codec = video_codec_of(params)
        if codec is not None and codec not in found:
            found.append(codec)
    return found


def answered_video_codec(sdp: str) -> VideoCodec | None:
    """The codec an answer (or an accepted offer) sends on its video m-line: its first one."""
    parsed = SessionDescription.parse(sdp)
    for media in parsed.media:
        if media.kind == "video" and media.port != 0:
            for params in media.rtp.codecs:
                codec = video_codec_of(params)
                if codec is not None:
                    return codec
    return None


def choose_publish_codec(
    offered: list[VideoCodec], room_codec: str | None, preference: tuple[str, ...] = DEFAULT_PREFERENCE
) -> VideoCodec:
    """The codec a publisher's video gets: the room's if set, else the first preferred one offered."""
    if room_codec is not None:
        for codec in offered:
            if codec.name == room_codec:
                return codec
        raise MediaError(
            "codec_mismatch",
            f"this room forwards {room_codec} (fixed by its first publisher); the offer has "
            f"{', '.join(map(str, offered)) or 'no forwardable video codec'}",
        )
    for name in preference:
        for codec in offered:
            if codec.name == name:
                return codec
    raise MediaError(
        "codec_unsupported",
        "no forwardable video codec in the offer: VP8, or H264 packetization-mode=1 with the "
        "constrained-baseline, baseline or main profile",
    )
