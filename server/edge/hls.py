"""LL-HLS over HTTP on the media port: a URL token for a viewer, then playlist and files.

    GET /hls/<room>/token                         Authorization: Bearer <room token> -> JSON
    GET /hls/<room>/<hls token>/index.m3u8[?_HLS_msn=M[&_HLS_part=P]]
    GET /hls/<room>/<hls token>/<stream id>/init.mp4 | p<M>.<P>.m4s | s<M>.m4s

Why the token is a path element and not a query parameter: playlist URIs are relative, and a
player resolves them against the playlist's URL, so every client (hls.js, Safari, FFmpeg)
sends the token with every file without the playlist naming it. The playlist is then the
same bytes for every viewer: a cache keyed on the URL minus the token serves them all
(docs/API.md "HLS behind a CDN"). The token endpoint is the `hls` door (Guard.authorize: join
buckets, bans); each file request checks the URL token's HMAC, expiry and bans
(Guard.authorize_hls). A node without the room's media answers 307 to the node with it.
Refusals are the port's JSON errors (server/edge/whip.py's middleware), never cached.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from aiohttp import web

from server import metrics
from server.abuse.doors import HLS, bearer
from server.media.hls.playlist import INIT_URI, RequestError
from server.wire import protocol
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.abuse.guard import Guard
    from server.media.gateway import MediaGateway
    from server.media.hls.live import HlsService, HlsStream

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
MEDIA_TYPE = "video/mp4"
# parts, segments and the init segment never change under their URL (the stream id is in it)
CACHE_FILE = "public, max-age=86400, immutable"
CACHE_PLAYLIST = "public, max-age=1"  # the live edge moves every part
# a blocking reload's answer is the playlist as it was when that part appeared: the same for
# every viewer asking the same URL, so a cache collapses them (kept a little over a segment)
CACHE_BLOCKING = "public, max-age=3"
NO_STORE = "no-store"

_PART = re.compile(r"p(\d{1,9})\.(\d{1,4})\.m4s")
_SEGMENT = re.compile(r"s(\d{1,9})\.m4s")


def _int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 9:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{name} must be a non-negative integer")
    return int(raw)


def _kind(name: str) -> str:
    """A served file's metric label (a bounded set)."""
    return "init" if name == INIT_URI else "part" if name.startswith("p") else "segment"


