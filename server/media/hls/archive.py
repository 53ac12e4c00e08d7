"""The node's recordings (`--record DIR`): the ones being written, the finished ones on disk,
and who is told when one is ready.

Why a registry beside the streams: a room's danmaku reach the node as broker batches (the
hub calls `on_events`), not through its HLS stream, and the admin API and the replay files
ask by room and recording id, also after the stream (or the process) that wrote them is gone.
Finished recordings are read back from their recording.json; nothing else is kept in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.broker.base import Event

from .recording import META, RecordConfig, Recording, room_dir_name, valid_recording_id

log = logging.getLogger(__name__)

MAX_LISTED = 500  # recordings listed per room, newest first
_FILE = re.compile(r"index\.m3u8|init\.mp4|s\d{1,9}\.m4s|danmaku\.json")  # what a replay URL may name


class Archive:
    """Recordings under one root directory; `start` one per HLS stream while recording is on."""

    def __init__(self, config: RecordConfig) -> None:
        self.config = config
        self.active: dict[str, Recording] = {}  # room -> the recording being written
        self.ready_listeners: list[Callable[[dict[str, Any]], None]] = []  # e.g. the webhook

    def check(self) -> None:
        """At start: the directory exists (made if not) and is writable, or OSError."""
        self.config.root.mkdir(parents=True, exist_ok=True)
        probe = self.config.root / f".write-test-{os.getpid()}"  # --workers: one per process
        probe.write_bytes(b"")
        probe.unlink()

    def start(self, room_id: str, publisher_id: str) -> Recording:
        # a stream restarting while the old one still finishes: the old one keeps its segments
        # (its stream finishes it), the room's danmaku go to the new one from now on
        recording = self.active[room_id] = Recording(self.config, room_id, publisher_id, self._finished)
        log.info("recording %s/%s started", room_id, recording.id)
        return recording

    def on_events(self, room_id: str, events: list[Event]) -> None:
        """Every sequenced batch of a room open on this node (Hub.on_events): its danmaku."""
        recording = self.active.get(room_id)
        if recording is not None:
            recording.add_events(events)

    async def _finished(self, recording: Recording, meta: dict[str, Any] | None) -> None:
        if self.active.get(recording.room_id) is recording:
            del self.active[recording.room_id]
        if meta is None:
            log.info("recording %s/%s: nothing recorded", recording.room_id, recording.id)
            return
        log.info(
            "recording %s/%s ready: %.1f s, %d bytes",
            recording.room_id,
            recording.id,
            meta["duration"],
            meta["size"],
        )
        for listener in self.ready_listeners:
            try:
                listener(meta)
            except Exception:
                log.exception("recording.ready listener failed")

    # -- reading -----------------------------------------------------------------------------
    async def list(self, room_id: str) -> list[dict[str, Any]]:
        """The room's recordings, newest first: the one being written, then the finished ones."""
        finished = await asyncio.to_thread(self._read_all, room_id)
        active = self.active.get(room_id)
        return ([active.stats()] if active is not None else []) + finished

    def _read_all(self, room_id: str) -> list[dict[str, Any]]:
        room_dir = self.config.root / room_dir_name(room_id)
        try:
            names = sorted(
                (n for n in (p.name for p in room_dir.iterdir()) if valid_recording_id(n)), reverse=True
            )
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for name in names:
            if len(out) >= MAX_LISTED:
                break
            try:
                meta = json.loads((room_dir / name / META).read_bytes())
            except (OSError, ValueError):
                continue  # being written, or cut short by a crash: not playable
            out.append({**meta, "state": "ready"})
        return out

    def file(self, room_id: str, recording_id: str, name: str) -> Path | None:
        """A finished recording's file a replay URL names, or None (bad name, unknown, unfinished)."""
        if not valid_recording_id(recording_id) or _FILE.fullmatch(name) is None:
            return None
        folder = self.config.root / room_dir_name(room_id) / recording_id
        target = folder / name
        if not (folder / META).is_file() or not target.is_file():
            return None
        return target
