"""WHIP (RFC 9725) ingest and WHEP playback over HTTP, on a second port served by aiohttp.

Why a second port: `websockets` answers only GETs on its port, and OBS (WHIP) or a WHEP
player must POST an SDP offer and DELETE the session. Same tokens as the WebSocket
(`Authorization: Bearer JWT`, bound to the room in the URL); the media itself goes through
the node's MediaGateway exactly like WebSocket signaling. No trickle ICE (SDPs carry their
candidates), so PATCH on a session is answered 405.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web

from server import auth, protocol
from server.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.config import Config
    from server.hub import Hub
    from server.media_gateway import MediaGateway

SDP_TYPE = "application/sdp"
MAX_BODY = protocol.MAX_SDP_LEN

_STATUS: dict[ErrorCode, int] = {
    ErrorCode.AUTH_REQUIRED: 401,
    ErrorCode.TOKEN_INVALID: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.WRONG_ROOM: 403,
    ErrorCode.MEDIA_FORBIDDEN: 403,
    ErrorCode.BAD_FIELD: 400,
    ErrorCode.MEDIA_BAD_SDP: 400,
    ErrorCode.MEDIA_UNSUPPORTED: 422,
    ErrorCode.MEDIA_TOO_MANY_TRACKS: 422,
    ErrorCode.MEDIA_ALREADY_PUBLISHING: 409,
    ErrorCode.MEDIA_BAD_STATE: 409,
    ErrorCode.MEDIA_NO_MEDIA: 409,
    ErrorCode.MEDIA_TOO_MANY_PUBLISHERS: 503,
    ErrorCode.MEDIA_TOO_MANY_VIEWERS: 503,
    ErrorCode.MEDIA_UNAVAILABLE: 503,
    ErrorCode.MEDIA_WRONG_NODE: 421,
}
RETRY_AFTER = "10"  # seconds, on 503 (limits): RFC 9725 section 4.6

_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Expose-Headers": "Location",
}


def _error(error: ProtocolError) -> web.Response:
    status = _STATUS.get(error.code, 500)
    headers = dict(_CORS)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="liveroom"'
    if status == 503:
        headers["Retry-After"] = RETRY_AFTER
    body = {"code": int(error.code), "error": error.code.name, "msg": error.message}
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


class MediaHttp:
    """The aiohttp application and its runner: POST/DELETE /whip/<room>[/<id>], /whep/<room>[/<id>]."""

    def __init__(self, config: Config, media: MediaGateway, hub: Hub) -> None:
        self.config = config
        self.media = media
        self.hub = hub
        self.app = web.Application(client_max_size=MAX_BODY)
        for kind in ("whip", "whep"):
            self.app.router.add_route("POST", f"/{kind}/{{room}}", self._post)
            self.app.router.add_route("OPTIONS", f"/{kind}/{{room}}", self._options)
            self.app.router.add_route("DELETE", f"/{kind}/{{room}}/{{rid}}", self._delete)
            self.app.router.add_route("PATCH", f"/{kind}/{{room}}/{{rid}}", self._patch)
            self.app.router.add_route("OPTIONS", f"/{kind}/{{room}}/{{rid}}", self._options)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen and return the bound port (port 0: any free port)."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port)
        await self._site.start()
        server = self._site._server
        assert server is not None
        return server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- handlers ------------------------------------------------------------------------

    def _identity(self, request: web.Request) -> auth.Identity:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ProtocolError(ErrorCode.AUTH_REQUIRED, "Authorization: Bearer <token> required")
        room = request.match_info["room"]
        if not protocol.valid_id(room):
            raise ProtocolError(ErrorCode.BAD_FIELD, "not a valid room id")
        return auth.verify(self.config.secret, token.strip(), room)

    async def _post(self, request: web.Request) -> web.Response:
        kind = request.path.split("/", 2)[1]
        try:
            who = self._identity(request)
            if request.content_type != SDP_TYPE:
                return web.Response(status=415, text="Content-Type must be application/sdp", headers=_CORS)
            sdp = await request.text()
            if not sdp.strip():
                raise ProtocolError(ErrorCode.MEDIA_BAD_SDP, "empty offer")
            gateway = self.media
            if kind == "whip":
                rid, answer = await gateway.whip(who, who.room, sdp)
            else:
                rid, answer = await gateway.whep(who, who.room, sdp)
        except ProtocolError as error:
            if error.code == ErrorCode.MEDIA_WRONG_NODE:
                owner = self._owner_url(request)
                if owner:  # RFC 9725 4.5: redirect to the node that holds the room's media
                    return web.Response(status=307, headers={**_CORS, "Location": owner + request.path})
            return _error(error)
        except web.HTTPException:
            raise
        location = f"/{kind}/{who.room}/{rid}"
        return web.Response(
            status=201,
            body=answer.encode(),
            headers={**_CORS, "Location": location, "Content-Type": SDP_TYPE},
        )

    def _owner_url(self, request: web.Request) -> str | None:
        view = self.hub.rooms.get(request.match_info["room"])
        return view.media_url if view is not None else None

    async def _delete(self, request: web.Request) -> web.Response:
        kind = request.path.split("/", 2)[1]
        try:
            who = self._identity(request)
            found = await self.media.delete_resource(kind, who.room, request.match_info["rid"], who)
        except ProtocolError as error:
            return _error(error)
        return web.Response(status=200 if found else 404, headers=_CORS)

    async def _patch(self, request: web.Request) -> web.Response:
        return web.Response(status=405, headers={**_CORS, "Allow": "DELETE, OPTIONS"})

    async def _options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={**_CORS, "Accept-Post": SDP_TYPE})
