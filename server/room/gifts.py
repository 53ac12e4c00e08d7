"""Gifts as plain code: the catalogue, combos and the leaderboard of a room's gifters.

No I/O and no clock of its own (the caller passes `now`): the node (server/node/gifts.py)
authorises a gift, asks `Combos` which streak it belongs to, and queues one `gift` event per
streak per tick (`merge_gift`); the broker keeps each room's totals and every node applies the
`board` events it sees (`newer_board`), the highest version winning whatever order they
were sequenced in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from server.wire.protocol import valid_id

Event = dict[str, Any]
TIERS = ("small", "medium", "large", "epic")  # how big the viewer page's animation is
COMBO_WINDOW = 3.0  # seconds: the same gift from the same sender within it extends the streak
BOARD_SIZE = 10  # gifters shown on a room's leaderboard
COMBO_MAX = 10_000  # streaks remembered at once (oldest forgotten first)


class CatalogueError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Gift:
    id: str
    name: str
    value: int  # in the platform's smallest unit (coins): the leaderboard and PK score add it up
    tier: str


DEFAULT_CATALOGUE: tuple[Gift, ...] = (
    Gift("heart", "Heart", 1, "small"),
    Gift("rose", "Rose", 10, "small"),
    Gift("star", "Star", 50, "medium"),
    Gift("rocket", "Rocket", 500, "large"),
    Gift("castle", "Castle", 5000, "epic"),
)


class Catalogue:
    """The gifts a room accepts, by id."""

    def __init__(self, gifts: tuple[Gift, ...] = DEFAULT_CATALOGUE) -> None:
        if not gifts:
            raise CatalogueError("the gift catalogue is empty")
        self.gifts = {gift.id: gift for gift in gifts}
        if len(self.gifts) != len(gifts):
            raise CatalogueError("two gifts share an id")

    def get(self, gift_id: str) -> Gift | None:
        return self.gifts.get(gift_id)

    def describe(self) -> list[Event]:
        """The catalogue as the snapshot carries it (the page draws its buttons from it)."""
        return [{"id": g.id, "name": g.name, "value": g.value, "tier": g.tier} for g in self.gifts.values()]

    @classmethod
    def parse(cls, text: str, name: str = "catalogue") -> Catalogue:
        """A YAML (or JSON, which is YAML) list of {id, name, value, tier}, or {gifts: [...]}."""
        try:
            data = yaml.safe_load(text) if not name.endswith(".json") else json.loads(text)
        except (yaml.YAMLError, ValueError) as exc:
            raise CatalogueError(f"{name}: not YAML/JSON ({exc})") from None
        if isinstance(data, dict):
            data = data.get("gifts")
        if not isinstance(data, list):
            raise CatalogueError(f"{name}: expected a list of gifts (or a map with 'gifts')")
        gifts = []
        for i, raw in enumerate(data):
            if not isinstance(raw, dict):
                raise CatalogueError(f"{name}: gift {i} is not a map")
            gid, label, value, tier = (
                raw.get("id"),
                raw.get("name"),
                raw.get("value"),
                raw.get("tier", "small"),
            )
            if not isinstance(gid, str) or not valid_id(gid):
                raise CatalogueError(f"{name}: gift {i} needs an 'id' ([A-Za-z0-9_.:-]{{1,64}})")
            if not isinstance(label, str) or not 0 < len(label) <= 64:
                raise CatalogueError(f"{name}: gift {gid!r} needs a 'name' (1-64 characters)")
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 10**9:
                raise CatalogueError(f"{name}: gift {gid!r} needs an integer 'value' 1..10^9")
            if tier not in TIERS:
                raise CatalogueError(f"{name}: gift {gid!r} 'tier' must be one of {list(TIERS)}")
            gifts.append(Gift(gid, label, value, tier))
        return cls(tuple(gifts))


@dataclass(slots=True)
class _Streak:
    combo: str
    count: int
    last: float


class Combos:
    """Streaks: the same gift from the same sender in a room, each within `window` s of the last.

    A streak is one "x N" on every viewer's screen: its gifts share a combo id and carry the
    running count. Kept on the node the sender is connected to (a user's gifts go through their
    connection); a sender on two nodes at once gets two streaks, which only splits the "x N".
    """

    def __init__(self, window: float = COMBO_WINDOW, limit: int = COMBO_MAX) -> None:
        self.window = window
        self.limit = limit
        self._streaks: dict[tuple[str, str, str], _Streak] = {}
        self._made = 0

    def hit(self, room: str, uid: str, gift: str, count: int, now: float, gift_id: str) -> tuple[str, int]:
        """Add `count` gifts: (combo id, the streak's count after them). A new streak takes the
        gift's own id as its combo id, so a retry on another node names the same streak."""
        key = (room, uid, gift)
        streak = self._streaks.get(key)
        if streak is None or now - streak.last > self.window:
            streak = _Streak(gift_id, 0, now)
            self._streaks.pop(key, None)
            self._streaks[key] = streak
            if len(self._streaks) > self.limit:
                self.sweep(now)
        streak.count += count
        streak.last = now
        return streak.combo, streak.count

    def sweep(self, now: float) -> None:
        """Forget ended streaks (and the oldest, past the limit)."""
        self._streaks = {k: s for k, s in self._streaks.items() if now - s.last <= self.window}
        while len(self._streaks) > self.limit:
            del self._streaks[next(iter(self._streaks))]

    def __len__(self) -> int:
        return len(self._streaks)


def merge_gift(outbox: list[Event], pending: dict[str, int], event: Event) -> None:
    """Queue a `gift` event, or fold it into the one of its streak already queued this tick:
    a streak costs one event per tick, whatever the sender's rate (`n` counts the gifts in it,
    `count` the streak so far, `cids` their cids). `pending`: combo id -> index in `outbox`."""
    index = pending.get(event["combo"])
    if index is None:
        pending[event["combo"]] = len(outbox)
        outbox.append(event)
        return
    queued = outbox[index]
    queued["n"] += event["n"]
    queued["count"] = max(queued["count"], event["count"])
    queued["ts"] = event["ts"]
    if "cids" in event:
        queued.setdefault("cids", []).extend(event["cids"])


def board_event(version: int, top: list[Event], now: int, system_uid: str) -> Event:
    """The leaderboard as a room event: the top gifters by value, and its version (grows with
    every gift credited in the room, so any node can tell the newer of two boards)."""
    return {"t": "board", "uid": system_uid, "name": system_uid, "ts": now, "ver": version, "top": top}


def newer_board(current: Event | None, event: Event) -> bool:
    """Whether `event` replaces the board a view holds (ticks of two nodes may sequence an
    older board after a newer one: the version decides, not the order)."""
    return current is None or int(event.get("ver", 0)) > int(current.get("ver", 0))
