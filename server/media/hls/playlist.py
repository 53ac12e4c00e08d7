"""A live LL-HLS media playlist as plain data: parts in, playlist text and readiness out.

Pure code (no I/O, no clock): the caller says when a part exists, how long it lasts, whether
it starts with a keyframe and the wall-clock time of its first frame; this module decides
where segments begin, which segments stay in the window, what a blocking reload waits for,
and renders the playlist (RFC 8216bis, version 9: EXT-X-PART, EXT-X-PRELOAD-HINT,
EXT-X-SERVER-CONTROL). Complete segments are listed with EXTINF too, so a client without
low-latency support plays the same playlist.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

VERSION = 9


@dataclass(frozen=True, slots=True)
class Part:
    msn: int  # media sequence number of its segment
    index: int  # its place in the segment, from 0
    duration: float  # seconds
    independent: bool  # starts with a keyframe

    @property
    def uri(self) -> str:
        return part_uri(self.msn, self.index)


@dataclass(slots=True)
class Segment:
    msn: int
    date: float  # epoch seconds of its first frame (EXT-X-PROGRAM-DATE-TIME)
    parts: list[Part] = field(default_factory=list)
    complete: bool = False

    @property
    def duration(self) -> float:
        return sum(p.duration for p in self.parts)

    @property
    def uri(self) -> str:
        return segment_uri(self.msn)


def part_uri(msn: int, index: int) -> str:
    return f"p{msn}.{index}.m4s"


def segment_uri(msn: int) -> str:
    return f"s{msn}.m4s"


INIT_URI = "init.mp4"


@dataclass(frozen=True, slots=True)
class PlaylistConfig:
    part_target: float = 0.5  # seconds: EXT-X-PART-INF PART-TARGET, no part is longer
    segment_target: float = 2.0  # a segment starts at the first keyframe this long after the last one
    target_duration: int = 2  # EXT-X-TARGETDURATION: no segment rounds to more than this
    window: int = 6  # complete segments listed (and kept) behind the live edge
    part_segments: int = 3  # the last this many segments list their parts (~3 target durations)
    hold_back_parts: float = 3.0  # PART-HOLD-BACK in parts: at least 2 (RFC 8216bis); 3 is Apple's advice

    @property
    def part_hold_back(self) -> float:
        return self.hold_back_parts * self.part_target

    @property
    def hold_back(self) -> float:
        return 3 * self.target_duration


class RequestError(ValueError):
    """A blocking reload asked for something the playlist will not have soon (HTTP 400)."""


class LivePlaylist:
    """The live edge of one rendition: segments in the window, the part being written next."""

    def __init__(self, config: PlaylistConfig | None = None) -> None:
        self.config = config or PlaylistConfig()
        self.segments: deque[Segment] = deque()
        self.ended = False
        self.next_msn = 0

    # -- growing -----------------------------------------------------------------------------
    def add_part(self, duration: float, independent: bool, date: float) -> tuple[Part, list[int]]:
        """Append a part; returns it and the segments that left the window (their files may go).

        A new segment starts at an independent part once the current one reached the segment
        target (or when there is none); the previous segment is then complete.
        """
        if self.ended:
            raise RuntimeError("the playlist has ended")
        current = self.segments[-1] if self.segments else None
        new_segment = current is None or current.complete
        if current is not None and not current.complete and independent and current.parts:
            # half a part of slack: frame times rarely add up to the target exactly
            new_segment = current.duration >= self.config.segment_target - self.config.part_target / 2
        if new_segment and not independent and current is None:
            raise ValueError("the first part must start with a keyframe")
        dropped: list[int] = []
        if new_segment:
            if current is not None:
                current.complete = True
            current = Segment(self.next_msn, date)
            self.next_msn += 1
            self.segments.append(current)
            while sum(1 for s in self.segments if s.complete) > self.config.window:
                dropped.append(self.segments.popleft().msn)
        assert current is not None
        part = Part(current.msn, len(current.parts), duration, independent)
        current.parts.append(part)
        return part, dropped

    def end(self) -> None:
        """The stream stopped: the last segment is complete and the playlist gets EXT-X-ENDLIST."""
        if self.segments and self.segments[-1].parts:
            self.segments[-1].complete = True
        self.ended = True

    # -- reading -----------------------------------------------------------------------------
    @property
    def first_msn(self) -> int:
        return self.segments[0].msn if self.segments else self.next_msn

    def segment(self, msn: int) -> Segment | None:
        if not self.segments or not self.first_msn <= msn < self.next_msn:
            return None
        return self.segments[msn - self.first_msn]

    def part(self, msn: int, index: int) -> Part | None:
        seg = self.segment(msn)
        if seg is None or not 0 <= index < len(seg.parts):
            return None
        return seg.parts[index]

    def next_part(self) -> tuple[int, int]:
        """(msn, index) of the part being written now: the EXT-X-PRELOAD-HINT."""
        if not self.segments:
            return self.next_msn, 0
        last = self.segments[-1]
        if last.complete:
            return self.next_msn, 0
        return last.msn, len(last.parts)

    def hint(self) -> tuple[int, int]:
        """(msn, index) the EXT-X-PRELOAD-HINT names: the next part, predicted to open the next
        segment once the current one is long enough to end at the next keyframe (keyframes
        come every segment target: forced when transcoding, asked for by PLI when remuxing).
        A wrong guess is a 404 per viewer that a cache cannot collapse (errors are uncached),
        so the guess follows the segmenter's rule in `add_part`."""
        msn, index = self.next_part()
        last = self.segments[-1] if self.segments else None
        threshold = self.config.segment_target - self.config.part_target / 2
        if last is not None and not last.complete and last.parts and last.duration + 1e-9 >= threshold:
            return msn + 1, 0
        return msn, index

    def check_request(self, msn: int, part: int | None) -> None:
        """Refuse a blocking reload too far ahead (RFC 8216bis 6.2.5.2: more than 2 segments)."""
        if msn < 0 or (part is not None and part < 0):
            raise RequestError("_HLS_msn and _HLS_part must not be negative")
        if msn > self.next_part()[0] + 2:
            raise RequestError(f"_HLS_msn={msn} is more than two segments past the live edge")

    def ready(self, msn: int, part: int | None) -> bool:
        """A blocking reload for (msn, part) may be answered: that part exists, or (part None)
        segment msn is complete, or the playlist has ended. Segments already gone count as there.
        """
        if self.ended or msn < self.first_msn:
            return True
        seg = self.segment(msn)
        if seg is None:
            return False
        if part is None:
            return seg.complete
        return part < len(seg.parts) or seg.complete

    # -- rendering ---------------------------------------------------------------------------
    def render(self, prefix: str = "") -> str:
        """The playlist text; `prefix` goes before every URI (the stream id: URIs never repeat)."""
        c = self.config
        lines = [
            "#EXTM3U",
            f"#EXT-X-VERSION:{VERSION}",
            f"#EXT-X-TARGETDURATION:{c.target_duration}",
            f"#EXT-X-PART-INF:PART-TARGET={c.part_target:.3f}",
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
            f"PART-HOLD-BACK={c.part_hold_back:.3f},HOLD-BACK={c.hold_back:.3f}",
            f"#EXT-X-MEDIA-SEQUENCE:{self.first_msn}",
            f'#EXT-X-MAP:URI="{prefix}{INIT_URI}"',
        ]
        with_parts = {s.msn for s in list(self.segments)[-c.part_segments :]}
        for seg in self.segments:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{program_date_time(seg.date)}")
            if seg.msn in with_parts and not self.ended:
                for p in seg.parts:
                    flag = ",INDEPENDENT=YES" if p.independent else ""
                    lines.append(f'#EXT-X-PART:DURATION={p.duration:.3f},URI="{prefix}{p.uri}"{flag}')
            if seg.complete:
                lines.append(f"#EXTINF:{seg.duration:.3f},")
                lines.append(prefix + seg.uri)
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        else:
            msn, index = self.hint()
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{prefix}{part_uri(msn, index)}"')
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class VodSegment:
    """A recorded segment as the VOD playlist lists it."""

    uri: str
    duration: float  # seconds
    date: float  # epoch seconds of its first frame


VOD_VERSION = 7  # fMP4 with EXT-X-MAP needs 6; nothing here needs more than 7


def render_vod(segments: list[VodSegment], init_uri: str = INIT_URI) -> str:
    """A recording's playlist: every segment, PROGRAM-DATE-TIME each, EXT-X-ENDLIST (RFC 8216bis
    4.4.3.5: PLAYLIST-TYPE VOD, it never changes). Relative URIs, so the page's URL token is kept."""
    if not segments:
        raise ValueError("a VOD playlist needs at least one segment")
    target = max(1, math.ceil(max(s.duration for s in segments) - 1e-6))
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{VOD_VERSION}",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="{init_uri}"',
    ]
    for seg in segments:
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{program_date_time(seg.date)}")
        lines.append(f"#EXTINF:{seg.duration:.3f},")
        lines.append(seg.uri)
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def program_date_time(epoch: float) -> str:
    """ISO 8601 with milliseconds and a zone, as EXT-X-PROGRAM-DATE-TIME wants."""
    stamp = datetime.fromtimestamp(epoch, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def target_duration_for(segment_target: float) -> int:
    """The EXT-X-TARGETDURATION to declare for segments cut near segment_target."""
    return max(1, math.ceil(segment_target))
