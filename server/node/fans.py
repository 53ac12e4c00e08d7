"""Followers and lives they can reserve: follow/unfollow, schedule/reserve, and the live notice.

When a host starts publishing (the room's `live` event with `on`, queued on the node holding
the host's media), this node tells every follower of the host, and everyone who reserved a live
the host scheduled that is due, with a `live_notice` on their user channel: the broker's
per-user delivery that DMs use, so a follower connected to any room on any node gets it in the
next hop (memory: a call; Redis: the user-channel script per follower, 1,000 followers per
pipeline and round trip). Followers with no connection
anywhere are listed in `host.live` webhooks (for push notifications), 500 per event. A host that
republishes (or goes live on two nodes) tells its followers once per `live_notice_every` s.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Any

from server.broker.follow_store import Scheduled
from server.wire import protocol
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.broker.base import Broker
    from server.broker.follow_store import FollowStore
    from server.config import Config
    from server.delivery.hub import Hub
    from server.delivery.peer import Peer
    from server.webhooks.sender import Webhooks

log = logging.getLogger("liveroom.fans")
NOTICE_BATCH = 1000  # users per pipelined send (one round trip per Redis shard)
HOOK_BATCH = 500  # offline followers per `host.live` webhook
DUE_AHEAD_MS = 15 * 60 * 1000  # a live scheduled up to 15 min from now is the one starting


class Fans:
    def __init__(
        self, config: Config, hub: Hub, broker: Broker, store: FollowStore, webhooks: Webhooks | None
    ) -> None:
        self.config = config
        self.hub = hub
        self.broker = broker
        self.store = store
        self.webhooks = webhooks
        self._tasks: set[asyncio.Task[None]] = set()
        self.notices_sent = 0  # delivered live (tests and the benchmark read it)

    async def handle(self, client: Peer, message: Any) -> None:
        who = client.identity
        assert who is not None and client.room_id is not None
        cid = message.cid
        if isinstance(message, protocol.Follow):
            if message.host == who.uid:
                raise ProtocolError(ErrorCode.FOLLOW_TARGET, "you cannot follow yourself", cid)
            count = await self.store.follow(message.host, who.uid, message.on)
            ack = {"t": "follow_ack", "host": message.host, "on": message.on, "followers": count}
        elif isinstance(message, protocol.Schedule):
            if who.role != "host":
                raise ProtocolError(ErrorCode.FORBIDDEN, "only a host schedules lives", cid)
            now = protocol.now_ms()
            if not now < message.at <= now + protocol.MAX_SCHEDULE_AHEAD_MS:
                raise ProtocolError(ErrorCode.BAD_FIELD, "'at' must be in the next 30 days (ms)", cid)
            live = Scheduled(secrets.token_hex(4), message.at, message.title)
            await self.store.schedule(who.uid, live)
            event = {"t": "schedule", "uid": who.uid, "name": who.name, "ts": now, "on": True}
            event.update(id=live.id, at=live.at, title=live.title)
            self.hub.enqueue(client.room_id, event)
            ack = {"t": "schedule_ack", "id": live.id, "at": live.at}
        else:
            if not await self.store.reserve(message.host, message.id, who.uid):
                raise ProtocolError(ErrorCode.FOLLOW_TARGET, "no such scheduled live", cid)
            ack = {"t": "reserve_ack", "host": message.host, "id": message.id}
        if cid is not None:
            ack["cid"] = cid
        client.send(protocol.pack(ack))

    def on_live(self, room_id: str, event: dict[str, Any]) -> None:
        """A publisher went live in a room on this node (Node.tick saw its `live` event)."""
        task = asyncio.get_running_loop().create_task(self.went_live(room_id, event["uid"], event["name"]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def went_live(self, room_id: str, host: str, name: str) -> None:
        try:
            if not await self.store.claim_notice(host, self.config.live_notice_every):
                return
            now = protocol.now_ms()
            due = await self.store.take_due(host, now + DUE_AHEAD_MS)
            notice = {"t": "live_notice", "host": host, "name": name, "room": room_id, "ts": now}
            frames: dict[str, bytes] = dict.fromkeys(await self.store.followers(host), protocol.pack(notice))
            for live, reservers in due:
                reserved = protocol.pack({**notice, "id": live.id, "title": live.title, "reserved": True})
                frames.update(dict.fromkeys(reservers, reserved))
                if room_id in self.hub.rooms:  # the schedule is no longer ahead
                    off = {"t": "schedule", "uid": host, "name": name, "ts": now, "on": False, "id": live.id}
                    self.hub.enqueue(room_id, off)
            frames.pop(host, None)
            offline = await self._deliver(frames)
            if self.webhooks is not None:
                for i in range(0, len(offline), HOOK_BATCH):
                    data = {"host": host, "room": room_id, "offline": offline[i : i + HOOK_BATCH]}
                    self.webhooks.emit("host.live", data, f"host.live:{host}:{now}:{i // HOOK_BATCH}")
        except Exception:
            log.exception("live notices for %s failed", host)

    async def _deliver(self, frames: dict[str, bytes]) -> list[str]:
        """Send each user its notice, NOTICE_BATCH users per broker call (one pipeline per Redis
        shard): the users with no connection anywhere."""
        users = list(frames)
        offline: list[str] = []
        for i in range(0, len(users), NOTICE_BATCH):
            chunk = {uid: frames[uid] for uid in users[i : i + NOTICE_BATCH]}
            try:
                missed = await self.broker.send_dms(chunk)
            except Exception:
                log.exception("live notices: a batch of %d failed", len(chunk))
                missed = list(chunk)
            self.notices_sent += len(chunk) - len(missed)
            offline += missed
        return offline

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()
