"""This node as an edge of another node's media: pull the origin's publishers while viewers
are here, through an edge that pulls from the origin when the origin is full.

Why a module of its own: the cascade is a loop of its own (follow the room's `live` state and
the local viewers, start and stop relays, keep the relay registry entry alive), independent of
how a viewer signals (WebSocket or WHEP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import aiohttp
from redis.exceptions import RedisError

from server import metrics
from server.media import MediaError, MediaRoom
from server.media.claim import MediaClaims
from server.media.relay import Relay
from server.media.site import MediaSite
from server.wire import auth

log = logging.getLogger("liveroom.media")

RELAY_RETRY = 1.0  # seconds before an edge pulls again a stream that ended while still live


class Edges:
    """Relays of this node: one per publisher of a room whose media lives on another node."""

    def __init__(self, site: MediaSite, claims: MediaClaims, node_secret: str, claim_ttl: float) -> None:
        self.site = site
        self.claims = claims
        self.node_secret = node_secret
        self.claim_ttl = claim_ttl
        self._locks: dict[str, asyncio.Lock] = {}
        self._http: aiohttp.ClientSession | None = None

    def view_changed(self, room_id: str) -> None:
        """The room's `live` state changed (a publisher came, left, or moved): follow it."""
        if room_id in self.site.relays or self.site.local_viewers(room_id):
            self.site.spawn(self.sync(room_id))

    def session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def sync(self, room_id: str, arriving: bool = False) -> None:
        """Pull every publisher of the origin while this node has viewers; stop otherwise.

        `arriving`: a viewer is about to be added (it is registered once its tracks exist,
        so its first offer already carries them).
        """
        site = self.site
        lock = self._locks.setdefault(room_id, asyncio.Lock())
        async with lock:
            origin = site.origin_of(room_id)
            view = site.hub.rooms.get(room_id)
            wanted: set[str] = set()
            if origin is not None and view is not None and (arriving or site.local_viewers(room_id)):
                wanted = set(view.publishers)
            relays = site.relays.setdefault(room_id, {})
            for pid, relay in list(relays.items()):
                if pid not in wanted or relay.ended or origin is None or relay.origin_node != origin[0]:
                    del relays[pid]
                    await relay.close(self.session())
            for pid in sorted(wanted - relays.keys()):
                assert origin is not None
                room = site.room(room_id)
                if pid in room.publications:
                    continue
                # a relay adds its publication before it is registered: until then it is not
                # local media (origin_of), so a viewer arriving meanwhile waits for it here
                pulling = site.pulling.setdefault(room_id, set())
                pulling.add(pid)
                try:
                    relay = await self._start(room_id, room, pid, origin)
                finally:
                    pulling.discard(pid)
                    if not pulling:
                        site.pulling.pop(room_id, None)
                if relay is None:
                    metrics.media_relays.labels(event="failed").inc()
                else:
                    relays[pid] = relay
                    metrics.media_relays.labels(event="started" if relay.via is None else "via_edge").inc()
                    if relay.via is None:
                        site.spawn(self.register(room_id))
            if not relays:
                site.relays.pop(room_id, None)
                if not site.local_viewers(room_id):
                    self._locks.pop(room_id, None)
        site.maybe_close(room_id)
        site.update_gauges()

    async def _start(self, room_id: str, room: MediaRoom, pid: str, origin: tuple[str, str]) -> Relay | None:
        """Pull `pid` from the origin; if the origin is full, from an edge that pulls from it
        (a tree of depth two: such an edge never feeds others, so there are no cycles)."""
        node_id = self.site.node_id
        token = auth.mint_node(self.node_secret, room=room_id, node=node_id)
        relay = Relay(room, pid, *origin)
        try:
            await relay.start(self.session(), token)
            return relay
        except MediaError as exc:
            if exc.code != "relay_full":
                log.warning("media: relay of %s/%s from %s failed: %s", room_id, pid, origin[0], exc)
                return None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("media: relay of %s/%s from %s failed: %s", room_id, pid, origin[0], exc)
            return None
        with contextlib.suppress(RedisError, OSError):
            edges = [e for e in await self.claims.edges(room_id) if e[0] != node_id]
            random.shuffle(edges)
            for node, url in edges:
                relay = Relay(room, pid, origin[0], url, via=node)
                try:
                    await relay.start(self.session(), token)
                    return relay
                except (TimeoutError, MediaError, aiohttp.ClientError, OSError) as exc:
                    log.info("media: relay of %s/%s via edge %s failed: %s", room_id, pid, node, exc)
        log.warning("media: origin %s of room %s is full and no edge could feed us", origin[0], room_id)
        return None

    async def register(self, room_id: str) -> None:
        """Tell the relay registry this node pulls the room straight from its origin."""
        if self.site.url is None:
            return
        with contextlib.suppress(RedisError, OSError):
            await self.claims.register_edge(room_id, self.site.node_id, self.site.url, self.claim_ttl)

    async def renew(self) -> None:
        """Keep our relay registry entries alive (called with the claims' renewal)."""
        for room_id, relays in list(self.site.relays.items()):
            if any(r.via is None and r.ready.is_set() and not r.ended for r in relays.values()):
                await self.register(room_id)

    async def retry(self, room_id: str) -> None:
        await asyncio.sleep(RELAY_RETRY)
        await self.sync(room_id)

    async def close(self) -> None:
        relays = [r for by_pub in self.site.relays.values() for r in by_pub.values()]
        self.site.relays = {}
        if relays:
            await asyncio.gather(*(r.close(self.session()) for r in relays), return_exceptions=True)

    async def close_session(self) -> None:
        if self._http is not None:
            await self._http.close()
