"""The operator endpoints (docs/API.md), mounted by the composition root (server.app) on the
aiohttp app that also serves WHIP/WHEP.

Who may call: each handler first asks the Guard (`Guard.authorize` with the STATS or ADMIN
door: Host, per-IP bucket, admin token or a host token of the room); refusals and bad input
raise ProtocolError, answered as JSON by the port's middleware (server.edge.whip).
Rooms and counts come from the hub's view, system messages go through the room outbox
(sequenced like any event), sanctions through the broker (so every node applies them),
stats through the analytics recorder.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from server.abuse.doors import ADMIN, STATS, Door, bearer
from server.abuse.moderation import ADMIN_ACTIONS, Moderation
from server.wire import protocol
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.abuse.guard import Guard
    from server.analytics.recorder import Analytics
    from server.broker.base import Broker
    from server.config import Config
    from server.delivery.hub import Hub
    from server.media.hls.archive import Archive
    from server.node.node import Node

MAX_SYSTEM_TEXT = 500
MAX_SANCTION_ROOMS = 100  # one broker write each
MAX_SANCTION_SECONDS = 10 * 365 * 86400  # 10 years; a sanction without duration takes the default
MAX_JSON_DEPTH = 8  # admin bodies are flat objects


def add_admin_routes(app: web.Application, api: AdminApi) -> None:
    app.router.add_get("/api/rooms/{room}/stats", api.stats)
    app.router.add_get("/api/admin/rooms", api.rooms)
    app.router.add_get("/api/admin/rooms/{room}/recordings", api.recordings)
    app.router.add_post("/api/admin/rooms/{room}/close", api.close_room)
    app.router.add_post("/api/admin/rooms/{room}/system", api.system)
    app.router.add_post("/api/admin/users/{uid}/sanction", api.sanction)
    app.router.add_get("/api/admin/health", api.health)
    app.router.add_route("OPTIONS", "/api/{tail:.*}", _preflight)


async def _preflight(request: web.Request) -> web.Response:
    return web.Response(status=204)  # CORS headers: the port's middleware (server.edge.whip)


def _room(request: web.Request) -> str:
    room = request.match_info["room"]
    if not protocol.valid_id(room):
        raise _bad("not a valid room id")
    return room


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any, limit: int) -> bool:
    """Whether `value` nests at most `limit` levels (checked iteratively: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            if level > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return True


async def _body(request: web.Request) -> dict[str, Any]:
    """A JSON object: strict UTF-8, no NaN/Infinity, shallow; anything else is 400."""
    raw = await request.read()
    if raw.count(b"[") + raw.count(b"{") > 1000:  # json.loads recurses: refuse deep nesting unread
        raise _bad("JSON body nested too deeply")
    try:
        body = json.loads(raw.decode(), parse_constant=_no_constant)
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict) or not _depth(body, MAX_JSON_DEPTH):
        raise _bad("JSON object body required")
    if not protocol.encodable(body):  # "\ud83d": a lone surrogate no frame can carry
        raise _bad("text is not valid Unicode (a lone surrogate)")
    return body


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FIELD, message)


class AdminApi:
    def __init__(
        self,
        config: Config,
        broker: Broker,
        hub: Hub,
        node: Node,
        analytics: Analytics,
        moderation: Moderation,
        guard: Guard,
        archive: Archive | None = None,
    ) -> None:
        self.config = config
        self.broker = broker
        self.hub = hub
        self.node = node  # readiness and draining
        self.analytics = analytics
        self.moderation = moderation  # every action: system messages, closes, sanctions
        self.guard = guard  # every caller is authorised by the guard (docs/API.md "Doors")
        self.archive = archive  # --record: this node's recordings

    async def _authorize(self, request: web.Request, door: Door, room: str | None = None) -> None:
        token = bearer(request.headers.get("Authorization", ""))
        await self.guard.authorize(door, request.remote or "?", token, room)

    async def _admin(self, request: web.Request) -> None:
        await self._authorize(request, ADMIN)

    async def stats(self, request: web.Request) -> web.Response:
        room = _room(request)
        await self._authorize(request, STATS, room)
        return web.json_response(await self.analytics.stats(room))

    async def rooms(self, request: web.Request) -> web.Response:
        """This node's rooms (those with a local connection or media) and their counts."""
        await self._admin(request)
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

    async def recordings(self, request: web.Request) -> web.Response:
        """The room's recordings on this node, newest first: the one being written, then the
        finished ones (id, start, end, duration, size, danmaku...; docs/API.md "Recordings")."""
        await self._admin(request)
        room_id = _room(request)
        if self.archive is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, "this node keeps no recordings (--record is off)")
        recordings = await self.archive.list(room_id)
        return web.json_response({"node": self.node.node_id, "room": room_id, "recordings": recordings})

    async def close_room(self, request: web.Request) -> web.Response:
        """A sequenced `system` event every node delivers, then this node's connections of the
        room close with 4410 (Moderation.close_room). Other nodes' viewers get the event."""
        await self._admin(request)
        room_id = _room(request)
        closed = await self.moderation.close_room(room_id)
        return web.json_response({"room": room_id, "closed": closed})

    async def system(self, request: web.Request) -> web.Response:
        await self._admin(request)
        room_id = _room(request)
        text = (await _body(request)).get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_SYSTEM_TEXT:
            raise _bad(f"'text' must be 1..{MAX_SYSTEM_TEXT} characters")
        await self.moderation.announce(room_id, text.strip())
        return web.json_response({"room": room_id, "queued": True})

    async def sanction(self, request: web.Request) -> web.Response:
        """Mute/unmute/ban/unban one user in several rooms at once (Moderation.admin_sanction)."""
        await self._admin(request)
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
            isinstance(duration, bool)
            or not isinstance(duration, (int, float))
            or not math.isfinite(duration)
            or not 0 < duration <= MAX_SANCTION_SECONDS
        ):
            raise _bad(f"'duration' must be 0..{MAX_SANCTION_SECONDS} seconds (omit: the default)")
        # BrokerUnavailable: 503 with Retry-After (the port's middleware)
        until = await self.moderation.admin_sanction(rooms, uid, action, duration)
        return web.json_response({"uid": uid, "action": action, "rooms": rooms, "until": until})

    async def health(self, request: web.Request) -> web.Response:
        await self._admin(request)
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
