"""The Redis data layout of the broker: key names and the Lua scripts that keep them consistent.

Every key of a room shares the hash tag `{r:<room>}` and every key of a user `{u:<uid>}`,
so one script touches one Redis Cluster slot and the same layout runs on one Redis or on
a cluster. Ids are checked with protocol.valid_id before they become part of a key.

Scripts run atomically, which is the point: one EVALSHA per room per tick assigns the
sequence numbers, appends to history and publishes, so every node receives a room's
batches in sequence order and history never disagrees with what was published.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from server.broker.base import Sanction
from server.broker.idempotency import WINDOW, cid_tag
from server.wire.protocol import QA_SIZE, SYSTEM_UID, valid_id

PREFIX = "lr"


@dataclass(frozen=True, slots=True)
class RoomKeys:
    meta: str  # hash: e epoch, s top seq, l like total, o online, u unique viewers
    hist: str  # stream: id `<seq>-0`, field d = one encoded event (capped, expires)
    recent: str  # list: the last encoded danmaku, for join snapshots
    sticky: str  # hash: `host:<uid>`, `live:<uid>`, `pin:<id>`, `product:<fields>:<id>` -> event in force
    pres: str  # hash: node -> local online count
    beat: str  # zset: node -> heartbeat deadline (ms, Redis clock)
    uv: str  # HyperLogLog of uids that joined
    channel: str  # pub/sub channel: `<epoch>|<batch frame>`
    qa: str  # list: the last QA_SIZE encoded `question` and `reply` events, for the staff

    @property
    def script_keys(self) -> list[str]:
        return [self.meta, self.hist, self.recent, self.sticky, self.pres, self.beat, self.uv, self.qa]


@dataclass(frozen=True, slots=True)
class UserKeys:
    dms: str  # stream: DMs not yet acknowledged (capped, expires); field b (body) or f (frame)
    channel: str  # pub/sub channel: `b<id>|<body>` or `f|<frame>`
    blocks: str  # set: uids whose DMs this user refuses
    dm_quota: str  # zset: this user's stored DMs as a sender (member token, score expiry ms)


@functools.lru_cache(maxsize=1 << 14)  # built for every publish of a busy room: build once
def room_keys(room_id: str) -> RoomKeys:
    if not valid_id(room_id):
        raise ValueError(f"invalid room id {room_id[:80]!r}")
    base = f"{PREFIX}:{{r:{room_id}}}"
    return RoomKeys(
        meta=f"{base}:meta",
        hist=f"{base}:hist",
        recent=f"{base}:recent",
        sticky=f"{base}:sticky",
        pres=f"{base}:pres",
        beat=f"{base}:beat",
        uv=f"{base}:uv",
        channel=f"{base}:ch",
        qa=f"{base}:qa",
    )


def user_keys(user_id: str) -> UserKeys:
    if not valid_id(user_id):
        raise ValueError(f"invalid user id {user_id[:80]!r}")
    base = f"{PREFIX}:{{u:{user_id}}}"
    return UserKeys(dms=f"{base}:dm", channel=f"{base}:ch", blocks=f"{base}:blocks", dm_quota=f"{base}:dmq")


def dm_cid_key(user_id: str, send: str) -> str:
    """The record of one send (`send`: sender and cid, idempotency.dm_send) to this recipient, on
    the recipient's slot so SEND_DM writes it with the DM, atomically (see SEND_DM)."""
    return f"{user_keys(user_id).dms}:sent:{send}"


# -- abuse (server/abuse): sanctions, join nonces, rate-limit usage ---------------------------

SANCTION_KINDS = ("ban", "kick", "mute")  # the order sanctions are reported in at join
# Every node subscribes to this one channel for the whole session: a sanction must reach the
# user's connections wherever they are, and a node cannot know in advance where that is.
SANCTIONS_CHANNEL = f"{PREFIX}:{{x:mod}}:ch"


def sanction_keys(room_id: str, user_id: str) -> list[str]:
    """One string per kind (SANCTION_KINDS order), expiring with the sanction; one slot per room."""
    if not valid_id(room_id) or not valid_id(user_id):
        raise ValueError("invalid room or user id")
    return [f"{PREFIX}:{{r:{room_id}}}:sx:{user_id}:{kind}" for kind in SANCTION_KINDS]


