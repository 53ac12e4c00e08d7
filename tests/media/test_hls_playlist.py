"""The LL-HLS playlist as plain data: segments cut at keyframes, window, blocking-reload rules, text."""

from __future__ import annotations

import pytest

from server.media.hls.playlist import LivePlaylist, PlaylistConfig, RequestError, program_date_time

T0 = 1_700_000_000.0


def grow(pl: LivePlaylist, parts: list[tuple[float, bool]], t: float = T0) -> list[int]:
    dropped: list[int] = []
    for duration, key in parts:
        dropped += pl.add_part(duration, key, t)[1]
        t += duration
    return dropped


SEGMENT = [(0.5, True), (0.5, False), (0.5, False), (0.5, False)]


def test_segments_start_at_a_keyframe_after_the_target() -> None:
    pl = LivePlaylist()
    grow(pl, [*SEGMENT, (0.5, True)])
    assert [(s.msn, len(s.parts), s.complete) for s in pl.segments] == [(0, 4, True), (1, 1, False)]
    # a keyframe before the target is an independent part inside the segment, not a new segment
    grow(pl, [(0.5, False), (0.5, True)])
    assert [len(s.parts) for s in pl.segments] == [4, 3]
    assert pl.segments[1].parts[2].independent


def test_first_part_needs_a_keyframe() -> None:
    with pytest.raises(ValueError):
        LivePlaylist().add_part(0.5, False, T0)


def test_window_drops_old_segments_and_says_which() -> None:
    pl = LivePlaylist(PlaylistConfig(window=2))
    dropped = grow(pl, SEGMENT * 4 + [(0.5, True)])
    assert dropped == [0, 1]
    assert pl.first_msn == 2 and pl.segment(1) is None and pl.segment(2) is not None


def test_blocking_reload_readiness() -> None:
    pl = LivePlaylist()
    assert not pl.ready(0, 0)
    grow(pl, [(0.5, True)])
    assert pl.ready(0, 0) and not pl.ready(0, 1) and not pl.ready(0, None)
    grow(pl, [(0.5, False)] * 3)
    assert pl.ready(0, 3) and not pl.ready(0, 4) and not pl.ready(1, 0)
    grow(pl, [(0.5, True)])
    # segment 0 is complete: its part 4 will never exist, the request is answered
    assert pl.ready(0, 4) and pl.ready(0, None) and pl.ready(1, 0) and not pl.ready(1, 1)
    assert pl.next_part() == (1, 1)
    pl.end()
    assert pl.ready(5, 0)


def test_preload_hint_names_the_next_segment_once_the_current_one_can_end() -> None:
    pl = LivePlaylist()
    grow(pl, SEGMENT[:2])
    assert pl.hint() == (0, 2) and 'URI="p0.2.m4s"' in pl.render()
    grow(pl, SEGMENT[2:])  # 2 s: the next keyframe opens segment 1, not part 4 of segment 0
    assert pl.hint() == (1, 0) and 'URI="p1.0.m4s"' in pl.render()
    grow(pl, [(0.5, True)])
    assert pl.next_part() == (1, 1) == pl.hint()


def test_too_far_ahead_is_refused() -> None:
    pl = LivePlaylist()
    grow(pl, SEGMENT)
    pl.check_request(2, 0)
    with pytest.raises(RequestError):
        pl.check_request(3, 0)
    with pytest.raises(RequestError):
        pl.check_request(0, -1)


def test_rendered_playlist_has_every_ll_hls_tag_and_full_segments() -> None:
    pl = LivePlaylist()
    grow(pl, [*SEGMENT, (0.5, True), (0.25, False)])
    text = pl.render()
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    assert "#EXT-X-VERSION:9" in lines
    assert "#EXT-X-TARGETDURATION:2" in lines
    assert "#EXT-X-PART-INF:PART-TARGET=0.500" in lines
    assert "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500,HOLD-BACK=6.000" in lines
    assert "#EXT-X-MEDIA-SEQUENCE:0" in lines
    assert '#EXT-X-MAP:URI="init.mp4"' in lines
    assert f"#EXT-X-PROGRAM-DATE-TIME:{program_date_time(T0)}" in lines
    assert f"#EXT-X-PROGRAM-DATE-TIME:{program_date_time(T0 + 2)}" in lines
    assert '#EXT-X-PART:DURATION=0.500,URI="p0.0.m4s",INDEPENDENT=YES' in lines
    assert '#EXT-X-PART:DURATION=0.500,URI="p0.1.m4s"' in lines
    assert '#EXT-X-PART:DURATION=0.250,URI="p1.1.m4s"' in lines
    # a standard client sees the complete segment as one file
    assert lines[lines.index("#EXTINF:2.000,") + 1] == "s0.m4s"
    assert "s1.m4s" not in lines  # still being written
    assert lines[-1] == '#EXT-X-PRELOAD-HINT:TYPE=PART,URI="p1.2.m4s"'


def test_old_segments_lose_their_parts_and_the_end_is_marked() -> None:
    pl = LivePlaylist(PlaylistConfig(part_segments=2))
    grow(pl, SEGMENT * 3 + [(0.5, True)])
    text = pl.render()
    assert "p0.0.m4s" not in text and "p1.0.m4s" not in text and "p2.0.m4s" in text
    pl.end()
    text = pl.render()
    assert text.endswith("#EXT-X-ENDLIST\n") and "PRELOAD-HINT" not in text and "s3.m4s" in text


def test_program_date_time_format() -> None:
    assert program_date_time(0.5) == "1970-01-01T00:00:00.500Z"
