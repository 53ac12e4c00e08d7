"""One recording of a room's HLS stream on disk: its segments as they complete, a VOD playlist
and the room's danmaku when it ends.

Why files and not a muxed MP4: the live stream's init segment and CMAF segments are already
what a VOD playlist plays, so recording is writing bytes that exist anyway (no second encode,
no second muxer); the playlist and the danmaku come at the end, when every duration is known.
Writes run in order on a thread of their own (the loop never waits for the disk); the stream
hands over each complete segment once. Bounded: segments stop at `max_bytes` (the recording is
then marked truncated), danmaku at `DANMAKU_PER_SECOND` a second and `MAX_DANMAKU` in all.

Layout (docs/API.md "Recordings"): <root>/<room dir>/<recording id>/init.mp4, s<N>.m4s,
index.m3u8, danmaku.json and recording.json (written last: its presence means finished).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.broker.base import Event

from .playlist import INIT_URI, VodSegment, render_vod, segment_uri

log = logging.getLogger(__name__)

PLAYLIST = "index.m3u8"
DANMAKU = "danmaku.json"
META = "recording.json"
MAX_DANMAKU = 100_000  # per recording (~30 MB of JSON at the longest danmaku)
DANMAKU_PER_SECOND = 20  # kept per second of the room's clock; staff danmaku count but always pass
_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")


def new_recording_id(now: float) -> str:
    """`<UTC start>-<8 hex>`: sorts by time, safe in a URL and a path, carries no user text."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(4)


def valid_recording_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


def room_dir_name(room_id: str) -> str:
    """A room id as a directory name. Room ids are [A-Za-z0-9_.:-]{1,64} (protocol.valid_id), so
    "." and ".." are room ids: a leading dot is written %2E (no id has a '%': no collision)."""
    return "%2E" + room_id[1:] if room_id.startswith(".") else room_id


@dataclass(frozen=True, slots=True)
class RecordConfig:
    root: Path
    max_bytes: int  # per recording; past it no more segments are kept (truncated)


