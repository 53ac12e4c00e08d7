"""The aiortc hook that lets the SFU forward encoded frames without decoding them.

Written against aiortc 1.16.0 (pinned in pyproject.toml). This is the only module that
touches aiortc private state, and it is pin-sensitive:

* ``RTCRtpReceiver._handle_rtp_packet`` puts every reassembled encoded frame on the
  name-mangled ``_RTCRtpReceiver__decoder_queue`` as ``(codec, JitterFrame)``, and puts
  ``None`` there when the receiver stops (RTCP BYE, transport closed, ``stop()``). The
  decoder thread started by ``receive()`` reads that queue. We replace the queue with a
  :class:`ReceiverTap`: frames go to the SFU, only the ``None`` end marker reaches the
  (then idle) decoder thread, so the server never decodes.
* ``RTCRtpSender._next_encoded_frame`` calls ``encoder.pack(packet)`` instead of
  ``encode()`` when the track yields ``av.Packet``; that is how viewer legs re-packetize.
* In pack mode a sender ignores PLI/FIR (only the encode path reads the keyframe flag
  set by ``RTCRtpSender._send_keyframe``); we wrap ``_send_keyframe`` per sender instance
  to route the request upstream.
* ``RTCRtpReceiver._send_rtcp_pli(media_ssrc)`` sends a PLI to the publisher.
* ``RTCRtpSender._stream_id`` is the msid stream id announced in SDP.
* ``aiortc.codecs.CODECS`` lists the codecs aiortc negotiates; it has H.264 baseline and
  constrained baseline only. :func:`add_h264_main_profile` adds the main profile (a
  forwarded bitstream is never decoded here, so any profile packetizes the same way).

:func:`check_compatible` verifies all of the above and must pass before the SFU starts.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import aiortc
import av
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.codecs import CODECS, h264, opus, vpx
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

logger = logging.getLogger(__name__)

#: aiortc version this hook was written and tested against.
TESTED_AIORTC_VERSION = "1.16.0"

_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"
_THREAD_ATTR = "_RTCRtpReceiver__decoder_thread"

#: Process-wide counters, so tests and metrics can prove the forwarding path is used and
#: the decoder is not. ``frames_to_decoder`` counts frames a decoder thread received
#: through a tap (0 unless aiortc changed how it feeds the decoder); ``frames_stale`` counts
#: frames a tap dropped for being older than one it forwarded (:class:`FrameOrder`).
COUNTERS: dict[str, int] = {"frames_tapped": 0, "bytes_tapped": 0, "frames_to_decoder": 0, "frames_stale": 0}

_TIME_BASES: dict[int, Fraction] = {}


class AiortcCompatibilityError(RuntimeError):
    """The installed aiortc no longer has the internals the forwarding hook relies on."""


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One reassembled encoded frame, ready to hand to viewer senders."""

    codec: RTCRtpCodecParameters
    data: bytes
    packet: av.Packet
    # time.monotonic() when the frame came in: a frame replayed from the GOP cache is older
    # than its delivery, and the HLS tap dates frames by when they were live (hls/live.py)
    arrived: float = 0.0

    @property
    def codec_name(self) -> str:
        return self.codec.name


def time_base_for(codec: RTCRtpCodecParameters) -> Fraction:
    """RTP clock as a time base: 1/90000 for video, 1/48000 for Opus."""
    rate = codec.clockRate
    tb = _TIME_BASES.get(rate)
    if tb is None:
        tb = _TIME_BASES[rate] = Fraction(1, rate)
    return tb


RTP_WRAP = 1 << 32
#: how far back in time a frame counts as stale; further back, the stream has restarted
#: (a sender with a new timestamp origin) and is followed from there
STALE_WINDOW_S = 30


