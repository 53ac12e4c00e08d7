"""The Redis inbox: DMs stored per recipient (a capped stream) and published to its channel.

`store_dm` runs one script (XADD, then PUBLISH); a node subscribes to a user's channel while
the user has a connection there, reads the backlog once subscribed and merges it with live
DMs by id, so each node delivers each DM once, in order. Outages: DMs are refused with
BrokerUnavailable (nothing is acknowledged that is not stored); the backlog is caught up
after reconnecting.

Per-sender quota (--dm-store-per-sender, like the memory broker): before storing, one script on
the *sender's* slot adds a token to its quota (a sorted set expiring per member) or says it is
full. The recipient's stream is on another slot, so the token rides in the DM's entry (`q`);
whatever drops entries (the cap, an acknowledgement) returns their tokens and they are removed
from their senders' sets. A full sender's DM is still delivered live to an online recipient
(published, never kept); to an offline one it is refused 4502. The quota fails open: while the
sender's shard is unreachable its DMs are stored uncounted, and a token whose removal was lost
in an outage frees when its DM's dm_ttl passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import msgpack
from redis.exceptions import ResponseError

from server import metrics
from server.broker import redis_scripts as rs
from server.broker.base import (
    BrokerUnavailable,
    DmReceipt,
    Event,
    Inbox,
    UserHandler,
    dm_id_key,
    sender_quota_full,
)
from server.broker.idempotency import WINDOW
from server.broker.redis_link import DOWN as _DOWN
from server.broker.redis_link import Link, RedisPart
from server.broker.shards import Call
from server.wire import protocol

log = logging.getLogger("liveroom.broker.redis")
SEND_RECORD_TTL = WINDOW  # seconds a DM send (sender, cid) is recorded beside the recipient's DMs


@dataclass
class _UserSub:
    handler: UserHandler
    pending: list[tuple[str, bytes]] | None = None  # (id, frame) held while the backlog loads
    last: tuple[int, int] | None = None  # id of the last stored DM delivered (None: backlog owed)


class RedisInbox(RedisPart, Inbox):
    def __init__(self, link: Link, *, dm_keep: int, dm_ttl: int, dm_per_sender: int = 1000) -> None:
        super().__init__(link)
        self._dm_keep = dm_keep
        self._dm_ttl = dm_ttl
        self._dm_per_sender = dm_per_sender
        self._dm_script = self._redis.register_script(rs.SEND_DM)
        self._ack_script = self._redis.register_script(rs.ACK_DM)
        self._quota_script = self._redis.register_script(rs.DM_QUOTA)
        self._users: dict[str, _UserSub] = {}

    async def subscribe_user(self, user_id: str, handler: UserHandler) -> list[bytes]:
        keys = rs.user_keys(user_id)
        user = _UserSub(handler=handler, pending=[])
        self._users[user_id] = user
        channel = keys.channel.encode()
        self._targets[channel] = ("u", user_id)
        if self._serving(channel):
            try:  # one round trip: the backlog is read right after the subscription, on its connection
                raw = await self._listen(
                    [channel], read=("XRANGE", keys.dms, "-", "+", "COUNT", self._dm_keep)
                )
                entries = [(raw_id, _fields(fields)) for raw_id, fields in raw]
            except _DOWN as exc:
                self._kick(exc, channel)
            else:
                frames = self._backlog(user, entries)
                asyncio.get_running_loop().call_soon(self._flush_user, user_id, user)
                return frames
        # The backlog is delivered once Redis is back (_catch_up); live DMs wait behind it, or a
        # live one would move `last` past the backlog for good.
        user.pending = []
        return []

    async def unsubscribe_user(self, user_id: str) -> None:
        if self._users.pop(user_id, None) is not None:
            await self._unlisten(rs.user_keys(user_id).channel.encode())

    async def dm_backlog(self, user_id: str) -> list[bytes]:
        dms = rs.user_keys(user_id).dms
        if not self._serving(dms):
            raise BrokerUnavailable("redis is unreachable")
        try:
            entries = await self._redis.xrange(dms, "-", "+", count=self._dm_keep)
        except _DOWN as exc:
            self._kick(exc, dms)
            raise BrokerUnavailable(str(exc)) from exc
        frames = (_stored_frame(raw_id.decode(), fields) for raw_id, fields in entries)
        return [frame for frame in frames if frame is not None]

    async def send_dm(self, user_id: str, frame: bytes) -> bool:
        keys = rs.user_keys(user_id)
        if not self._serving(keys.dms):
            return False  # best effort: these frames (invitations) are not acknowledged DMs
        try:
            res = await self._dm_script(
                keys=[keys.dms],
                args=["f", frame, self._dm_keep, keys.channel, self._publish_cmd, self._dm_ttl, 1, ""],
            )
        except _DOWN as exc:
            self._kick(exc, keys.dms)
            return False
        await self._free(res[2])
        return int(res[1]) > 0

    async def send_dms(self, frames: dict[str, bytes]) -> list[str]:
        """send_dm's script for every user in one pipeline per shard (not one round trip per
        follower: 10,000 live notices took seconds that way, docs/BENCHMARKS.md)."""
        missed: list[str] = []
        users: list[str] = []
        calls: list[Call] = []
        for uid, frame in frames.items():
            keys = rs.user_keys(uid)
            if not self._serving(keys.dms):
                missed.append(uid)
                continue
            args = ["f", frame, self._dm_keep, keys.channel, self._publish_cmd, self._dm_ttl, 1, ""]
            calls.append((keys.dms, ("EVALSHA", self._dm_script.sha, 1, keys.dms, *args)))
            users.append(uid)
        if not calls:
            return missed
        try:
            results = await self._shards.pipelined(calls)
        except _DOWN as exc:
            self._kick(exc, calls[0][0])
            return missed + users
        freed: list[bytes] = []
        for uid, res in zip(users, results, strict=True):
            if isinstance(res, Exception) or int(res[1]) <= 0:
                missed.append(uid)
            else:
                freed.extend(res[2])
        await self._free(freed)
        return missed

    async def store_dm(self, user_id: str, dm: Event, send: str | None = None) -> DmReceipt:
        """Store and publish in one script, then WAIT on the same connection (when replicas are
        required). The answer is always the truth: refused (4501) only when nothing was stored,
        `maybe_stored` when the call's answer was lost, `replicated=False` when stored on the
        primary alone (WAIT timed out): the DM is kept and maybe delivered, so it is acked.
        `send`: recorded by the same script on the recipient's slot (SEND_DM), so a send seen
        before returns its first receipt instead of storing a copy."""
        keys = rs.user_keys(user_id)
        if not self._serving(keys.dms):
            metrics.broker_dm_refused.labels(shard=self._shard_label(keys.dms), reason="unreachable").inc()
            raise BrokerUnavailable("the recipient's Redis shard is unreachable: not stored")
        wait = self._link._wait_replicas
        degraded = False
        if wait:
            shard = self._shards.name_of(keys.dms)
            if self._link.replicas_short(shard):  # a primary without its replica
                if not self._link._wait_degrade:  # store nothing: 4501
                    self._link.refused_for_replicas(shard)
                    raise BrokerUnavailable("the DM's Redis shard has no replica: not stored")
                degraded, wait = True, 0  # opt-in: the primary's AOF alone, said in the ack
        quota = await self._take_quota(str(dm.get("from", "")))
        live_only = quota is None  # the sender is at its quota: delivered live or refused 4502
        body = rs.open_map(dm, "id")
        mode = 2 if live_only else 0
        args = ["b", body, self._dm_keep, keys.channel, self._publish_cmd, self._dm_ttl, mode, quota or ""]
        script_keys = [keys.dms] if send is None else [keys.dms, rs.dm_cid_key(user_id, send)]
        args += [SEND_RECORD_TTL, dm.get("ts", 0)]
        call = ("EVALSHA", self._dm_script.sha, len(script_keys), *script_keys, *args)
        calls: list[Call] = [(keys.dms, call)]
        if wait and not live_only:  # same pipeline, same connection: WAIT covers this very write
            calls.append((keys.dms, ("WAIT", wait, self._link._wait_timeout_ms)))
        try:
            results = await self._shards.pipelined(calls)
        except _DOWN as exc:  # sent, answer lost: the script may have run (its quota token stays)
            self._kick(exc, keys.dms)
            raise BrokerUnavailable(str(exc), maybe_stored=True) from exc
        res = results[0]
        if isinstance(res, Exception):  # refused before running (MOVED, CLUSTERDOWN, OOM): not stored
            self._kick(res, keys.dms)
            await self._free([quota] if quota else [])
            raise BrokerUnavailable(str(res)) from res
        await self._free(res[2])  # the DMs the recipient's cap pushed out (or a repeat's token)
        if len(res) > 3:  # this send was stored before (a retry): its first receipt
            return DmReceipt(res[0].decode(), int(res[1]) > 0, ts=int(res[3]))
        if live_only:
            if int(res[1]) == 0:  # nobody listens: nothing was kept or sent
                raise sender_quota_full(self._dm_per_sender)
            return DmReceipt(res[0].decode(), True)  # live, not kept: no durability promise
        receipt = DmReceipt(res[0].decode(), int(res[1]) > 0, replicated=not degraded)
        if wait:
            acked = results[1]
            if isinstance(acked, Exception) or int(acked) < wait:
                # stored (and maybe delivered) on the primary only: say so, never 4501
                metrics.broker_dm_unreplicated.inc()
                self._link.replicas_seen(shard, 0 if isinstance(acked, Exception) else int(acked))
                return DmReceipt(receipt.id, receipt.delivered, replicated=False)
        return receipt

    async def ack_dm(self, user_id: str, dm_id: str) -> None:
        keys = rs.user_keys(user_id)
        if not self._serving(keys.dms):
            raise BrokerUnavailable("redis is unreachable")
        ms, n = dm_id_key(dm_id)
        call = ("EVALSHA", self._ack_script.sha, 1, keys.dms, f"{ms}-{n}", f"{ms}-{n + 1}")
        try:  # drop every DM up to and including dm_id
            (res,) = await self._shards.pipelined([(keys.dms, call)])
        except _DOWN as exc:
            self._kick(exc, keys.dms)
            raise BrokerUnavailable(str(exc)) from exc
        if isinstance(res, ResponseError):
            return  # an id Redis cannot represent: nothing to drop
        if isinstance(res, Exception):
            self._kick(res, keys.dms)
            raise BrokerUnavailable(str(res)) from res
        await self._free(res)

    async def _take_quota(self, sender: str) -> str | None:
        """A place in the sender's quota (`<sender>|<token>`, stored with its DM), None when it
        is full, '' when not counted (no sender, or its shard is unreachable: fail open)."""
        if not sender:
            return ""
        key = rs.user_keys(sender).dm_quota
        if not self._serving(key):
            return ""
        token = secrets.token_hex(8)
        call = ("EVALSHA", self._quota_script.sha, 1, key, self._dm_per_sender, token, self._dm_ttl * 1000)
        try:
            (res,) = await self._shards.pipelined([(key, call)])
        except _DOWN as exc:
            self._kick(exc, key)
            return ""
        if isinstance(res, Exception):
            return ""
        return f"{sender}|{token}" if int(res) else None

    async def _free(self, quotas: list[bytes] | list[str]) -> None:
        """Remove these tokens from their senders' quotas (best effort: else they expire)."""
        if not quotas:
            return
        by_key: dict[str, list[str]] = {}
        for raw in quotas:
            value = raw.decode() if isinstance(raw, bytes) else raw
            sender, _, token = value.partition("|")
            with contextlib.suppress(ValueError):  # not a user id: not ours to free
                by_key.setdefault(rs.user_keys(sender).dm_quota, []).append(token)
        calls: list[Call] = [(key, ("ZREM", key, *tokens)) for key, tokens in by_key.items()]
        try:
            await self._shards.pipelined(calls)
        except _DOWN as exc:
            log.debug("DM quota tokens not freed (they expire with their DMs): %s", exc)

    def _shard_label(self, key: str) -> str:
        try:
            return self._shards.name_of(key)
        except ConnectionError:
            return "unknown"

    def _backlog(self, user: _UserSub, entries: list[Any]) -> list[bytes]:
        frames = []
        for raw_id, fields in entries:
            dm_id = raw_id.decode()
            key = dm_id_key(dm_id)
            if user.last is not None and key <= user.last:
                continue
            frame = _stored_frame(dm_id, fields)
            user.last = key
            if frame is not None:
                frames.append(frame)
        if user.last is None:
            user.last = (0, 0)
        return frames

    def _flush_user(self, user_id: str, user: _UserSub) -> None:
        pending, user.pending = user.pending or [], None
        for dm_id, frame in pending:
            self._deliver_user(user_id, user, dm_id, frame)

    async def _catch_up(self, user_id: str, user: _UserSub) -> None:
        """After a reconnect: deliver the DMs stored while this node was not listening."""
        keys = rs.user_keys(user_id)
        try:
            entries = await self._redis.xrange(keys.dms, "-", "+", count=self._dm_keep)
        except _DOWN as exc:
            self._kick(exc, keys.dms)
            user.pending = None
            return
        if self._users.get(user_id) is not user:
            return
        for frame in self._backlog(user, entries):
            user.handler(user_id, frame)
        self._flush_user(user_id, user)

    def _on_user_message(self, user_id: str, data: bytes) -> None:
        user = self._users.get(user_id)
        if user is None:
            return
        try:
            dm_id, prev, frame = _parse_user_message(data)
        except ValueError as exc:
            metrics.broker_bad_messages.inc()
            log.warning("dropped an undecodable DM message for %s: %s", user_id, exc)
            return
        if user.pending is not None:
            user.pending.append((dm_id, frame))
        elif prev and user.last is not None and dm_id_key(prev) > user.last:
            # A DM kept before this one never reached this node: a pub/sub message lost on the
            # way (pub/sub promises nothing across a reconnect or a failover). Read what was
            # missed first; this one waits behind it.
            log.info("DMs for %s published while this node was not listening: catching up", user_id)
            user.pending = [(dm_id, frame)]
            self._spawn(self._catch_up(user_id, user))
        else:
            self._deliver_user(user_id, user, dm_id, frame)

    def _deliver_user(self, user_id: str, user: _UserSub, dm_id: str, frame: bytes) -> None:
        if dm_id:  # stored DMs: at most once per node, in id order
            key = dm_id_key(dm_id)
            if user.last is not None and key <= user.last:
                return
            user.last = key
        user.handler(user_id, frame)