class DanmakuLog:
    """The room's danmaku while it records, as the replay shows them: pure and bounded."""

    def __init__(self, limit: int = MAX_DANMAKU, per_second: int = DANMAKU_PER_SECOND) -> None:
        self.limit = limit
        self.per_second = per_second
        self.items: dict[int, dict[str, Any]] = {}  # seq -> danmaku (insertion order is seq order)
        self.dropped = 0
        self._second = -1
        self._in_second = 0

    def add(self, events: list[Event]) -> None:
        for event in events:
            kind = event.get("t")
            if kind == "delete":  # a moderator removed it: the replay must not show it either
                self.items.pop(event.get("target"), None)  # type: ignore[arg-type]
            elif kind == "danmaku" and isinstance(event.get("seq"), int) and isinstance(event.get("ts"), int):
                self._danmaku(event)

    def _danmaku(self, event: Event) -> None:
        second = event["ts"] // 1000
        if second != self._second:
            self._second, self._in_second = second, 0
        staff = "role" in event
        if len(self.items) >= self.limit or (self._in_second >= self.per_second and not staff):
            self.dropped += 1
            return
        self._in_second += 1
        kept = {k: event[k] for k in ("seq", "ts", "uid", "name", "text", "role") if k in event}
        self.items[event["seq"]] = kept

    def between(self, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        return [d for d in self.items.values() if start_ms <= d["ts"] <= end_ms]


class Recording:
    """One recording being written; `finish` ends it (once) and returns what it holds, or None."""

    def __init__(
        self,
        config: RecordConfig,
        room_id: str,
        publisher_id: str,
        on_finished: Callable[[Recording, dict[str, Any] | None], Awaitable[None]],
    ) -> None:
        self.config = config
        self.room_id = room_id
        self.publisher_id = publisher_id
        self.started = time.time()
        self.id = new_recording_id(self.started)
        self.dir = config.root / room_dir_name(room_id) / self.id
        self.codec: str | None = None
        self.danmaku = DanmakuLog()
        self.segments = 0  # handed over (written or queued)
        self.bytes = 0
        self.truncated = False
        self.changed = asyncio.Event()  # set after each segment is written (tests wait on it)
        self.written: list[VodSegment] = []  # written by the worker thread, read after it
        self._failed: str | None = None
        self._on_finished = on_finished
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"rec-{room_id[:16]}")
        self._has_init = False
        self._finishing: asyncio.Task[dict[str, Any] | None] | None = None

    # -- from the stream (never blocks) ----------------------------------------------------
    def add_init(self, data: bytes) -> None:
        if not self._has_init:
            self._has_init = True
            self.bytes += len(data)
            self._submit(self._write_init, data)

    def add_segment(self, msn: int, duration: float, date: float, data: bytes) -> None:
        if self._finishing is not None or not self._has_init or self.truncated:
            return
        if self.bytes + len(data) > self.config.max_bytes:
            self.truncated = True
            log.warning(
                "recording %s/%s: %d bytes reached: no more segments", self.room_id, self.id, self.bytes
            )
            return
        self.segments += 1
        self.bytes += len(data)
        self._submit(self._write_segment, VodSegment(segment_uri(msn), duration, date), data)

    def add_events(self, events: list[Event]) -> None:
        if self._finishing is None:
            self.danmaku.add(events)

    async def finish(self) -> dict[str, Any] | None:
        """Write the playlist, the danmaku and recording.json (in that order); once."""
        if self._finishing is None:
            self._finishing = self._loop.create_task(self._finish())
        return await asyncio.shield(self._finishing)

    def stats(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "room": self.room_id,
            "state": "recording",
            "start": self.started,
            "segments": self.segments,
            "size": self.bytes,
        }

    # -- internals -------------------------------------------------------------------------
    def _submit(self, job: Callable[..., None], *args: Any) -> None:
        future = self._loop.run_in_executor(self._executor, job, *args)
        future.add_done_callback(lambda _: self._wake())

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def _finish(self) -> dict[str, Any] | None:
        meta: dict[str, Any] | None = None
        try:
            meta = await self._loop.run_in_executor(self._executor, self._write_end, self.danmaku)
        except Exception:
            log.exception("recording %s/%s: finishing failed", self.room_id, self.id)
        finally:
            self._executor.shutdown(wait=False)
        await self._on_finished(self, meta)
        return meta

    def _write_init(self, data: bytes) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / INIT_URI).write_bytes(data)
        except OSError as exc:
            self._fail(exc)

    def _write_segment(self, segment: VodSegment, data: bytes) -> None:
        if self._failed is not None:
            return
        try:
            (self.dir / segment.uri).write_bytes(data)
        except OSError as exc:
            self._fail(exc)
            return
        self.written.append(segment)

    def _fail(self, exc: OSError) -> None:
        if self._failed is None:
            self._failed = str(exc)
            log.error("recording %s/%s: writing failed, it ends here: %s", self.room_id, self.id, exc)

    def _write_end(self, danmaku: DanmakuLog) -> dict[str, Any] | None:
        """Worker thread, after every segment write: None (and nothing left) if nothing to play."""
        segments = self.written
        if not segments:
            shutil.rmtree(self.dir, ignore_errors=True)
            return None
        start = segments[0].date
        duration = sum(s.duration for s in segments)
        end = segments[-1].date + segments[-1].duration
        kept = danmaku.between(int(start * 1000), int(end * 1000) + 1)
        _replace(self.dir / PLAYLIST, render_vod(segments).encode())
        body = {"room": self.room_id, "id": self.id, "danmaku": kept}
        _replace(self.dir / DANMAKU, json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())
        size = sum(f.stat().st_size for f in self.dir.iterdir() if f.is_file())
        meta = {
            "id": self.id,
            "room": self.room_id,
            "publisher": self.publisher_id,
            "codec": self.codec,
            "start": round(start, 3),
            "end": round(end, 3),
            "duration": round(duration, 3),
            "segments": len(segments),
            "size": size,  # bytes of its files but recording.json
            "danmaku": len(kept),
            "danmaku_dropped": danmaku.dropped,
            "truncated": self.truncated or self._failed is not None,
        }
        _replace(self.dir / META, json.dumps(meta, separators=(",", ":")).encode())
        return meta


def _replace(path: Path, data: bytes) -> None:
    """Write a file whole or not at all (a reader never sees half a playlist)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