def sanction_index(room_id: str) -> tuple[str, str]:
    """The room's index of sanctions (a sorted set, member `uid:kind`, score = expiry ms or
    +inf) and the prefix that turns a member into its key: a node loads a room's sanctions once
    when it opens the room, instead of reading them on every join."""
    if not valid_id(room_id):
        raise ValueError("invalid room id")
    base = f"{PREFIX}:{{r:{room_id}}}"
    return f"{base}:sxi", f"{base}:sx:"


def nonce_key(nonce: str) -> str:
    """A claimed join nonce (jti); hashed, since a jti is any string the token issuer chose."""
    return f"{PREFIX}:jti:{hashlib.sha256(nonce.encode()).hexdigest()[:32]}"


def usage_key(action: str, user_id: str) -> str:
    """A user's cumulative spending of one rate limit over every node (a float, short TTL)."""
    if not action.isalpha() or not valid_id(user_id):
        raise ValueError("invalid usage key")
    return f"{PREFIX}:{{u:{user_id}}}:rl:{action}"


def pack_sanction(sanction: Sanction, origin: str) -> bytes:
    """Stored value and channel message: [room, uid, kind, until, by, lifted, origin node]."""
    fields = [sanction.room, sanction.uid, sanction.kind, sanction.until, sanction.by, sanction.lifted]
    return _pack([*fields, origin])


def unpack_sanction(data: bytes) -> tuple[Sanction, str]:
    try:
        room, uid, kind, until, by, lifted, origin = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises many types; all mean "not a sanction"
        raise ValueError(f"undecodable sanction: {type(exc).__name__}") from None
    if (
        not all(isinstance(v, str) for v in (room, uid, kind, by, origin))
        or kind not in SANCTION_KINDS
        or not (until is None or isinstance(until, int))
        or not isinstance(lifted, bool)
    ):
        raise ValueError("not a sanction")
    return Sanction(room, uid, kind, until, by, lifted), origin


def control_channel(node_id: str) -> str:
    """A channel of this node alone: keeps the pub/sub connection subscribed to something."""
    return f"{PREFIX}:{{n:{node_id}}}:ctl"


# -- encoding pieces the scripts glue together --------------------------------------------
# msgpack is concatenative: a map is a header followed by its keys and values. Python
# encodes each event once, without its sequence number, ending with the key "seq"; the
# script appends the number it assigns. No JSON, no re-encoding in Lua.


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def map_header(size: int) -> bytes:
    if size < 16:
        return bytes([0x80 | size])
    if size < 1 << 16:
        return b"\xde" + size.to_bytes(2, "big")
    return b"\xdf" + size.to_bytes(4, "big")


def open_map(fields: dict[str, Any], last_key: str) -> bytes:
    """The encoding of fields plus one more key, `last_key`, whose value is left to append."""
    items = [(k, v) for k, v in fields.items() if k != last_key]
    parts = [map_header(len(items) + 1)]
    for key, value in items:
        parts.append(_pack(key))
        parts.append(_pack(value))
    parts.append(_pack(last_key))
    return b"".join(parts)


@functools.lru_cache(maxsize=1 << 14)
def batch_head(room_id: str) -> bytes:
    """`{"t": "batch", "room": room, ` — the script appends `"epoch": epoch, "events": [...]}`
    (protocol.batch_frame's encoding, byte for byte)."""
    return map_header(4) + _pack("t") + _pack("batch") + _pack("room") + _pack(room_id)


def close_with(prefix: bytes, value: Any) -> bytes:
    return prefix + _pack(value)


STICKY_KINDS = {"host": "live", "live": "on", "pk_round": "on", "pk_penalty": "on"}  # kind -> its on flag


def classify(event: dict[str, Any]) -> tuple[str, str]:
    """How the publish script files an event: d (recent danmaku), s/x (sticky on/off),
    r (a moderator's delete: drop from recent), q (the staff's questions and answers), o (history
    only)."""
    kind = event.get("t")
    if kind == "danmaku":
        return "d", ""
    if kind in ("question", "reply"):
        return "q", ""
    if kind == "product":
        # one sticky entry per product and set of fields edited: a price edit replaces the last
        # price edit and leaves the last stock edit; a loader merges them in seq order
        edited = ",".join(f for f in ("price", "stock") if f in event)
        return "s", f"product:{edited}:{event.get('id')}"
    if kind == "delete" and isinstance(event.get("target"), int):
        return "r", str(event["target"])
    if kind in ("pin", "unpin"):  # pins are sticky per pin id (server.node.answers)
        return ("s" if kind == "pin" else "x"), f"pin:{event.get('id')}"
    if kind == "board":  # the newest leaderboard in force (gifts); pk scores ride on pk_round
        return "s", "board:"
    if kind == "link":  # one link per room, whichever host turned it on or off
        return ("s" if event.get("on") else "x"), "link:"
    if kind == "schedule":  # a live the host scheduled, per schedule id
        return ("s" if event.get("on") else "x"), f"schedule:{event.get('id')}"
    flag = STICKY_KINDS.get(kind or "")
    if flag is not None:
        return ("s" if event.get(flag) else "x"), f"{kind}:{event.get('uid')}"
    return "o", ""


