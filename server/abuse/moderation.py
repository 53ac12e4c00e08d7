"""Moderation: hosts and moderators mute, kick, ban and delete in their room; users block DMs;
operators (the admin API) sanction users across rooms, post system messages and close rooms.

Every action goes through here, whoever asks: one table of actions, one sanction write
(an unban also ends a kick's cool-down, on every path), one log line, one webhook.

Sanctions are stored in the broker (`Sanctions.put_sanction`), which tells every
node's watcher at once: each node applies them to its local connections (a
muted user's sends fail with 4401 and the remaining time; kicked and banned
users get an error frame then a close with 4402/4403) and checks them again at
join, so reconnecting does not shed them. Deleting a danmaku puts a `delete`
event in the room's outbox, so it is sequenced and replayed like any event.
Every action is authorised by the token's role and logged as one JSON line
(logger `liveroom.abuse.mod`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from server.abuse import metrics as abuse_metrics
from server.broker.base import BrokerUnavailable, Sanction
from server.room.state import system_event
from server.wire import protocol
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.broker.base import Sanctions
    from server.delivery.hub import Hub
    from server.delivery.peer import Peer
    from server.room.state import Room
    from server.webhooks.sender import Webhooks

log = logging.getLogger("liveroom.abuse.mod")

DEFAULT_DURATION = {"mute": 600.0, "kick": 60.0, "ban": None}  # seconds; None: until unbanned
ACTIONS = {  # action -> (sanction kind, lifts it?)
    "mute": ("mute", False),
    "unmute": ("mute", True),
    "kick": ("kick", False),
    "ban": ("ban", False),
    "unban": ("ban", True),
}
ADMIN_ACTIONS = ("mute", "unmute", "ban", "unban")  # what the admin API may do across rooms
ADMIN_UID = "admin"  # `by` of operator actions
CLOSE_WAIT = 2.0  # seconds a room close waits for its event to go out before closing anyway


def _retry_after(until_ms: int | None) -> float | None:
    return None if until_ms is None else max(0.0, round(until_ms / 1000 - time.time(), 1))


def sanction_error(sanction: Sanction) -> ProtocolError:
    """The error a banned or kicked user gets, at join and when it happens."""
    if sanction.kind == "ban":
        code, text = ErrorCode.BANNED, "you are banned from this room"
    else:
        code, text = ErrorCode.KICKED, "you were removed from this room"
    return ProtocolError(code, text, retry_after=_retry_after(sanction.until))


def _unavailable(cid: str | int | None) -> ProtocolError:
    return ProtocolError(ErrorCode.BROKER_UNAVAILABLE, "not applied: retry", cid, retry_after=1.0)


class Moderation:
    """Sanctions and deletions: checked, stored in the broker, logged, reported to webhooks.

    The broker's sanction watcher must call `on_sanction` (app.py wires it).
    """

    def __init__(self, sanctions: Sanctions, hub: Hub, webhooks: Webhooks | None, tick_ms: int) -> None:
        self.sanctions = sanctions  # the broker's part that stores sanctions and tells every node
        self.hub = hub
        self.webhooks = webhooks
        self.tick_ms = tick_ms  # how often the room's outbox goes out (a room close waits for it)

    # -- the one path every sanction takes ---------------------------------------------------

    async def sanction(
        self, rooms: Iterable[str], uid: str, action: str, by: str, duration: float | None = None
    ) -> int | None:
        """Store `action` on `uid` in every room (all nodes apply it); returns `until` (epoch ms).

        Raises BrokerUnavailable when it could not be stored: the caller must not report it done.
        """
        kind, lifted = ACTIONS[action]
        seconds = duration if duration is not None else DEFAULT_DURATION[kind]
        until = None if lifted or seconds is None else protocol.now_ms() + int(seconds * 1000)
        for room in rooms:
            await self.sanctions.put_sanction(Sanction(room, uid, kind, until, by, lifted))
            if action == "unban":  # an unban also ends a kick's cool-down
                await self.sanctions.put_sanction(Sanction(room, uid, "kick", None, by, True))
        return until

    def _done(self, action: str, record: dict[str, object]) -> None:
        """Log, report and count an action that was applied."""
        log.info("moderation %s", json.dumps(record, separators=(",", ":")))
        if self.webhooks is not None:
            self.webhooks.emit("moderation", record)
        abuse_metrics.moderation_actions.labels(action=action).inc()

    # -- operators (admin API) ------------------------------------------------------------------

    async def admin_sanction(
        self, rooms: list[str], uid: str, action: str, duration: float | None
    ) -> int | None:
        """An operator's sanction of one user in several rooms; BrokerUnavailable if not stored."""
        if action not in ADMIN_ACTIONS:
            raise ValueError(f"not an admin action: {action!r}")
        until = await self.sanction(rooms, uid, action, ADMIN_UID, duration)
        self._done(action, {"action": action, "uid": uid, "rooms": rooms, "until": until, "by": ADMIN_UID})
        return until

    async def announce(self, room_id: str, text: str, **fields: object) -> Room[Peer]:
        """A `system` message in the room, sequenced like any event (every node delivers it)."""
        room = await self.hub.open_room(room_id)
        self.hub.enqueue(room_id, system_event("system", protocol.now_ms(), text=text, **fields))
        return room

    async def close_room(self, room_id: str) -> int:
        """Tell the room it is closed, then close this node's connections of it (4410).

        Viewers here get the event before their close: wait (bounded) until the outbox went
        out and a batch came back; the node's own tick sends it (no second, racing tick).
        Other nodes' viewers get the event. Returns how many connections were closed.
        """
        room = await self.hub.open_room(room_id)
        seq = room.seq
        await self.announce(room_id, "this room was closed", closed=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT):
                while room.dirty or room.seq <= seq:
                    await asyncio.sleep(self.tick_ms / 1000)
        closing = list(room.members)
        for client in closing:
            client.close(int(ErrorCode.ROOM_CLOSED), "room closed")
        return len(closing)

    # -- hosts, moderators and users (WebSocket) --------------------------------------------------

    async def handle(self, client: Peer, message: protocol.Mod | protocol.Block) -> None:
        who = client.identity
        assert who is not None and client.room_id is not None
        if isinstance(message, protocol.Block):
            if message.uid == who.uid:
                raise ProtocolError(ErrorCode.MOD_TARGET, "cannot block yourself", message.cid)
            try:
                await self.sanctions.set_dm_block(who.uid, message.uid, message.blocked)
            except BrokerUnavailable:
                raise _unavailable(message.cid) from None
            ack = {"t": "block_ack", "uid": message.uid, "blocked": message.blocked}
            self._ack(client, ack, message.cid)
            return
        if not who.can_moderate:
            raise ProtocolError(ErrorCode.FORBIDDEN, "only the host and moderators can moderate", message.cid)
        room_id = client.room_id
        room = self.hub.rooms.get(room_id)
        record: dict[str, object] = {
            "action": message.action,
            "room": room_id,
            "by": who.uid,
            "role": who.role,
        }
        if message.action == "delete":
            assert message.seq is not None
            if room is None or message.seq > room.seq:
                raise ProtocolError(ErrorCode.MOD_TARGET, "no such danmaku", message.cid)
            event = {"t": "delete", "uid": who.uid, "name": who.name, "ts": protocol.now_ms()}
            event["target"] = message.seq
            self.hub.enqueue(room_id, event)
            record["seq"] = message.seq
            ack = {"t": "mod_ack", "action": "delete", "seq": message.seq}
        else:
            target = message.uid
            assert target is not None
            if target == who.uid:
                raise ProtocolError(ErrorCode.MOD_TARGET, "cannot moderate yourself", message.cid)
            if room is not None and target in room.hosts and who.role != "host":
                raise ProtocolError(ErrorCode.MOD_TARGET, "moderators cannot act on the host", message.cid)
            try:
                until = await self.sanction([room_id], target, message.action, who.uid, message.duration)
            except BrokerUnavailable:  # not stored: the moderator must not think it applies
                raise _unavailable(message.cid) from None
            record.update(uid=target, until=until)
            ack = {"t": "mod_ack", "action": message.action, "uid": target, "until": until}
        if message.reason:
            record["reason"] = message.reason
        self._done(message.action, record)
        self._ack(client, ack, message.cid)

    @staticmethod
    def _ack(client: Peer, frame: dict[str, object], cid: str | int | None) -> None:
        if cid is not None:
            frame["cid"] = cid
        client.send(protocol.pack(frame))

    def on_sanction(self, sanction: Sanction) -> None:
        """Apply a sanction (from any node) to this node's connections of the user in the room."""
        for client in self.hub.connections_of(sanction.uid):
            state = client.abuse
            if client.room_id != sanction.room or state is None:
                continue
            if sanction.kind == "mute":
                if sanction.lifted:
                    state.muted_until = 0.0
                else:
                    state.muted_until = math.inf if sanction.until is None else sanction.until / 1000
                notice = {"t": "notice", "action": "unmute" if sanction.lifted else "mute"}
                notice.update(until=sanction.until, by=sanction.by)
                client.send(protocol.pack(notice))
            elif not sanction.lifted:
                client.reject(sanction_error(sanction))
