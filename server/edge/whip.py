"""WHIP (RFC 9725) ingest and WHEP playback over HTTP, on a second port served by aiohttp.

Why a second port: `websockets` answers only GETs on its port, and OBS (WHIP) or a WHEP
player must POST an SDP offer and DELETE the session. Same tokens as the WebSocket
(`Authorization: Bearer JWT`, bound to the room in the URL), checked by the same Guard
(`Guard.authorize`: keys, nonce, bans, rate limits; server.abuse.doors lists each door's
checks); the media itself goes through the node's MediaGateway exactly like WebSocket
signaling. No trickle ICE (SDPs carry their candidates), so PATCH on a session is answered 405.

Every refusal on this port, malformed HTTP included, is a 4xx with a JSON body
`{"code", "error", "msg"}`; refusals are logged one line per 10 s at most. A connection that
has not sent its request headers within the join timeout (10 s) is closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

from server.abuse.doors import (
    ADMIN,
    HLS,
    RTMP_KEY,
    STATS,
    WHEP,
    WHIP,
    Door,
    bearer,
    error_body,
    http_error,
)
from server.broker.base import BrokerUnavailable
from server.logs import RefusalLog
from server.wire import auth, protocol
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from aiohttp.web_request import BaseRequest

    from server.abuse.guard import Guard
    from server.config import Config
    from server.delivery.hub import Hub
    from server.media.gateway import MediaGateway

log = logging.getLogger("liveroom.http")
REFUSALS = web.AppKey("liveroom.refusals", RefusalLog)  # one per node: its rate-limited refusal lines

SDP_TYPE = "application/sdp"
MAX_BODY = protocol.MAX_SDP_LEN

CORS = {  # Bearer tokens, never cookies: any origin may call (Host is checked instead)
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Expose-Headers": "Location, Link",
}
_HTTP_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.BODY_TOO_LARGE,
    415: ErrorCode.BAD_CONTENT_TYPE,
}


def door_of(path: str) -> Door:
    if path.startswith("/whip/"):
        return WHIP
    if path.startswith("/whep/"):
        return WHEP
    if path.startswith(("/hls/", "/replay/")):  # a replay's files take the HLS URL token
        return HLS
    if path.startswith("/rtmp/"):
        return RTMP_KEY
    if path.startswith("/api/rooms/"):
        return STATS
    return ADMIN


def _refused(request: web.Request, error: ProtocolError) -> web.Response:
    line = f"{request.method} {request.path[:80]} {error.code.name}"
    request.app[REFUSALS].refused(line, asyncio.get_running_loop().time())
    response = http_error(error, CORS)
    if error.code in (ErrorCode.BODY_TOO_LARGE, ErrorCode.BODY_TIMEOUT):
        response.force_close()  # the rest of the body is never read: the connection goes
    return response


@web.middleware
async def _answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer of this port: CORS headers, refusals as JSON, never a traceback for a client."""
    try:
        response = await handler(request)
    except ProtocolError as error:
        return _refused(request, error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, ErrorCode.BAD_REQUEST)
        error = ProtocolError(code, exc.reason)
        response = _refused(request, error)
        response.set_status(exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except BrokerUnavailable:
        error = ProtocolError(ErrorCode.BROKER_UNAVAILABLE, "broker unavailable: retry", retry_after=1)
        return _refused(request, error)
    except ConnectionError:  # the client went away mid-request: its doing, not a server fault
        return _refused(request, ProtocolError(ErrorCode.BAD_REQUEST, "connection lost"))
    except Exception:  # a server bug: logged in full, the client gets a plain 500
        log.exception("error handling %s %s", request.method, request.path[:80])
        return http_error(ProtocolError(ErrorCode.INTERNAL, "internal error"), CORS)
    response.headers.update(CORS)
    return response


class _Handler(RequestHandler):
    """aiohttp's connection handler, with malformed requests answered in JSON and logged
    rate-limited (aiohttp logs each at ERROR with a traceback)."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        detail = (message or "bad request").splitlines()[0][:120]
        refusals = getattr(self._manager, "refusals", None)
        if refusals is not None:
            refusals.refused(f"malformed request from {request.remote}: {detail}", self._loop.time())
        code = _HTTP_CODES.get(status, ErrorCode.BAD_REQUEST)
        response = web.Response(status=status, text=error_body(code, detail), content_type="application/json")
        response.force_close()
        return response


class _Server(web.Server):
    refusals: RefusalLog

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    """AppRunner whose connections use _Handler (aiohttp builds RequestHandler itself)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        timed = _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **self._kwargs,
        )
        timed.refusals = self.app[REFUSALS]
        return timed