def danmaku_claim_key(room_id: str, uid: str, cid: str | int) -> str:
    """The key a danmaku's `cid` is claimed under: on the room's slot, so the publish script
    that numbers the danmaku claims it in the same call (idempotency.DanmakuCids is its twin)."""
    return f"{PREFIX}:{{r:{room_id}}}:cid:{uid}:{cid_tag(cid)}"


def publish_args(
    room_id: str,
    keys: RoomKeys,
    *,
    new_epoch: str,
    history_size: int,
    history_ttl: int,
    meta_ttl: int,
    publish_cmd: str,
    node: str,
    local_online: int | None,
    presence_ttl_ms: int,
    likes: int,
    recent_size: int,
    now: int,
    events: Sequence[dict[str, Any]],
    joined: Sequence[str],
    clock: int = -1,
    seen: tuple[str, int] | None = None,
    claim_ttl: int = WINDOW,
) -> list[Any]:
    """PUBLISH's ARGV for one tick (clock -1: the presence clock is Redis' TIME; seen: the
    newest (epoch, seq) this node delivered from Redis; claim_ttl: seconds a danmaku cid is
    remembered)."""
    args: list[Any] = [
        new_epoch,
        history_size,
        history_ttl,
        meta_ttl,
        keys.channel,
        publish_cmd,
        batch_head(room_id),
        node,
        -1 if local_online is None else local_online,
        presence_ttl_ms,
        likes,
        recent_size,
        now,
        len(events),
        len(joined),
        clock,
        "" if seen is None else seen[0],
        -1 if seen is None else seen[1],
        claim_ttl,
    ]
    for event in events:
        kind, field = classify(event)
        if kind == "d" and "cid" in event:
            field = danmaku_claim_key(room_id, event["uid"], event["cid"])
        args += [kind, field, open_map(event, "seq")]
    args += joined
    return args


# -- scripts --------------------------------------------------------------------------------

