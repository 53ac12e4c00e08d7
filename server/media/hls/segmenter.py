"""One room's encoded frames in, a CMAF init segment and fMP4 fragments (HLS parts) out.

H.264 from the publisher is remuxed as it is (no transcode: its keyframes set the segment
boundaries, so the caller asks the publisher for one at each boundary). VP8 is decoded and
encoded once with libx264 (ultrafast, zerolatency), its keyframes forced every segment target,
so segments are cut exactly there. Opus becomes AAC either way: HLS players and CDNs expect it.

FFmpeg's mp4 muxer writes the fragments (`frag_keyframe` + `frag_duration` just under the part
target, `empty_moov`, `default_base_moof`, `cmaf`); the fragments are read back with
:mod:`server.media.hls.fmp4` for their true start, duration and keyframe flag.

Blocking PyAV work: run every call of one Segmenter on one worker thread, in order.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from fractions import Fraction

import av
from av.video.frame import PictureType

from .fmp4 import BoxReader, track_runs

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
_VIDEO_TB = Fraction(1, VIDEO_CLOCK)
_AUDIO_TB = Fraction(1, AUDIO_RATE)
SILENCE_SAMPLES = 960  # 20 ms, an Opus frame: the silence that leads audio in is made of these
X264_OPTIONS = {
    "preset": "ultrafast",
    "tune": "zerolatency",
    "forced-idr": "1",
    # no keyframe but the forced ones: segments start exactly at the segment target
    "x264-params": "keyint=100000:min-keyint=100000:scenecut=0",
}


@dataclass(frozen=True, slots=True)
class Fragment:
    """One moof+mdat (or several, when the muxer wrote one with no video in it)."""

    data: bytes
    start: float  # seconds of video since the stream began
    duration: float  # seconds of video it holds
    independent: bool  # its first video frame is a keyframe


class _Sink(io.RawIOBase):
    """The muxer's output file: collects whole top-level boxes as they are written."""

    def __init__(self) -> None:
        self.reader = BoxReader()
        self.boxes: list = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.boxes += self.reader.feed(bytes(data))
        return len(data)


