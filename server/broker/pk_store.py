"""Cross-room links and PK scores, shared by every node.

Links: one key per room (`{l:<room>}`) naming the other room and the state (`invited`,
`invitee`, `on`); two rooms on two Redis Cluster shards cannot be written in one atomic step,
so an invitation claims the inviter's key, then the invitee's, and gives the first back if the
second is taken.

Scores: a PK round's points and contributors live under ONE key's slot (`{pk:<id>}`), whichever
shards the two rooms are on: every node crediting either side adds to it with one script (a
no-op once the round is closed), and the result is one atomic read-and-close. So the two rooms
cannot disagree: they are shown numbers read from the same place, and nothing counts after
the close. The round's phase (running, closed, penalty, done: server/room/pk.py) and its times
live in the same hash, and its driver lease (`{pk:<id>}:driver`, SET PX renewed by its holder)
under the same slot: when the driving node dies its lease lapses and another node claims it
and resumes the round from the phase it reads.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import msgpack

from server.room.pk import CLOSED, PENALTY, RUNNING, Score

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
    async def open_round(self, pk_id: str, rooms: list[str], ends: int, penalty: int) -> None:
        """A round scored until `ends` (ms since the epoch), then `penalty` seconds of penalty."""

    @abstractmethod
    async def credit(self, pk_id: str, room: str, points: int, uid: str = "", name: str = "") -> None:
        """Add points to a side (and to uid's contribution); nothing once the round is closed."""

    @abstractmethod
    async def read(self, pk_id: str) -> Score | None:
        """The round's score and phase; None when it is unknown (or long expired)."""

    @abstractmethod
    async def close_round(self, pk_id: str) -> Score:
        """Close the round (credits stop counting) and return its final score; its `ended` says
        whether it was closed before this call."""

    @abstractmethod
    async def advance(self, pk_id: str, frm: str, to: str, penalty_ends: int = 0) -> bool:
        """Move the round from phase `frm` to `to` (compare-and-set): True for the one caller
        that moved it."""

    @abstractmethod
    async def cut(self, pk_id: str, now: int) -> None:
        """A host ended the link: a running round closes now with no penalty after it (the
        rooms are no longer side by side), a penalty running is over at `now`."""

    @abstractmethod
    async def claim(self, pk_id: str, node: str, ms: int) -> bool:
        """Take (or keep) the round's driver lease for `ms`: True while `node` holds it. A lease
        not renewed (its node died) lapses, and a node holding either room claims it."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


@dataclass(slots=True)
class _Round:
    rooms: list[str]
    points: dict[str, int]
    ends: int
    penalty: int
    gifts: dict[str, dict[str, int]] = field(default_factory=dict)  # room -> uid -> value
    names: dict[str, str] = field(default_factory=dict)
    version: int = 0
    phase: str = RUNNING
    penalty_ends: int = 0
    driver: tuple[str, float] = ("", 0.0)  # node, lease expiry (monotonic s)

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
        return Score(
            self.version, dict(self.points), top, self.phase, self.ends, self.penalty, self.penalty_ends
        )


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

    async def open_round(self, pk_id: str, rooms: list[str], ends: int, penalty: int) -> None:
        self._rounds[pk_id] = _Round(rooms, dict.fromkeys(rooms, 0), ends, penalty)

    async def credit(self, pk_id: str, room: str, points: int, uid: str = "", name: str = "") -> None:
        pk = self._rounds.get(pk_id)
        if pk is None or pk.phase != RUNNING or room not in pk.points:
            return
        pk.points[room] += points
        if uid:
            side = pk.gifts.setdefault(room, {})
            side[uid] = side.get(uid, 0) + points
            pk.names[uid] = name
        pk.version += 1

    async def read(self, pk_id: str) -> Score | None:
        pk = self._rounds.get(pk_id)
        return None if pk is None else pk.score()

    async def close_round(self, pk_id: str) -> Score:
        pk = self._rounds[pk_id]
        score = pk.score()
        if pk.phase == RUNNING:
            pk.phase = CLOSED
        return score

    async def advance(self, pk_id: str, frm: str, to: str, penalty_ends: int = 0) -> bool:
        pk = self._rounds.get(pk_id)
        if pk is None or pk.phase != frm:
            return False
        pk.phase = to
        if penalty_ends:
            pk.penalty_ends = penalty_ends
        return True

    async def cut(self, pk_id: str, now: int) -> None:
        pk = self._rounds.get(pk_id)
        if pk is not None and pk.phase in (RUNNING, CLOSED):
            pk.phase, pk.penalty = CLOSED, 0
        elif pk is not None and pk.phase == PENALTY:
            pk.penalty_ends = min(pk.penalty_ends, now)

    async def claim(self, pk_id: str, node: str, ms: int) -> bool:
        pk = self._rounds.get(pk_id)
        if pk is None:
            return False
        now = time.monotonic()
        holder, until = pk.driver
        if holder != node and until > now:
            return False
        pk.driver = (node, now + ms / 1000)
        return True


# KEYS: round hash, contributors of room 1 (zset), names (hash), contributors of room 2
# ARGV: room, points, uid, name, ttl
_CREDIT = """
if redis.call('HGET', KEYS[1], 'phase') ~= 'running' then return 0 end
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
# Returns {the hash (as it was before a close), contributors and names per room}.
_READ = """
local out = {redis.call('HGETALL', KEYS[1])}
if #out[1] == 0 then return out end
if ARGV[1] == '1' and redis.call('HGET', KEYS[1], 'phase') == 'running' then
  redis.call('HSET', KEYS[1], 'phase', 'closed')
end
for i = 3, 4 do
  local top = redis.call('ZREVRANGE', KEYS[i], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
  local names = {}
  for j = 1, #top, 2 do names[#names + 1] = redis.call('HGET', KEYS[2], top[j]) or top[j] end
  out[#out + 1] = top
  out[#out + 1] = names
end
return out
"""
# KEYS: round hash. ARGV: from, to, penalty_ends (0: keep)
_ADVANCE = """
if redis.call('HGET', KEYS[1], 'phase') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'phase', ARGV[2])
if ARGV[3] ~= '0' then redis.call('HSET', KEYS[1], 'pends', ARGV[3]) end
return 1
"""
# KEYS: round hash. ARGV: now (ms)
_CUT = """
local phase = redis.call('HGET', KEYS[1], 'phase')
if phase == 'running' then redis.call('HSET', KEYS[1], 'phase', 'closed', 'penalty', 0)
elseif phase == 'closed' then redis.call('HSET', KEYS[1], 'penalty', 0)
elseif phase == 'penalty' and tonumber(redis.call('HGET', KEYS[1], 'pends')) > tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'pends', ARGV[1])
end
return phase
"""
# KEYS: the round's driver lease. ARGV: node, ms. Renewed by its holder, taken when it lapsed.
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class RedisPkStore(PkStore):
    def __init__(self, redis: Any) -> None:
        self._redis = redis  # the node's RedisClients.commands
        self._credit = self._redis.register_script(_CREDIT)
        self._read = self._redis.register_script(_READ)
        self._advance = self._redis.register_script(_ADVANCE)
        self._cut = self._redis.register_script(_CUT)
        self._claim = self._redis.register_script(_CLAIM)
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

    @staticmethod
    def _base(pk_id: str) -> str:
        return f"lr:{{pk:{pk_id}}}"

    def _keys(self, pk_id: str, rooms: list[str]) -> list[str]:
        base = self._base(pk_id)
        return [f"{base}:round", f"{base}:names", *(f"{base}:top:{room}" for room in rooms)]

    async def open_round(self, pk_id: str, rooms: list[str], ends: int, penalty: int) -> None:
        key = self._keys(pk_id, rooms)[0]
        mapping: dict[str, Any] = {
            "phase": RUNNING,
            "ver": 0,
            "rooms": msgpack.packb(rooms),
            "ends": ends,
            "penalty": penalty,
            "pends": 0,
        }
        mapping.update({f"p:{room}": 0 for room in rooms})
        await self._redis.hset(key, mapping=mapping)
        await self._redis.expire(key, PK_TTL + 3600)
        self._rooms[pk_id] = rooms

    async def _rooms_of(self, pk_id: str) -> list[str]:
        rooms = self._rooms.get(pk_id)
        if rooms is None:
            raw = await self._redis.hget(f"{self._base(pk_id)}:round", "rooms")
            if not raw:
                return []  # unknown: not remembered, it may be opened later
            rooms = self._rooms[pk_id] = list(msgpack.unpackb(raw))
        return rooms

    async def credit(self, pk_id: str, room: str, points: int, uid: str = "", name: str = "") -> None:
        rooms = await self._rooms_of(pk_id)
        if room not in rooms:
            return
        keys = self._keys(pk_id, [room])
        await self._credit(keys=[keys[0], keys[2], keys[1]], args=[room, points, uid, name, PK_TTL])

    async def _score(self, pk_id: str, close: bool) -> Score | None:
        rooms = await self._rooms_of(pk_id)
        if not rooms:
            return None
        keys = self._keys(pk_id, rooms)
        res = await self._read(keys=keys, args=["1" if close else "0", TOP])
        flat = res[0]
        if not flat:
            return None
        fields = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
        points = {room: int(fields.get(f"p:{room}", 0)) for room in rooms}
        top = {}
        for n, room in enumerate(rooms):
            ranked, names = res[1 + 2 * n], res[2 + 2 * n]
            top[room] = [
                {
                    "uid": ranked[i].decode(),
                    "name": names[i // 2].decode(),
                    "score": int(float(ranked[i + 1])),
                }
                for i in range(0, len(ranked), 2)
            ]
        return Score(
            int(fields.get("ver", 0)),
            points,
            top,
            fields.get("phase", b"done").decode(),
            int(fields.get("ends", 0)),
            int(fields.get("penalty", 0)),
            int(fields.get("pends", 0)),
        )

    async def read(self, pk_id: str) -> Score | None:
        return await self._score(pk_id, close=False)

    async def close_round(self, pk_id: str) -> Score:
        score = await self._score(pk_id, close=True)  # the phase before: `ended` if closed already
        if score is None:
            raise KeyError(pk_id)
        return score

    async def advance(self, pk_id: str, frm: str, to: str, penalty_ends: int = 0) -> bool:
        key = f"{self._base(pk_id)}:round"
        return bool(await self._advance(keys=[key], args=[frm, to, penalty_ends]))

    async def cut(self, pk_id: str, now: int) -> None:
        await self._cut(keys=[f"{self._base(pk_id)}:round"], args=[now])

    async def claim(self, pk_id: str, node: str, ms: int) -> bool:
        return bool(await self._claim(keys=[f"{self._base(pk_id)}:driver"], args=[node, ms]))

    async def close(self) -> None:
        pass  # the client is the node's (RedisClients), closed by the app


def make_pk_store(redis: Any = None) -> PkStore:
    """`redis`: the node's RedisClients.commands, or None for one node's memory."""
    return RedisPkStore(redis) if redis is not None else MemoryPkStore()