# KEYS: meta hist recent sticky pres beat uv qa (RoomKeys.script_keys)
# ARGV: 1 epoch if new, 2 history size, 3 history ttl s, 4 meta ttl s, 5 channel,
#       6 publish command, 7 batch head, 8 node, 9 local online (-1: unchanged),
#       10 presence ttl ms, 11 likes delta, 12 recent size, 13 now ms, 14 event count,
#       15 joined count, 16 presence clock ms (-1: Redis' TIME), 17/18 the newest epoch/seq
#       this node delivered ('' / -1: none), 19 danmaku cid ttl s, then 3 per event (kind
#       d|s|x|r|q|o, field, open map), then joined uids.
#       kinds: d danmaku (recent list; field: its cid's claim key or ''), s/x sticky on/off
#       (field), r delete from recent (field: seq), q the staff's questions and answers (capped
#       list).
#       Before the rule: a danmaku whose claim key is already set (SET NX) is a client's retry
#       of one already numbered, and is dropped (idempotency.DanmakuCids in Python).
# Returns {epoch, top seq, events published}.
# The sequencing is server/room/sequencing.py's rule, step for step (tests/test_sequencing.py checks it):
# meta e/s/l/o/u is StreamState's epoch/seq/likes/online/unique, pres+beat its presence map.
PUBLISH = r"""
local meta, hist, recent, sticky = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local pres, beat, uv, qa = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local hist_max, hist_ttl, meta_ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local node, local_online, pres_ttl = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local likes_delta, recent_max, now = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local n_events, n_joined, clock = tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16])

local m = redis.call('HMGET', meta, 'e', 's', 'o', 'u')
local epoch = m[1]
if epoch and epoch == ARGV[17] and tonumber(m[2] or '0') < tonumber(ARGV[18]) then
  epoch = false  -- behind what this node delivered: Redis came back from an older copy
end
if not epoch then
  -- rule 1: the room's stream is gone (first use, expiry, a Redis that lost its data): new epoch
  epoch = ARGV[1]
  redis.call('DEL', hist, recent, sticky, pres, beat, qa)
  redis.call('HDEL', meta, 'l', 'o', 'u')
  redis.call('HSET', meta, 'e', epoch, 's', 0)
  m = {epoch, '0', false, false}
end
local seq = tonumber(m[2] or '0')
local out = {}

local function seal(open)
  seq = seq + 1
  local ev = open .. cmsgpack.pack(seq)
  out[#out + 1] = ev
  redis.call('XADD', hist, 'MAXLEN', hist_max, string.format('%d-0', seq), 'd', ev)
  return ev
end

local function system(kind, a, av, b, bv)
  return table.concat({string.char(0x80 + 7),
    cmsgpack.pack('t'), cmsgpack.pack(kind), cmsgpack.pack('uid'), cmsgpack.pack('__SYS__'),
    cmsgpack.pack('name'), cmsgpack.pack('__SYS__'), cmsgpack.pack('ts'), cmsgpack.pack(now),
    cmsgpack.pack(a), cmsgpack.pack(av), cmsgpack.pack(b), cmsgpack.pack(bv), cmsgpack.pack('seq')})
end

-- rule 2: the tick's events, in order
local claim_ttl = tonumber(ARGV[19])
local at, pushed, touched, asked = 20, false, false, false
for _ = 1, n_events do
  local kind, field, open = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  at = at + 3
  if kind == 'd' and field ~= '' and not redis.call('SET', field, '1', 'NX', 'EX', claim_ttl) then
    kind = 'retry'  -- this cid was numbered already: nothing sealed, nothing filed
  end
  local ev = kind ~= 'retry' and seal(open)
  if kind == 'd' then
    if recent_max > 0 then redis.call('RPUSH', recent, ev); pushed = true end
  elseif kind == 's' then
    redis.call('HSET', sticky, field, ev); touched = true
  elseif kind == 'x' then
    redis.call('HDEL', sticky, field)
  elseif kind == 'q' then
    redis.call('RPUSH', qa, ev); asked = true
  elseif kind == 'r' then
    -- a moderator deleted the danmaku with seq `field`: joiners must not see it either
    local target = tonumber(field)
    for _, kept in ipairs(redis.call('LRANGE', recent, 0, -1)) do
      if cmsgpack.unpack(kept).seq == target then
        redis.call('LREM', recent, 1, kept)
        break
      end
    end
  end
end

if n_joined > 0 then
  redis.call('PFADD', uv, unpack(ARGV, at, at + n_joined - 1))
  redis.call('EXPIRE', uv, meta_ttl)
end

-- rule 3: likes
if likes_delta > 0 then
  local total = redis.call('HINCRBY', meta, 'l', likes_delta)
  seal(system('likes', 'total', total, 'delta', likes_delta))
end

-- rule 4: presence
if local_online >= 0 then
  if clock < 0 then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  if local_online > 0 then
    redis.call('HSET', pres, node, local_online)
    redis.call('ZADD', beat, clock + pres_ttl, node)
  else
    redis.call('HDEL', pres, node)
    redis.call('ZREM', beat, node)
  end
  local dead = redis.call('ZRANGEBYSCORE', beat, '-inf', clock)
  if #dead > 0 then
    redis.call('HDEL', pres, unpack(dead))
    redis.call('ZREMRANGEBYSCORE', beat, '-inf', clock)
  end
  local online = 0
  for _, v in ipairs(redis.call('HVALS', pres)) do online = online + tonumber(v) end
  local unique = redis.call('PFCOUNT', uv)
  if online ~= tonumber(m[3] or '-1') or unique ~= tonumber(m[4] or '-1') then
    redis.call('HSET', meta, 'o', online, 'u', unique)
    seal(system('presence', 'online', online, 'unique', unique))
  end
  redis.call('EXPIRE', pres, meta_ttl)
  redis.call('EXPIRE', beat, meta_ttl)
end

redis.call('EXPIRE', meta, meta_ttl)
if #out == 0 then return {epoch, seq, 0} end
redis.call('HSET', meta, 's', seq)
redis.call('EXPIRE', hist, hist_ttl)
if pushed then
  redis.call('LTRIM', recent, -recent_max, -1)
  redis.call('EXPIRE', recent, meta_ttl)
end
if touched then redis.call('EXPIRE', sticky, meta_ttl) end
if asked then
  redis.call('LTRIM', qa, -__QA__, -1)
  redis.call('EXPIRE', qa, meta_ttl)
end

local n = #out
local header
if n < 16 then header = string.char(0x90 + n)
elseif n < 65536 then header = string.char(0xdc, math.floor(n / 256), n % 256)
else header = string.char(0xdd, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
                          math.floor(n / 256) % 256, n % 256) end
-- the frame names its epoch, so a client can never take these seqs for another stream's
redis.call(ARGV[6], ARGV[5], epoch .. '|' .. ARGV[7] .. cmsgpack.pack('epoch') .. cmsgpack.pack(epoch)
  .. cmsgpack.pack('events') .. header .. table.concat(out))
return {epoch, seq, n}
""".replace("__SYS__", SYSTEM_UID).replace("__QA__", str(QA_SIZE))

