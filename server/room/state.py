"""Room logic with no I/O: what a room holds, what a tick produces, what a joiner sees.

A room on a node has two halves:
- the *outbox*: what local clients did since the last tick (danmaku, likes,
  presence changes), drained once per tick into a list of events that the
  broker sequences and publishes;
- the *view*: what the node has seen on the room's broker channel (sequence,
  recent danmaku, like total, online count, hosts, pins, and for the staff the
  question board, replies and product edits), so a join snapshot is served from
  memory without asking anyone.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from server.room.gifts import merge_gift, newer_board
from server.wire.auth import Identity
from server.wire.protocol import MAX_PINS, MAX_PRODUCT_EDITS, PROTOCOL_VERSION, QA_SIZE, SYSTEM_UID

Member = TypeVar("Member")
Event = dict[str, Any]


@dataclass(slots=True)
class TickOutput:
    """What one tick of one room asks the broker to do."""

    events: list[Event]
    likes_delta: int
    local_online: int | None  # set when the local member count changed
    joined: list[str] = field(default_factory=list)  # uids that joined (unique-viewer count)


@dataclass
class Room(Generic[Member]):
    room_id: str
    recent_size: int = 50
    members: dict[Member, Identity] = field(default_factory=dict)

    # outbox
    _outbox: list[Event] = field(default_factory=list)
    _pending_likes: int = 0
    _presence_dirty: bool = False
    _presence_due: int = 0  # ms: presence is reported at most once per presence_ms
    _joined: list[str] = field(default_factory=list)
    _gift_at: dict[str, int] = field(default_factory=dict)  # combo id -> its event in the outbox
    _live_sent: dict[str, tuple[bool, str]] = field(default_factory=dict)  # uid -> (on, node) not yet seen

    # view of the room's channel
    epoch: str = ""
    seq: int = 0
    likes_total: int = 0
    online: int = 0
    unique: int = 0  # distinct viewers that ever joined, cluster-wide
    hosts: dict[str, str] = field(default_factory=dict)
    publishers: dict[str, str] = field(default_factory=dict)  # uid -> name of who is live
    media_node: str | None = None  # node holding the room's media, from `live` events
    media_url: str | None = None  # that node's WHIP/WHEP base URL
    media_codec: str | None = None  # the room's video codec ("VP8", "H264") while someone is live
    pins: dict[str, Event] = field(default_factory=dict)  # pin id -> `pin` event, oldest first
    slow_mode: int = 0  # seconds between a viewer's danmaku, from the last `slow_mode` event (0: off)
    _last_said: dict[str, float] = field(default_factory=dict)  # uid -> when slow mode last let them speak
    board: Event | None = None  # the newest `board` (top gifters) seen (server/room/gifts.py)
    link: Event | None = None  # the `link` in force with another room (server/room/pk.py)
    pk: Event | None = None  # the PK round in force (`pk_round` on), with its last score
    pk_penalty: Event | None = None  # the penalty after a round's result (`pk_penalty` on)
    schedules: dict[str, Event] = field(default_factory=dict)  # id -> `schedule` event (lives ahead)
    recent: deque[Event] = field(init=False)
    # for the staff (snapshot `qa`, `products`): the host tools survive a reload
    qa: deque[Event] = field(init=False)  # `question` and `reply` events, oldest first
    products: dict[str, Event] = field(default_factory=dict)  # product id -> its edits, merged

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.recent_size)
        self.qa = deque(maxlen=QA_SIZE)

    # -- membership ------------------------------------------------------------

    def add_member(self, member: Member, who: Identity, now: int) -> None:
        self.members[member] = who
        self._presence_dirty = True
        self._joined.append(who.uid)
        if who.role == "host" and not self._has_local_host(who.uid, exclude=member):
            self._outbox.append(_event("host", who, now, live=True))

    def remove_member(self, member: Member, now: int) -> None:
        who = self.members.pop(member, None)
        if who is None:
            return
        self._presence_dirty = True
        if who.role == "host" and not self._has_local_host(who.uid):
            self._outbox.append(_event("host", who, now, live=False))

    def _has_local_host(self, uid: str, exclude: Member | None = None) -> bool:
        return any(m is not exclude and w.uid == uid for m, w in self.members.items())

    @property
    def empty(self) -> bool:
        return not self.members

    # -- outbox ------------------------------------------------------------------

    def add_danmaku(self, who: Identity, text: str, cid: str | int | None, now: int) -> None:
        event = _event("danmaku", who, now, text=text)
        if who.role != "viewer":  # staff danmaku are never left out of a sampled frame
            event["role"] = who.role
        if cid is not None:
            event["cid"] = cid
        self._outbox.append(event)

    def set_live(
        self, who: Identity, on: bool, node: str, url: str | None, now: int, codec: str | None = None
    ) -> None:
        """A publisher started or stopped: sequenced like any event, so every node's view agrees.

        ``codec``: the room's video codec when it goes live (viewers learn it from the event).
        """
        fields: dict[str, Any] = {"on": on, "node": node, "url": url}
        if on and codec is not None:
            fields["codec"] = codec
        self._outbox.append(_event("live", who, now, **fields))
        self._live_sent[who.uid] = (on, node)

    def live_on_its_way(self, uid: str) -> bool:
        """A `live` change of `uid` from this node is still on its way to the view (in the outbox
        or being sequenced): until it comes back, the view's `publishers` do not show it yet."""
        return uid in self._live_sent

    def forget_lost_live(self) -> None:
        """The room's stream restarted: a `live` change already handed to the broker may be lost
        with the old stream (the claim renewal then announces the publisher again); one still in
        the outbox is not, it goes into the new stream."""
        queued = {e["uid"] for e in self._outbox if e["t"] == "live"}
        self._live_sent = {uid: sent for uid, sent in self._live_sent.items() if uid in queued}

    def slow_wait(self, uid: str, now: float) -> float:
        """Seconds `uid` must still wait under slow mode (0: may speak now, which is recorded).

        Counted per user on this node (a user's connections share it); the setting itself is a
        sequenced event, so every node enforces the same interval.
        """
        if self.slow_mode <= 0:
            return 0.0
        last = self._last_said.get(uid)
        if last is not None and now - last < self.slow_mode:
            return self.slow_mode - (now - last)
        if len(self._last_said) > 4 * len(self.members) + 64:  # forget users who may speak anyway
            self._last_said = {u: t for u, t in self._last_said.items() if now - t < self.slow_mode}
        self._last_said[uid] = now
        return 0.0

    def add_gift(self, event: Event) -> None:
        """A gift: one event per streak per tick (room/gifts.py merge_gift), never sampled."""
        merge_gift(self._outbox, self._gift_at, event)

    def set_board(self, event: Event) -> None:
        """The newest leaderboard: one `board` per tick, replaced in the outbox by a newer one."""
        index = self._gift_at.get(_BOARD_SLOT)
        if index is None:
            self._gift_at[_BOARD_SLOT] = len(self._outbox)
            self._outbox.append(event)
        elif newer_board(self._outbox[index], event):
            self._outbox[index] = event

    def add_likes(self, count: int) -> None:
        self._pending_likes += count

    def add_event(self, event: Event) -> None:
        """Any other event (e.g. a moderator's `delete`): sequenced in the next tick like the rest."""
        self._outbox.append(event)

    @property
    def dirty(self) -> bool:
        return bool(self._outbox or self._pending_likes or self._presence_dirty)

    @property
    def presence_pending(self) -> bool:
        """A membership change is waiting for its presence interval to pass."""
        return self._presence_dirty

    def drain(self, now: int, presence_ms: int = 0) -> TickOutput:
        """Take everything queued since the last tick (sequence numbers come later).

        Membership changes are reported at most once per presence_ms: in a join storm a
        presence event every tick would cost one socket write per member per tick.
        """
        report = self._presence_dirty and now >= self._presence_due
        out = TickOutput(
            events=self._outbox,
            likes_delta=self._pending_likes,
            local_online=len(self.members) if report else None,
            joined=self._joined if report else [],
        )
        self._outbox = []
        self._gift_at = {}
        self._pending_likes = 0
        if report:
            self._joined = []
            self._presence_dirty = False
            self._presence_due = now + presence_ms
        return out

    # -- view ----------------------------------------------------------------------

    def apply(self, epoch: str, events: list[Event]) -> None:
        """Update the view from a sequenced batch seen on the room's channel."""
        self.epoch = epoch
        for event in events:
            self.seq = max(self.seq, event["seq"])
            kind = event["t"]
            if kind == "danmaku":
                self.recent.append(event)
            elif kind == "likes":
                self.likes_total = event["total"]
            elif kind == "presence":
                self.online = event["online"]
                self.unique = event.get("unique", self.unique)
            elif kind == "delete":  # a moderator removed a danmaku: joiners must not see it
                target = event.get("target")
                for i, kept in enumerate(self.recent):
                    if kept.get("seq") == target:
                        del self.recent[i]
                        break
            elif kind in ("pin", "unpin"):
                apply_pin(self.pins, event)
            elif kind in _RETENTION_KINDS:
                self._apply_retention(kind, event)
            elif kind in ("question", "reply"):
                self.qa.append(event)
            elif kind == "product":
                apply_product(self.products, self.pins, event)
            elif kind == "slow_mode":
                self.slow_mode = int(event.get("seconds", 0))
            elif kind == "host":
                if event["live"]:
                    self.hosts[event["uid"]] = event["name"]
                else:
                    self.hosts.pop(event["uid"], None)
            elif kind == "live":
                if self._live_sent.get(event["uid"]) == (event["on"], event.get("node")):
                    del self._live_sent[event["uid"]]  # ours came back: the view shows it now
                if event["on"]:
                    self.publishers[event["uid"]] = event["name"]
                    self.media_node, self.media_url = event.get("node"), event.get("url")
                    self.media_codec = event.get("codec") or self.media_codec
                else:
                    self.publishers.pop(event["uid"], None)
                    if not self.publishers:  # nobody live: any node may take the media next
                        self.media_node = self.media_url = self.media_codec = None

    def _apply_retention(self, kind: str, event: Event) -> None:
        """Leaderboard, link, PK round and schedule events: the view keeps what is in force."""
        if kind == "board":
            if newer_board(self.board, event):
                self.board = event
        elif kind == "link":
            self.link = event if event.get("on") else None
            if self.link is None:
                self.pk = self.pk_penalty = None
        elif kind == "pk_penalty":
            self.pk_penalty = event if event.get("on") else None
        elif kind == "pk_round":
            self.pk = event if event.get("on") else None
        elif kind == "pk":
            if self.pk is not None and self.pk.get("id") == event.get("id"):
                self.pk = {**self.pk, "scores": event.get("scores"), "ver": event.get("ver")}
        elif kind == "schedule":
            if event.get("on"):
                self.schedules[str(event.get("id"))] = event
            else:
                self.schedules.pop(str(event.get("id")), None)

    def sender_names(self, seqs: list[int]) -> dict[int, str]:
        """seq -> the display name on that danmaku, for the ones still among the recent danmaku
        (found when a question is tagged, not kept per danmaku: nothing added to the hot path)."""
        wanted = set(seqs)
        return {e["seq"]: e["name"] for e in self.recent if e.get("seq") in wanted}

    def snapshot(self, you: Identity, node: str, tick_ms: int, limits: dict[str, int]) -> Event:
        """The first frame a joiner receives: everything needed to draw the room.

        The staff (host, moderators, the assistant) also get the question board, the recent
        replies and the product edits in force, so their tools come back intact after a reload.
        """
        snapshot = self.shared_snapshot(node, tick_ms, limits)
        snapshot["you"] = you_of(you)
        if you.can_answer:
            snapshot.update(self.staff_snapshot())
        return snapshot

    def shared_snapshot(self, node: str, tick_ms: int, limits: dict[str, int]) -> Event:
        """A snapshot's fields that are the same for every connection of the room (a reset's
        snapshots are built from it once: server.node.node.Node.resync)."""
        return {
            "t": "snapshot",
            "v": PROTOCOL_VERSION,
            "node": node,
            "room": self.room_id,
            "epoch": self.epoch,
            "seq": self.seq,
            "recent": list(self.recent),
            "likes": self.likes_total,
            "online": self.online,
            "unique": self.unique,
            "hosts": [{"uid": u, "name": n} for u, n in self.hosts.items()],
            "live": bool(self.publishers),
            "publishers": [{"uid": u, "name": n} for u, n in self.publishers.items()],
            "media_node": self.media_node,  # None: nobody live; node.join then offers itself
            "media_url": self.media_url,
            "media_codec": self.media_codec,  # None: nobody live (or no video)
            "pins": list(self.pins.values()),
            "tick_ms": tick_ms,
            "limits": limits,
            "slow_mode": self.slow_mode,
            "board": self.board["top"] if self.board else [],
            "link": self.link,
            "pk": self.pk,
            "pk_penalty": self.pk_penalty,
            "schedules": list(self.schedules.values()),
        }

    def staff_snapshot(self) -> Event:
        """The snapshot fields only the staff get (Identity.can_answer)."""
        return {"qa": list(self.qa), "products": list(self.products.values())}


