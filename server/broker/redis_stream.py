"""The Redis room stream: sequencing script per tick, batches over pub/sub, history, resync.

A node subscribes to a room's channel while it has local viewers. Each tick it runs one
script per room (redis_scripts.PUBLISH, server/room/sequencing.py's rule in Lua) that assigns the
sequence numbers, appends to the room's capped history stream and publishes the batch
frame; every subscribed node decodes it once (for Room.apply) and writes the same bytes to
its viewers. A batch that does not follow the last one seen (a gap, a new epoch) makes the
node re-read the room from history instead of guessing. While Redis is unreachable the node
numbers its rooms alone under a local epoch every batch names; on reconnect rooms that never
went local (or numbered nothing while local) and whose history covers the gap continue, the
others are reset.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from server import metrics
from server.broker import redis_scripts as rs
from server.broker.base import BatchHandler, Event, Publish, RoomState, RoomStream
from server.broker.idempotency import DanmakuCids
from server.broker.redis_link import DOWN as _DOWN
from server.broker.redis_link import Link, RedisPart, named
from server.broker.shards import Call
from server.broker.unencodable import encodable_only, sequence_and_encode
from server.logs import Throttle
from server.room.sequencing import NEVER, StreamState, Tick
from server.room.state import Room
from server.wire import protocol

log = logging.getLogger("liveroom.broker.redis")
# a room Redis failed is numbered here; say why, but not on every tick of an outage
_ALONE = Throttle(rate=1.0, burst=10.0)

Batch = tuple[str, bytes, list[Event]]  # (epoch, frame, events)
# On a cluster, how long a tick waits for a shard's pipeline before going on without it (one
# default tick): a primary that stopped answering holds its own rooms, never the others'.
SHARD_HOLD = 0.05
KEPT_MAX = 10_000  # closed rooms' ticks kept for Redis at most (oldest dropped, counted)


@dataclass
class _RoomSub:
    handler: BatchHandler
    view: Room[None]
    pending: list[Batch] | None = None  # batches held while the room is (re)loaded
    local: bool = False  # numbered batches alone during an outage: reset on reconnect
    local_events: bool = False  # and numbered at least one event: the Redis epoch is retired
    stream: StreamState | None = None  # the local numbering's state while `local`
    redis_seen: tuple[str, int] | None = None  # while `local`: the last Redis (epoch, seq) delivered
    local_count: int = 0  # last local online count the node reported
    likes_owed: int = 0  # likes counted locally, not yet added in Redis
    joined_owed: list[str] = field(default_factory=list)
    beat_due: float | None = None  # monotonic time of the room's next presence heartbeat
    held: Publish | None = None  # ticks kept back while the room's shard has a pipeline unanswered
    closed: bool = False  # a stand-in for a room this node does not follow (a PK event, a kept tick)


class RedisRoomStream(RedisPart, RoomStream):
    def __init__(
        self, link: Link, *, history_size: int, recent_size: int, history_ttl: int, presence_ttl: float
    ) -> None:
        super().__init__(link)
        self._history_size = history_size
        self._recent_size = recent_size
        self._history_ttl = history_ttl
        self._meta_ttl = max(history_ttl * 2, 86400)  # epoch and top seq outlive the history
        self._presence_ttl = presence_ttl
        self._publish_script = self._redis.register_script(rs.PUBLISH)
        self._load_script = self._redis.register_script(rs.LOAD)
        self._rooms: dict[str, _RoomSub] = {}
        self._cids = DanmakuCids()  # while numbering alone: retries caught on this node
        self._ping_due = 0.0  # heartbeat with no room to report: when to PING instead
        self._busy: dict[str, asyncio.Task[None]] = {}  # shard -> its tick pipeline, unanswered
        self._held: set[str] = set()  # rooms with a tick held back (_RoomSub.held)
        self._beating: dict[str, asyncio.Task[None]] = {}  # shard -> its heartbeat, unanswered
        # rooms closed on this node with a tick not yet in Redis (held back for a busy shard, or
        # its pipeline failed; likes and joiners owed): sent once their shard serves (_kept_due)
        self._kept: dict[str, Publish] = {}
        # rooms closed while numbered alone: the Redis epoch to retire once their shard serves,
        # so the other nodes' viewers are told (reset) instead of silently missing those events
        self._retire: dict[str, str] = {}
        self._retiring: set[str] = set()

    async def subscribe(self, room_id: str, handler: BatchHandler) -> RoomState:
        keys = rs.room_keys(room_id)
        sub = _RoomSub(handler=handler, view=self._new_view(room_id), pending=[])
        self._rooms[room_id] = sub
        if (kept := self._kept.pop(room_id, None)) is not None:  # sent first, in order
            sub.held = kept
            self._held.add(room_id)
        retire = self._retire.pop(room_id, "")
        channel = keys.channel.encode()
        self._targets[channel] = ("r", room_id)
        if self._serving(channel):
            try:
                view = await self._listen_and_load(room_id, channel, retire)
            except _DOWN as exc:
                _alone(room_id, "could not be read", exc)
                self._kick(exc, channel)
            else:
                sub.view = view
                # batches that came in while loading: after the node has registered the room
                asyncio.get_running_loop().call_soon(self._flush, room_id, sub)
                return _state_of(view)
        # Redis is down: serve the room alone; it is re-read (and reset) on reconnect
        sub.pending = None
        self._go_local(sub, previous=0)
        if retire:  # still owed: the reconnect's resync retires it
            sub.local_events = True
            sub.redis_seen = (retire, 0) if retire != "*" else None
        return _state_of(sub.view)

    async def _listen_and_load(self, room_id: str, channel: bytes, retire: str = "") -> Room[None]:
        """Subscribe and read the room in one round trip: the script runs on the subscribing
        connection right after the subscription, so no batch falls between the two. EVAL with
        the body, not EVALSHA: a NOSCRIPT there would end the pub/sub session (redis_resp3).
        `retire`: an epoch this node left behind numbering alone (see _retire)."""
        keys = rs.room_keys(room_id)
        script_keys, args = self._load_args(keys, None, True, None, retire)
        res = await self._listen([channel], read=("EVAL", rs.LOAD, len(script_keys), *script_keys, *args))
        return self._loaded(room_id, res, None, True)[0]

    async def unsubscribe(self, room_id: str) -> None:
        sub = self._rooms.pop(room_id, None)
        if sub is None:
            return
        self._held.discard(room_id)
        if sub.held is not None or sub.likes_owed or sub.joined_owed:
            held = sub.held or Publish(room_id, [], 0, None, protocol.now_ms())
            self._keep(
                replace(
                    held,
                    likes_delta=held.likes_delta + sub.likes_owed,
                    joined=[*sub.joined_owed, *held.joined],
                )
            )
        if sub.local and sub.local_events:
            self._retire[room_id] = sub.redis_seen[0] if sub.redis_seen is not None else "*"
        await self._unlisten(rs.room_keys(room_id).channel.encode())

    def _keep(self, p: Publish, first: bool = False) -> None:
        """A closed room's tick that is not in Redis yet: sent once its shard serves (`first`:
        an older one, ahead of what is kept)."""
        known = self._kept.get(p.room_id)
        self._kept[p.room_id] = p if known is None else _merged(p, known) if first else _merged(known, p)
        if len(self._kept) > KEPT_MAX:  # bounded: the oldest goes, loudly
            lost = self._kept.pop(next(iter(self._kept)))
            metrics.broker_kept_dropped.inc(len(lost.events))
            log.warning(
                "dropped %d events of closed room %s: too many rooms waiting for Redis",
                len(lost.events),
                lost.room_id,
            )

    def _kept_due(self) -> list[Publish]:
        """Closed rooms' kept ticks whose shard serves and answered its last pipeline; and, for
        rooms closed while numbered alone, their old epoch retired (_retire_epoch)."""
        due = []
        for room_id in list(self._kept):
            if self._room_up(room_id) and not self._shard_busy(room_id):
                due.append(self._kept.pop(room_id))
        for room_id, epoch in list(self._retire.items()):
            if room_id not in self._retiring and self._room_up(room_id):
                self._retiring.add(room_id)
                self._spawn(self._retire_epoch(room_id, epoch))
        return due

    async def _retire_epoch(self, room_id: str, epoch: str) -> None:
        """Retire the Redis epoch a room closed here left behind while numbering alone: every
        node holding the room resets it (its viewers told), as _resync does for an open room."""
        meta = rs.room_keys(room_id).meta
        try:
            if self._retire.get(room_id) == epoch:
                await self._load(room_id, since=None, want_state=False, retire=epoch)
                if self._retire.get(room_id) == epoch:
                    del self._retire[room_id]
        except _DOWN as exc:
            self._kick(exc, meta)  # kept: tried again once the shard serves
        finally:
            self._retiring.discard(room_id)

    async def publish(self, tick: Publish) -> None:
        await self.publish_many([tick])

    async def publish_many(self, publishes: Sequence[Publish]) -> None:
        """A whole tick in one pipeline per shard, all shards at once: no room waits on another.

        Rooms that cannot reach Redis (down, or a room sequencing alone since an outage) are
        numbered here instead, and their likes and joins stay owed. On a cluster each shard's
        pipeline is answered on its own: the tick waits SHARD_HOLD at most, a slower shard's
        answer is handled when it comes, and until then its rooms' ticks are held back (merged
        into the next), so a room's batches keep their order and no shard waits on another.
        """
        staged: list[tuple[Publish, _RoomSub, int, int, list[str]]] = []
        if self._kept or self._retire:  # closed rooms' kept ticks go first, in order
            publishes = [*self._kept_due(), *publishes]
        if self._held:  # rooms held back with nothing new this tick: their turn once answered
            named = {p.room_id for p in publishes}
            publishes = [
                *publishes,
                *(Publish(r, [], 0, None, protocol.now_ms()) for r in self._held - named if r in self._rooms),
            ]
            self._held.clear()
        for p in publishes:
            sub = self._rooms.get(p.room_id)
            if sub is None and p.room_id in self._kept:  # after the kept one, in order
                self._keep(p)
                continue
            if sub is None:  # a room the node does not follow (a PK event, a kept tick)
                sub = _RoomSub(handler=lambda *_: None, view=self._new_view(p.room_id), closed=True)
            if sub.held is not None:
                p, sub.held = _merged(sub.held, p), None
            if self._busy and p.room_id in self._rooms and self._shard_busy(p.room_id):
                sub.held = p  # after the shard's answer (or its loss): in order, then
                self._held.add(p.room_id)
                continue
            previous = sub.local_count
            if p.local_online is not None:
                sub.local_count = p.local_online
            likes, sub.likes_owed = sub.likes_owed + p.likes_delta, 0
            uids, sub.joined_owed = [*sub.joined_owed, *p.joined], []
            staged.append((p, sub, previous, likes, uids))
        remote = [
            i for i, (p, sub, *_rest) in enumerate(staged) if not sub.local and self._room_up(p.room_id)
        ]
        calls: list[Call] = []
        for i in remote:
            p, sub, _, likes, uids = staged[i]
            args = (likes, p.local_online, p.now, uids, _seen(sub))
            try:
                calls.append(self._publish_call(p.room_id, p.events, *args))
            except protocol.ENCODE_ERRORS:  # an event no frame can carry: dropped alone
                kept = encodable_only(p.room_id, p.events)
                staged[i] = (replace(p, events=kept), sub, staged[i][2], likes, uids)
                calls.append(self._publish_call(p.room_id, kept, *args))
        remote_set = set(remote)
        for i, item in enumerate(staged):  # rooms without Redis now: numbered here, at once
            if i not in remote_set:
                self._unsent(item)
        if not remote:
            return
        metrics.broker_tick_pipelines.inc()
        if not self._shards.cluster or len(self._shards.names) < 2:  # one Redis: one pipeline
            await self._answered([staged[i] for i in remote], calls)
            return
        groups: dict[str, list[int]] = {}
        for j, call in enumerate(calls):
            groups.setdefault(self._shards.name_of(call[0]), []).append(j)
        tasks = []
        for shard, idx in groups.items():
            task = asyncio.get_running_loop().create_task(
                self._answered([staged[remote[j]] for j in idx], [calls[j] for j in idx])
            )
            self._busy[shard] = task
            task.add_done_callback(lambda done, shard=shard: self._shard_answered(shard, done))
            tasks.append(task)
        await asyncio.wait(tasks, timeout=SHARD_HOLD)

    async def _answered(
        self, staged: list[tuple[Publish, _RoomSub, int, int, list[str]]], calls: list[Call]
    ) -> None:
        """Send the calls (one pipeline per shard) and handle the answers: a room whose call
        failed loses its shard (only that one, on a cluster) and is numbered here instead."""
        names = [self._shards.name_of(c[0]) for c in calls]  # where they go now, not after a failover
        try:
            results: list[Any] = await self._pipelined(calls)
        except _DOWN as exc:
            if len(set(names)) == 1:
                self._lose_shard(names[0], exc)
            else:
                self._kick(exc)
            results = [exc] * len(calls)
        closed = []
        for item, name, result in zip(staged, names, results, strict=True):
            if isinstance(result, Exception):
                _alone(item[0].room_id, f"its tick did not reach shard {name}", result)
                self._lose_shard(name, result)
                if self._is_open(item):
                    self._unsent(item)
                else:
                    closed.append(item)
        for item in reversed(closed):  # older than any tick kept since: ahead of them, in order
            self._unsent(item, first=True)

    def _unsent(self, item: tuple[Publish, _RoomSub, int, int, list[str]], first: bool = False) -> None:
        """A room's tick that did not reach Redis: numbered here, its likes and joins owed. A
        room this node no longer follows has no viewer here: its tick is kept for Redis
        (`first`: ahead of what is kept already)."""
        p, sub, previous, likes, uids = item
        if not self._is_open(item):
            self._keep(replace(p, likes_delta=likes, joined=uids), first)
            return
        sub.likes_owed += likes
        sub.joined_owed = uids[-10_000:]
        self._publish_locally(p.room_id, sub, p.events, p.likes_delta, p.local_online, previous, p.now)

    def _is_open(self, item: tuple[Publish, _RoomSub, int, int, list[str]]) -> bool:
        """The tick's room is still followed here (not closed since it was staged)."""
        return not item[1].closed and self._rooms.get(item[0].room_id) is item[1]

    def _shard_busy(self, room_id: str) -> bool:
        task = self._busy.get(self._shards.name_of(rs.room_keys(room_id).meta))
        return task is not None and not task.done()

    def _shard_answered(self, shard: str, task: asyncio.Task[None]) -> None:
        if self._busy.get(shard) is task:
            del self._busy[shard]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("a tick's pipeline failed", exc_info=exc)

    def _publish_call(
        self,
        room_id: str,
        events: list[Event],
        likes: int,
        local_online: int | None,
        now: int,
        joined: Sequence[str],
        seen: tuple[str, int] | None,
    ) -> Call:
        """The EVALSHA of one room's publish, routed by the room's hash tag."""
        keys = rs.room_keys(room_id)
        args = rs.publish_args(
            room_id,
            keys,
            new_epoch=_new_epoch(),
            history_size=self._history_size,
            history_ttl=self._history_ttl,
            meta_ttl=self._meta_ttl,
            publish_cmd=self._publish_cmd,
            node=self.node_id,
            local_online=local_online,
            presence_ttl_ms=int(self._presence_ttl * 1000),
            likes=likes,
            recent_size=self._recent_size,
            now=now,
            events=events,
            joined=joined,
            seen=seen,
        )
        script_keys = keys.script_keys
        return keys.meta, ("EVALSHA", self._publish_script.sha, len(script_keys), *script_keys, *args)

    def _publish_locally(
        self,
        room_id: str,
        sub: _RoomSub,
        events: list[Event],
        likes_delta: int,
        local_online: int | None,
        previous: int,
        now: int,
    ) -> None:
        """Redis is unreachable: number the batch here, by the same rule, so local viewers still
        get it. The numbers go on from the room's seq under a new epoch that every batch names:
        no client can take them for Redis' (see docs/PROTOCOL.md, `batch`)."""
        view = sub.view
        if sub.stream is None:
            self._go_local(sub, previous)
        events = self._cids.fresh(room_id, events)  # the publish script's cid claims, on this node
        tick = Tick(self.node_id, now, events, likes_delta, local_online, unique=view.unique)
        sequenced, stream, frame = sequence_and_encode(room_id, sub.stream, tick, view.epoch)
        sub.stream = stream
        if not sequenced:
            return
        view.apply(view.epoch, sequenced)
        sub.local_events = True
        metrics.broker_local_batches.inc()
        sub.handler(room_id, view.epoch, frame, sequenced)

    def _go_local(self, sub: _RoomSub, previous: int) -> None:
        """Start numbering a room alone: a new epoch, the counts as last seen from Redis."""
        view = sub.view
        if view.epoch:  # empty when the room was first opened during the outage
            sub.redis_seen = (view.epoch, view.seq)
        sub.local = True
        view.epoch = _local_epoch()
        others = max(0, view.online - previous)  # what the rest of the cluster last counted
        sub.stream = StreamState(
            epoch=view.epoch,
            seq=view.seq,
            likes=view.likes_total,
            online=view.online,
            unique=view.unique,
            presence={self.node_id: (previous, NEVER), "": (others, NEVER)},
        )

    async def history_since(self, room_id: str, epoch: str, seq: int) -> list[Event] | None:
        meta = rs.room_keys(room_id).meta
        if not self._serving(meta):
            return None
        try:
            view, missed, _ = await self._load(room_id, since=seq, want_state=False)
        except _DOWN as exc:
            self._kick(exc, meta)
            return None
        return missed if view.epoch == epoch else None

    async def _load(
        self,
        room_id: str,
        since: int | None,
        want_state: bool = True,
        seen: tuple[str, int] | None = None,
        retire: str = "",
    ) -> tuple[Room[None], list[Event] | None, str]:
        """The room's state (one round trip), with `since` the events after it or None, and
        `<retired>><epoch>` when the room's epoch came from retiring another (else '').

        `seen`: the newest (epoch, seq) this node delivered; a Redis behind it (restored from an
        older copy) starts the room over under a new epoch rather than number those seqs again.
        """
        keys = rs.room_keys(room_id)
        script_keys, args = self._load_args(keys, since, want_state, seen, retire)
        res = await self._load_script(keys=script_keys, args=args)
        return self._loaded(room_id, res, since, want_state)

    def _load_args(
        self,
        keys: rs.RoomKeys,
        since: int | None,
        want_state: bool,
        seen: tuple[str, int] | None,
        retire: str = "",
    ) -> tuple[list[str], list[Any]]:
        script_keys = [keys.meta, keys.hist, keys.recent, keys.sticky, keys.pres, keys.beat, keys.qa]
        args = [
            _new_epoch(),
            -1 if since is None else since,
            self._history_size,
            int(want_state),
            self._meta_ttl,
            "" if seen is None else seen[0],
            -1 if seen is None else seen[1],
            retire,
            keys.channel,
            self._publish_cmd,
        ]
        return script_keys, args

    def _loaded(
        self, room_id: str, res: list[Any], since: int | None, want_state: bool
    ) -> tuple[Room[None], list[Event] | None, str]:
        """The LOAD script's reply as a view of the room (and the events after `since`)."""
        epoch = res[0].decode()
        top = int(res[1])
        view = self._new_view(room_id)
        if want_state:
            sticky = sorted((_decode_event(raw) for raw in res[6]), key=lambda e: e["seq"])
            view.apply(epoch, sticky)
            view.recent.extend(_decode_event(raw) for raw in res[5])
            view.qa.extend(_decode_event(raw) for raw in res[8])
        view.epoch, view.seq = epoch, top
        view.likes_total, view.online, view.unique = int(res[2]), int(res[3]), int(res[4])
        missed = None if since is None else self._contiguous(since, top, res[7])
        retired = res[9].decode() if len(res) > 9 and res[9] else ""
        return view, missed, retired

    def _contiguous(self, since: int, top: int, entries: list[Any]) -> list[Event] | None:
        """Every event after `since` up to `top`, or None when some are no longer kept
        (trimmed by size, older than the history TTL) or `since` is not of this stream."""
        if since > top:
            return None
        try:
            # raw script reply: [id, [field, value]] per entry
            events = [_decode_event(fields[1]) for _, fields in entries]
        except (ValueError, IndexError):
            metrics.broker_bad_messages.inc()
            return None
        if len(events) != top - since or any(e["seq"] != since + 1 + i for i, e in enumerate(events)):
            return None
        if events and events[0].get("ts", 0) < protocol.now_ms() - self._history_ttl * 1000:
            return None
        return events

    def _room_up(self, room_id: str) -> bool:
        """The room's shard serves (the key is only built while some shard is lost)."""
        return self._connected and (not self._link._down or self._serving(rs.room_keys(room_id).meta))

    def _new_view(self, room_id: str) -> Room[None]:
        return Room(room_id, recent_size=self._recent_size)

    # -- room batches from Redis ---------------------------------------------------------

    def _on_room_message(self, room_id: str, data: bytes) -> None:
        sub = self._rooms.get(room_id)
        if sub is None:
            return
        try:
            batch = _parse_batch(room_id, data)
        except ValueError as exc:
            metrics.broker_bad_messages.inc()
            log.warning("dropped an undecodable batch for room %s: %s", room_id, exc)
            return
        if sub.pending is not None:
            sub.pending.append(batch)
        elif not self._accept(room_id, sub, batch):
            sub.pending = [batch]  # a gap or a new epoch: re-read the room, hold what follows
            self._spawn(self._resync(room_id, sub))

    def _accept(self, room_id: str, sub: _RoomSub, batch: Batch) -> bool:
        """Deliver a batch that follows the last one seen; False when the room must be re-read."""
        epoch, frame, events = batch
        if sub.local or epoch != sub.view.epoch:
            return False
        if not events:  # a retired epoch's notice (redis_scripts.LOAD) naming the one we have
            return True
        if events[-1]["seq"] <= sub.view.seq:
            return True  # already delivered (history replay overlapped the channel)
        if events[0]["seq"] != sub.view.seq + 1:
            return False
        sub.view.apply(epoch, events)
        sub.handler(room_id, epoch, frame, events)
        return True

    def _flush(self, room_id: str, sub: _RoomSub) -> None:
        """Deliver the batches held during a (re)load, in order, skipping those already seen."""
        pending, sub.pending = sub.pending or [], None
        for i, batch in enumerate(pending):
            if self._rooms.get(room_id) is not sub:
                return
            if not self._accept(room_id, sub, batch):
                sub.pending = pending[i:]
                self._spawn(self._resync(room_id, sub))
                return

    async def _resync(self, room_id: str, sub: _RoomSub) -> None:
        """Re-read a room after a gap or a reconnect: replay what was missed, or reset it."""
        if sub.pending is None:
            sub.pending = []
        # numbered alone but nothing numbered: no client saw the local epoch (the hub learns an
        # epoch from batches), so the room goes on from the Redis seq it left, like any gap
        quiet = sub.local and not sub.local_events and sub.redis_seen is not None
        try:
            since = None if sub.local else sub.view.seq
            if quiet and sub.redis_seen is not None:
                since = sub.redis_seen[1]
            retire = ""
            if sub.local and sub.local_events:  # others never saw them: retire the Redis epoch
                retire = sub.redis_seen[0] if sub.redis_seen is not None else "*"
            view, missed, retired = await self._load(room_id, since=since, seen=_seen(sub), retire=retire)
        except _DOWN as exc:
            self._kick(exc, rs.room_keys(room_id).meta)
            sub.pending = None  # re-read again once reconnected
            return
        if self._rooms.get(room_id) is not sub:
            return
        if (  # still nothing numbered alone, and Redis' stream is the one left: back on it
            quiet
            and sub.local
            and not sub.local_events
            and sub.redis_seen is not None
            and missed is not None
            and view.epoch == sub.redis_seen[0]
        ):
            sub.view.epoch, sub.local, sub.stream, sub.redis_seen = view.epoch, False, None, None
        if not sub.local and missed is not None and view.epoch == sub.view.epoch:
            metrics.broker_resyncs.labels(outcome="recovered").inc()
            if missed:
                sub.view.apply(view.epoch, missed)
                frame = protocol.batch_frame(room_id, missed, view.epoch)
                sub.handler(room_id, view.epoch, frame, missed)
        else:
            metrics.broker_resyncs.labels(outcome="reset").inc()
            if sub.local:
                why = f"numbered here alone under {sub.view.epoch}"
            elif view.epoch != sub.view.epoch:
                why = f"epoch was {sub.view.epoch}"
            else:
                why = f"its history no longer reaches seq {sub.view.seq} (at {view.seq})"
            log.info("room %s restarted from redis (epoch %s: %s)", room_id, view.epoch, why)
            sub.view, sub.local, sub.stream, sub.redis_seen = view, False, None, None
            sub.local_events = False
            if self.on_room_reset is not None:
                self.on_room_reset(room_id, _state_of(view), retired)
        self._flush(room_id, sub)

    async def _heartbeat_once(self, interval: float) -> None:
        """Re-report the local count of every followed room due (each once per `interval`, first
        after a random part of it), with owed likes and joiners: one pipeline per shard.

        On a cluster each shard's heartbeat is answered on its own, as a tick's pipelines are: a
        primary that stopped answering holds its own rooms' heartbeats (they are not sent again
        until it answers or is lost), never the other shards', whose presence must not expire
        while one shard hangs."""
        if self._kept or self._retire:  # closed rooms' kept ticks, even on a node with no tick
            await self.publish_many([])
        now_s = time.monotonic()
        rooms = []
        for room_id, sub in self._rooms.items():
            if sub.beat_due is None:
                sub.beat_due = now_s + random.uniform(0, interval)
            elif (
                sub.beat_due <= now_s
                and not sub.local
                and sub.pending is None
                and self._room_up(room_id)
                and not self._beat_busy(room_id)
            ):
                sub.beat_due = now_s + interval
                rooms.append((room_id, sub))
        if not self._rooms and now_s >= self._ping_due:  # nothing to report: still check Redis
            self._ping_due = now_s + interval
            await self._redis.ping()
        if not rooms:
            return
        calls: list[Call] = []
        owed: list[tuple[_RoomSub, int, list[str]]] = []
        now = protocol.now_ms()
        for room_id, sub in rooms:
            likes, sub.likes_owed = sub.likes_owed, 0
            joined, sub.joined_owed = sub.joined_owed, []
            owed.append((sub, likes, joined))
            calls.append(self._publish_call(room_id, [], likes, sub.local_count, now, joined, _seen(sub)))
        if not self._shards.cluster or len(self._shards.names) < 2:  # one Redis: one pipeline
            await self._beat(calls, owed)
            return
        groups: dict[str, list[int]] = {}
        for i, call in enumerate(calls):
            groups.setdefault(self._shards.name_of(call[0]), []).append(i)
        for shard, idx in groups.items():
            task = asyncio.get_running_loop().create_task(
                self._beat([calls[i] for i in idx], [owed[i] for i in idx], shard)
            )
            self._beating[shard] = task
            task.add_done_callback(lambda done, shard=shard: self._beat_answered(shard, done))

    async def _beat(
        self, calls: list[Call], owed: list[tuple[_RoomSub, int, list[str]]], shard: str | None = None
    ) -> None:
        """Send heartbeats and handle the answers: what a failed call carried stays owed, and
        its room's shard (one Redis: the connection) is lost. `shard`: the calls' one shard, on
        a cluster (a failure of the whole pipeline loses that shard only)."""
        results: list[Any] | None = None
        names = [self._shards.name_of(c[0]) for c in calls]  # where they go now, not after a failover
        try:
            results = await self._pipelined(calls)
        except _DOWN as exc:
            if shard is None:
                raise  # one Redis: the heartbeat loop kicks the connection
            self._lose_shard(shard, exc)
        finally:
            for i, (sub, likes, joined) in enumerate(owed):
                if results is None or isinstance(results[i], Exception):  # still owed
                    sub.likes_owed += likes
                    sub.joined_owed[:0] = joined
        for name, result in zip(names, results or [], strict=False):
            if isinstance(result, Exception):
                self._lose_shard(name, result)  # that room's shard (one Redis: the connection)

    def _beat_busy(self, room_id: str) -> bool:
        """A heartbeat of the room's shard is still unanswered (a cluster only)."""
        if not self._beating:
            return False
        task = self._beating.get(self._shards.name_of(rs.room_keys(room_id).meta))
        return task is not None and not task.done()

    def _beat_answered(self, shard: str, task: asyncio.Task[None]) -> None:
        if self._beating.get(shard) is task:
            del self._beating[shard]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("a presence heartbeat failed", exc_info=exc)


