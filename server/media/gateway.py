"""The node's media side, assembled: one MediaRoom per room whose media lives on this node.

Why a module of its own: `server.media`'s core (SDP in, encoded frames out) knows nothing about
connections, tokens or a room's event stream, while the node knows nothing about WebRTC. The
gateway joins them from parts, each a module: `site.py` (the rooms and who is in them),
`publishing.py` (who may publish), `ws_signaling.py` (media over a WebSocket), `sessions.py`
(WHIP/WHEP), `edges.py` (pulling another node's media), `failover.py` (the room's claim),
`sampler.py` (stats). It routes the rooms' publish/unpublish events to the parts that follow
them and is the one object the node, the doors and the app hold. All SDP is complete (aiortc
gathers candidates before it answers or offers), so there is no trickle ICE.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from server.config import ConfigError
from server.media import MediaConfig, MediaRoom, Publication, check_compatible
from server.media.candidates import parse_range, use_udp_port_range
from server.media.claim import MediaClaims
from server.media.edges import Edges
from server.media.failover import Failover
from server.media.ice import IceConfigError, IceServers
from server.media.linked import LinkedMedia
from server.media.publishing import Publishing
from server.media.relay import Relay
from server.media.sampler import MediaStats
from server.media.sessions import HttpSessions
from server.media.site import MediaSite, Resource
from server.media.ws_signaling import WsSignaling
from server.wire import protocol
from server.wire.auth import Identity

if TYPE_CHECKING:
    from server.abuse.admission import ConcurrencyCap
    from server.broker.base import Inbox, Sanction
    from server.config import Config
    from server.delivery.hub import Hub
    from server.delivery.peer import Peer


class MediaGateway:
    """Owns the MediaRooms of this node and everything that signals into them."""

    def __init__(
        self, config: Config, inbox: Inbox, hub: Hub, node_id: str, claims: MediaClaims, node_secret: str
    ) -> None:
        self.config = config
        self.hub = hub
        self.node_id = node_id
        try:
            self.ice = IceServers.from_config(config.ice_servers, config.turn_secret, config.turn_ttl)
        except IceConfigError as exc:
            raise ConfigError(str(exc)) from None
        media_config = MediaConfig(
            max_publishers=config.media_max_publishers,
            max_viewers=max(1, config.media_max_viewers),
            gop_cache_frames=config.media_gop_cache_frames,
            ice_servers=self.ice.for_server(),
        )
        self.site = site = MediaSite(hub, node_id, media_config, config.media_max_viewers)
        site.url = config.media_url or None
        site.public_ip = config.media_public_ip
        self.claims = claims
        self.edges = Edges(site, claims, node_secret, config.media_claim_ttl)
        self.failover = Failover(site, claims, self.edges, config.media_claim_ttl)
        self.publishing = Publishing(site, self.failover)
        self.linked = LinkedMedia(site, node_secret)
        self.signaling = WsSignaling(site, self.publishing, self.edges, inbox, self.linked)
        self.sessions = HttpSessions(
            site,
            self.publishing,
            self.edges,
            config.media_sessions_per_user,
            config.media_sessions_per_ip,
            config.media_ice_timeout,
        )
        self.stats = MediaStats(site, config.media_stats_interval, self.sessions.prune)
        site.sync_relays = self.edges.sync
        site.sync_linked = self.linked.sync
        site.on_room_event = self._on_room_event
        self._tasks: list[asyncio.Task[None]] = []
        self._publishing_listeners: list[Callable[[str, str, Identity | None], None]] = []
        hub.on_live(self.edges.view_changed)
        hub.on_live(self.linked.view_changed)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Fail fast if aiortc's internals moved (the tap would silently decode instead)."""
        check_compatible()
        if self.config.media_udp_ports:
            use_udp_port_range(parse_range(self.config.media_udp_ports))
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.failover.forever()))
        if self.stats.interval > 0:
            self._tasks.append(loop.create_task(self.stats.forever()))

    async def close(self) -> None:
        site = self.site
        self.sessions.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.edges.close()
        await self.linked.close()
        rooms, site.rooms = list(site.rooms.values()), {}
        for room in rooms:
            self.hub.unpin(room.room_id)
        await asyncio.gather(*(r.close() for r in rooms), return_exceptions=True)
        while pending := [t for t in site.tasks if not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)
        await self.edges.close_session()
        with contextlib.suppress(RedisError, OSError):
            await self.claims.close()
        if self.config.media_udp_ports:
            use_udp_port_range(None)  # process-wide: do not outlive this node (tests run several)
        site.update_gauges()

    # -- what the node, the doors and the app ask -----------------------------------------

    def holds(self, room_id: str) -> bool:
        """The node must keep the room open: its media (e.g. a WHIP publisher) lives here."""
        return room_id in self.site.rooms

    def describe(self, room_id: str, snapshot: dict[str, Any]) -> None:
        """Tell a joiner where the room's media is: the live node, else this node."""
        self.locate(snapshot)
        snapshot["ice_servers"] = self.ice_servers(snapshot["you"]["uid"])

    def locate(self, snapshot: dict[str, Any]) -> None:
        """A snapshot's media node and URL: the live node's, else this node's (any viewer's)."""
        if snapshot.get("media_node") is None:
            snapshot["media_node"] = self.node_id
            snapshot["media_url"] = self.site.url

    def ice_servers(self, uid: str) -> list[dict[str, Any]]:
        """A snapshot's `ice_servers` for one user (its TURN credential is its own)."""
        return self.ice.for_client(uid)

    async def handle(self, client: Peer, message: protocol.ClientMessage) -> None:
        await self.signaling.handle(client, message)

    async def leave(self, client: Peer) -> None:
        await self.signaling.leave(client)

    async def whip(
        self, who: Identity, room_id: str, sdp: str, ip: str = "?", *, local: bool = False
    ) -> tuple[str, str]:
        return await self.sessions.whip(who, room_id, sdp, ip, local=local)

    async def whep(
        self,
        who: Identity,
        room_id: str,
        sdp: str,
        ip: str = "?",
        publisher: str | None = None,
        relay: bool = False,
    ) -> tuple[str, str]:
        return await self.sessions.whep(who, room_id, sdp, ip, publisher, relay)

    async def delete_resource(self, kind: str, room_id: str, rid: str, who: Identity) -> bool:
        return await self.sessions.delete(kind, room_id, rid, who)

    def on_sanction(self, sanction: Sanction) -> None:
        self.sessions.on_sanction(sanction)

    def may_publish(self, who: Identity, room_id: str) -> bool:
        return self.publishing.may_publish(who, room_id)

    async def publish(self, who: Identity, room_id: str, sdp: str, ref: Any = None) -> Publication:
        return await self.publishing.publish(who, room_id, sdp, ref)

    def origin_of(self, room_id: str) -> tuple[str, str] | None:
        return self.site.origin_of(room_id)

    async def claims_once(self) -> None:
        await self.failover.once()

    async def sample(self) -> None:
        await self.stats.sample()

    # -- the site's registries, for the app and the tests ----------------------------------

    @property
    def url(self) -> str | None:
        return self.site.url

    @url.setter
    def url(self, url: str | None) -> None:
        self.site.url = url

    @property
    def max_viewers(self) -> int:
        return self.site.max_viewers

    @max_viewers.setter
    def max_viewers(self, limit: int) -> None:
        self.site.max_viewers = limit

    @property
    def media_config(self) -> MediaConfig:
        return self.site.media_config

    @property
    def viewer_count(self) -> int:
        return self.site.viewer_count

    @property
    def rooms(self) -> dict[str, MediaRoom]:
        return self.site.rooms

    @property
    def relays(self) -> dict[str, dict[str, Relay]]:
        return self.site.relays

    @property
    def invites(self) -> dict[str, set[str]]:
        return self.site.invites

    @property
    def resources(self) -> dict[str, Resource]:
        return self.site.resources

    @property
    def user_sessions(self) -> ConcurrencyCap:
        return self.sessions.user_sessions

    # -- the rooms' events, to the parts that follow them -------------------------------------

    def _on_room_event(self, room_id: str, event: str, publisher_id: str) -> None:
        site = self.site
        who = site.identities.get((room_id, publisher_id))
        relay = site.relays.get(room_id, {}).get(publisher_id)
        if event == "unpublished" and relay is not None and relay.ended and not relay.closed:
            site.spawn(self.edges.retry(room_id))  # the pulled stream broke: pull again if still live
        if event == "unpublished":
            site.identities.pop((room_id, publisher_id), None)
            if who is not None:  # one of ours (not a relay): the last one frees the room's claim
                self.failover.release_if_unused(room_id)
            self.sessions.on_unpublished(room_id)
            self.signaling.on_unpublished(room_id, publisher_id)
            site.maybe_close(room_id)
            site.update_gauges()
        if who is not None:
            site.emit_live(room_id, who, event == "published")
        if event == "published":
            self.signaling.on_published(room_id)
        for listener in self._publishing_listeners:
            listener(room_id, event, who)

    def on_publishing(self, listener: Callable[[str, str, Identity | None], None]) -> None:
        """Call `listener(room, "published" | "unpublished", who)` after the gateway's own
        handling; `who` is None for a stream pulled from another node (e.g. recording follows it)."""
        self._publishing_listeners.append(listener)
