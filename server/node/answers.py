"""Answers in a room: replies to questions, pins, product edits and the assistant's question tags.

The room's assistant (role `assistant`, server/assistant/) and its staff (host, moderators)
answer viewers' questions with `reply`, pin a product card or a message above every viewer's
chat with `pin`/`unpin`, and the host edits a product's price or stock with `product`. Every
one of them becomes a sequenced room event, so it is replayed on resume and kept in the room
view (server/room/state.py): pins in every join snapshot, and for the staff the question board,
the recent replies and the product edits, so host tools survive a reload. Viewers may do none
of this (4200).

Replies are throttled here, per room, on the node the answering connection uses: an assistant
may post at most one reply every `reply_interval` seconds, and nobody may post the same answer
again within `reply_repeat_window` seconds. The throttle is a pure object with an injected clock.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from server.wire import protocol
from server.wire.auth import display_name
from server.wire.fingerprint import answer_fingerprint
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.analytics.recorder import Analytics
    from server.config import Config
    from server.delivery.hub import Hub
    from server.delivery.peer import Peer
    from server.wire.auth import Identity

Clock = Callable[[], float]
SWEEP_ROOMS = 1000  # rooms remembered before the idle ones are swept


class ReplyThrottle:
    """At most one assistant reply per room every `interval` s; no repeated answer within `window` s."""

    def __init__(self, interval: float, window: float, clock: Clock = time.monotonic) -> None:
        self.interval = interval
        self.window = window
        self.clock = clock
        self._last: dict[str, float] = {}  # room -> time of the last assistant reply
        self._given: dict[str, dict[str, float]] = {}  # room -> answer fingerprint -> time given

    def check(self, room: str, text: str, by_assistant: bool, ref: Any = None) -> None:
        """Raise RATE_LIMITED / REPEATED, or record the reply as given."""
        now = self.clock()
        if by_assistant and self.interval > 0:
            last = self._last.get(room)
            if last is not None and now - last < self.interval:
                wait = round(self.interval - (now - last), 2)
                raise ProtocolError(ErrorCode.RATE_LIMITED, "too many replies (room limit)", ref, wait)
        given = self._given.setdefault(room, {})
        for key in [k for k, at in given.items() if now - at >= self.window]:
            del given[key]
        fingerprint = answer_fingerprint(text)
        at = given.get(fingerprint)
        if at is not None and self.window > 0:
            wait = round(self.window - (now - at), 1)
            raise ProtocolError(ErrorCode.REPEATED, "this answer was given a moment ago", ref, wait)
        if by_assistant:
            self._last[room] = now
        given[fingerprint] = now
        if len(self._given) > SWEEP_ROOMS:
            self.sweep(now)

    def sweep(self, now: float) -> None:
        """Forget rooms with nothing inside either window (rooms come and go; this stays bounded)."""
        horizon = max(self.interval, self.window)
        for room in [
            r for r, given in self._given.items() if all(now - t >= horizon for t in given.values())
        ]:
            del self._given[room]
            self._last.pop(room, None)


def reply_sender(who: Identity) -> str:
    """A reply is marked as from the assistant or from the host (moderators answer as staff)."""
    return "assistant" if who.role == "assistant" else "host"


class Answers:
    """Handles the answer messages of joined connections; rooms and the outbox come from the hub."""

    def __init__(self, config: Config, hub: Hub, analytics: Analytics, clock: Clock = time.monotonic) -> None:
        self.hub = hub
        self.analytics = analytics
        self.throttle = ReplyThrottle(config.reply_interval, config.reply_repeat_window, clock)

    async def handle(self, client: Peer, message: Any) -> None:
        who = client.identity
        assert who is not None and client.room_id is not None
        if not who.can_answer:
            raise ProtocolError(
                ErrorCode.FORBIDDEN, "only the host, moderators and the assistant can do this", message.cid
            )
        room_id = client.room_id
        now = protocol.now_ms()
        if isinstance(message, protocol.Reply):
            self._reply(client, who, message, now)
        elif isinstance(message, protocol.Question):
            self._question(client, who, message, now)
        elif isinstance(message, protocol.Pin):
            event = self._pin_event(who, message.product, message.text, now, message.cid)
            self.hub.enqueue(room_id, event)
            self._ack(client, {"t": "pin_ack", "id": event["id"]}, message.cid)
        elif isinstance(message, protocol.Unpin):
            room = self.hub.rooms.get(room_id)
            if room is None or message.id not in room.pins:
                raise ProtocolError(ErrorCode.PIN_TARGET, "no such pin in this room", message.cid)
            self.hub.enqueue(room_id, _event("unpin", who, now, id=message.id))
            self._ack(client, {"t": "pin_ack", "id": message.id, "on": False}, message.cid)
        elif isinstance(message, protocol.ProductEdit):
            self._product(client, who, message, now)

    def _reply(self, client: Peer, who: Identity, message: protocol.Reply, now: int) -> None:
        room_id = client.room_id
        assert room_id is not None
        text = protocol.clean_text(message.text, protocol.MAX_REPLY_LEN, message.cid)
        self._known(room_id, message.seqs, message.cid)
        self.throttle.check(room_id, text, who.role == "assistant", message.cid)
        sender = reply_sender(who)
        event = _event("reply", who, now, text=text, seqs=message.seqs, askers=message.askers)
        event["from"] = sender
        if message.cid is not None:
            event["cid"] = message.cid
        self.hub.enqueue(room_id, event)
        for seq in message.seqs:
            self.analytics.answered(room_id, sender, seq)
        if message.pin:
            pin = self._pin_event(who, None, text, now, message.cid)
            pin["seqs"] = message.seqs
            self.hub.enqueue(room_id, pin)

    def _known(self, room_id: str, seqs: list[int], cid: Any) -> None:
        """Questions are danmaku the room already has: a seq past the room's last one is refused."""
        room = self.hub.rooms.get(room_id)
        if room is None or max(seqs) > room.seq:
            raise ProtocolError(ErrorCode.MOD_TARGET, "no such question (unknown seq)", cid)

    def _question(self, client: Peer, who: Identity, message: protocol.Question, now: int) -> None:
        """The assistant tags danmaku as questions: an event for the host's board, records for stats."""
        room_id = client.room_id
        assert room_id is not None
        self._known(room_id, message.seqs, message.cid)
        event = _event("question", who, now, key=message.key, label=message.label)
        event.update(seqs=message.seqs, askers=message.askers, names=self._names(room_id, message))
        self.hub.enqueue(room_id, event)
        askers = message.askers or [""]
        for i, seq in enumerate(message.seqs):
            asker = askers[min(i, len(askers) - 1)]
            self.analytics.question(room_id, asker, message.label, seq)

    def _names(self, room_id: str, message: protocol.Question) -> list[str]:
        """names[i]: askers[i]'s display name, so the board addresses people as the assistant does:
        the name on the danmaku asked (seqs[i]) while the room still holds it, else the name the
        tagger gave, else the uid."""
        on_danmaku = self.hub.rooms[room_id].sender_names(message.seqs)  # _known found the room
        names = []
        for i, uid in enumerate(message.askers):
            seq = message.seqs[i] if i < len(message.seqs) else -1
            given = message.names[i] if i < len(message.names) else ""
            names.append(on_danmaku.get(seq) or display_name(given, uid))
        return names

    def _product(self, client: Peer, who: Identity, message: protocol.ProductEdit, now: int) -> None:
        room_id = client.room_id
        assert room_id is not None
        event = _event("product", who, now, id=message.id)
        if message.price is not None:
            event["price"] = message.price
        if message.stock is not None:
            event["stock"] = message.stock
        # the pinned card follows in every view, in sequence order (room.state.apply_product): a card
        # re-pinned from this node's view could undo an edit still on its way
        self.hub.enqueue(room_id, event)
        self._ack(client, {"t": "product_ack", "id": message.id}, message.cid)

    @staticmethod
    def _pin_event(
        who: Identity, product: dict[str, Any] | None, text: str | None, now: int, cid: Any
    ) -> dict[str, Any]:
        if product is not None:
            return _event("pin", who, now, id=f"product:{product['id']}", kind="product", product=product)
        assert text is not None
        clean = protocol.clean_text(text, protocol.MAX_REPLY_LEN, cid)
        return _event("pin", who, now, id=f"msg:{secrets.token_hex(4)}", kind="message", text=clean)

    @staticmethod
    def _ack(client: Peer, frame: dict[str, Any], cid: Any) -> None:
        if cid is not None:
            frame["cid"] = cid
        client.send(protocol.pack(frame))


def _event(t: str, who: Identity, now: int, **fields: Any) -> dict[str, Any]:
    return {"t": t, "uid": who.uid, "name": who.name, "ts": now, **fields}