def _merged(held: Publish, p: Publish) -> Publish:
    """A held tick and the next one of the same room, as one (events in order, counts added)."""
    return Publish(
        p.room_id,
        [*held.events, *p.events],
        held.likes_delta + p.likes_delta,
        p.local_online if p.local_online is not None else held.local_online,
        p.now,
        [*held.joined, *p.joined],
    )


def _seen(sub: _RoomSub) -> tuple[str, int] | None:
    """The newest Redis (epoch, seq) this node delivered for the room (its view, unless local)."""
    if sub.local:
        return sub.redis_seen
    return (sub.view.epoch, sub.view.seq) if sub.view.epoch else None


def _alone(room_id: str, what: str, exc: BaseException) -> None:
    """One line (throttled) each time Redis failed a room and the node serves it alone: a later
    re-read resets the room, so a failure while its shard still serves (no "shard lost" line)
    must leave a trace of why (a 5,000-connection soak reset rooms in a loop with none)."""
    dropped = _ALONE.admit(time.monotonic())
    if dropped is None:
        return
    more = f" ({dropped} more not logged)" if dropped else ""
    log.warning("room %s %s (%s): numbered here alone%s", room_id, what, named(exc), more)


_EPOCH_PREFIX = secrets.token_hex(4)  # this process's; the counter below makes each epoch unique
_epochs = itertools.count(1)


