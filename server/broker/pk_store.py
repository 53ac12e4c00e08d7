"""Cross-room links and PK scores, shared by every node.

Links: one key per room (`{l:<room>}`) naming the other room and the state (`invited`,
`invitee`, `on`); two rooms on two Redis Cluster shards cannot be written in one atomic step,
so an invitation claims the inviter's key, then the invitee's, and gives the first back if the
second is taken.

Scores: a PK round's points and contributors live under ONE key's slot (`{pk:<id>}`), whichever
shards the two rooms are on: every node crediting either side adds to it with one script (a
no-op once the round is closed), and the result is one atomic read-and-close. So the two rooms
cannot disagree: they are shown numbers read from the same place, and nothing counts after
the close.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import msgpack

from server.room.pk import Score

TOP = 3
LINK_TTL = 86400  # seconds a link (or an unanswered invitation) is kept at most
PK_TTL = 3600  # seconds a round's score outlives its close


@dataclass(frozen=True, slots=True)
class LinkState:
    other: str
    state: str  # invited (this room invited `other`), invitee (`other` invited it), on
    by: str  # the inviting host's uid


class PkStore(ABC):
    @abstractmethod
    async def get_link(self, room: str) -> LinkState | None: ...

    @abstractmethod
    async def invite(self, room: str, other: str, by: str) -> bool:
        """False when either room is linked or has an invitation pending."""

    @abstractmethod
    async def accept(self, room: str, other: str) -> bool:
        """`room` accepts the invitation of `other`; False when there is none."""

    @abstractmethod
    async def unlink(self, room: str, other: str) -> None: ...

    @abstractmethod
    async def open_round(self, pk_id: str, rooms: list[str]) -> None: ...

    @abstractmethod
    async def credit(self, pk_id: str, room: str, points: int, uid: str = "", name: str = "") -> None:
        """Add points to a side (and to uid's contribution); nothing once the round is closed."""

    @abstractmethod
    async def read(self, pk_id: str) -> Score: ...

    @abstractmethod
    async def close_round(self, pk_id: str) -> Score:
        """Close the round (credits stop counting) and return its final score; its `ended` says
        whether it was closed before this call (then someone else announced the result)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


@dataclass(slots=True)
class _Round:
    rooms: list[str]
    points: dict[str, int]
    gifts: dict[str, dict[str, int]] = field(default_factory=dict)  # room -> uid -> value
    names: dict[str, str] = field(default_factory=dict)
    version: int = 0
    ended: bool = False

    def score(self) -> Score:
        top = {
            room: [
                {"uid": uid, "name": self.names.get(uid, uid), "score": value}
                for uid, value in sorted(self.gifts.get(room, {}).items(), key=lambda kv: (-kv[1], kv[0]))[
                    :TOP
                ]
            ]
            for room in self.rooms
        }
        return Score(self.version, dict(self.points), top, self.ended)


class MemoryPkStore(PkStore):
    def __init__(self) -> None:
        self._links: dict[str, LinkState] = {}
        self._rounds: dict[str, _Round] = {}

    async def get_link(self, room: str) -> LinkState | None:
        return self._links.get(room)

    async def invite(self, room: str, other: str, by: str) -> bool:
        if room in self._links or other in self._links:
            return False
        self._links[room] = LinkState(other, "invited", by)
        self._links[other] = LinkState(room, "invitee", by)
        return True

    async def accept(self, room: str, other: str) -> bool:
        mine, theirs = self._links.get(room), self._links.get(other)
        if (
            mine != LinkState(other, "invitee", mine.by if mine else "")
            or theirs is None
            or theirs.other != room
        ):
            return False
        self._links[room] = LinkState(other, "on", mine.by)
        self._links[other] = LinkState(room, "on", mine.by)
        return True

    async def unlink(self, room: str, other: str) -> None:
        for key, peer in ((room, other), (other, room)):
            if (state := self._links.get(key)) is not None and state.other == peer:
                del self._links[key]

    async def open_round(self, pk_id: str, rooms: list[str]) -> None:
        self._rounds[pk_id] = _Round(rooms, dict.fromkeys(rooms, 0))

    async def credit(self, pk_id: str, room: str, points: int, uid: str = "", name: str = "") -> None:
        pk = self._rounds.get(pk_id)
        if pk is None or pk.ended or room not in pk.points:
            return
        pk.points[room] += points
        if uid:
            side = pk.gifts.setdefault(room, {})
            side[uid] = side.get(uid, 0) + points
            pk.names[uid] = name
        pk.version += 1

    async def read(self, pk_id: str) -> Score:
        return self._rounds[pk_id].score()

    async def close_round(self, pk_id: str) -> Score:
        pk = self._rounds[pk_id]
        score = pk.score()
        pk.ended = True
        return score


# KEYS: round hash, contributors of room 1 (zset), names (hash), contributors of room 2
# ARGV: room, points, uid, name, ttl
_CREDIT = """
if redis.call('HGET', KEYS[1], 'ended') ~= '0' then return 0 end
if redis.call('HEXISTS', KEYS[1], 'p:' .. ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'p:' .. ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'ver', 1)
if ARGV[3] ~= '' then
  redis.call('ZINCRBY', KEYS[2], ARGV[2], ARGV[3])
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[5]); redis.call('EXPIRE', KEYS[3], ARGV[5])
end
return 1
"""
# KEYS: round hash, names, contributors of room 1, of room 2. ARGV: close (1/0), top
_READ = """
local was = redis.call('HGET', KEYS[1], 'ended')
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'ended', '1') end
local out = {redis.call('HGETALL', KEYS[1]), was}
for i = 3, 4 do
  local top = redis.call('ZREVRANGE', KEYS[i], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
  local names = {}
  for j = 1, #top, 2 do names[#names + 1] = redis.call('HGET', KEYS[2], top[j]) or top[j] end
  out[#out + 1] = top
  out[#out + 1] = names
end
return out
"""


class RedisPkStore(PkStore):
    def __init__(self, redis: Any) -> None:
        self._redis = redis  # the node's RedisClients.commands
        self._credit = self._redis.register_script(_CREDIT)
        self._read = self._redis.register_script(_READ)
        self._rooms: dict[str, list[str]] = {}  # pk id -> its rooms (fixed for the round)

    @staticmethod
    def _link_key(room: str) -> str:
        return f"lr:{{l:{room}}}:link"

    async def get_link(self, room: str) -> LinkState | None:
        raw = await self._redis.get(self._link_key(room))
        return None if raw is None else LinkState(*msgpack.unpackb(raw))

    async def _put(self, room: str, state: LinkState, nx: bool) -> bool:
        raw = msgpack.packb([state.other, state.state, state.by])
        return bool(await self._redis.set(self._link_key(room), raw, nx=nx, ex=LINK_TTL))

    async def invite(self, room: str, other: str, by: str) -> bool:
        if not await self._put(room, LinkState(other, "invited", by), nx=True):
            return False
        if not await self._put(other, LinkState(room, "invitee", by), nx=True):
            await self._redis.delete(self._link_key(room))  # the other room is taken: give ours back
            return False
        return True

    async def accept(self, room: str, other: str) -> bool:
        mine, theirs = await self.get_link(room), await self.get_link(other)
        if (
            mine is None
            or theirs is None
            or (mine.other, mine.state, theirs.other) != (other, "invitee", room)
        ):
            return False
        await self._put(room, LinkState(other, "on", mine.by), nx=False)
        await self._put(other, LinkState(room, "on", mine.by), nx=False)
        return True

    async def unlink(self, room: str, other: str) -> None:
        for key, peer in ((room, other), (other, room)):
            state = await self.get_link(key)
            if state is not None and state.other == peer:
                await self._redis.delete(self._link_key(key))

    def _keys(self, pk_id: str, rooms: list[str]) -> list[str]:
        base = f"lr:{{pk:{pk_id}}}"
        return [f"{base}:round", f"{base}:names", *(f"{base}:top:{room}" for room in rooms)]

    async def open_round(self, pk_id: str, rooms: list[str]) -> None:
        key = self._keys(pk_id, rooms)[0]
        mapping: dict[str, Any] = {"ended": "0", "ver": 0, "rooms": msgpack.packb(rooms)}
        mapping.update({f"p:{room}": 0 for room in rooms})
        await self._redis.hset(key, mapping=mapping)
        await self._redis.expire(key, PK_TTL + 3600)
        self._rooms[pk_id] = rooms

    async def _rooms_of(self, pk_id: str) -> list[str]:
        rooms = self._rooms.get(pk_id)
        if rooms is None:
            raw = await self._redis.hget(f"lr:{{pk:{pk_id}}}:round", "rooms")
            rooms = self._rooms[pk_id] = list(msgpack.unpackb(raw)) if raw else []
        return rooms

    async def credit(self, pk_id: str, room: str, points: int, uid: str = "", name: str = "") -> None:
        rooms = await self._rooms_of(pk_id)
        if room not in rooms:
            return
        keys = self._keys(pk_id, [room])
        await self._credit(keys=[keys[0], keys[2], keys[1]], args=[room, points, uid, name, PK_TTL])

    async def _score(self, pk_id: str, close: bool) -> Score:
        rooms = await self._rooms_of(pk_id)
        keys = self._keys(pk_id, rooms)
        res = await self._read(keys=keys, args=["1" if close else "0", TOP])
        flat = res[0]
        fields = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
        points = {room: int(fields.get(f"p:{room}", 0)) for room in rooms}
        top = {}
        for n, room in enumerate(rooms):
            ranked, names = res[2 + 2 * n], res[3 + 2 * n]
            top[room] = [
                {
                    "uid": ranked[i].decode(),
                    "name": names[i // 2].decode(),
                    "score": int(float(ranked[i + 1])),
                }
                for i in range(0, len(ranked), 2)
            ]
        return Score(int(fields.get("ver", 0)), points, top, res[1] == b"1")

    async def read(self, pk_id: str) -> Score:
        return await self._score(pk_id, close=False)

    async def close_round(self, pk_id: str) -> Score:
        return await self._score(pk_id, close=True)  # `ended`: it was closed already

    async def close(self) -> None:
        pass  # the client is the node's (RedisClients), closed by the app


def make_pk_store(redis: Any = None) -> PkStore:
    """`redis`: the node's RedisClients.commands, or None for one node's memory."""
    return RedisPkStore(redis) if redis is not None else MemoryPkStore()
