"""LL-HLS (CMAF) output of a live room, made once per room on the node holding its media.

`playlist.py` (the playlist as plain data, live and VOD), `fmp4.py` (reading fragments back),
`segmenter.py` (PyAV: remux H.264 or transcode VP8, Opus -> AAC, fMP4 out), `live.py` (asyncio:
one stream per room, tapped from the room's fan-out, started on the first request, stopped when
idle), `recording.py` and `archive.py` (`--record`: a stream's segments and the room's danmaku
kept on disk, a VOD playlist at the end). The HTTP side is `server/edge/hls.py` and
`server/edge/replay.py`.
"""