def _new_epoch() -> str:
    """A room stream's new epoch, should the publish script need one (made for every publish,
    used rarely: a counter, not 6 random bytes each time)."""
    return f"{_EPOCH_PREFIX}{next(_epochs):x}"


def _local_epoch() -> str:
    return "local-" + secrets.token_hex(6)


def _state_of(view: Room[None]) -> RoomState:
    return RoomState(
        epoch=view.epoch,
        seq=view.seq,
        likes_total=view.likes_total,
        online=view.online,
        hosts=dict(view.hosts),
        recent=list(view.recent),
        unique=view.unique,
        publishers=dict(view.publishers),
        media_node=view.media_node,
        media_url=view.media_url,
        media_codec=view.media_codec,
        pins=dict(view.pins),
        board=view.board,
        link=view.link,
        pk=view.pk,
        pk_penalty=view.pk_penalty,
        schedules=dict(view.schedules),
        qa=list(view.qa),
        products=dict(view.products),
    )


def _decode_event(raw: bytes) -> Event:
    try:
        event = msgpack.unpackb(raw, raw=False)
    except Exception as exc:  # msgpack raises many types; all mean "not an event"
        raise ValueError(f"undecodable event: {type(exc).__name__}") from None
    if not isinstance(event, dict) or not isinstance(event.get("seq"), int) or "t" not in event:
        raise ValueError("not an event")
    return event


