"""Where analytics records live: the interface and the in-process store (single node, tests)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict

from server.analytics.records import JOIN, Record, day_of

KEEP_DAYS = 8  # days of records and unique-viewer sets kept per room


class AnalyticsStore(ABC):
    """Appends batches of records (off the hot path) and reads a room's recent ones back."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    async def append(self, records: list[Record]) -> None:
        """Store records; remember each viewer's first day in the room (return rate)."""

    @abstractmethod
    async def records(self, room: str, days: list[int]) -> list[Record]:
        """The room's records of these UTC days."""

    @abstractmethod
    async def first_seen(self, room: str, uids: list[str]) -> dict[str, int]:
        """The first UTC day each of these viewers joined the room (unknown ones left out)."""

    @abstractmethod
    async def unique_viewers(self, room: str, day: int) -> int:
        """Distinct viewers of the room that day (HyperLogLog with Redis: approximate)."""


class MemoryStore(AnalyticsStore):
    def __init__(self) -> None:
        self._records: defaultdict[tuple[str, int], list[Record]] = defaultdict(list)
        self._first: defaultdict[str, dict[str, int]] = defaultdict(dict)
        self._unique: defaultdict[tuple[str, int], set[str]] = defaultdict(set)

    async def append(self, records: list[Record]) -> None:
        for r in records:
            day = day_of(r.ts)
            self._records[(r.room, day)].append(r)
            if r.kind == JOIN:
                self._first[r.room].setdefault(r.uid, day)
                self._unique[(r.room, day)].add(r.uid)
        if records:  # forget days past KEEP_DAYS, like the Redis keys expire
            oldest = day_of(records[-1].ts) - KEEP_DAYS
            for key in [k for k in self._records if k[1] < oldest]:
                del self._records[key]
                self._unique.pop(key, None)

    async def records(self, room: str, days: list[int]) -> list[Record]:
        return [r for day in days for r in self._records.get((room, day), [])]

    async def first_seen(self, room: str, uids: list[str]) -> dict[str, int]:
        known = self._first.get(room, {})
        return {u: known[u] for u in uids if u in known}

    async def unique_viewers(self, room: str, day: int) -> int:
        return len(self._unique.get((room, day), ()))
