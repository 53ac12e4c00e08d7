"""Cross-room links and PK rounds: hosts of two rooms link, then play timed rounds scored by gifts and likes.

`link` messages (hosts only, 4200 otherwise): `invite` another room, `accept` / `decline` an
invitation, `end` the link, `pk` to start a round of `seconds`. Every step is a sequenced event
published into BOTH rooms' streams (so both histories record it): `link_invite`, `link` (on /
off), `pk_round` (on / off), `pk` scores, `pk_result`.

Scores (server/broker/pk_store.py): gifts (value) and likes (`pk_like_weight` each) of either
room are credited to the round's one key, from whichever node they arrive on. The node that
started the round drives it: once per tick it reads the score and, if it moved, publishes one
`pk` event to both rooms; at the end it closes the round (credits stop counting) and publishes
the same `pk_result` to both, then the optional penalty (`pk_penalty` on, and off when its time
is up). Both rooms therefore show numbers read from one place, at most one `pk` event per tick
each. The driver holds a lease in the store that it renews; if its node dies, the lease lapses
and any node holding either room (each looks every WATCH_S) claims it and resumes the round
from the phase stored with the score: an overdue round is closed and announced by the survivor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING, Any

from server.broker.base import Publish
from server.room.pk import (
    CLOSED,
    DONE,
    PENALTY,
    Score,
    like_points,
    penalty_event,
    result_event,
    round_event,
    score_event,
    step,
)
from server.wire import protocol
from server.wire.protocol import SYSTEM_UID, ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.broker.base import Broker
    from server.broker.pk_store import PkStore
    from server.config import Config
    from server.delivery.hub import Hub
    from server.delivery.peer import Peer

log = logging.getLogger("liveroom.pk")
DRIVER_LEASE_MS = 3000  # a dead driver's round is taken over within this (+ WATCH_S)
WATCH_S = 1.0  # how often a node looks for rounds in its rooms that nobody drives


class Links:
    def __init__(self, config: Config, hub: Hub, broker: Broker, store: PkStore, node_id: str) -> None:
        self.config = config
        self.hub = hub
        self.broker = broker
        self.store = store
        self.node_id = node_id
        self._drivers: dict[str, asyncio.Task[None]] = {}  # pk id -> its driver on this node
        self._watcher: asyncio.Task[None] | None = None

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
            running = (room.pk or room.pk_penalty) if room is not None else None
            if action == "pk":
                if running is not None:
                    raise ProtocolError(ErrorCode.LINK_BUSY, "a PK round or its penalty is running", cid)
                assert message.seconds is not None
                await self.start_round(here, other, message.seconds, message.penalty or 0)
            else:
                if running is not None:
                    await self.end_now(str(running["id"]))
                await self.store.unlink(here, other)
                await self._publish([here, other], {"t": "link", **base, "on": False, "rooms": [here, other]})
        ack: dict[str, Any] = {"t": "link_ack", "action": action, "room": other}
        if cid is not None:
            ack["cid"] = cid
        client.send(protocol.pack(ack))

    async def start_round(self, here: str, other: str, seconds: int, penalty: int = 0) -> str:
        pk_id = secrets.token_hex(6)
        rooms = [here, other]
        now = protocol.now_ms()
        ends = now + seconds * 1000
        await self.store.open_round(pk_id, rooms, ends, penalty)
        await self.store.claim(pk_id, self.node_id, DRIVER_LEASE_MS)  # a new id: ours
        await self._publish(rooms, round_event(pk_id, rooms, ends, seconds, True, now, SYSTEM_UID, penalty))
        self._spawn(pk_id)
        return pk_id

    def _spawn(self, pk_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._drive(pk_id))
        self._drivers[pk_id] = task
        task.add_done_callback(lambda _: self._drivers.pop(pk_id, None))

    async def _drive(self, pk_id: str) -> None:
        """Drive a round while this node holds its lease: one `pk` event per tick when the score
        moved, the result when time is up (or a host ended it), then the penalty phase."""
        period = self.config.tick_ms / 1000
        shown, renewed = -1, protocol.now_ms()
        try:
            while (score := await self.store.read(pk_id)) is not None:
                now = protocol.now_ms()
                if now - renewed >= DRIVER_LEASE_MS // 3:
                    if not await self.store.claim(pk_id, self.node_id, DRIVER_LEASE_MS):
                        return  # this node stalled past its lease: another drives now
                    renewed = now
                move = step(score, now)
                if move == "score" and score.version != shown:
                    shown = score.version
                    await self._publish(score.rooms, score_event(pk_id, score, now, SYSTEM_UID))
                elif move == "close":
                    await self.store.close_round(pk_id)
                    continue  # announced at once, from the closed score
                elif move == "announce":
                    await self._announce(pk_id, score, now)
                    continue
                elif move == "lift":
                    if await self.store.advance(pk_id, PENALTY, DONE):
                        off = penalty_event(pk_id, score, now, False, now, SYSTEM_UID)
                        await self._publish(score.rooms, off)
                    return
                elif move == "stop":
                    return
                due = score.ends if move == "score" else score.penalty_ends
                await asyncio.sleep(min(period, max(0.0, (due - now) / 1000)))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("PK round %s failed", pk_id)

    async def _announce(self, pk_id: str, score: Score, now: int) -> None:
        """The result, the round's end and the penalty's start in one batch per room, then the
        phase moves on. A driver that dies between the two leaves the phase `closed`: the next
        one announces again (at least once; the same `id`)."""
        rooms = score.rooms
        events = [
            result_event(pk_id, score, now, SYSTEM_UID),
            round_event(pk_id, rooms, now, 0, False, now, SYSTEM_UID, score.penalty),
        ]
        penalty_ends = now + score.penalty * 1000 if score.penalty else 0
        if penalty_ends:
            events.append(penalty_event(pk_id, score, penalty_ends, True, now, SYSTEM_UID))
        await self.broker.publish_many(
            [Publish(room, [dict(e) for e in events], 0, None, now) for room in rooms]
        )
        await self.store.advance(pk_id, CLOSED, PENALTY if penalty_ends else DONE, penalty_ends)

    async def end_now(self, pk_id: str) -> None:
        """A host ended the link: the round closes (or its penalty is over) now; its driver, here
        or on another node, announces it at its next tick (one is claimed if none holds it)."""
        await self.store.cut(pk_id, protocol.now_ms())
        await self._adopt(pk_id)

    async def _adopt(self, pk_id: str) -> None:
        """Drive the round here if nobody does (a claim renews our own lease: checked twice, as
        the watch and a host's `end` may both get here)."""
        if pk_id in self._drivers or not await self.store.claim(pk_id, self.node_id, DRIVER_LEASE_MS):
            return
        if pk_id not in self._drivers:
            self._spawn(pk_id)

    async def _watch(self) -> None:
        """Every WATCH_S: a round or penalty in force in a room held here with no live driver
        (its node died and its lease lapsed) is claimed and driven by this node."""
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                for pk_id in self._in_force():
                    await self._adopt(pk_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("PK watch failed")

    def _in_force(self) -> set[str]:
        ids = set()
        for room in list(self.hub.rooms.values()):
            for event in (room.pk, room.pk_penalty):
                if event is not None:
                    ids.add(str(event["id"]))
        return ids

    def start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

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
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for task in list(self._drivers.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.close()