class MediaHttp:
    """The aiohttp application and its runner: POST/DELETE /whip/<room>[/<id>], /whep/<room>[/<id>]."""

    def __init__(self, config: Config, guard: Guard, media: MediaGateway, hub: Hub) -> None:
        self.config = config
        self.guard = guard  # every door's authorisation (docs/API.md "Doors")
        self.media = media
        self.hub = hub
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[_answers, self._body, self._host])
        self.app[REFUSALS] = RefusalLog(log)
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
        self._runner = _Runner(
            self.app,
            access_log=None,
            handle_signals=False,
            # also the header timeout: a connection that has not sent a whole request by then is
            # closed (aiohttp arms it when the connection opens), like the WS port's open timeout
            keepalive_timeout=self.config.join_timeout,
            # a body left unread (refused: over the limit, past its deadline) is not drained for
            # another 10 s: the connection closes once the refusal is written
            lingering_time=0,
        )
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

    @web.middleware
    async def _body(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every door's body, before anything else: a declared length over the limit is refused
        unread (413), and a body must arrive within body_timeout (a trickled one: 408, closed)."""
        declared = request.content_length
        if declared is not None and declared > MAX_BODY:
            raise ProtocolError(ErrorCode.BODY_TOO_LARGE, f"body over {MAX_BODY} bytes")
        if request.body_exists:
            try:  # read here, kept by the request: the handler's read() returns these bytes
                async with asyncio.timeout(self.config.body_timeout):
                    await request.read()
            except TimeoutError:
                raise ProtocolError(ErrorCode.BODY_TIMEOUT, "the body did not arrive in time") from None
        return await handler(request)

    @web.middleware
    async def _host(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """DNS rebinding: every path of this port checks Host first."""
        self.guard.request_allowed(door_of(request.path), request.headers)
        return await handler(request)

    async def _identity(self, request: web.Request, door: Door, *, new_session: bool) -> Any:
        return (await self._caller(request, door, new_session=new_session))[0]

    async def _caller(self, request: web.Request, door: Door, *, new_session: bool) -> tuple[Any, bool]:
        """Who calls, and whether it is another node (a cascading edge) rather than a client."""
        room = request.match_info["room"]
        if not protocol.valid_id(room):
            raise ProtocolError(ErrorCode.BAD_FIELD, "not a valid room id")
        ip = request.remote or "?"
        token = bearer(request.headers.get("Authorization", ""))
        if token and auth.is_node_token(token):  # node to node: its own key, no client limits
            return self.guard.authorize_node(door, token, room), True
        who = await self.guard.authorize(door, ip, token, room, new_session=new_session)
        return who, False

    async def _post(self, request: web.Request) -> web.Response:
        door = door_of(request.path)
        try:
            who, relay = await self._caller(request, door, new_session=True)
            if request.content_type != SDP_TYPE:
                raise ProtocolError(ErrorCode.BAD_CONTENT_TYPE, "Content-Type must be application/sdp")
            try:
                sdp = (await request.read()).decode()
            except UnicodeDecodeError:
                raise ProtocolError(ErrorCode.MEDIA_BAD_SDP, "the offer is not UTF-8") from None
            if not sdp.strip():
                raise ProtocolError(ErrorCode.MEDIA_BAD_SDP, "empty offer")
            gateway = self.media
            ip = request.remote or "?"
            if door is WHIP:
                rid, answer = await gateway.whip(who, who.room, sdp, ip)
            else:
                publisher = request.query.get("publisher")
                if publisher is not None and not protocol.valid_id(publisher):
                    raise ProtocolError(ErrorCode.BAD_FIELD, "not a valid publisher id")
                rid, answer = await gateway.whep(who, who.room, sdp, ip, publisher=publisher, relay=relay)
        except ProtocolError as error:
            if error.code == ErrorCode.MEDIA_WRONG_NODE:
                owner = self._owner_url(request)
                if owner:  # RFC 9725 4.5: redirect to the node that holds the room's media
                    return web.Response(status=307, headers={"Location": owner + request.path})
            raise
        location = f"/{door.name}/{who.room}/{rid}"
        headers = CIMultiDict({"Location": location, "Content-Type": SDP_TYPE})
        if not relay:
            for link in self.media.ice.link_headers(who.uid):  # RFC 9725 4.6: ICE servers
                headers.add("Link", link)
        return web.Response(status=201, body=answer.encode(), headers=headers)

    def _owner_url(self, request: web.Request) -> str | None:
        view = self.hub.rooms.get(request.match_info["room"])
        return view.media_url if view is not None else None

    async def _delete(self, request: web.Request) -> web.Response:
        """Ending a session is not a new one: keys and bucket only, no nonce, no ban check."""
        door = door_of(request.path)
        who = await self._identity(request, door, new_session=False)
        found = await self.media.delete_resource(door.name, who.room, request.match_info["rid"], who)
        if not found:
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such session")
        return web.Response(status=200)

    async def _patch(self, request: web.Request) -> web.Response:
        raise web.HTTPMethodNotAllowed("PATCH", ["DELETE", "OPTIONS"])

    async def _options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Accept-Post": SDP_TYPE})
