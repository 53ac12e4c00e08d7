"""The RTMP publish key endpoint (the `rtmp_key` door), on the media port:

    POST /rtmp/<room>/key[?ttl=<seconds>]      Authorization: Bearer <host token>   -> JSON
    {"server": "rtmp://<host>:<port>/live", "stream_key": "<key>",
     "url": "rtmp://<host>:<port>/live/<key>", "expires": <epoch seconds>}

Why: a host token is too long to be a stream key when the host's name or ids are long
(nginx-rtmp's 255-byte limit, server.wire.publish_key); the key this returns is what OBS's
Stream Key field takes. Only a host of the room gets one (4604 otherwise); a banned or kicked
host is refused like at every door. `server` and `url` are null when this node takes no RTMP
(--rtmp-port off): the key is good at any node of the deployment that does (same secret).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from server.abuse.doors import RTMP_KEY, bearer
from server.edge.rtmp import APP
from server.wire import protocol, publish_key
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.abuse.guard import Guard

NO_STORE = "no-store"  # a credential: never cached


class PublishKeyHttp:
    """The `/rtmp/<room>/key` route; mounted on the media port's aiohttp app by the App."""

    def __init__(self, guard: Guard, rtmp_port: Callable[[], int]) -> None:
        self.guard = guard
        self.rtmp_port = rtmp_port  # 0: this node takes no RTMP

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("POST", "/rtmp/{room}/key", self._key)
        app.router.add_route("OPTIONS", "/rtmp/{room}/key", self._options)

    async def _key(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        if not protocol.valid_id(room):
            raise ProtocolError(ErrorCode.BAD_FIELD, "not a valid room id")
        ttl = _ttl(request.query.get("ttl"))
        token = bearer(request.headers.get("Authorization", ""))
        who = await self.guard.authorize(RTMP_KEY, request.remote or "?", token, room)
        assert who is not None  # the rtmp_key door takes room tokens only
        if who.role != "host":
            raise ProtocolError(ErrorCode.MEDIA_FORBIDDEN, "only a host of this room gets a publish key")
        key, expires = self.guard.mint_publish_key(who, ttl)
        port = self.rtmp_port()
        server = f"rtmp://{request.url.host}:{port}/{APP}" if port else None
        body = {
            "server": server,
            "stream_key": key,
            "url": f"{server}/{key}" if server else None,
            "expires": expires,
        }
        return web.json_response(body, headers={"Cache-Control": NO_STORE})

    async def _options(self, request: web.Request) -> web.Response:
        return web.Response(status=204)


def _ttl(text: str | None) -> int:
    """The key's lifetime in seconds: `?ttl=` within [MIN_TTL, MAX_TTL], else the default."""
    if text is None:
        return publish_key.DEFAULT_TTL
    valid = text.isascii() and text.isdigit() and len(text) <= 7
    if not valid or not publish_key.MIN_TTL <= int(text) <= publish_key.MAX_TTL:
        raise ProtocolError(
            ErrorCode.BAD_FIELD,
            f"ttl must be {publish_key.MIN_TTL}-{publish_key.MAX_TTL} seconds",
        )
    return int(text)