def _fields(raw: Any) -> dict[bytes, bytes]:
    """A stream entry's fields as a dict (RESP3 may answer a map or a flat array)."""
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True))


def _stored_frame(dm_id: str, fields: dict[bytes, bytes]) -> bytes | None:
    if b"b" in fields:
        return rs.close_with(fields[b"b"], dm_id)
    return fields.get(b"f")


def _parse_user_message(data: bytes) -> tuple[str, str, bytes]:
    """`b<id>,<prev>|<body>` (a stored DM, and the newest kept before it), `f<id>,<prev>|<frame>`
    (a frame kept as is) or `f|<frame>` (a frame delivered live only): (id, prev, frame)."""
    head, sep, payload = data.partition(b"|")
    if not sep or head[:1] not in (b"b", b"f"):
        raise ValueError("bad envelope")
    dm_id, _, prev = head[1:].decode("ascii", "replace").partition(",")
    if prev and not protocol.valid_dm_id(prev):
        raise ValueError("bad previous DM id")
    if head[:1] == b"b":
        if not protocol.valid_dm_id(dm_id):
            raise ValueError("bad DM id")
        frame = rs.close_with(payload, dm_id)
    else:
        frame = payload
    try:
        obj = msgpack.unpackb(frame, raw=False)
    except Exception as exc:
        raise ValueError(f"undecodable frame: {type(exc).__name__}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        raise ValueError("not a frame")
    return dm_id, prev, frame
