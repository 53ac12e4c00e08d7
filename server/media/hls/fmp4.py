"""Reading just enough of a fragmented MP4 (CMAF) byte stream to cut it into HLS parts.

Why parse at all: FFmpeg's mp4 muxer decides where a fragment ends (`frag_duration`,
`frag_keyframe`); the playlist must state each part's true duration and whether it starts
with a keyframe, and the muxer's output is the only place that is known for certain.
Pure code: bytes in, boxes and numbers out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_HEADER = struct.Struct(">I4s")
_NON_SYNC = 0x00010000  # sample_is_non_sync_sample in ISO/IEC 14496-12 sample flags


class Fmp4Error(ValueError):
    """The byte stream is not the fragmented MP4 the muxer is expected to write."""


@dataclass(frozen=True, slots=True)
class Box:
    type: str
    data: bytes  # the whole box, header included


@dataclass(frozen=True, slots=True)
class TrackRun:
    """One track's samples in a fragment: where they start, how long they last, sync or not."""

    track_id: int
    start: int  # baseMediaDecodeTime, in the track's timescale
    duration: int  # sum of the sample durations, same timescale
    samples: int
    first_is_sync: bool


def boxes(data: bytes | memoryview, start: int = 0, end: int | None = None) -> list[tuple[str, int, int]]:
    """(type, offset, size) of each box between start and end; raises on a truncated box."""
    end = len(data) if end is None else end
    out = []
    off = start
    while off < end:
        if end - off < 8:
            raise Fmp4Error("truncated box header")
        size, raw = _HEADER.unpack_from(data, off)
        if size == 1:
            size = struct.unpack_from(">Q", data, off + 8)[0]
        if size < 8 or off + size > end:
            raise Fmp4Error(f"bad box size {size} at {off}")
        out.append((raw.decode("latin-1"), off, size))
        off += size
    return out


class BoxReader:
    """Splits a byte stream written in arbitrary pieces into whole top-level boxes."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Box]:
        self._buf += data
        out = []
        while len(self._buf) >= 8:
            size, raw = _HEADER.unpack_from(self._buf, 0)
            if size == 1:
                if len(self._buf) < 16:
                    break
                size = struct.unpack_from(">Q", self._buf, 8)[0]
            if size < 8:
                raise Fmp4Error(f"bad top-level box size {size}")
            if len(self._buf) < size:
                break
            out.append(Box(raw.decode("latin-1"), bytes(self._buf[:size])))
            del self._buf[:size]
        return out


def track_runs(moof: bytes) -> list[TrackRun]:
    """Each traf of a moof box: track id, decode start, total duration, first-sample sync."""
    top = boxes(moof)
    if len(top) != 1 or top[0][0] != "moof":
        raise Fmp4Error("not a moof box")
    runs = []
    for kind, off, size in boxes(moof, 8, len(moof)):
        if kind == "traf":
            runs.append(_traf(moof, off + 8, off + size))
    return runs


def _traf(data: bytes, start: int, end: int) -> TrackRun:
    track_id = base = 0
    default_duration = 0
    default_flags: int | None = None
    duration = samples = 0
    first_sync: bool | None = None
    for kind, off, _size in boxes(data, start, end):
        body = off + 8
        version_flags = struct.unpack_from(">I", data, body)[0]
        version, flags = version_flags >> 24, version_flags & 0xFFFFFF
        pos = body + 4
        if kind == "tfhd":
            track_id = struct.unpack_from(">I", data, pos)[0]
            pos += 4
            if flags & 0x01:  # base_data_offset
                pos += 8
            if flags & 0x02:  # sample_description_index
                pos += 4
            if flags & 0x08:
                default_duration = struct.unpack_from(">I", data, pos)[0]
                pos += 4
            if flags & 0x10:  # default_sample_size
                pos += 4
            if flags & 0x20:
                default_flags = struct.unpack_from(">I", data, pos)[0]
        elif kind == "tfdt":
            base = struct.unpack_from(">Q" if version == 1 else ">I", data, pos)[0]
        elif kind == "trun":
            count = struct.unpack_from(">I", data, pos)[0]
            pos += 4
            if flags & 0x01:  # data_offset
                pos += 4
            first_flags = None
            if flags & 0x04:
                first_flags = struct.unpack_from(">I", data, pos)[0]
                pos += 4
            for i in range(count):
                sample_flags = default_flags
                if flags & 0x100:
                    duration += struct.unpack_from(">I", data, pos)[0]
                    pos += 4
                else:
                    duration += default_duration
                if flags & 0x200:  # sample_size
                    pos += 4
                if flags & 0x400:
                    sample_flags = struct.unpack_from(">I", data, pos)[0]
                    pos += 4
                if flags & 0x800:  # composition time offset
                    pos += 4
                if i == 0 and first_sync is None:
                    chosen = first_flags if first_flags is not None else sample_flags
                    first_sync = chosen is None or not chosen & _NON_SYNC
            samples += count
    return TrackRun(track_id, base, duration, samples, bool(first_sync))
