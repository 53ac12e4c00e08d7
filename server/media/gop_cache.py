"""The latest group of pictures of one published video track, for viewers who arrive late.

A new viewer can only start decoding at a keyframe. Without a cache it waits for a PLI to
reach the publisher and the publisher's answer to come back (a round trip plus an encode);
with one, the node hands it the latest keyframe and every frame after it at once, the way
"instant open" players and CDNs start a stream. The cache is bounded in frames and bytes:
a group longer than that is dropped, and the cache asks for a fresh keyframe (so it is warm
again for the next viewer), which keeps a publisher with a long keyframe interval (browsers
send keyframes only when asked) on a GOP about as long as the cache.
"""

from __future__ import annotations

from collections.abc import Iterator

from .forward import EncodedFrame


class GopCache:
    """Keyframe + following frames of one track, at most ``max_frames`` and ``max_bytes``."""

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max(1, max_frames)
        self.max_bytes = max(1, max_bytes)
        self.size = 0  # bytes held
        self.overflows = 0  # groups too long to keep (each asked for a fresh keyframe)
        self.replays = 0  # viewers started from the cache
        self._frames: list[tuple[EncodedFrame, bool]] = []

    @property
    def warm(self) -> bool:
        """A viewer could start now: the cache begins with a keyframe."""
        return bool(self._frames)

    def __len__(self) -> int:
        return len(self._frames)

    def add(self, frame: EncodedFrame, key: bool) -> bool:
        """Keep a frame; True when the group just outgrew the cache (ask for a keyframe).

        True once per group: after an overflow nothing is kept until the next keyframe, so a
        publisher that ignores the request is not asked on every frame (viewers that find the
        cache cold still ask, through the usual PLI path).
        """
        size = len(frame.data)
        if key:
            self._frames = [(frame, key)]
            self.size = size
            return False
        if not self._frames:
            return False  # no keyframe since the last overflow: nothing decodable to keep
        if len(self._frames) < self.max_frames and self.size + size <= self.max_bytes:
            self._frames.append((frame, key))
            self.size += size
            return False
        self.clear()
        self.overflows += 1
        return True

    def replay(self) -> Iterator[tuple[EncodedFrame, bool]]:
        """The cached frames in order, keyframe first (a snapshot: safe while frames arrive)."""
        if self._frames:
            self.replays += 1
        return iter(list(self._frames))

    def clear(self) -> None:
        self._frames = []
        self.size = 0
