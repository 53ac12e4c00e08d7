"""Cross-room links and PK rounds: hosts of two rooms link, then play timed rounds scored by gifts and likes.

`link` messages (hosts only, 4200 otherwise): `invite` another room, `accept` / `decline` an
invitation, `end` the link, `pk` to start a round of `seconds`. Every step is a sequenced event
published into BOTH rooms' streams (so both histories record it): `link_invite`, `link` (on /
off), `pk_round` (on / off), `pk` scores, `pk_result`.

Scores (server/broker/pk_store.py): gifts (value) and likes (`pk_like_weight` each) of either
room are credited to the round's one key, from whichever node they arrive on. The node that
started the round drives it: once per tick it reads the score and, if it moved, publishes one
`pk` event to both rooms; at the end it closes the round (credits stop counting) and publishes
the same `pk_result` to both. Both rooms therefore show numbers read from one place, at most
one `pk` event per tick each. If the driving node dies mid-round the round is not ended by
anyone else (known gap: the next `end` or `pk` from a host closes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING, Any

from server.broker.base import Publish
from server.room.pk import like_points, result_event, round_event, score_event
from server.wire import protocol
from server.wire.protocol import SYSTEM_UID, ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.broker.base import Broker
    from server.broker.pk_store import PkStore
    from server.config import Config
    from server.delivery.hub import Hub
    from server.delivery.peer import Peer

log = logging.getLogger("liveroom.pk")


class Links:
    def __init__(self, config: Config, hub: Hub, broker: Broker, store: PkStore) -> None:
        self.config = config
        self.hub = hub
        self.broker = broker
        self.store = store
        self._drivers: dict[str, asyncio.Task[None]] = {}  # pk id -> its driver on this node

    async def _publish(self, rooms: list[str], event: dict[str, Any]) -> None:
        """The same event into each room's stream (sequenced there, kept in its history)."""
        now = protocol.now_ms()
        await self.broker.publish_many([Publish(room, [dict(event)], 0, None, now) for room in rooms])

    async def handle(self, client: Peer, message: protocol.Link) -> None:
        who = client.identity
        assert who is not None and client.room_id is not None
        here, cid = client.room_id, message.cid
        if who.role != "host":
            raise ProtocolError(ErrorCode.FORBIDDEN, "only hosts link rooms", cid)
        now = protocol.now_ms()
        base = {"uid": who.uid, "name": who.name, "ts": now}
        action, other = message.action, message.room
        if action == "invite":
            assert other is not None
            if other == here:
                raise ProtocolError(ErrorCode.LINK_TARGET, "a room cannot link to itself", cid)
            if not await self.store.invite(here, other, who.uid):
                raise ProtocolError(ErrorCode.LINK_BUSY, "a room is already linked or invited", cid)
            await self._publish([here, other], {"t": "link_invite", **base, "from": here, "to": other})
        elif action in ("accept", "decline"):
            assert other is not None
            link = await self.store.get_link(here)
            if link is None or (link.other, link.state) != (other, "invitee"):
                raise ProtocolError(ErrorCode.LINK_STATE, f"no invitation from room {other}", cid)
            if action == "accept" and await self.store.accept(here, other):
                await self._publish([other, here], {"t": "link", **base, "on": True, "rooms": [other, here]})
            else:
                await self.store.unlink(here, other)
                off = {"t": "link", **base, "on": False, "rooms": [other, here], "reason": "declined"}
                await self._publish([other, here], off)
        else:
            link = await self.store.get_link(here)
            if link is None or (action == "pk" and link.state != "on"):
                raise ProtocolError(ErrorCode.LINK_STATE, "this room is not linked", cid)
            other = link.other
            room = self.hub.rooms.get(here)
            running = room.pk if room is not None else None
            if action == "pk":
                if running is not None:
                    raise ProtocolError(ErrorCode.LINK_BUSY, "a PK round is running", cid)
                assert message.seconds is not None
                await self.start_round(here, other, message.seconds)
            else:
                if running is not None:
                    await self.finish(str(running["id"]), list(running["rooms"]))
                await self.store.unlink(here, other)
                await self._publish([here, other], {"t": "link", **base, "on": False, "rooms": [here, other]})
        ack: dict[str, Any] = {"t": "link_ack", "action": action, "room": other}
        if cid is not None:
            ack["cid"] = cid
        client.send(protocol.pack(ack))

    async def start_round(self, here: str, other: str, seconds: int) -> str:
        pk_id = secrets.token_hex(6)
        rooms = [here, other]
        await self.store.open_round(pk_id, rooms)
        now = protocol.now_ms()
        ends = now + seconds * 1000
        await self._publish(rooms, round_event(pk_id, rooms, ends, seconds, True, now, SYSTEM_UID))
        task = asyncio.get_running_loop().create_task(self._drive(pk_id, rooms, seconds))
        self._drivers[pk_id] = task
        task.add_done_callback(lambda _: self._drivers.pop(pk_id, None))
        return pk_id

    async def _drive(self, pk_id: str, rooms: list[str], seconds: int) -> None:
        """Once per tick: a `pk` event to both rooms when the score moved; the result at the end."""
        loop = asyncio.get_running_loop()
        period = self.config.tick_ms / 1000
        deadline = loop.time() + seconds
        shown = 0
        try:
            while loop.time() < deadline:
                await asyncio.sleep(min(period, max(0.0, deadline - loop.time())))
                score = await self.store.read(pk_id)
                if score.ended:
                    return  # ended by a host (`end`): the result is out
                if score.version != shown:
                    shown = score.version
                    await self._publish(rooms, score_event(pk_id, score, protocol.now_ms(), SYSTEM_UID))
            await self.finish(pk_id, rooms)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("PK round %s failed", pk_id)

    async def finish(self, pk_id: str, rooms: list[str]) -> None:
        """Close the round and announce one result to both rooms (once, whoever closes it)."""
        score = await self.store.close_round(pk_id)
        if score.ended:
            return
        now = protocol.now_ms()
        await self._publish(rooms, result_event(pk_id, score, now, SYSTEM_UID))
        await self._publish(rooms, round_event(pk_id, rooms, now, 0, False, now, SYSTEM_UID))

    # -- credits ----------------------------------------------------------------------------

    async def on_gift(self, room_id: str, uid: str, name: str, value: int) -> None:
        pk = self._round_of(room_id)
        if pk is not None:
            await self.store.credit(pk, room_id, value, uid, name)

    async def on_likes(self, room_id: str, likes: int) -> None:
        pk = self._round_of(room_id)
        if pk is not None and self.config.pk_like_weight:
            await self.store.credit(pk, room_id, like_points(likes, self.config.pk_like_weight))

    def _round_of(self, room_id: str) -> str | None:
        room = self.hub.rooms.get(room_id)
        return str(room.pk["id"]) if room is not None and room.pk is not None else None

    async def close(self) -> None:
        for task in list(self._drivers.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.close()