class HlsHttp:
    """The `/hls/` routes; mounted on the media port's aiohttp app by the App."""

    def __init__(self, guard: Guard, media: MediaGateway, service: HlsService) -> None:
        self.guard = guard
        self.media = media
        self.service = service

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("GET", "/hls/{room}/token", self._token)
        app.router.add_route("OPTIONS", "/hls/{room}/token", self._options)
        app.router.add_route("GET", "/hls/{room}/{tok}/index.m3u8", self._playlist)
        app.router.add_route("GET", "/hls/{room}/{tok}/{sid}/{name}", self._file)

    # -- handlers --------------------------------------------------------------------------
    async def _token(self, request: web.Request) -> web.Response:
        room = self._room(request)
        token = bearer(request.headers.get("Authorization", ""))
        who = await self.guard.authorize(HLS, request.remote or "?", token, room)
        assert who is not None  # the hls door takes room tokens only
        hls_token, expires = self.guard.mint_hls(who)
        body = {
            "hls_token": hls_token,
            "expires": expires,
            "url": f"/hls/{room}/{hls_token}/index.m3u8",
        }
        return web.json_response(body, headers={"Cache-Control": NO_STORE})

    async def _options(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _playlist(self, request: web.Request) -> web.StreamResponse:
        stream = await self._stream(request)
        if stream is None:
            return self._redirect(request)
        msn, part = _int(request, "_HLS_msn"), _int(request, "_HLS_part")
        if part is not None and msn is None:
            raise ProtocolError(ErrorCode.BAD_FIELD, "_HLS_part needs _HLS_msn")
        wait = self.service.config.max_wait
        # a stream just started: hold the request until a whole segment exists, so a client
        # without LL-HLS (which plays whole segments only) finds something to play
        if not await stream.wait(lambda: bool(stream.playlist and stream.playlist.ready(0, None)), wait):
            raise ProtocolError(ErrorCode.MEDIA_UNAVAILABLE, "the stream has not started yet", retry_after=1)
        playlist = stream.playlist
        assert playlist is not None
        if msn is not None:
            try:
                playlist.check_request(msn, part)
            except RequestError as exc:
                raise ProtocolError(ErrorCode.BAD_FIELD, str(exc)) from None
            if not await stream.wait(lambda: playlist.ready(msn, part), wait):
                raise ProtocolError(ErrorCode.MEDIA_UNAVAILABLE, "that part is late", retry_after=1)
        cache = CACHE_BLOCKING if msn is not None else CACHE_PLAYLIST
        key = "index.m3u8" if msn is None else f"index.m3u8?{msn}.{'' if part is None else part}"
        stream.served[key] += 1
        metrics.hls_requests.labels("playlist" if msn is None else "blocking").inc()
        return web.Response(
            text=stream.render(), content_type=PLAYLIST_TYPE, headers={"Cache-Control": cache}
        )

    async def _file(self, request: web.Request) -> web.StreamResponse:
        stream = await self._stream(request)
        if stream is None:
            return self._redirect(request)
        name = request.match_info["name"]
        if request.match_info["sid"] != stream.stream_id:
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such stream: it restarted, reload the playlist")
        data = await self._wait_file(stream, name)
        if data is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such part or segment (gone or never made)")
        stream.served[name] += 1
        metrics.hls_requests.labels(_kind(name)).inc()
        return web.Response(body=data, content_type=MEDIA_TYPE, headers={"Cache-Control": CACHE_FILE})

    # -- internals -------------------------------------------------------------------------
    def _room(self, request: web.Request) -> str:
        room = request.match_info["room"]
        if not protocol.valid_id(room):
            raise ProtocolError(ErrorCode.BAD_FIELD, "not a valid room id")
        return room

    async def _stream(self, request: web.Request) -> HlsStream | None:
        """The URL token's checks, then the room's stream here (None: another node has the media)."""
        room = self._room(request)
        await self.guard.authorize_hls(request.match_info["tok"], room)
        if self.media.origin_of(room) is not None:
            return None
        stream = self.service.stream(room)
        if stream is None:
            raise ProtocolError(ErrorCode.MEDIA_NO_MEDIA, "nobody is live in this room")
        return stream

    def _redirect(self, request: web.Request) -> web.Response:
        origin = self.media.origin_of(request.match_info["room"])
        if origin is None:  # the media moved here meanwhile: the client asks again
            raise ProtocolError(ErrorCode.MEDIA_UNAVAILABLE, "the room's media is moving", retry_after=1)
        headers = {"Location": origin[1] + request.path_qs, "Cache-Control": NO_STORE}
        return web.Response(status=307, headers=headers)

    async def _wait_file(self, stream: HlsStream, name: str) -> bytes | None:
        """A file's bytes; the part being written (the preload hint) or the segment being
        written is held until it is complete, a file past those is 404 at once."""
        wait = self.service.config.max_wait
        if name == INIT_URI:
            await stream.wait(lambda: stream.init is not None, wait)
            return stream.init
        if (match := _PART.fullmatch(name)) is not None:
            msn, index = int(match[1]), int(match[2])

            def ready() -> bool:
                return name in stream.files or not self._coming(stream, msn, index)

            await stream.wait(ready, wait)
            return stream.files.get(name)
        if (match := _SEGMENT.fullmatch(name)) is not None:
            msn = int(match[1])
            await stream.wait(lambda: name in stream.files or not self._coming(stream, msn, None), wait)
            return stream.files.get(name)
        return None

    @staticmethod
    def _coming(stream: HlsStream, msn: int, index: int | None) -> bool:
        """That part (or segment) is the one being written now: worth holding the request for."""
        playlist = stream.playlist
        if stream.ended or playlist is None:
            return playlist is None and not stream.ended
        edge_msn, edge_index = playlist.next_part()
        if index is None:
            current = playlist.segment(msn)
            return current is not None and not current.complete
        return (msn, index) == (edge_msn, edge_index) or (
            msn == edge_msn + 1 and index == 0 and edge_index > 0
        )