# KEYS: meta hist recent sticky pres beat qa
# ARGV: 1 epoch if new, 2 history from seq (-1: none), 3 history size, 4 want state (1/0), 5 meta ttl,
#       6/7 the newest epoch/seq this node delivered ('' / -1: none; rule 1 as in PUBLISH),
#       8 the epoch to retire ('' none, '*' whichever is current), 9 channel, 10 publish command
# Returns {epoch, seq, likes, online, unique, recent events, sticky events, history entries,
#          qa events, `<retired epoch>><epoch>` if the epoch came from a retirement else ''}.
#
# Retiring: a node that numbered events alone during an outage (a local epoch) comes back; the
# other nodes' viewers never saw those events, so the stream gets a new epoch (same seqs, state
# kept) and every node holding the room hears `<new epoch>|` on its channel: it re-reads the room
# and resets it, so its viewers are told (an in-band snapshot) instead of missing them. Meta `r`
# names the retirement (`old>new`): a node still at `old` knows the new stream is the old one's
# events seq for seq, not a restart that merely reached the same seq (server.delivery.hub).
LOAD = r"""
local meta, hist, recent, sticky = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local m = redis.call('HMGET', meta, 'e', 's', 'l', 'o', 'u', 'r')
if m[1] and m[1] == ARGV[6] and tonumber(m[2] or '0') < tonumber(ARGV[7]) then
  m[1] = false  -- behind what this node delivered: Redis came back from an older copy
end
if m[1] and ARGV[8] ~= '' and (ARGV[8] == '*' or m[1] == ARGV[8]) then
  m[6] = m[1] .. '>' .. ARGV[1]
  m[1] = ARGV[1]
  redis.call('HSET', meta, 'e', m[1], 'r', m[6])
  redis.call(ARGV[10], ARGV[9], m[1] .. '|')
end
if not m[1] then
  -- a new stream (rule 1 of server/room/sequencing.py): nothing of the old one counts
  redis.call('DEL', hist, recent, sticky, KEYS[5], KEYS[6], KEYS[7])
  redis.call('HDEL', meta, 'l', 'o', 'u')
  redis.call('HSET', meta, 'e', ARGV[1], 's', 0)
  redis.call('EXPIRE', meta, ARGV[5])
  m = {ARGV[1], '0', false, false, false}
end
local res = {m[1], m[2] or '0', m[3] or '0', m[4] or '0', m[5] or '0', {}, {}, {}, {}, m[6] or ''}
if ARGV[4] == '1' then
  res[6] = redis.call('LRANGE', recent, 0, -1)
  res[7] = redis.call('HVALS', sticky)
  res[9] = redis.call('LRANGE', KEYS[7], 0, -1)
end
local since = tonumber(ARGV[2])
if since >= 0 then
  res[8] = redis.call('XRANGE', hist, string.format('%d-0', since + 1), '+', 'COUNT', ARGV[3])
end
return res
"""

# A stored DM's entry may carry `q` = `<sender>|<token>`: its place in the sender's quota
# (DM_QUOTA, on the sender's slot, which this script cannot touch). Scripts that drop entries
# (the cap pushing the oldest out, an acknowledgement) return those values; the inbox then
# frees them on each sender's slot.
_QUOTAS_OF = r"""
local function quotas_of(entries, out)
  for _, entry in ipairs(entries) do
    local f = entry[2]
    for i = 1, #f - 1, 2 do
      if f[i] == 'q' then out[#out + 1] = f[i + 1] end
    end
  end
  return out
end
"""

