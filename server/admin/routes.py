"""The operator endpoints (docs/API.md), mounted by the composition root (server.app) on the
aiohttp app that also serves WHIP/WHEP.

Rooms and counts come from the hub's view, system messages go through the room outbox
(sequenced like any event), sanctions through the broker (so every node applies them),
stats through the analytics recorder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler

from server import protocol
from server.abuse.moderation import ADMIN_ACTIONS, Moderation
from server.admin.access import VERIFY_KEY, require_admin, require_host_or_admin
from server.broker.base import BrokerUnavailable

if TYPE_CHECKING:
    from server.analytics.recorder import Analytics
    from server.broker.base import Broker
    from server.config import Config
    from server.hub import Hub
    from server.node import Node

Verify = Callable[[str | None, str | None], Any]

MAX_SYSTEM_TEXT = 500
MAX_SANCTION_ROOMS = 100  # one broker write each


def add_admin_routes(app: web.Application, api: AdminApi) -> None:
    app[VERIFY_KEY] = api.verify
    app.router.add_get("/api/rooms/{room}/stats", api.stats)
    app.router.add_get("/api/admin/rooms", api.rooms)
    app.router.add_post("/api/admin/rooms/{room}/close", api.close_room)
    app.router.add_post("/api/admin/rooms/{room}/system", api.system)
    app.router.add_post("/api/admin/users/{uid}/sanction", api.sanction)
    app.router.add_get("/api/admin/health", api.health)
    app.router.add_route("OPTIONS", "/api/{tail:.*}", _preflight)
    app.middlewares.append(_cors)


_CORS = {  # Bearer tokens, never cookies: any origin may call (the dashboard is on the WS port)
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
}


async def _preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=_CORS)


@web.middleware
async def _cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS headers on every /api/ answer, errors included, so a browser can read them."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as error:
        error.headers.update(_CORS)
        raise
    response.headers.update(_CORS)
    return response


def _room(request: web.Request) -> str:
    room = request.match_info["room"]
    if not protocol.valid_id(room):
        raise web.HTTPBadRequest(text='{"error":"not a valid room id"}', content_type="application/json")
    return room


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text='{"error":"JSON object body required"}', content_type="application/json"
        )
    return body


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


class AdminApi:
    def __init__(
        self,
        config: Config,
        broker: Broker,
        hub: Hub,
        node: Node,
        analytics: Analytics,
        moderation: Moderation,
        verify: Verify,
    ) -> None:
        self.config = config
        self.broker = broker
        self.hub = hub
        self.node = node  # readiness and draining
        self.analytics = analytics
        self.moderation = moderation  # every action: system messages, closes, sanctions
        self.verify = verify  # the guard's keyring: host tokens signed with any key

    def _admin(self, request: web.Request) -> None:
        require_admin(request, self.config.admin_token)

    async def stats(self, request: web.Request) -> web.Response:
        room = _room(request)
        require_host_or_admin(request, self.config.admin_token, self.verify, room)
        return web.json_response(await self.analytics.stats(room))

    async def rooms(self, request: web.Request) -> web.Response:
        """This node's rooms (those with a local connection or media) and their counts."""
        self._admin(request)
        out = [
            {
                "room": room.room_id,
                "local": len(room.members),
                "online": room.online,
                "unique": room.unique,
                "likes": room.likes_total,
                "hosts": sorted(room.hosts),
                "live": sorted(room.publishers),
                "seq": room.seq,
            }
            for room in self.hub.rooms.values()
        ]
        return web.json_response({"node": self.node.node_id, "rooms": out})

    async def close_room(self, request: web.Request) -> web.Response:
        """A sequenced `system` event every node delivers, then this node's connections of the
        room close with 4410 (Moderation.close_room). Other nodes' viewers get the event."""
        self._admin(request)
        room_id = _room(request)
        closed = await self.moderation.close_room(room_id)
        return web.json_response({"room": room_id, "closed": closed})

    async def system(self, request: web.Request) -> web.Response:
        self._admin(request)
        room_id = _room(request)
        text = (await _body(request)).get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_SYSTEM_TEXT:
            raise _bad(f"'text' must be 1..{MAX_SYSTEM_TEXT} characters")
        await self.moderation.announce(room_id, text.strip())
        return web.json_response({"room": room_id, "queued": True})

    async def sanction(self, request: web.Request) -> web.Response:
        """Mute/unmute/ban/unban one user in several rooms at once (Moderation.admin_sanction)."""
        self._admin(request)
        uid = request.match_info["uid"]
        body = await _body(request)
        action, rooms, duration = body.get("action"), body.get("rooms"), body.get("duration")
        if action not in ADMIN_ACTIONS or not protocol.valid_id(uid):
            raise _bad(f"'action' must be one of {sorted(ADMIN_ACTIONS)}")
        if (
            not isinstance(rooms, list)
            or not 1 <= len(rooms) <= MAX_SANCTION_ROOMS
            or not all(isinstance(r, str) and protocol.valid_id(r) for r in rooms)
        ):
            raise _bad(f"'rooms' must be a list of 1..{MAX_SANCTION_ROOMS} room ids")
        if duration is not None and (
            isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration <= 0
        ):
            raise _bad("'duration' must be positive seconds")
        try:
            until = await self.moderation.admin_sanction(rooms, uid, action, duration)
        except BrokerUnavailable:
            return web.json_response(
                {"error": "broker unavailable: retry"}, status=503, headers={"Retry-After": "1"}
            )
        return web.json_response({"uid": uid, "action": action, "rooms": rooms, "until": until})

    async def health(self, request: web.Request) -> web.Response:
        self._admin(request)
        node = self.node
        body = {
            "node": node.node_id,
            "ready": node.ready,
            "draining": node.draining,
            "broker": type(self.broker).__name__,
            "broker_ready": self.broker.ready,
            "rooms": len(self.hub.rooms),
            "connections": sum(len(r.members) for r in self.hub.rooms.values()),
            "time": time.time(),
        }
        return web.json_response(body, status=200 if node.ready else 503)
