"""Recordings over HTTP on the media port: the VOD playlist, its files and its danmaku.

    GET /replay/<room>/<hls token>/<recording id>/index.m3u8 | init.mp4 | s<N>.m4s | danmaku.json

The URL token is the viewer's HLS URL token (GET /hls/<room>/token, the `hls` door: join
buckets, bans), checked on every file like a live HLS file (Guard.authorize_hls: HMAC,
expiry, bans): a replay is the room's video, so it has the room's access rules. Like the live
playlist's, the recording's URIs are relative, so the token rides along; a cache keyed on the
URL minus the token serves every viewer. A recording never changes once listed: its media
files are immutable, the playlist and danmaku cached for a day (docs/API.md "Recordings").
Only the node that wrote a recording (or one sharing its --record directory) has it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from server.edge.hls import CACHE_FILE, MEDIA_TYPE, PLAYLIST_TYPE
from server.media.hls.recording import DANMAKU, PLAYLIST
from server.wire import protocol
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.abuse.guard import Guard
    from server.media.hls.archive import Archive

CACHE_LISTING = "public, max-age=86400"  # the playlist and danmaku of a finished recording
TYPES = {PLAYLIST: PLAYLIST_TYPE, DANMAKU: "application/json"}


class ReplayHttp:
    """The `/replay/` routes; mounted on the media port's aiohttp app by the App."""

    def __init__(self, guard: Guard, archive: Archive | None) -> None:
        self.guard = guard
        self.archive = archive  # None: recording is off on this node

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("GET", "/replay/{room}/{tok}/{rid}/{name}", self._file)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        room = request.match_info["room"]
        if not protocol.valid_id(room):
            raise ProtocolError(ErrorCode.BAD_FIELD, "not a valid room id")
        await self.guard.authorize_hls(request.match_info["tok"], room)
        if self.archive is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, "this node keeps no recordings (--record is off)")
        name = request.match_info["name"]
        path = self.archive.file(room, request.match_info["rid"], name)
        if path is None:
            raise ProtocolError(
                ErrorCode.NOT_FOUND, "no such recording or file (unknown, unfinished, or on another node)"
            )
        content_type = TYPES.get(name, MEDIA_TYPE)
        cache = CACHE_LISTING if name in TYPES else CACHE_FILE
        return web.FileResponse(path, headers={"Content-Type": content_type, "Cache-Control": cache})