# KEYS[1]: the recipient's stream. ARGV: field (b body / f frame), payload, keep, channel,
# publish command, ttl (s), mode, quota (`<sender>|<token>` or ''). Modes: '1' a frame
# delivered live if someone listens, else kept; '0' a DM stored, then published; '2' a DM its
# sender may not store (over its quota): it gets a stream id (XADD then XDEL: ids stay ordered
# per recipient), is published and kept nowhere. Returns {id, receivers, quotas pushed out}.
# Published as `<field><id>,<prev>|<payload>` (`prev`: the newest DM kept before it, '0-0' for
# none), or `f|<frame>` for a frame that gets no id.
# KEYS[2] (a DM sent with a `cid`, dm_cid_key): the send's record on the recipient's slot, ARGV[9]
# its ttl (s), ARGV[10] the DM's ts. A send already recorded stores nothing and returns {its id,
# its receivers, {the new quota token, to free}, its ts}: whatever was lost on the sender's side
# (its node, its claim), a retry never stores a second copy; the record is replicated with the DM.
SEND_DM = (
    _QUOTAS_OF
    + r"""
local stream, field, payload, keep = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
if ARGV[7] == '1' then
  local n = redis.call(ARGV[5], ARGV[4], 'f|' .. payload)
  if n > 0 then return {'', n, {}} end
end
local sent = KEYS[2]
local function record(key, id, n)
  redis.call('HSET', key, 'id', id, 'n', n, 'ts', ARGV[10])
  redis.call('EXPIRE', key, ARGV[9])
end
if sent then
  local known = redis.call('HMGET', sent, 'id', 'n', 'ts')
  if known[1] then
    local freed = {}
    if ARGV[8] ~= '' then freed[1] = ARGV[8] end
    return {known[1], tonumber(known[2]), freed, known[3]}
  end
end
-- the newest DM kept before this one: a node that did not deliver it missed a message
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
local prev = last[1] and last[1][1] or '0-0'
if ARGV[7] == '2' then
  local id = redis.call('XADD', stream, '*', field, '')
  redis.call('XDEL', stream, id)
  redis.call('EXPIRE', stream, ARGV[6], 'NX')  -- a new, empty stream keeps its last id a while
  local n = redis.call(ARGV[5], ARGV[4], field .. id .. ',' .. prev .. '|' .. payload)
  if sent and n > 0 then record(sent, id, n) end  -- 0: refused, nothing sent
  return {id, n, {}}
end
local out = {}
local over = redis.call('XLEN', stream) - keep + 1
if over > 0 then quotas_of(redis.call('XRANGE', stream, '-', '+', 'COUNT', over), out) end
local id
if ARGV[8] ~= '' then
  id = redis.call('XADD', stream, 'MAXLEN', keep, '*', field, payload, 'q', ARGV[8])
else
  id = redis.call('XADD', stream, 'MAXLEN', keep, '*', field, payload)
end
redis.call('EXPIRE', stream, ARGV[6])
local n = 0
if ARGV[7] ~= '1' then n = redis.call(ARGV[5], ARGV[4], field .. id .. ',' .. prev .. '|' .. payload) end
if sent then record(sent, id, n) end
return {id, n, out}
"""
)

# The recipient read up to a DM. KEYS[1]: its stream; ARGV: that DM's id, the first id kept.
# Drops every entry up to it; returns their quotas.
ACK_DM = (
    _QUOTAS_OF
    + r"""
local out = quotas_of(redis.call('XRANGE', KEYS[1], '-', ARGV[1]), {})
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
return out
"""
)

# One sender's DMs waiting to be read, bounded (--dm-store-per-sender). KEYS[1]: the sender's
# dm_quota; ARGV: the bound, a new token, ttl (ms). Members expire with their DM (score: Redis
# time + ttl). Returns 1 with the token added, 0 when the sender is at its bound.
DM_QUOTA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# A room's active sanctions, for a node opening the room. KEYS[1]: the index (sanction_index);
# ARGV: now (ms), the key prefix, the most a node holds. Expired members are dropped first;
# a room with more than the most returns only its count (the node then reads per join).
LOAD_SANCTIONS = r"""
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if n > tonumber(ARGV[3]) then return {n, {}} end
local out = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local v = redis.call('GET', ARGV[2] .. member)
  if v then out[#out + 1] = v end
end
return {n, out}
"""