def you_of(who: Identity) -> dict[str, str]:
    """A snapshot's `you`: the connection's own identity."""
    return {"uid": who.uid, "name": who.name, "role": who.role}


_BOARD_SLOT = "\0board"  # the outbox index of this tick's `board` (combo ids are never empty)
_RETENTION_KINDS = frozenset({"board", "link", "pk_round", "pk", "pk_penalty", "schedule"})


def apply_pin(pins: dict[str, Event], event: Event) -> None:
    """`pin` adds (or replaces: pinning a product again) a pin, `unpin` removes it.

    Applied in sequence order on every node, so every view keeps the same MAX_PINS pins.
    """
    kind, pin_id = event["t"], event.get("id")
    if kind == "pin" and isinstance(pin_id, str):
        pins.pop(pin_id, None)
        pins[pin_id] = event
        while len(pins) > MAX_PINS:
            del pins[next(iter(pins))]
    elif kind == "unpin":
        pins.pop(pin_id, None)  # type: ignore[arg-type]


def apply_product(products: dict[str, Event], pins: dict[str, Event], event: Event) -> None:
    """A `product` edit over the earlier ones: each field keeps its latest value, and the
    product's pinned card (if any) takes it, keeping its place among the pins.

    Applied in sequence order (a loader sorts stored edits and pins by seq), so every view
    agrees; the MAX_PRODUCT_EDITS products edited last are kept.
    """
    product_id = event.get("id")
    if not isinstance(product_id, str):
        return
    earlier = products.pop(product_id, None)
    products[product_id] = {**earlier, **event} if earlier is not None else dict(event)
    while len(products) > MAX_PRODUCT_EDITS:
        del products[next(iter(products))]
    pin_id = f"product:{product_id}"
    pinned = pins.get(pin_id)
    if pinned is not None and isinstance(pinned.get("product"), dict):
        edited = {k: event[k] for k in ("price", "stock") if k in event}
        pins[pin_id] = {**pinned, "product": {**pinned["product"], **edited}}


def _event(kind: str, who: Identity, now: int, **fields: Any) -> Event:
    return {"t": kind, "uid": who.uid, "name": who.name, "ts": now, **fields}


def system_event(kind: str, now: int, **fields: Any) -> Event:
    """Events the room itself originates (like totals, presence) carry the system sender."""
    return {"t": kind, "uid": SYSTEM_UID, "name": SYSTEM_UID, "ts": now, **fields}
