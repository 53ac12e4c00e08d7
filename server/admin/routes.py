"""The operator endpoints (docs/API.md), added to the WHIP/WHEP aiohttp app.

Who may call: each handler first asks the node's Guard (`Guard.authorize` with the STATS or
ADMIN door: Host, per-IP bucket, admin token or a host token of the room); refusals and bad
input raise ProtocolError, answered as JSON by the port's middleware (server.whip).
Everything here acts through the node: rooms and counts from its view, system messages
through the room outbox (sequenced like any event), sanctions through the broker (so every
node applies them), stats through node.analytics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from server import protocol
from server.abuse.doors import ADMIN, STATS, Door, bearer
from server.abuse.moderation import DEFAULT_DURATION
from server.broker.base import Sanction
from server.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.client import Client
    from server.node import Node
    from server.rooms import Room

MAX_SYSTEM_TEXT = 500
MAX_SANCTION_ROOMS = 100  # one broker write each
MAX_SANCTION_SECONDS = 10 * 365 * 86400  # 10 years; a sanction without duration takes the default
MAX_JSON_DEPTH = 8  # admin bodies are flat objects
_SANCTIONS = {
    "mute": ("mute", False),
    "unmute": ("mute", True),
    "ban": ("ban", False),
    "unban": ("ban", True),
}
ADMIN_UID = "admin"


def add_admin_routes(app: web.Application, node: Node) -> None:
    api = AdminApi(node)
    app.router.add_get("/api/rooms/{room}/stats", api.stats)
    app.router.add_get("/api/admin/rooms", api.rooms)
    app.router.add_post("/api/admin/rooms/{room}/close", api.close_room)
    app.router.add_post("/api/admin/rooms/{room}/system", api.system)
    app.router.add_post("/api/admin/users/{uid}/sanction", api.sanction)
    app.router.add_get("/api/admin/health", api.health)
    app.router.add_route("OPTIONS", "/api/{tail:.*}", _preflight)


async def _preflight(request: web.Request) -> web.Response:
    return web.Response(status=204)


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
    return body


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FIELD, message)


class AdminApi:
    def __init__(self, node: Node) -> None:
        self.node = node

    async def _authorize(self, request: web.Request, door: Door, room: str | None = None) -> None:
        token = bearer(request.headers.get("Authorization", ""))
        await self.node.guard.authorize(door, request.remote or "?", token, room)

    async def _admin(self, request: web.Request) -> None:
        await self._authorize(request, ADMIN)

    async def stats(self, request: web.Request) -> web.Response:
        room = _room(request)
        await self._authorize(request, STATS, room)
        return web.json_response(await self.node.analytics.stats(room))

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
            for room in self.node.rooms.values()
        ]
        return web.json_response({"node": self.node.node_id, "rooms": out})

    async def close_room(self, request: web.Request) -> web.Response:
        """Tell the room it is closed (a sequenced `system` event every node delivers), then
        close this node's connections of the room (4410). Other nodes' viewers get the event."""
        await self._admin(request)
        room_id = _room(request)
        room = await self.node.open_room(room_id)
        seq = room.seq
        self.node.enqueue(room_id, _system("this room was closed", closed=True))
        await self._sent(room, seq)
        closing = list(room.members)
        for client in closing:
            client.close(ROOM_CLOSED, "room closed")
        return web.json_response({"room": room_id, "closed": len(closing)})

    async def _sent(self, room: Room[Client], seq: int) -> None:
        """Wait (bounded) until the outbox went out and a batch came back, so viewers here get
        the event before their close; the node's own tick sends it (no second, racing tick)."""
        period = self.node.config.tick_ms / 1000
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT):
                while room.dirty or room.seq <= seq:
                    await asyncio.sleep(period)

    async def system(self, request: web.Request) -> web.Response:
        await self._admin(request)
        room_id = _room(request)
        text = (await _body(request)).get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_SYSTEM_TEXT:
            raise _bad(f"'text' must be 1..{MAX_SYSTEM_TEXT} characters")
        await self.node.open_room(room_id)
        self.node.enqueue(room_id, _system(text.strip()))
        return web.json_response({"room": room_id, "queued": True})

    async def sanction(self, request: web.Request) -> web.Response:
        """Mute/unmute/ban/unban one user in several rooms at once (stored in the broker)."""
        await self._admin(request)
        uid = request.match_info["uid"]
        body = await _body(request)
        action, rooms, duration = body.get("action"), body.get("rooms"), body.get("duration")
        if action not in _SANCTIONS or not protocol.valid_id(uid):
            raise _bad(f"'action' must be one of {sorted(_SANCTIONS)}")
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
        kind, lifted = _SANCTIONS[action]
        seconds = duration if duration is not None else DEFAULT_DURATION[kind]
        until = None if lifted or seconds is None else protocol.now_ms() + int(seconds * 1000)
        for room in rooms:  # BrokerUnavailable: 503 with Retry-After (the port's middleware)
            await self.node.broker.put_sanction(Sanction(room, uid, kind, until, ADMIN_UID, lifted))
        if self.node.webhooks is not None:
            self.node.webhooks.emit(
                "moderation", {"action": action, "uid": uid, "rooms": rooms, "until": until, "by": ADMIN_UID}
            )
        return web.json_response({"uid": uid, "action": action, "rooms": rooms, "until": until})

    async def health(self, request: web.Request) -> web.Response:
        await self._admin(request)
        node = self.node
        body = {
            "node": node.node_id,
            "ready": node.ready,
            "draining": node.draining,
            "broker": type(node.broker).__name__,
            "broker_ready": node.broker.ready,
            "rooms": len(node.rooms),
            "connections": sum(len(r.members) for r in node.rooms.values()),
            "time": time.time(),
        }
        return web.json_response(body, status=200 if node.ready else 503)


CLOSE_WAIT = 2.0  # seconds the close waits for its event to go out before closing anyway
ROOM_CLOSED = 4410  # close code: an operator closed the room (docs/API.md)


def _system(text: str, **fields: Any) -> dict[str, Any]:
    return {
        "t": "system",
        "uid": protocol.SYSTEM_UID,
        "name": protocol.SYSTEM_UID,
        "text": text,
        "ts": protocol.now_ms(),
        **fields,
    }
