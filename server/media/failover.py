"""The media claim: one origin per room, renewed while it publishes, dropped when it dies.

Why a module of its own: claiming, renewing and reaping is the failover protocol between
nodes (`claim.py` is its storage); it runs on its own timer and only reads what the site holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.exceptions import RedisError

from server import metrics
from server.media.claim import MediaClaims
from server.media.edges import Edges
from server.media.site import MediaSite
from server.wire import protocol
from server.wire.auth import Identity
from server.wire.protocol import ErrorCode, ProtocolError

log = logging.getLogger("liveroom.media")


class Failover:
    """Takes, renews and releases this node's claims; reaps rooms whose origin stopped renewing."""

    def __init__(self, site: MediaSite, claims: MediaClaims, edges: Edges, claim_ttl: float) -> None:
        self.site = site
        self.claims = claims
        self.edges = edges
        self.claim_ttl = claim_ttl

    async def claim(self, room_id: str, ref: Any = None) -> None:
        """Take (or renew) the room's media for this node before a publisher goes live."""
        node_id = self.site.node_id
        try:
            holder = await self.claims.claim(room_id, node_id, self.claim_ttl)
        except (RedisError, OSError) as exc:
            raise ProtocolError(ErrorCode.MEDIA_UNAVAILABLE, f"media claim unavailable: {exc}", ref) from None
        if holder != node_id:
            raise ProtocolError(
                ErrorCode.MEDIA_WRONG_NODE, f"media of this room is held by node {holder}, retry later", ref
            )

    def release_if_unused(self, room_id: str) -> None:
        if not self.site.local_publishers(room_id):
            self.site.spawn(self._release(room_id))

    async def _release(self, room_id: str) -> None:
        if self.site.local_publishers(room_id):
            return
        with contextlib.suppress(RedisError, OSError):  # not released: it expires within the TTL
            await self.claims.release(room_id, self.site.node_id)

    async def forever(self) -> None:
        failures, logged_at = 0, float("-inf")
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.claim_ttl / 4)
            try:
                await self.once()
            except (RedisError, OSError) as exc:
                failures += 1  # a Redis outage: one line per 10 s, not one per round
                if loop.time() - logged_at >= 10:
                    log.warning("media: claim renewal failed (%d times): %s", failures, exc)
                    failures, logged_at = 0, loop.time()

    async def once(self) -> None:
        """Renew this node's claims (re-announcing its publishers if they were dropped meanwhile),
        and drop the `live` state of rooms whose origin stopped renewing."""
        site, me = self.site, self.site.node_id
        for room_id in [r for r in site.rooms if site.local_publishers(r)]:
            holder = await self.claims.claim(room_id, me, self.claim_ttl)
            view = site.hub.rooms.get(room_id)
            if holder != me or view is None:
                log.warning("media: room %s is claimed by %s while publishing here", room_id, holder)
                continue
            for pid, pub in list(site.rooms[room_id].publications.items()):
                who = site.identities.get((room_id, pid))
                if (
                    pub.ready
                    and who is not None
                    and pid not in view.publishers
                    and not view.live_on_its_way(pid)
                ):
                    site.emit_live(room_id, who, True)  # a reaper dropped us (e.g. Redis lost the claim)
        await self.edges.renew()
        suspects = [
            room_id
            for room_id, view in site.hub.rooms.items()
            if view.publishers and view.media_node not in (None, me)
        ]
        for room_id, holder in (await self.claims.holders(suspects)).items():
            if holder is None:
                site.spawn(self._reap(room_id))

    async def _reap(self, room_id: str) -> None:
        """The origin stopped renewing: announce its publishers gone, holding the claim meanwhile
        so that no publisher can go live before the `live` off events are sequenced."""
        hub = self.site.hub
        view = hub.rooms.get(room_id)
        dead = view.media_node if view is not None else None
        reaper = f"reaper.{self.site.node_id}"
        if dead is None or await self.claims.claim(room_id, reaper, self.claim_ttl) != reaper:
            return
        try:
            view = hub.rooms.get(room_id)
            if view is None or view.media_node != dead:
                return
            log.warning("media: node %s stopped renewing room %s: its publishers are gone", dead, room_id)
            metrics.media_failovers.inc()
            now = protocol.now_ms()
            for uid, name in list(view.publishers.items()):
                hub.set_live(
                    room_id, Identity(uid=uid, name=name, room=room_id, role="host"), False, dead, None, now
                )
            for _ in range(100):  # until our `live` off events come back sequenced
                if hub.rooms.get(room_id) is not view or view.media_node != dead:
                    break
                await asyncio.sleep(0.02)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await self.claims.release(room_id, reaper)