class FrameOrder:
    """The RTP timestamps of one receiver's frames: only newer frames pass, unwrapped.

    Why: aiortc 1.16's jitter buffer restarts at any packet 100 or more sequence numbers
    behind its window (a late retransmission or duplicate, which a loaded node's socket
    backlog makes) and hands out the old frames such a run of packets completes; its
    TimestampMapper takes their older timestamps for a wrap. Forwarded as is, those frames go
    out on each viewer's sender after newer ones: the viewer's stream jumps seconds back in
    time (issue #21). A frame is newer when its timestamp is ahead in 32-bit serial
    arithmetic (RFC 1982); the unwrapped count it gets is the time viewers, HLS and recordings
    see, continuous whatever aiortc's mapper guessed.
    """

    def __init__(self) -> None:
        self.last: int | None = None  # the last passed frame's RTP timestamp, mod 2**32
        self.pts = 0
        self.restarts = 0  # jumps back further than STALE_WINDOW_S, followed

    def next_pts(self, timestamp: int, clock_rate: int) -> int | None:
        """The frame's unwrapped timestamp, or None when it is not newer than the last."""
        ts = timestamp % RTP_WRAP
        if self.last is None:
            self.last = self.pts = ts
            return ts
        step = (ts - self.last) % RTP_WRAP
        if step == 0:
            return None  # the same frame again
        if step >= RTP_WRAP // 2:  # behind the last frame
            if RTP_WRAP - step <= STALE_WINDOW_S * clock_rate:
                return None
            self.restarts += 1
            step = 1  # a restarted stream: keep the time moving forward
        self.last = ts
        self.pts += step
        return self.pts


def to_packet(codec: RTCRtpCodecParameters, frame: JitterFrame) -> av.Packet:
    """Wrap encoded bytes as an ``av.Packet`` so a sender packs instead of encoding."""
    packet = av.Packet(frame.data)
    packet.pts = frame.timestamp
    packet.time_base = time_base_for(codec)
    return packet


