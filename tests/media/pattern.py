"""A generated video track for the media tests: a moving bar, so every frame differs."""

from __future__ import annotations

import av
from aiortc import VideoStreamTrack


class PatternTrack(VideoStreamTrack):
    """Frames of width x height with a horizontal bar that moves (like a camera, never static)."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.width, self.height = width, height
        self.count = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        luma = frame.planes[0]
        band = max(1, self.height // 12)
        shift = (self.count * 4) % self.height
        bright, dark = bytes([235]) * luma.line_size, bytes([16]) * luma.line_size
        rows = (bright if (y + shift) % (3 * band) < band else dark for y in range(self.height))
        luma.update(b"".join(rows))
        for chroma in frame.planes[1:]:
            chroma.update(bytes([128]) * chroma.buffer_size)
        frame.pts, frame.time_base = pts, time_base
        self.count += 1
        return frame
