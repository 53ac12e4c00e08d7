"""The segmenter on real encoded streams: VP8 is transcoded with keyframes on segment
boundaries, H.264 is remuxed untouched; the fMP4 output plays back in FFmpeg."""

from __future__ import annotations

import io
import itertools

import av
import pytest

from load_tests.bench_hls import encode_opus, encode_pattern
from server.media.hls.fmp4 import BoxReader, track_runs
from server.media.hls.playlist import LivePlaylist
from server.media.hls.segmenter import Segmenter


@pytest.mark.parametrize(("encoder", "codec"), [("libvpx", "vp8"), ("libx264", "h264")])
def test_fragments_make_a_playlist_and_decode(encoder: str, codec: str) -> None:
    video = encode_pattern(encoder, 160, 120, 30, 6.0)
    audio = encode_opus(6.0)
    seg = Segmenter(codec, with_audio=True)
    fragments = []
    events = sorted([(v[1], 0, v) for v in video] + [(a[1], 1, a) for a in audio], key=lambda e: e[:2])
    for _at, kind, item in events:
        fragments += seg.video(*item) if kind == 0 else seg.audio(*item)  # type: ignore[arg-type]
    fragments += seg.close()
    assert seg.init is not None and seg.init[4:8] == b"ftyp"
    assert seg.transcode is (codec == "vp8")
    playlist = LivePlaylist()
    for f in fragments:
        assert f.duration <= 0.5 + 1e-6  # PART-TARGET holds
        playlist.add_part(f.duration, f.independent, 0.0)
    starts = [round(s.duration, 2) for s in playlist.segments]
    assert len(playlist.segments) == 3, starts  # 6 s of 2 s segments (the source's GOP is 2 s too)
    assert all(s.parts[0].independent for s in playlist.segments)
    # fragments are contiguous in time and the whole stream decodes
    for a, b in itertools.pairwise(fragments):
        assert b.start == pytest.approx(a.start + a.duration, abs=1e-3)
    data = seg.init + b"".join(f.data for f in fragments)
    with av.open(io.BytesIO(data)) as container:
        assert [s.codec_context.name for s in container.streams] == ["h264", "aac"]
        assert sum(1 for _ in container.decode(video=0)) == len(video)
    if codec == "h264":  # remux: the publisher's bitstream itself, not a re-encode
        first = next(b for b in BoxReader().feed(data) if b.type == "mdat")
        assert video[0][0].split(b"\x00\x00\x01")[-1][:16] in first.data


def test_track_runs_reads_the_sync_flag() -> None:
    video = encode_pattern("libvpx", 160, 120, 30, 3.0)
    seg = Segmenter("vp8", with_audio=False)
    fragments = [f for v in video for f in seg.video(*v)] + seg.close()
    flags = []
    for f in fragments:
        moof = next(b for b in BoxReader().feed(f.data) if b.type == "moof")
        (run,) = track_runs(moof.data)
        flags.append(run.first_is_sync)
    assert flags[0] and flags == [f.independent for f in fragments]
    assert sum(flags) == 2  # keyframes at 0 s and 2 s only: forced on segment boundaries


@pytest.mark.parametrize(("encoder", "codec"), [("libvpx", "vp8"), ("libx264", "h264")])
def test_audio_that_starts_late_stays_in_step_with_the_picture(encoder: str, codec: str) -> None:
    """The tap's video starts with the node's cached GOP, older than any audio it gets: the
    first sound (here 1.2 s into the picture) must play 1.2 s into the picture, not at once
    (the muxer starts every track at zero, so the segmenter leads audio in with silence)."""
    late = 1.2
    video = encode_pattern(encoder, 160, 120, 30, 4.0)
    audio = [(data, at + late) for data, at in encode_opus(2.8)]
    seg = Segmenter(codec, with_audio=True)
    events = sorted([(v[1], 0, v) for v in video] + [(a[1], 1, a) for a in audio], key=lambda e: e[:2])
    fragments = []
    for _at, kind, item in events:
        fragments += seg.video(*item) if kind == 0 else seg.audio(*item)  # type: ignore[arg-type]
    fragments += seg.close()
    assert seg.init is not None
    data = seg.init + b"".join(f.data for f in fragments)
    with av.open(io.BytesIO(data)) as container:
        firsts: dict[str, float] = {}
        loud_at = None
        for frame in container.decode(video=0, audio=0):
            kind = "video" if isinstance(frame, av.VideoFrame) else "audio"
            firsts.setdefault(kind, float(frame.time))
            if kind == "audio" and loud_at is None and abs(frame.to_ndarray()).max() > 0.01:
                loud_at = float(frame.time)
    assert firsts["audio"] == pytest.approx(firsts["video"], abs=0.05)  # both tracks start together
    assert loud_at is not None
    assert loud_at - firsts["video"] == pytest.approx(late, abs=0.1)  # the sound where it was live


@pytest.mark.parametrize(("encoder", "codec"), [("libvpx", "vp8"), ("libx264", "h264")])
def test_every_segment_starts_with_its_picture_at_the_time_the_playlist_dates(
    encoder: str, codec: str
) -> None:
    """hls.js times a muxed fMP4 part from its earliest sample and dates the picture as the
    segment's PROGRAM-DATE-TIME plus the time since that start. Audio that began before a
    segment's first frame would date the picture late by that much (and MSE's buffered range,
    where audio and video overlap, would end that much before the playlist's edge): the
    0.5-1.4 s gap between the drawn clock and the page's figure, and ~1.5 s of glass-to-glass,
    of issue 27 (docs/BENCHMARKS.md, "Where the PDT gap went"). The tap's video starts with
    the cached GOP, here 1.2 s older than the first sound, at a time that is not zero."""
    base, late = 1000.25, 1.2
    video = [(data, at + base, key) for data, at, key in encode_pattern(encoder, 160, 120, 30, 6.0)]
    audio = [(data, at + base + late) for data, at in encode_opus(4.8)]
    seg = Segmenter(codec, with_audio=True, part_target=0.334)
    events = sorted([(v[1], 0, v) for v in video] + [(a[1], 1, a) for a in audio], key=lambda e: e[:2])
    fragments = []
    for _at, kind, item in events:
        fragments += seg.video(*item) if kind == 0 else seg.audio(*item)  # type: ignore[arg-type]
    assert seg.started_at == base  # the first frame (a keyframe) anchors the stream
    frame_times = {round((at - base) * 90000) for _data, at, _key in video}
    segments: list[list[float]] = []  # each segment's sample run starts, seconds
    for f in fragments:
        # a fragment is one moof+mdat, or more when the muxer wrote one with audio alone
        runs = [r for b in BoxReader().feed(f.data) if b.type == "moof" for r in track_runs(b.data)]
        (video_run,) = [r for r in runs if r.track_id == 1]
        # the part starts at one of the frames given, at the time that frame was given
        assert video_run.start in frame_times
        assert f.start == video_run.start / 90000
        if f.independent:
            segments.append([])
        segments[-1] += [r.start / (90000 if r.track_id == 1 else 48000) for r in runs]
    assert len(segments) == 3  # a segment every 2 s
    starts = [0.0, 2.0, 4.0]
    # nothing in a segment plays before its first picture (the audio that came late is led
    # in with silence from the picture's start: the first segment's audio starts at 0 too)
    assert [min(s) for s in segments] == pytest.approx(starts, abs=1e-6)
    assert [s[0] for s in segments] == pytest.approx(starts, abs=1e-6)