class ReceiverTap:
    """Stands in for a receiver's decoder queue and diverts encoded frames to the SFU.

    aiortc calls :meth:`put` on the event loop thread; the decoder thread calls
    :meth:`get`, which only ever yields the ``None`` end marker, so it idles until the
    receiver stops and then ends the (unused) remote track as usual.
    """

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        on_frame: Callable[[EncodedFrame], None],
        on_end: Callable[[], None],
    ) -> None:
        self.receiver = receiver
        self.frames_tapped = 0
        self.bytes_tapped = 0
        self.frames_to_decoder = 0
        self.frames_stale = 0  # older than a frame already forwarded: dropped (FrameOrder)
        self.ended = False
        self._order = FrameOrder()
        self._on_frame = on_frame
        self._on_end = on_end
        self._original: queue.Queue[Any] = getattr(receiver, _QUEUE_ATTR)
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    # -- queue.Queue surface used by aiortc -------------------------------------------
    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Called by aiortc with ``(codec, JitterFrame)`` per frame, or ``None`` at the end."""
        if item is None:
            # Let the decoder thread exit (RTCRtpReceiver joins it right after this).
            self._original.put(None)
            self._dispatch(self._end)
            return
        codec, frame = item
        if threading.get_ident() == self._loop_thread:
            self._frame(codec, frame)
        else:
            self._loop.call_soon_threadsafe(self._frame, codec, frame)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Called by the idle decoder thread; only ever returns the end marker."""
        item = self._original.get(block, timeout)
        if item is not None:  # something bypassed the tap: the server is decoding
            self.frames_to_decoder += 1
            COUNTERS["frames_to_decoder"] += 1
            logger.error("media: a frame reached the aiortc decoder despite the tap")
        return item

    # -- internals --------------------------------------------------------------------
    def _dispatch(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self._loop_thread:
            fn()
        else:  # not expected with aiortc 1.16, but never run SFU code off-loop
            self._loop.call_soon_threadsafe(fn)

    def _frame(self, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        if self.ended:
            return
        pts = self._order.next_pts(frame.timestamp, codec.clockRate)
        if pts is None:
            self.frames_stale += 1
            COUNTERS["frames_stale"] += 1
            logger.info("media: dropped a stale %s frame (RTP timestamp %d)", codec.name, frame.timestamp)
            return
        frame.timestamp = pts
        data = frame.data
        self.frames_tapped += 1
        self.bytes_tapped += len(data)
        COUNTERS["frames_tapped"] += 1
        COUNTERS["bytes_tapped"] += len(data)
        try:
            packet = to_packet(codec, frame)
            self._on_frame(EncodedFrame(codec=codec, data=data, packet=packet, arrived=time.monotonic()))
        except Exception:  # an SFU bug must not tear down the publisher's transport
            logger.exception("media: forwarding a %s frame failed", codec.name)

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        try:
            self._on_end()
        except Exception:
            logger.exception("media: end-of-track handler failed")


def install_receiver_tap(
    receiver: RTCRtpReceiver,
    on_frame: Callable[[EncodedFrame], None],
    on_end: Callable[[], None],
) -> ReceiverTap:
    """Divert ``receiver``'s encoded frames to ``on_frame``; the server never decodes them.

    Works before or after ``receiver.receive()`` has started the decoder thread; call it
    before media flows (e.g. right after creating the transceiver) so no frame is decoded.
    Must be called from the event loop.
    """
    current = getattr(receiver, _QUEUE_ATTR, None)
    if isinstance(current, ReceiverTap):
        raise RuntimeError("receiver is already tapped")
    if not isinstance(current, queue.Queue):
        raise AiortcCompatibilityError(
            f"RTCRtpReceiver has no {_QUEUE_ATTR} queue; forward.py needs updating for "
            f"aiortc {aiortc.__version__}"
        )
    tap = ReceiverTap(receiver, on_frame, on_end)
    setattr(receiver, _QUEUE_ATTR, tap)
    return tap


def tap_of(receiver: RTCRtpReceiver) -> ReceiverTap | None:
    """The tap installed on ``receiver``, if any (tests assert the hook is active)."""
    current = getattr(receiver, _QUEUE_ATTR, None)
    return current if isinstance(current, ReceiverTap) else None


def route_sender_keyframe_requests(sender: RTCRtpSender, on_request: Callable[[], None]) -> None:
    """Call ``on_request`` when the viewer behind ``sender`` sends PLI or FIR.

    aiortc's sender only sets a flag that the encoder reads; in pack mode nothing reads
    it, so the request has to go upstream to the publisher instead.
    """

    def _send_keyframe(self: RTCRtpSender) -> None:
        on_request()

    sender._send_keyframe = types.MethodType(_send_keyframe, sender)  # type: ignore[method-assign]


def set_sender_stream_id(sender: RTCRtpSender, stream_id: str) -> None:
    """Set the MediaStream id (``a=msid``) a sender's track is announced in.

    aiortc puts every track of a connection in one stream; an SFU viewer wants one
    stream per publisher so a browser gets audio and video of a person grouped.
    """
    sender._stream_id = stream_id


async def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Ask the publisher behind ``receiver`` for a keyframe (RTCP PLI)."""
    await receiver._send_rtcp_pli(media_ssrc)


def _source(obj: Any) -> str | None:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return None


_compatible = False

H264_MAIN = "4d001f"


def add_h264_main_profile() -> None:
    """Let aiortc negotiate H.264 main profile (OBS and hardware encoders send it); idempotent.

    Appended after aiortc's own entries with the next two dynamic payload types (and RTX),
    the way aiortc builds its table, so existing negotiations do not change.
    """
    video = CODECS["video"]
    if any(c.parameters.get("profile-level-id") == H264_MAIN for c in video):
        return
    pt = max(c.payloadType for c in video) + 1
    feedback = next(c.rtcpFeedback for c in video if c.name == "H264")
    video.append(
        RTCRtpCodecParameters(
            mimeType="video/H264",
            clockRate=90000,
            payloadType=pt,
            rtcpFeedback=list(feedback),
            parameters={
                "level-asymmetry-allowed": "1",
                "packetization-mode": "1",
                "profile-level-id": H264_MAIN,
            },
        )
    )
    video.append(
        RTCRtpCodecParameters(
            mimeType="video/rtx", clockRate=90000, payloadType=pt + 1, parameters={"apt": pt}
        )
    )


def ensure_compatible() -> None:
    """:func:`check_compatible`, run once per process (MediaRoom calls it)."""
    global _compatible
    if not _compatible:
        check_compatible()
        _compatible = True


def check_compatible() -> None:
    """Raise :class:`AiortcCompatibilityError` if aiortc internals used here changed.

    Call at startup: a silent mismatch would mean either decoding on the server (CPU
    blow-up) or viewers that never receive media.
    """
    problems: list[str] = []

    def need(cond: bool, what: str) -> None:
        if not cond:
            problems.append(what)

    # Receiver: decoder queue and thread attributes exist with the expected types.
    class _StubTransport:
        state = "new"

    try:
        probe = RTCRtpReceiver("video", _StubTransport())  # type: ignore[arg-type]
    except Exception as exc:
        problems.append(f"cannot construct RTCRtpReceiver: {exc!r}")
    else:
        need(isinstance(getattr(probe, _QUEUE_ATTR, None), queue.Queue), f"RTCRtpReceiver.{_QUEUE_ATTR}")
        need(hasattr(probe, _THREAD_ATTR), f"RTCRtpReceiver.{_THREAD_ATTR}")
    need(
        inspect.iscoroutinefunction(getattr(RTCRtpReceiver, "_send_rtcp_pli", None)),
        "async RTCRtpReceiver._send_rtcp_pli(media_ssrc)",
    )
    need(
        list(inspect.signature(JitterFrame).parameters) == ["data", "timestamp"],
        "JitterFrame(data, timestamp)",
    )
    # Sender: keyframe requests go through _send_keyframe; av.Packet tracks are packed.
    need(callable(getattr(RTCRtpSender, "_send_keyframe", None)), "RTCRtpSender._send_keyframe")
    need(
        "self._stream_id" in (_source(RTCRtpSender.__init__) or "self._stream_id"), "RTCRtpSender._stream_id"
    )
    for enc in (vpx.Vp8Encoder, h264.H264Encoder, opus.OpusEncoder):
        need(callable(getattr(enc, "pack", None)), f"{enc.__name__}.pack")

    checks = [
        (RTCRtpReceiver._handle_rtp_packet, "self.__decoder_queue.put((codec, encoded_frame))"),
        (RTCRtpReceiver.receive, "self.__decoder_queue"),
        (RTCRtpSender._next_encoded_frame, ".pack(data)"),
        (RTCRtpSender._handle_rtcp_packet, "self._send_keyframe()"),
    ]
    for func, needle in checks:
        src = _source(func)
        if src is None:
            logger.warning("media: no source for %s, skipping its check", func.__qualname__)
        else:
            need(needle in src, f"{func.__qualname__} contains {needle!r}")

    video = CODECS.get("video")
    need(
        isinstance(video, list) and all(isinstance(c, RTCRtpCodecParameters) for c in video),
        "aiortc.codecs.CODECS['video'] as a list of RTCRtpCodecParameters",
    )
    if problems:
        raise AiortcCompatibilityError(
            f"aiortc {aiortc.__version__} is incompatible with server.media.forward "
            f"(written against {TESTED_AIORTC_VERSION}): missing " + "; ".join(problems)
        )
    add_h264_main_profile()
    if aiortc.__version__ != TESTED_AIORTC_VERSION:
        logger.warning(
            "media: aiortc %s passed the compatibility checks but only %s was tested",
            aiortc.__version__,
            TESTED_AIORTC_VERSION,
        )
