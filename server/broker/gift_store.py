"""What gifts leave behind, shared by every node: each room's gifter totals and demo balances.

A room's totals are the truth the leaderboard is drawn from: every credit adds to them in one
atomic step that also returns the new top and a version that grows with every credit (memory:
a dict; Redis: one script on the room's slot, a sorted set and a counter), so two nodes
crediting the same room at once both get a consistent board and the higher version is the
newer one. The demo balance (no authorisation callback configured) is a per-user counter with
a charge that is idempotent per gift id: a retried gift is not charged twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

BOARD_SIZE = 10
PAID_TTL = 600  # seconds a charged gift id is remembered (idempotency.WINDOW)


@dataclass(frozen=True, slots=True)
class Board:
    version: int
    top: list[dict[str, Any]]  # {uid, name, score}, highest first


@dataclass(slots=True)
class _RoomTotals:
    scores: dict[str, int] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    version: int = 0


class GiftStore(ABC):
    @abstractmethod
    async def credit(self, room: str, uid: str, name: str, value: int) -> Board:
        """Add `value` to the sender's total in the room; the board after it."""

    @abstractmethod
    async def charge(self, uid: str, gift_id: str, amount: int, start: int) -> int | None:
        """Take `amount` from the user's demo balance (`start` the first time): the balance
        left, or None when it is too low. Charging the same gift id again charges nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def _top(totals: _RoomTotals, size: int) -> list[dict[str, Any]]:
    ranked = sorted(totals.scores.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
    return [{"uid": uid, "name": totals.names.get(uid, uid), "score": score} for uid, score in ranked]


class MemoryGiftStore(GiftStore):
    """One node's memory (the in-memory broker's deployment is one node)."""

    def __init__(self, size: int = BOARD_SIZE) -> None:
        self.size = size
        self._rooms: dict[str, _RoomTotals] = {}
        self._balances: dict[str, int] = {}
        self._paid: dict[str, int] = {}  # gift id -> balance left after it

    async def credit(self, room: str, uid: str, name: str, value: int) -> Board:
        totals = self._rooms.setdefault(room, _RoomTotals())
        totals.scores[uid] = totals.scores.get(uid, 0) + value
        totals.names[uid] = name
        totals.version += 1
        return Board(totals.version, _top(totals, self.size))

    async def charge(self, uid: str, gift_id: str, amount: int, start: int) -> int | None:
        if gift_id in self._paid:
            return self._paid[gift_id]
        balance = self._balances.get(uid, start)
        if balance < amount:
            return None
        self._balances[uid] = balance - amount
        self._paid[gift_id] = balance - amount
        if len(self._paid) > 100_000:
            del self._paid[next(iter(self._paid))]
        return balance - amount


# KEYS: scores (zset), names (hash), version. ARGV: uid, name, value, size, ttl
_CREDIT = """
redis.call('ZINCRBY', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local ver = redis.call('INCR', KEYS[3])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
local top = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[4]) - 1, 'WITHSCORES')
local names = {}
for i = 1, #top, 2 do names[#names + 1] = redis.call('HGET', KEYS[2], top[i]) or top[i] end
return {ver, top, names}
"""
# KEYS: balance, paid marker. ARGV: amount, start, ttl. Returns the balance left or -1.
_CHARGE = """
local paid = redis.call('GET', KEYS[2])
if paid then return tonumber(paid) end
local bal = tonumber(redis.call('GET', KEYS[1]) or ARGV[2])
if bal < tonumber(ARGV[1]) then return -1 end
bal = bal - tonumber(ARGV[1])
redis.call('SET', KEYS[1], bal)
redis.call('SET', KEYS[2], bal, 'EX', ARGV[3])
return bal
"""
ROOM_TTL = 7 * 86400  # seconds a room's gifter totals outlive its last gift


class RedisGiftStore(GiftStore):
    """Shared by every node; each room's keys on one slot (`{g:<room>}`), each user's too."""

    def __init__(self, redis: Any, size: int = BOARD_SIZE) -> None:
        self._redis = redis  # the node's RedisClients.commands
        self.size = size
        self._credit = self._redis.register_script(_CREDIT)
        self._charge = self._redis.register_script(_CHARGE)

    async def credit(self, room: str, uid: str, name: str, value: int) -> Board:
        base = f"lr:{{g:{room}}}"
        keys = [f"{base}:gifters", f"{base}:names", f"{base}:ver"]
        ver, flat, names = await self._credit(keys=keys, args=[uid, name, value, self.size, ROOM_TTL])
        top = [
            {"uid": flat[i].decode(), "name": names[i // 2].decode(), "score": int(float(flat[i + 1]))}
            for i in range(0, len(flat), 2)
        ]
        return Board(int(ver), top)

    async def charge(self, uid: str, gift_id: str, amount: int, start: int) -> int | None:
        base = f"lr:{{w:{uid}}}"
        left = await self._charge(
            keys=[f"{base}:balance", f"{base}:paid:{gift_id}"], args=[amount, start, PAID_TTL]
        )
        return None if int(left) < 0 else int(left)

    async def close(self) -> None:
        pass  # the client is the node's (RedisClients), closed by the app


def make_gift_store(redis: Any = None) -> GiftStore:
    """`redis`: the node's RedisClients.commands, or None for one node's memory."""
    return RedisGiftStore(redis) if redis is not None else MemoryGiftStore()
