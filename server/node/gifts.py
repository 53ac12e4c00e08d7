"""A node's gifts: authorise, claim the cid, fold into a combo, credit the leaderboard, tell billing.

Order of one `gift` (each step may refuse, and nothing after it happens):
1. the guard spent the sender's gift buckets and checked the mute (server/abuse/guard.py);
2. the gift must be in the catalogue (4700);
3. with a `cid`, the first answer to (sender, cid) is claimed (server/broker/idempotency.py, as
   for DMs): a retry gets the original `gift_ack`, the gift is not sent, charged or counted twice;
4. the platform authorises it: the signed callback (server/webhooks/callback.py, 4701/4702) or,
   with none configured, the demo balance (4701 when too low), both idempotent per gift id;
5. the gift joins its streak (server/room/gifts.py `Combos`) and is queued in the room's outbox,
   one event per streak per tick; the room's totals are credited (server/broker/gift_store.py)
   and the newest board queued with it; the PK round the room is in, if any, is credited;
6. `gift.sent` is emitted (webhook id = the gift id: at-least-once, deduplicable) and the sender
   gets its `gift_ack`.
Gift events are never sampled out of a frame (server/delivery/budget.py keeps every event that
is not a viewer's danmaku).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from server.broker.base import BrokerUnavailable
from server.broker.idempotency import SendInProgress, SendLog, cid_tag
from server.room.gifts import Catalogue, Combos, board_event
from server.wire import protocol
from server.wire.protocol import SYSTEM_UID, ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.broker.gift_store import GiftStore
    from server.config import Config
    from server.delivery.hub import Hub
    from server.delivery.peer import Peer
    from server.webhooks.callback import GiftCallback
    from server.webhooks.sender import Webhooks

log = logging.getLogger("liveroom.gifts")
# Called for every gift sent (room, sender uid, sender name, value): the PK round's score.
GiftListener = Callable[[str, str, str, int], Awaitable[None]]


class GiftDesk:
    def __init__(
        self,
        config: Config,
        hub: Hub,
        store: GiftStore,
        sends: SendLog,
        catalogue: Catalogue,
        callback: GiftCallback | None,
        webhooks: Webhooks | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.hub = hub
        self.store = store
        self.sends = sends
        self.catalogue = catalogue
        self.callback = callback
        self.webhooks = webhooks
        self.clock = clock
        self.combos = Combos(config.combo_window)
        self.listeners: list[GiftListener] = []
        self.sent = 0  # gifts sent through this node (the benchmark compares it with the scores)

    async def handle(self, client: Peer, message: protocol.Gift) -> None:
        who = client.identity
        assert who is not None and client.room_id is not None
        room_id, cid = client.room_id, message.cid
        gift = self.catalogue.get(message.gift)
        if gift is None:
            raise ProtocolError(
                ErrorCode.GIFT_UNKNOWN, f"no gift {message.gift[:32]!r} in the catalogue", cid
            )
        if cid is not None:
            try:
                claimed = await self.sends.claim(who.uid, "gift", cid)
            except SendInProgress:
                raise ProtocolError(
                    ErrorCode.BROKER_UNAVAILABLE, "a gift with this cid is in progress: retry", cid, 1.0
                ) from None
            if claimed.answer is not None:
                client.send(claimed.answer)  # a retry: the first gift_ack, nothing sent again
                return
        gift_id = f"{room_id}:{who.uid}:{cid_tag(cid) if cid is not None else secrets.token_hex(6)}"
        value = gift.value * message.count
        now = protocol.now_ms()
        request = {
            "id": gift_id,
            "room": room_id,
            "uid": who.uid,
            "gift": gift.id,
            "count": message.count,
            "value": value,
            "ts": now,
        }
        try:
            balance = await self._authorize(request, cid)
        except (ProtocolError, BrokerUnavailable):
            if cid is not None:
                await self.sends.release(who.uid, "gift", cid)  # refused: a retry asks again
            raise
        combo, count = self.combos.hit(room_id, who.uid, gift.id, message.count, self.clock(), gift_id)
        event: dict[str, Any] = {"t": "gift", "uid": who.uid, "name": who.name, "ts": now, "gift": gift.id}
        event.update(value=gift.value, tier=gift.tier, n=message.count, combo=combo, count=count)
        if cid is not None:
            event["cids"] = [cid]
        room = self.hub.rooms.get(room_id)
        if room is not None:
            room.add_gift(event)
            self.hub.mark_dirty(room_id)
        self.sent += message.count
        await self._credit(room_id, who.uid, who.name, value)
        for listener in self.listeners:
            await listener(room_id, who.uid, who.name, value)
        if self.webhooks is not None:
            self.webhooks.emit("gift.sent", request, f"gift.sent:{gift_id}")
        ack: dict[str, Any] = {
            "t": "gift_ack",
            "id": gift_id,
            "gift": gift.id,
            "combo": combo,
            "count": count,
        }
        if balance is not None:
            ack["balance"] = balance
        if cid is not None:
            ack["cid"] = cid
        frame = protocol.pack(ack)
        if cid is not None:
            await self.sends.answer(who.uid, "gift", cid, frame)
        client.send(frame)

    async def _authorize(self, request: dict[str, Any], cid: Any) -> int | None:
        if self.callback is not None:
            return await self.callback.authorize(request, cid)
        try:
            left = await self.store.charge(
                request["uid"], request["id"], request["value"], self.config.gift_demo_balance
            )
        except Exception:  # the shared store is down: nothing was charged
            log.warning("demo balance unavailable", exc_info=True)
            raise ProtocolError(
                ErrorCode.GIFT_AUTH_UNAVAILABLE, "gift authorisation unavailable: retry", cid, 1.0
            ) from None
        if left is None:
            raise ProtocolError(ErrorCode.GIFT_REFUSED, "balance too low for this gift", cid)
        return left

    async def _credit(self, room_id: str, uid: str, name: str, value: int) -> None:
        """The room's totals, and the newest board queued for the next tick (one per tick)."""
        try:
            board = await self.store.credit(room_id, uid, name, value)
        except Exception:  # the gift is out; only the board misses it until the store is back
            log.warning("leaderboard credit failed for room %s", room_id, exc_info=True)
            return
        room = self.hub.rooms.get(room_id)
        if room is not None:
            room.set_board(board_event(board.version, board.top, protocol.now_ms(), SYSTEM_UID))
            self.hub.mark_dirty(room_id)

    async def close(self) -> None:
        await self.store.close()
        if self.callback is not None:
            await self.callback.close()