class Segmenter:
    """Encoded video and audio frames (seconds since the stream's anchor) to CMAF output."""

    def __init__(
        self,
        video_codec: str,
        *,
        with_audio: bool,
        part_target: float = 0.5,
        segment_target: float = 2.0,
        bitrate: int = 1_500_000,
    ) -> None:
        codec = video_codec.lower()
        if codec not in ("vp8", "h264"):
            raise ValueError(f"no HLS path for video codec {video_codec!r}")
        self.transcode = codec == "vp8"
        self.with_audio = with_audio
        self.part_target = part_target
        self.segment_target = segment_target
        self.bitrate = bitrate
        self.init: bytes | None = None
        self.started_at: float | None = None  # anchor seconds of the first video frame
        self.frames_in = 0
        self._decoder = av.CodecContext.create("vp8", "r") if self.transcode else None
        self._audio_decoder = av.CodecContext.create("opus", "r") if with_audio else None
        self._sink = _Sink()
        self._out: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._audio: av.AudioStream | None = None
        self._size: tuple[int, int] | None = None
        self._next_key = 0.0
        self._pending = b""  # a video-less fragment, handed on with the next one
        self._last_video_pts = -1
        self._last_audio_pts: int | None = None

    # -- input ------------------------------------------------------------------------------
    def video(self, data: bytes, at: float, keyframe: bool) -> list[Fragment]:
        """One encoded video frame at `at` seconds; returns the fragments that completed."""
        self.frames_in += 1
        if self._out is None:
            if not keyframe:
                return []
            self._open(data)
            self.started_at = at
        assert self.started_at is not None
        rel = at - self.started_at
        if self.transcode:
            self._transcode_video(data, rel)
        else:
            self._remux_video(data, rel, keyframe)
        return self._drain()

    def audio(self, data: bytes, at: float) -> list[Fragment]:
        """One Opus frame at `at` seconds; dropped before the first video keyframe."""
        if self._out is None or self._audio is None or self._audio_decoder is None:
            return []
        assert self.started_at is not None
        rel = at - self.started_at
        if rel < 0:
            return []
        pts = round(rel * AUDIO_RATE)
        if self._last_audio_pts is not None and pts <= self._last_audio_pts:
            return []
        first = self._last_audio_pts is None
        self._last_audio_pts = pts
        try:
            frames = self._audio_decoder.decode(av.Packet(data))
        except av.FFmpegError as exc:
            log.info("hls: undecodable opus frame dropped: %s", exc)
            return []
        if first and frames:
            self._silence_until(pts, frames[0])
        for frame in frames:
            frame.pts = pts
            frame.time_base = _AUDIO_TB
            pts += frame.samples
            for packet in self._audio.encode(frame):
                self._out.mux(packet)
        return self._drain()

    def _silence_until(self, end: int, like: av.AudioFrame) -> None:
        """Silence from the video's start to the first sound: the muxer starts every track at
        zero, so audio that starts later (the video began with the node's cached GOP, older
        than any audio the tap gets) would otherwise play that much ahead of the picture."""
        assert self._audio is not None and self._out is not None
        for start in range(0, end, SILENCE_SAMPLES):
            frame = av.AudioFrame(
                format=like.format.name, layout=like.layout.name, samples=min(SILENCE_SAMPLES, end - start)
            )
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, start, _AUDIO_TB
            for packet in self._audio.encode(frame):
                self._out.mux(packet)

    def close(self) -> list[Fragment]:
        """Flush the encoders and the muxer: the last fragment comes out."""
        if self._out is None:
            return []
        try:
            if self.transcode and self._video is not None:
                for packet in self._video.encode(None):
                    self._out.mux(packet)
            if self._audio is not None:
                for packet in self._audio.encode(None):
                    self._out.mux(packet)
            self._out.close()
        except av.FFmpegError as exc:
            log.info("hls: closing the muxer: %s", exc)
        self._out = None
        return self._drain()

    # -- internals -------------------------------------------------------------------------
    def _open(self, keyframe: bytes) -> None:
        options = {
            "movflags": "empty_moov+default_base_moof+frag_keyframe+cmaf",
            "frag_duration": str(int(self.part_target * 0.9 * 1_000_000)),
            "video_track_timescale": str(VIDEO_CLOCK),
            "max_interleave_delta": str(int(self.part_target * 1_000_000)),
        }
        out = av.open(self._sink, "w", format="mp4", options=options)
        if self.transcode:
            assert self._decoder is not None
            frames = self._decoder.decode(av.Packet(keyframe))
            if not frames:
                raise ValueError("the first VP8 keyframe did not decode")
            width, height = frames[0].width & ~1, frames[0].height & ~1
            self._size = (width, height)
            video = out.add_stream("libx264", options=dict(X264_OPTIONS))
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.time_base = _VIDEO_TB
            video.codec_context.time_base = _VIDEO_TB
            video.bit_rate = self.bitrate
            self._first_frames = frames
        else:
            probe = av.open(io.BytesIO(keyframe), format="h264")
            video = out.add_stream_from_template(probe.streams.video[0])
            video.time_base = _VIDEO_TB
            probe.close()
        self._video = video
        if self.with_audio:
            audio = out.add_stream("aac", rate=AUDIO_RATE)
            audio.layout = "stereo"
            audio.time_base = _AUDIO_TB
            self._audio = audio
        self._out = out

    def _transcode_video(self, data: bytes, rel: float) -> None:
        assert self._video is not None and self._out is not None and self._decoder is not None
        frames = getattr(self, "_first_frames", None)
        if frames is not None:
            del self._first_frames
        else:
            try:
                frames = self._decoder.decode(av.Packet(data))
            except av.FFmpegError as exc:
                log.info("hls: undecodable VP8 frame dropped: %s", exc)
                return
        pts = round(rel * VIDEO_CLOCK)
        if pts <= self._last_video_pts:
            return
        self._last_video_pts = pts
        for frame in frames:
            width, height = self._size or (frame.width, frame.height)
            if (frame.width, frame.height) != (width, height) or frame.format.name != "yuv420p":
                frame = frame.reformat(width=width, height=height, format="yuv420p")
            frame.pts = pts
            frame.time_base = _VIDEO_TB
            if rel >= self._next_key - 1e-6:  # a segment boundary: this frame starts it
                frame.pict_type = PictureType.I
                while self._next_key <= rel + 1e-6:
                    self._next_key += self.segment_target
            else:
                frame.pict_type = PictureType.NONE
            for packet in self._video.encode(frame):
                self._out.mux(packet)

    def _remux_video(self, data: bytes, rel: float, keyframe: bool) -> None:
        assert self._video is not None and self._out is not None
        pts = round(rel * VIDEO_CLOCK)
        if pts <= self._last_video_pts:
            return
        self._last_video_pts = pts
        packet = av.Packet(data)
        packet.stream = self._video
        packet.pts = packet.dts = pts
        packet.time_base = _VIDEO_TB
        packet.is_keyframe = keyframe
        self._out.mux(packet)

    def _drain(self) -> list[Fragment]:
        boxes, self._sink.boxes = self._sink.boxes, []
        out: list[Fragment] = []
        moof: bytes | None = None
        for box in boxes:
            if box.type == "ftyp":
                self.init = box.data
            elif box.type == "moov":  # written right after ftyp, once
                self.init = (self.init or b"") + box.data
            elif box.type == "moof":
                moof = box.data
            elif box.type == "mdat" and moof is not None:
                out += self._fragment(moof, box.data)
                moof = None
        return out

    def _fragment(self, moof: bytes, mdat: bytes) -> list[Fragment]:
        assert self._video is not None
        video_id = self._video.index + 1  # the mp4 muxer numbers tracks from 1 in stream order
        runs = [r for r in track_runs(moof) if r.track_id == video_id and r.samples]
        data = self._pending + moof + mdat
        if not runs:
            self._pending = data
            return []
        self._pending = b""
        run = runs[0]
        return [Fragment(data, run.start / VIDEO_CLOCK, run.duration / VIDEO_CLOCK, run.first_is_sync)]
