"""Redis sanctions and limits: bans/mutes/kicks, DM blocks, join nonces, rate-limit usage.

Shared by every node: a sanction is SET with its lifetime (and indexed per room) and PUBLISHed
on one channel every node follows, so a ban on one node applies on every node at once. A node
loads an open room's sanctions once (`follow_room`) and keeps them current from that channel,
so a join into an open room checks them with no round trip.
"""

from __future__ import annotations

import logging
import time

from server import metrics
from server.broker import redis_scripts as rs
from server.broker.base import BrokerUnavailable, Sanction, SanctionHandler, Sanctions
from server.broker.redis_link import DOWN as _DOWN
from server.broker.redis_link import Link, RedisPart
from server.wire import protocol

log = logging.getLogger("liveroom.broker.redis")

USAGE_TTL_MS = 30_000  # a user's cross-node rate-limit counter outlives a few exchanges
KNOWN_MAX = 10_000  # sanctions remembered for outages; nonces claimed locally during one
ROOM_HELD_MAX = 10_000  # a room with more sanctions is read per join (one MGET) instead of held


class RedisSanctions(RedisPart, Sanctions):
    multi_node = True

    def __init__(self, link: Link) -> None:
        super().__init__(link)
        # every node follows every sanction (see _on_sanction_message)
        self._targets[rs.SANCTIONS_CHANNEL.encode()] = ("s", "")
        self._watchers: list[SanctionHandler] = []
        self._known: dict[tuple[str, str, str], Sanction] = {}  # seen on the channel: outage fallback
        self._outage_nonces: dict[str, float] = {}  # claimed here while Redis was unreachable
        self._usage_seen: dict[str, float] = {}  # usage key -> cluster total at the last exchange
        self._fallback_logged = 0.0
        # followed rooms: their active sanctions, held; or, while loading, what came in meanwhile
        self._held: dict[str, dict[tuple[str, str], Sanction]] = {}
        self._loading: dict[str, list[Sanction]] = {}
        self._load_script = self._redis.register_script(rs.LOAD_SANCTIONS)

    # Outages: writes (put_sanction, set_dm_block) raise BrokerUnavailable, so a moderator is
    # never told something applies that was not stored. Reads fail open: a join is not refused
    # because Redis is down (it is counted and logged instead), using what this node knows.

    def watch_sanctions(self, handler: SanctionHandler) -> None:
        self._watchers.append(handler)

    async def put_sanction(self, sanction: Sanction) -> None:
        """SET with the sanction's remaining lifetime (PX), then PUBLISH to every node."""
        if not self._connected:
            raise BrokerUnavailable("redis is unreachable")
        key = rs.sanction_keys(sanction.room, sanction.uid)[rs.SANCTION_KINDS.index(sanction.kind)]
        index, _ = rs.sanction_index(sanction.room)
        member = f"{sanction.uid}:{sanction.kind}"
        payload = rs.pack_sanction(sanction, self.node_id)
        ttl = None if sanction.until is None else sanction.until - protocol.now_ms()
        pipe = self._redis.pipeline(transaction=False)  # the key and its index share the room's slot
        if sanction.lifted or (ttl is not None and ttl <= 0):
            pipe.delete(key)
            pipe.zrem(index, member)
        else:
            pipe.set(key, payload, px=ttl)
            pipe.zadd(index, {member: float("inf") if sanction.until is None else sanction.until})
        try:
            await pipe.execute()
            await getattr(self._redis, self._publish_cmd)(rs.SANCTIONS_CHANNEL, payload)
        except _DOWN as exc:
            self._kick(exc)
            raise BrokerUnavailable(str(exc)) from exc
        self._apply_sanction(sanction)  # this node's own echo is skipped: apply it now

    async def sanctions(self, room_id: str, user_id: str) -> list[Sanction]:
        """From memory for a followed room; else one MGET (the three kinds share the room's
        slot). Fails open on an outage."""
        try:
            keys = rs.sanction_keys(room_id, user_id)
        except ValueError:
            return []
        now = protocol.now_ms()
        held = self._held.get(room_id) if self._connected else None
        if held is not None:
            found = (held.get((user_id, kind)) for kind in rs.SANCTION_KINDS)
            return [s for s in found if s is not None and s.active(now)]
        if self._connected:
            try:
                stored = await self._redis.mget(keys)
            except _DOWN as exc:
                self._kick(exc)
            else:
                found = []
                for raw in stored:
                    if raw is None:
                        continue
                    try:
                        sanction, _ = rs.unpack_sanction(raw)
                    except ValueError:
                        metrics.broker_bad_messages.inc()
                        continue
                    if sanction.active(now):
                        found.append(sanction)
                return found
        self._fallback("sanctions")
        known = (self._known.get((room_id, user_id, kind)) for kind in rs.SANCTION_KINDS)
        return [s for s in known if s is not None and s.active(now)]

    # -- rooms held in memory ----------------------------------------------------------------

    async def follow_room(self, room_id: str) -> None:
        """Load the room's active sanctions (one script call); the channel keeps them current."""
        try:
            rs.sanction_index(room_id)
        except ValueError:
            return
        self._loading.setdefault(room_id, [])
        if self._connected:
            await self._load_room(room_id)

    def unfollow_room(self, room_id: str) -> None:
        self._held.pop(room_id, None)
        self._loading.pop(room_id, None)

    def _reload_rooms(self) -> list[str]:
        """Before re-subscribing after a reconnect: nothing held can be trusted (messages were
        missed), so every followed room loads again, buffering what comes in meanwhile."""
        rooms = [*self._held, *self._loading]
        self._held.clear()
        self._loading = {room_id: [] for room_id in rooms}
        return rooms

    async def _load_room(self, room_id: str) -> None:
        index, prefix = rs.sanction_index(room_id)
        try:
            count, stored = await self._load_script(
                keys=[index], args=[protocol.now_ms(), prefix, ROOM_HELD_MAX]
            )
        except _DOWN as exc:
            self._kick(exc)
            return
        pending = self._loading.pop(room_id, None)
        if pending is None or int(count) > ROOM_HELD_MAX:
            return  # unfollowed meanwhile, or too many to hold: read per join
        held: dict[tuple[str, str], Sanction] = {}
        for raw in stored:
            try:
                sanction, _ = rs.unpack_sanction(raw)
            except ValueError:
                metrics.broker_bad_messages.inc()
                continue
            held[sanction.uid, sanction.kind] = sanction
        for sanction in pending:  # published while loading, in order: the newest state wins
            self._hold(held, sanction)
        self._held[room_id] = held

    def _hold(self, held: dict[tuple[str, str], Sanction], sanction: Sanction) -> None:
        if sanction.lifted:
            held.pop((sanction.uid, sanction.kind), None)
        else:
            held[sanction.uid, sanction.kind] = sanction
        if len(held) > ROOM_HELD_MAX:  # forget the expired; still too many: read per join
            now = protocol.now_ms()
            for key in [k for k, s in held.items() if not s.active(now)]:
                del held[key]
            if len(held) > ROOM_HELD_MAX:
                self._held.pop(sanction.room, None)

    def _on_sanction_message(self, data: bytes) -> None:
        try:
            sanction, origin = rs.unpack_sanction(data)
        except ValueError as exc:
            metrics.broker_bad_messages.inc()
            log.warning("dropped an undecodable sanction: %s", exc)
            return
        if origin != self.node_id:  # a node's own puts were applied when they were stored
            self._apply_sanction(sanction)

    def _apply_sanction(self, sanction: Sanction) -> None:
        held = self._held.get(sanction.room)
        if held is not None:
            self._hold(held, sanction)
        elif sanction.room in self._loading:
            self._loading[sanction.room].append(sanction)
        key = (sanction.room, sanction.uid, sanction.kind)
        self._known.pop(key, None)
        if not sanction.lifted:
            self._known[key] = sanction
            if len(self._known) > KNOWN_MAX:  # forget the expired, then the oldest
                now = protocol.now_ms()
                for old in [k for k, s in self._known.items() if not s.active(now)]:
                    del self._known[old]
                while len(self._known) > KNOWN_MAX:
                    del self._known[next(iter(self._known))]
        for handler in list(self._watchers):
            try:
                handler(sanction)
            except Exception:
                log.exception("sanction watcher failed")

    async def set_dm_block(self, user_id: str, other: str, blocked: bool) -> None:
        if not self._connected:
            raise BrokerUnavailable("redis is unreachable")
        key = rs.user_keys(user_id).blocks
        try:
            await (self._redis.sadd(key, other) if blocked else self._redis.srem(key, other))
        except _DOWN as exc:
            self._kick(exc)
            raise BrokerUnavailable(str(exc)) from exc

    async def dm_blocked(self, recipient: str, sender: str) -> bool:
        """One SISMEMBER. Fails open: while Redis is down store_dm refuses the DM anyway."""
        if self._connected:
            try:
                return bool(await self._redis.sismember(rs.user_keys(recipient).blocks, sender))
            except _DOWN as exc:
                self._kick(exc)
        self._fallback("dm_blocked")
        return False

    async def claim_nonce(self, nonce: str, ttl: float) -> bool:
        """SET NX PX. Fails open during an outage, but still refuses a replay on this node."""
        now = time.monotonic()
        until = self._outage_nonces.get(nonce)
        if until is not None and until > now:
            return False
        if self._connected:
            try:
                key = rs.nonce_key(nonce)
                return bool(await self._redis.set(key, self.node_id, nx=True, px=max(1, int(ttl * 1000))))
            except _DOWN as exc:
                self._kick(exc)
        self._fallback("nonce")
        nonces = self._outage_nonces
        if len(nonces) >= KNOWN_MAX:
            for key in [k for k, deadline in nonces.items() if deadline <= now]:
                del nonces[key]
            if len(nonces) >= KNOWN_MAX:
                del nonces[next(iter(nonces))]
        nonces[nonce] = now + ttl
        return True

    async def exchange_usage(self, usage: dict[str, float]) -> dict[str, float]:
        """One pipeline per call, one or two commands per key, whatever the message rate.

        Each (action, user) has one cumulative counter over every node. A key this node spent
        on gets INCRBYFLOAT (which returns the new total) and a fresh TTL; a key it only
        watches gets GET. The others' spending is the growth of the total since this node's
        last exchange minus its own share. A key seen for the first time only sets that
        baseline, and a counter that expired (or a Redis that restarted) reads as no spending.
        """
        if not usage:
            self._usage_seen = {}
            return {}
        if not self._connected:
            self._fallback("usage")  # local buckets still hold; this period's spending is not shared
            return {}
        pipe = self._redis.pipeline(transaction=False)
        asked: list[tuple[str, float]] = []
        for key, spent in usage.items():
            action, _, uid = key.partition("|")
            try:
                counter = rs.usage_key(action, uid)
            except ValueError:
                continue
            asked.append((key, spent))
            if spent > 0:
                pipe.incrbyfloat(counter, spent)
                pipe.pexpire(counter, USAGE_TTL_MS)
            else:
                pipe.get(counter)
        try:
            results = iter(await pipe.execute())
        except _DOWN as exc:
            self._kick(exc)
            self._fallback("usage")
            return {}
        seen: dict[str, float] = {}
        remote: dict[str, float] = {}
        for key, spent in asked:
            total = float(next(results) or 0.0)
            if spent > 0:
                next(results)  # PEXPIRE's answer
            last = self._usage_seen.get(key)
            if last is not None and total - spent - last > 1e-6:
                remote[key] = total - spent - last
            seen[key] = total
        self._usage_seen = seen  # keys the guard stopped asking about are forgotten
        metrics.broker_usage_exchanges.inc()
        return remote

    def _fallback(self, op: str) -> None:
        """An abuse check answered without Redis: counted always, logged every 10 s at most."""
        metrics.broker_abuse_fallbacks.labels(op=op).inc()
        now = time.monotonic()
        if now - self._fallback_logged > 10:
            self._fallback_logged = now
            log.warning("redis unreachable: abuse check %r answered by this node alone (fail open)", op)