def _parse_batch(room_id: str, data: bytes) -> Batch:
    """`<epoch>|<batch frame>` from the room channel, checked before anyone sees it; `<epoch>|`
    alone: the stream's epoch changed (a node numbered events alone during an outage)."""
    epoch, sep, frame = data.partition(b"|")
    if not sep or not epoch:
        raise ValueError("no epoch")
    if not frame:
        return epoch.decode("ascii", "replace"), b"", []
    try:
        obj = msgpack.unpackb(frame, raw=False)
    except Exception as exc:
        raise ValueError(f"undecodable frame: {type(exc).__name__}") from None
    if not isinstance(obj, dict) or obj.get("t") != "batch" or obj.get("room") != room_id:
        raise ValueError("not a batch of this room")
    if obj.get("epoch") != epoch.decode("ascii", "replace"):
        raise ValueError("the frame's epoch is not the channel message's")
    events = obj.get("events")
    if not isinstance(events, list) or not events:
        raise ValueError("no events")
    first = events[0].get("seq") if isinstance(events[0], dict) else None
    if not isinstance(first, int):
        raise ValueError("bad seq")
    for i, event in enumerate(events):
        if (
            not isinstance(event, dict)
            or event.get("seq") != first + i
            or not isinstance(event.get("t"), str)
        ):
            raise ValueError("events are not consecutive")
    return epoch.decode("ascii", "replace"), frame, events
