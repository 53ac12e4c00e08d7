"""The node's media side: one MediaRoom per room whose media lives on this node.

Why a module of its own: `server.media` is the forwarding core (SDP in, encoded frames out)
and knows nothing about connections, tokens or a room's event stream, while the node knows
nothing about WebRTC. The gateway joins them: it maps WebSocket connections and WHIP/WHEP
resources to publishers and viewers, decides who may publish (hosts, invited co-hosts),
announces `live` changes through the room outbox (so they are sequenced like every other
event), re-offers to subscribed viewers when a publisher appears, enforces the node's limits
and samples stats for /metrics. All SDP is complete (aiortc gathers candidates before it
answers or offers), so there is no trickle ICE.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
from redis.exceptions import RedisError

from server import metrics
from server.abuse.admission import ConcurrencyCap
from server.abuse.tokens import Keyring
from server.config import ConfigError
from server.media import (
    MediaConfig,
    MediaError,
    MediaRoom,
    Publication,
    Subscription,
    check_compatible,
    create_subscribe_offer,
    handle_publish_offer,
    handle_subscribe_answer,
    handle_subscribe_offer,
)
from server.media.candidates import advertise_address, parse_range, use_udp_port_range
from server.media.claim import MediaClaims, RedisMediaClaims
from server.media.ice import IceConfigError, IceServers
from server.media.relay import Relay
from server.wire import auth, protocol
from server.wire.auth import Identity
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.broker.base import Broker, Sanction
    from server.config import Config
    from server.delivery.hub import Hub
    from server.delivery.peer import Peer

log = logging.getLogger("liveroom.media")

MAX_INVITES_PER_ROOM = 32

# MediaError.code from the core -> stable protocol code.
_CODES: dict[str, ErrorCode] = {
    "bad_sdp": ErrorCode.MEDIA_BAD_SDP,
    "no_media": ErrorCode.MEDIA_NO_MEDIA,
    "too_many_tracks": ErrorCode.MEDIA_TOO_MANY_TRACKS,
    "codec_unsupported": ErrorCode.MEDIA_UNSUPPORTED,
    "codec_mismatch": ErrorCode.MEDIA_CODEC_MISMATCH,
    "viewer_codec": ErrorCode.MEDIA_VIEWER_CODEC,
    "too_many_publishers": ErrorCode.MEDIA_TOO_MANY_PUBLISHERS,
    "too_many_viewers": ErrorCode.MEDIA_TOO_MANY_VIEWERS,
    "already_publishing": ErrorCode.MEDIA_ALREADY_PUBLISHING,
    "already_subscribed": ErrorCode.MEDIA_BAD_STATE,
    "unknown_publisher": ErrorCode.MEDIA_BAD_STATE,
    "unknown_viewer": ErrorCode.MEDIA_BAD_STATE,
    "bad_state": ErrorCode.MEDIA_BAD_STATE,
    "room_closed": ErrorCode.MEDIA_UNAVAILABLE,
    "relay_refused": ErrorCode.MEDIA_UNAVAILABLE,
    "relay_full": ErrorCode.MEDIA_TOO_MANY_VIEWERS,
    "relay_closed": ErrorCode.MEDIA_UNAVAILABLE,
}
RELAY_RETRY = 1.0  # seconds before an edge pulls again a stream that ended while still live


def media_error(exc: MediaError, ref: Any = None) -> ProtocolError:
    return ProtocolError(_CODES.get(exc.code, ErrorCode.MEDIA_UNAVAILABLE), exc.message, ref)


def check_offer_kinds(sdp: str, ref: Any = None) -> None:
    """Refuse m-lines other than audio/video (data channels, text...) before aiortc sees them."""
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
            if kind not in ("audio", "video"):
                raise ProtocolError(
                    ErrorCode.MEDIA_UNSUPPORTED,
                    f"unsupported track kind {kind[:16]!r}: audio/video only",
                    ref,
                )


@dataclass(eq=False)
class WsViewer:
    """A WebSocket connection that asked for the room's media (server offers, client answers)."""

    client: Peer
    room_id: str
    viewer_id: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    renegotiate: bool = False  # a publisher appeared while an offer was pending


@dataclass(eq=False)
class Resource:
    """A WHIP publication or WHEP playback, addressed by an unguessable id in its URL."""

    kind: Literal["whip", "whep"]
    room_id: str
    uid: str
    peer_id: str  # publisher id (the uid) or viewer id
    handle: Publication | Subscription
    ip: str = "?"
    relay: bool = False  # a WHEP session of an edge node pulling the room's media (no session caps)


@dataclass(eq=False)
class _Sample:
    """Counters at the previous stats sample, to turn totals into rates."""

    at: float
    values: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)


class MediaGateway:
    """Owns the MediaRooms of this node and everything that signals into them."""

    def __init__(self, config: Config, broker: Broker, hub: Hub, node_id: str) -> None:
        self.config = config
        self.broker = broker
        self.hub = hub
        self.node_id = node_id
        try:
            self.ice = IceServers.from_config(config.ice_servers, config.turn_secret, config.turn_ttl)
        except IceConfigError as exc:
            raise ConfigError(str(exc)) from None
        self.public_ip = config.media_public_ip
        self.media_config = MediaConfig(
            max_publishers=config.media_max_publishers,
            max_viewers=max(1, config.media_max_viewers),
            gop_cache_frames=config.media_gop_cache_frames,
            ice_servers=self.ice.for_server(),
        )
        self.max_viewers = config.media_max_viewers
        self.url: str | None = config.media_url or None  # set by App once the HTTP port is known
        self.rooms: dict[str, MediaRoom] = {}
        self.identities: dict[tuple[str, str], Identity] = {}  # (room, publisher uid) -> who
        self.invites: dict[str, set[str]] = {}  # room -> uids invited to co-stream
        self.ws_publishers: dict[Peer, Publication] = {}
        self.ws_viewers: dict[Peer, WsViewer] = {}
        self.resources: dict[str, Resource] = {}
        self.relays: dict[str, dict[str, Relay]] = {}  # room -> publisher -> stream pulled from its origin
        # room -> publishers whose relay is being set up: their publication here is not local
        self._pulling: dict[str, set[str]] = {}
        self._relay_locks: dict[str, asyncio.Lock] = {}
        self._http: aiohttp.ClientSession | None = None
        self.claims: MediaClaims = (
            RedisMediaClaims(config.redis_url, config.redis_cluster) if config.redis_url else MediaClaims()
        )
        self.claim_ttl = config.media_claim_ttl
        self._claims_task: asyncio.Task[None] | None = None
        self.node_secret = Keyring.from_config(config.secret, config.secret_old, config.secrets).signing[1]
        # WHIP/WHEP sessions held: per "room|uid" and per client IP (a token must not take every slot)
        self.user_sessions = ConcurrencyCap(config.media_sessions_per_user)
        self.ip_sessions = ConcurrencyCap(config.media_sessions_per_ip)
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ice_watches: dict[str, asyncio.Task[None]] = {}
        self._stats_task: asyncio.Task[None] | None = None
        self._last = _Sample(at=time.monotonic())
        hub.live_listeners.append(self.view_changed)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Fail fast if aiortc's internals moved (the tap would silently decode instead)."""
        check_compatible()
        if self.config.media_udp_ports:
            use_udp_port_range(parse_range(self.config.media_udp_ports))
        self._claims_task = asyncio.get_running_loop().create_task(self._claims_forever())
        if self.config.media_stats_interval > 0:
            self._stats_task = asyncio.get_running_loop().create_task(self._stats_forever())

    async def close(self) -> None:
        for watch in self._ice_watches.values():
            watch.cancel()
        for task in (self._stats_task, self._claims_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        relays = [r for by_pub in self.relays.values() for r in by_pub.values()]
        self.relays = {}
        if relays:
            await asyncio.gather(*(r.close(self._session()) for r in relays), return_exceptions=True)
        rooms, self.rooms = list(self.rooms.values()), {}
        for room in rooms:
            self.hub.unpin(room.room_id)
        await asyncio.gather(*(r.close() for r in rooms), return_exceptions=True)
        while pending := [t for t in self._tasks if not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        with contextlib.suppress(RedisError, OSError):
            await self.claims.close()
        if self.config.media_udp_ports:
            use_udp_port_range(None)  # process-wide: do not outlive this node (tests run several)
        self._update_gauges()

    def holds(self, room_id: str) -> bool:
        """The node must keep the room open: its media (e.g. a WHIP publisher) lives here."""
        return room_id in self.rooms

    def describe(self, room_id: str, snapshot: dict[str, Any]) -> None:
        """Tell a joiner where the room's media is: the live node, else this node."""
        if snapshot.get("media_node") is None:
            snapshot["media_node"] = self.node_id
            snapshot["media_url"] = self.url
        snapshot["ice_servers"] = self.ice.for_client(snapshot["you"]["uid"])

    @property
    def viewer_count(self) -> int:
        return len(self.ws_viewers) + sum(1 for r in self.resources.values() if r.kind == "whep")

    # -- cascading: this node as an edge of another node's media -----------------------------

    def origin_of(self, room_id: str) -> tuple[str, str] | None:
        """(node, media URL) of the room's media when another node holds it, else None."""
        view = self.hub.rooms.get(room_id)
        if view is None or not view.publishers or view.media_node in (None, self.node_id):
            return None
        if not view.media_url or (room_id in self.rooms and self._local_publishers(room_id)):
            return None
        return view.media_node, view.media_url

    def _local_publishers(self, room_id: str) -> bool:
        room = self.rooms.get(room_id)
        relayed, pulling = self.relays.get(room_id, {}), self._pulling.get(room_id, ())
        return room is not None and any(
            pid not in relayed and pid not in pulling for pid in room.publications
        )

    def _local_viewers(self, room_id: str) -> bool:
        """Viewers here: WS subscribers and WHEP sessions (an edge we feed counts as one)."""
        return any(v.room_id == room_id for v in self.ws_viewers.values()) or any(
            r.room_id == room_id and r.kind == "whep" for r in self.resources.values()
        )

    def view_changed(self, room_id: str) -> None:
        """The room's `live` state changed (a publisher came, left, or moved): follow it."""
        if room_id in self.relays or self._local_viewers(room_id):
            self._spawn(self._sync_relays(room_id))

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _sync_relays(self, room_id: str, arriving: bool = False) -> None:
        """Pull every publisher of the origin while this node has viewers; stop otherwise.

        `arriving`: a viewer is about to be added (it is registered once its tracks exist,
        so its first offer already carries them).
        """
        lock = self._relay_locks.setdefault(room_id, asyncio.Lock())
        async with lock:
            origin = self.origin_of(room_id)
            view = self.hub.rooms.get(room_id)
            wanted: set[str] = set()
            if origin is not None and view is not None and (arriving or self._local_viewers(room_id)):
                wanted = set(view.publishers)
            relays = self.relays.setdefault(room_id, {})
            for pid, relay in list(relays.items()):
                if pid not in wanted or relay.ended or origin is None or relay.origin_node != origin[0]:
                    del relays[pid]
                    await relay.close(self._session())
            for pid in sorted(wanted - relays.keys()):
                assert origin is not None
                room = self._room(room_id)
                if pid in room.publications:
                    continue
                # a relay adds its publication before it is registered: until then it is not
                # local media (origin_of), so a viewer arriving meanwhile waits for it here
                pulling = self._pulling.setdefault(room_id, set())
                pulling.add(pid)
                try:
                    relay = await self._start_relay(room_id, room, pid, origin)
                finally:
                    pulling.discard(pid)
                    if not pulling:
                        self._pulling.pop(room_id, None)
                if relay is None:
                    metrics.media_relays.labels(event="failed").inc()
                else:
                    relays[pid] = relay
                    metrics.media_relays.labels(event="started" if relay.via is None else "via_edge").inc()
                    if relay.via is None:
                        self._spawn(self._register_edge(room_id))
            if not relays:
                self.relays.pop(room_id, None)
                if not self._local_viewers(room_id):
                    self._relay_locks.pop(room_id, None)
        self._maybe_close(room_id)
        self._update_gauges()

    async def _start_relay(
        self, room_id: str, room: MediaRoom, pid: str, origin: tuple[str, str]
    ) -> Relay | None:
        """Pull `pid` from the origin; if the origin is full, from an edge that pulls from it
        (a tree of depth two: such an edge never feeds others, so there are no cycles)."""
        token = auth.mint_node(self.node_secret, room=room_id, node=self.node_id)
        relay = Relay(room, pid, *origin)
        try:
            await relay.start(self._session(), token)
            return relay
        except MediaError as exc:
            if exc.code != "relay_full":
                log.warning("media: relay of %s/%s from %s failed: %s", room_id, pid, origin[0], exc)
                return None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("media: relay of %s/%s from %s failed: %s", room_id, pid, origin[0], exc)
            return None
        with contextlib.suppress(RedisError, OSError):
            edges = [e for e in await self.claims.edges(room_id) if e[0] != self.node_id]
            random.shuffle(edges)
            for node, url in edges:
                relay = Relay(room, pid, origin[0], url, via=node)
                try:
                    await relay.start(self._session(), token)
                    return relay
                except (TimeoutError, MediaError, aiohttp.ClientError, OSError) as exc:
                    log.info("media: relay of %s/%s via edge %s failed: %s", room_id, pid, node, exc)
        log.warning("media: origin %s of room %s is full and no edge could feed us", origin[0], room_id)
        return None

    async def _register_edge(self, room_id: str) -> None:
        """Tell the relay registry this node pulls the room straight from its origin."""
        if self.url is None:
            return
        with contextlib.suppress(RedisError, OSError):
            await self.claims.register_edge(room_id, self.node_id, self.url, self.claim_ttl)

    async def _retry_relay(self, room_id: str) -> None:
        await asyncio.sleep(RELAY_RETRY)
        await self._sync_relays(room_id)

    # -- WebSocket signaling --------------------------------------------------------------

    async def handle(self, client: Peer, message: protocol.ClientMessage) -> None:
        """Dispatch one media message of a joined connection (see docs/PROTOCOL.md)."""
        op = type(message).__name__.lower()
        try:
            if isinstance(message, protocol.Publish):
                await self._publish(client, message)
            elif isinstance(message, protocol.Unpublish):
                await self._unpublish(client, message.cid)
            elif isinstance(message, protocol.Subscribe):
                await self._subscribe(client, message.cid)
            elif isinstance(message, protocol.Answer):
                await self._answer(client, message)
            elif isinstance(message, protocol.Unsubscribe):
                await self._unsubscribe(client)
            elif isinstance(message, protocol.Invite):
                await self._invite(client, message)
        except ProtocolError as error:
            metrics.media_signaling.labels(op=op, result=error.code.name.lower()).inc()
            raise
        metrics.media_signaling.labels(op=op, result="ok").inc()

    async def leave(self, client: Peer) -> None:
        """The connection is gone: end its publication (viewers told at once) and its viewing."""
        pub = self.ws_publishers.pop(client, None)
        if pub is not None:
            await self._end_publication(client.room_id or "", pub)
        viewer = self.ws_viewers.pop(client, None)
        if viewer is not None:
            room = self.rooms.get(viewer.room_id)
            if room is not None:
                await room.remove_viewer(viewer.viewer_id)
            if viewer.room_id in self.relays:
                await self._sync_relays(viewer.room_id)  # the last viewer here stops the pull
            self._maybe_close(viewer.room_id)
        who = client.identity
        if who is not None and who.role == "host" and not self._other_host_here(client):
            self.invites.pop(who.room, None)  # invitations end with the host's session
        self._update_gauges()

    async def _publish(self, client: Peer, message: protocol.Publish) -> None:
        who, room_id = self._who(client)
        if client in self.ws_publishers:
            raise ProtocolError(ErrorCode.MEDIA_ALREADY_PUBLISHING, "this connection publishes", message.cid)
        pub = await self.publish(who, room_id, message.sdp, message.cid)
        self.ws_publishers[client] = pub
        answer = advertise_address(pub.pc.localDescription.sdp, self.public_ip)
        frame: dict[str, Any] = {"t": "answer", "sdp": answer}
        if message.cid is not None:
            frame["cid"] = message.cid
        client.send(protocol.pack(frame))

    async def _unpublish(self, client: Peer, cid: Any) -> None:
        pub = self.ws_publishers.pop(client, None)
        if pub is None:
            raise ProtocolError(ErrorCode.MEDIA_BAD_STATE, "this connection is not publishing", cid)
        await self._end_publication(client.room_id or "", pub)

    async def _subscribe(self, client: Peer, cid: Any) -> None:
        who, room_id = self._who(client)
        if client in self.ws_viewers:
            raise ProtocolError(ErrorCode.MEDIA_BAD_STATE, "already subscribed", cid)
        self._check_viewer_limit(cid)
        if self.origin_of(room_id) is not None:  # media elsewhere: pull it here (cascade)
            self._room(room_id)
            await self._sync_relays(room_id, arriving=True)
        if client.closing:  # it left while this edge connected to the origin: maybe stop the pull
            self._spawn(self._sync_relays(room_id))
            return
        if client in self.ws_viewers:  # a second subscribe raced the first
            raise ProtocolError(ErrorCode.MEDIA_BAD_STATE, "already subscribed", cid)
        viewer = WsViewer(client, room_id, f"{who.uid}#{next(self._ids)}")
        self.ws_viewers[client] = viewer
        self._room(room_id)
        self._update_gauges()
        if not await self._offer(viewer, cid):
            frame: dict[str, Any] = {"t": "subscribed", "live": False}
            if cid is not None:
                frame["cid"] = cid
            client.send(protocol.pack(frame))

    async def _answer(self, client: Peer, message: protocol.Answer) -> None:
        viewer = self.ws_viewers.get(client)
        room = self.rooms.get(viewer.room_id) if viewer is not None else None
        if viewer is None or room is None:
            raise ProtocolError(ErrorCode.MEDIA_BAD_STATE, "no offer to answer: subscribe first", message.cid)
        async with viewer.lock:
            try:
                await handle_subscribe_answer(room, viewer.viewer_id, message.sdp)
            except MediaError as exc:
                if exc.code != "bad_state":  # the core dropped the viewer's connection
                    self.ws_viewers.pop(client, None)
                    self._update_gauges()
                raise media_error(exc, message.cid) from None
            again, viewer.renegotiate = viewer.renegotiate, False
        if again:
            self._spawn(self._offer(viewer))

    async def _unsubscribe(self, client: Peer) -> None:
        viewer = self.ws_viewers.pop(client, None)
        if viewer is None:
            return
        room = self.rooms.get(viewer.room_id)
        if room is not None:
            await room.remove_viewer(viewer.viewer_id)
        if viewer.room_id in self.relays:
            await self._sync_relays(viewer.room_id)  # the last viewer here stops the pull
        self._maybe_close(viewer.room_id)
        self._update_gauges()

    async def _invite(self, client: Peer, message: protocol.Invite) -> None:
        who, room_id = self._who(client)
        if who.role != "host":
            raise ProtocolError(ErrorCode.MEDIA_FORBIDDEN, "only a host may invite co-hosts", message.cid)
        if message.uid == who.uid:
            raise ProtocolError(ErrorCode.BAD_RECIPIENT, "cannot invite yourself", message.cid)
        invited = self.invites.setdefault(room_id, set())
        if message.uid not in invited and len(invited) >= MAX_INVITES_PER_ROOM:
            raise ProtocolError(ErrorCode.MEDIA_TOO_MANY_PUBLISHERS, "too many invitations", message.cid)
        invited.add(message.uid)
        now = protocol.now_ms()
        frame = {"t": "invited", "room": room_id, "uid": who.uid, "name": who.name, "ts": now}
        delivered = await self.broker.send_dm(message.uid, protocol.pack(frame))
        ack: dict[str, Any] = {"t": "invite_ack", "uid": message.uid, "delivered": delivered, "ts": now}
        if message.cid is not None:
            ack["cid"] = message.cid
        client.send(protocol.pack(ack))

    def _who(self, client: Peer) -> tuple[Identity, str]:
        who = client.identity
        assert who is not None and client.room_id is not None
        return who, client.room_id

    def _other_host_here(self, client: Peer) -> bool:
        """Another connection of the same host is still in the room on this node."""
        room = self.hub.rooms.get(client.room_id or "")
        who = client.identity
        if room is None or who is None:
            return False
        return any(c is not client and w.uid == who.uid for c, w in room.members.items())

    # -- publishing (WebSocket and WHIP) -----------------------------------------------------

    def may_publish(self, who: Identity, room_id: str) -> bool:
        return who.role == "host" or who.uid in self.invites.get(room_id, ())

    async def publish(self, who: Identity, room_id: str, sdp: str, ref: Any = None) -> Publication:
        """Answer a publisher's offer; raises ProtocolError with a MEDIA_* code."""
        if not self.may_publish(who, room_id):
            raise ProtocolError(ErrorCode.MEDIA_FORBIDDEN, "only hosts and invited co-hosts may publish", ref)
        self._check_node(room_id, ref)
        check_offer_kinds(sdp, ref)
        await self.hub.open_room(room_id)  # a WHIP-only room still needs its event channel
        await self._claim_room(room_id, ref)
        room = self._room(room_id)
        if who.uid in room.publications:
            raise ProtocolError(ErrorCode.MEDIA_ALREADY_PUBLISHING, f"{who.uid!r} already publishes", ref)
        self.identities[(room_id, who.uid)] = who
        try:
            await handle_publish_offer(room, who.uid, sdp)
        except MediaError as exc:
            if who.uid not in room.publications:
                self.identities.pop((room_id, who.uid), None)
            self._release_if_unused(room_id)
            self._maybe_close(room_id)
            raise media_error(exc, ref) from None
        self._update_gauges()
        return room.publications[who.uid]

    async def _end_publication(self, room_id: str, pub: Publication) -> None:
        room = self.rooms.get(room_id)
        if room is not None:
            await room.remove_publisher(pub.publisher_id, pub)  # "unpublished" -> live off
        self._maybe_close(room_id)
        self._update_gauges()

    # -- the media claim: one origin per room, dropped when it dies ------------------------------

    async def _claim_room(self, room_id: str, ref: Any = None) -> None:
        """Take (or renew) the room's media for this node before a publisher goes live."""
        try:
            holder = await self.claims.claim(room_id, self.node_id, self.claim_ttl)
        except (RedisError, OSError) as exc:
            raise ProtocolError(ErrorCode.MEDIA_UNAVAILABLE, f"media claim unavailable: {exc}", ref) from None
        if holder != self.node_id:
            raise ProtocolError(
                ErrorCode.MEDIA_WRONG_NODE, f"media of this room is held by node {holder}, retry later", ref
            )

    def _release_if_unused(self, room_id: str) -> None:
        if not self._local_publishers(room_id):
            self._spawn(self._release(room_id))

    async def _release(self, room_id: str) -> None:
        if self._local_publishers(room_id):
            return
        with contextlib.suppress(RedisError, OSError):  # not released: it expires within the TTL
            await self.claims.release(room_id, self.node_id)

    async def _claims_forever(self) -> None:
        failures, logged_at = 0, float("-inf")
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.claim_ttl / 4)
            try:
                await self.claims_once()
            except (RedisError, OSError) as exc:
                failures += 1  # a Redis outage: one line per 10 s, not one per round
                if loop.time() - logged_at >= 10:
                    log.warning("media: claim renewal failed (%d times): %s", failures, exc)
                    failures, logged_at = 0, loop.time()

    async def claims_once(self) -> None:
        """Renew this node's claims (re-announcing its publishers if they were dropped meanwhile),
        and drop the `live` state of rooms whose origin stopped renewing."""
        me = self.node_id
        for room_id in [r for r in self.rooms if self._local_publishers(r)]:
            holder = await self.claims.claim(room_id, me, self.claim_ttl)
            view = self.hub.rooms.get(room_id)
            if holder != me or view is None:
                log.warning("media: room %s is claimed by %s while publishing here", room_id, holder)
                continue
            for pid, pub in list(self.rooms[room_id].publications.items()):
                who = self.identities.get((room_id, pid))
                if pub.ready and who is not None and pid not in view.publishers:
                    self._emit_live(room_id, who, True)  # a reaper dropped us (e.g. Redis lost the claim)
        for room_id, relays in list(self.relays.items()):  # keep our relay registry entries alive
            if any(r.via is None and r.ready.is_set() and not r.ended for r in relays.values()):
                await self._register_edge(room_id)
        suspects = [
            room_id
            for room_id, view in self.hub.rooms.items()
            if view.publishers and view.media_node not in (None, me)
        ]
        for room_id, holder in (await self.claims.holders(suspects)).items():
            if holder is None:
                self._spawn(self._reap(room_id))

    async def _reap(self, room_id: str) -> None:
        """The origin stopped renewing: announce its publishers gone, holding the claim meanwhile
        so that no publisher can go live before the `live` off events are sequenced."""
        view = self.hub.rooms.get(room_id)
        dead = view.media_node if view is not None else None
        reaper = f"reaper.{self.node_id}"
        if dead is None or await self.claims.claim(room_id, reaper, self.claim_ttl) != reaper:
            return
        try:
            view = self.hub.rooms.get(room_id)
            if view is None or view.media_node != dead:
                return
            log.warning("media: node %s stopped renewing room %s: its publishers are gone", dead, room_id)
            metrics.media_failovers.inc()
            now = protocol.now_ms()
            for uid, name in list(view.publishers.items()):
                view.set_live(Identity(uid=uid, name=name, room=room_id, role="host"), False, dead, None, now)
            self.hub.mark_dirty(room_id)
            for _ in range(100):  # until our `live` off events come back sequenced
                if self.hub.rooms.get(room_id) is not view or view.media_node != dead:
                    break
                await asyncio.sleep(0.02)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await self.claims.release(room_id, reaper)

    # -- WHIP / WHEP resources ------------------------------------------------------------------

    async def whip(
        self, who: Identity, room_id: str, sdp: str, ip: str = "?", *, local: bool = False
    ) -> tuple[str, str]:
        """RFC 9725 ingest: returns (resource id, answer SDP).

        `local`: the node's own publisher (RTMP ingest, server.edge.rtmp) gets the answer's
        candidates as gathered, not rewritten to the public IP (no NAT between us and us).
        """
        self._hold_session(who, room_id, ip)
        try:
            pub = await self.publish(who, room_id, sdp)
        except BaseException:
            self._release_session(room_id, who.uid, ip)
            raise
        rid = secrets.token_urlsafe(16)
        self._add_resource(rid, Resource("whip", room_id, who.uid, who.uid, pub, ip))
        answer = pub.pc.localDescription.sdp
        return rid, answer if local else advertise_address(answer, self.public_ip)

    async def whep(
        self,
        who: Identity,
        room_id: str,
        sdp: str,
        ip: str = "?",
        publisher: str | None = None,
        relay: bool = False,
    ) -> tuple[str, str]:
        """WHEP playback: the viewer offers recvonly m-lines; returns (resource id, answer).

        `publisher`: only that publisher's tracks. `relay`: an edge node pulling the room's
        media; answered only where the publication itself lives (no relaying of relays).
        """
        self._check_viewer_limit()
        check_offer_kinds(sdp)
        if relay:
            room = self.rooms.get(room_id)
            pub = room.publications.get(publisher or "") if room is not None else None
            upstream = self.relays.get(room_id, {}).get(publisher or "")
            fed_by_edge = upstream is not None and (
                upstream.via is not None or upstream.ended or not upstream.ready.is_set()
            )
            if pub is None or fed_by_edge:  # only origins and edges fed by the origin serve edges
                raise ProtocolError(
                    ErrorCode.MEDIA_WRONG_NODE, f"{publisher!r} does not publish on this node"
                )
        else:
            await self.hub.open_room(room_id)  # the room's live events tell where its media is
            self._hold_session(who, room_id, ip)
            if self.origin_of(room_id) is not None:  # media elsewhere: pull it here (cascade)
                self._room(room_id)
                try:
                    await self._sync_relays(room_id, arriving=True)
                except BaseException:
                    self._release_session(room_id, who.uid, ip)
                    raise
            room = self._room(room_id)
        viewer_id = f"{who.uid}#whep{next(self._ids)}"
        try:
            answer = await handle_subscribe_offer(
                room, viewer_id, sdp, publisher_ids=[publisher] if publisher else None
            )
        except MediaError as exc:
            if not relay:
                self._release_session(room_id, who.uid, ip)
            self._maybe_close(room_id)
            raise media_error(exc) from None
        except BaseException:
            if not relay:
                self._release_session(room_id, who.uid, ip)
            raise
        rid = secrets.token_urlsafe(16)
        self._add_resource(
            rid, Resource("whep", room_id, who.uid, viewer_id, room.subscriptions[viewer_id], ip, relay)
        )
        self._update_gauges()
        return rid, answer if relay else advertise_address(answer, self.public_ip)

    def _hold_session(self, who: Identity, room_id: str, ip: str) -> None:
        """Take a WHIP/WHEP slot of the user in the room and of the IP, or refuse (4612)."""
        key = f"{room_id}|{who.uid}"
        if not self.user_sessions.acquire(key):
            raise ProtocolError(
                ErrorCode.MEDIA_TOO_MANY_SESSIONS,
                f"at most {self.user_sessions.limit} media sessions per user in a room",
            )
        if not self.ip_sessions.acquire(ip):
            self.user_sessions.release(key)
            raise ProtocolError(
                ErrorCode.MEDIA_TOO_MANY_SESSIONS,
                f"at most {self.ip_sessions.limit} media sessions per address",
            )

    def _release_session(self, room_id: str, uid: str, ip: str) -> None:
        self.user_sessions.release(f"{room_id}|{uid}")
        self.ip_sessions.release(ip)

    def _add_resource(self, rid: str, res: Resource) -> None:
        self.resources[rid] = res
        self._ice_watches[rid] = asyncio.get_running_loop().create_task(self._ice_watch(rid, res))

    def _forget_resource(self, rid: str) -> Resource | None:
        """Drop a resource and free its slots: every path that ends a session comes here."""
        res = self.resources.pop(rid, None)
        if res is not None and not res.relay:
            self._release_session(res.room_id, res.uid, res.ip)
        watch = self._ice_watches.pop(rid, None)
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
        return res

    async def _ice_watch(self, rid: str, res: Resource) -> None:
        """A session whose ICE has not connected within media_ice_timeout is torn down: a client
        that POSTs offers and never connects must not keep viewer slots."""
        pc = res.handle.pc
        connected = asyncio.Event()

        def check() -> None:
            if pc.iceConnectionState in ("connected", "completed"):
                connected.set()

        pc.on("iceconnectionstatechange", check)
        try:
            check()
            await asyncio.wait_for(connected.wait(), self.config.media_ice_timeout)
        except TimeoutError:
            if self.resources.get(rid) is res:
                log.info("media: %s session %s of %s did not connect ICE in time", res.kind, rid[:6], res.uid)
                await self._end_resource(rid, res)
        finally:
            pc.remove_listener("iceconnectionstatechange", check)
            if self._ice_watches.get(rid) is asyncio.current_task():
                del self._ice_watches[rid]

    async def delete_resource(self, kind: str, room_id: str, rid: str, who: Identity) -> bool:
        """End a WHIP/WHEP session; only the user who created it may (same token subject)."""
        res = self.resources.get(rid)
        if res is None or res.kind != kind or res.room_id != room_id:
            return False
        if res.uid != who.uid:
            raise ProtocolError(ErrorCode.MEDIA_FORBIDDEN, "not your session")
        await self._end_resource(rid, res)
        return True

    def on_sanction(self, sanction: Sanction) -> None:
        """A ban or kick (from any node, watched through the broker) ends the user's WHIP/WHEP
        sessions in the room too; the guard refuses new ones."""
        if sanction.kind == "mute" or sanction.lifted:
            return
        for rid, res in list(self.resources.items()):
            if res.room_id == sanction.room and res.uid == sanction.uid:
                self._forget_resource(rid)
                self._spawn(self._remove_handle(res))

    async def _end_resource(self, rid: str, res: Resource) -> None:
        self._forget_resource(rid)
        await self._remove_handle(res)

    async def _remove_handle(self, res: Resource) -> None:
        room = self.rooms.get(res.room_id)
        if room is not None:
            if isinstance(res.handle, Publication):
                await room.remove_publisher(res.peer_id, res.handle)
            else:
                await room.remove_viewer(res.peer_id, res.handle)
        if res.room_id in self.relays:
            await self._sync_relays(res.room_id)  # the last viewer here stops the pull
        self._maybe_close(res.room_id)
        self._update_gauges()

    # -- rooms, renegotiation, live events --------------------------------------------------------

    def _room(self, room_id: str) -> MediaRoom:
        room = self.rooms.get(room_id)
        if room is None:
            room = MediaRoom(room_id, self.media_config)
            room.listeners.append(lambda event, pid: self._on_room_event(room_id, event, pid))
            self.rooms[room_id] = room
            self.hub.pin(room_id)
        return room

    def _maybe_close(self, room_id: str) -> None:
        """Forget a MediaRoom with nobody in it, so the node may close the room too."""
        room = self.rooms.get(room_id)
        if room is None or room.publications or room.subscriptions:
            return
        if any(v.room_id == room_id for v in self.ws_viewers.values()):
            return
        if any(r.room_id == room_id for r in self.resources.values()):
            return
        del self.rooms[room_id]
        self.hub.unpin(room_id)
        self._spawn(room.close())

    def _on_room_event(self, room_id: str, event: str, publisher_id: str) -> None:
        who = self.identities.get((room_id, publisher_id))
        relay = self.relays.get(room_id, {}).get(publisher_id)
        if event == "unpublished" and relay is not None and relay.ended and not relay.closed:
            self._spawn(self._retry_relay(room_id))  # the pulled stream broke: pull again if still live
        if event == "unpublished":
            self.identities.pop((room_id, publisher_id), None)
            if who is not None:  # one of ours (not a relay): the last one frees the room's claim
                self._release_if_unused(room_id)
            for rid, res in list(self.resources.items()):  # the publisher's ICE failed or it left
                pub = res.handle
                if res.room_id == room_id and isinstance(pub, Publication) and pub.ended.is_set():
                    self._forget_resource(rid)
            for client, pub in list(self.ws_publishers.items()):
                if client.room_id == room_id and pub.publisher_id == publisher_id and pub.ended.is_set():
                    del self.ws_publishers[client]
            self._maybe_close(room_id)
            self._update_gauges()
        if who is not None:
            self._emit_live(room_id, who, event == "published")
        if event == "published":
            for viewer in list(self.ws_viewers.values()):
                if viewer.room_id == room_id:
                    self._spawn(self._offer(viewer))

    def _emit_live(self, room_id: str, who: Identity, on: bool) -> None:
        room = self.hub.rooms.get(room_id)
        if room is None:  # not expected: the room stays open while media is held here
            log.warning("media: live event for room %s that is not open", room_id)
            return
        media = self.rooms.get(room_id)
        codec = media.video_codec if media is not None else None
        room.set_live(who, on, self.node_id, self.url, protocol.now_ms(), codec)
        self.hub.mark_dirty(room_id)

    async def _offer(self, viewer: WsViewer, cid: Any = None) -> bool:
        """(Re)offer the room's tracks to a WS viewer; False when there is nothing to offer."""
        async with viewer.lock:
            if self.ws_viewers.get(viewer.client) is not viewer:
                return False
            room = self.rooms.get(viewer.room_id)
            if room is None:
                return False
            sub = room.subscriptions.get(viewer.viewer_id)
            if sub is not None and sub.pc.signalingState != "stable":
                viewer.renegotiate = True  # answered later: re-offer then
                return True
            new = [
                (pid, kind)
                for pid, pub in room.publications.items()
                for kind in pub.kinds
                if pub.ready and (sub is None or not sub.has(pid, kind))
            ]
            if not new:
                return False
            try:
                sdp = await create_subscribe_offer(
                    room, viewer.viewer_id, [p.publisher_id for p in room.publications.values() if p.ready]
                )
            except MediaError as exc:
                if cid is None:  # a renegotiation nobody asked for: log, the viewer keeps what it has
                    log.info("media: re-offer to %s failed: %s", viewer.viewer_id, exc)
                    return True
                raise media_error(exc, cid) from None
            tracks = room.subscriptions[viewer.viewer_id].track_map()
            frame: dict[str, Any] = {
                "t": "offer",
                "sdp": advertise_address(sdp, self.public_ip),
                "tracks": tracks,
            }
            if cid is not None:
                frame["cid"] = cid
            viewer.client.send(protocol.pack(frame))
            return True

    # -- checks -------------------------------------------------------------------------------------

    def _check_node(self, room_id: str, ref: Any = None) -> None:
        """A room's publishers share one node: refuse a publisher here if another node holds them."""
        view = self.hub.rooms.get(room_id)
        owner = view.media_node if view is not None else None
        if owner is not None and self.origin_of(room_id) is not None:
            raise ProtocolError(
                ErrorCode.MEDIA_WRONG_NODE, f"media of this room is on node {owner} ({view.media_url})", ref
            )

    def _check_viewer_limit(self, ref: Any = None) -> None:
        if self.viewer_count >= self.max_viewers:
            raise ProtocolError(
                ErrorCode.MEDIA_TOO_MANY_VIEWERS,
                f"this node serves at most {self.max_viewers} media viewers",
                ref,
            )

    def _prune(self) -> None:
        """Forget WHEP sessions and WS viewers whose connection the core closed (ICE failed)."""
        for rid, res in list(self.resources.items()):
            room = self.rooms.get(res.room_id)
            if res.kind == "whep" and (room is None or room.subscriptions.get(res.peer_id) is not res.handle):
                self._forget_resource(rid)
                if res.room_id in self.relays:
                    self._spawn(self._sync_relays(res.room_id))
                self._maybe_close(res.room_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("media: background task failed", exc_info=task.exception())

    # -- stats -> Prometheus ------------------------------------------------------------------------

    def _update_gauges(self) -> None:
        metrics.media_rooms.set(len(self.rooms))
        metrics.media_publishers.set(sum(len(r.publications) for r in self.rooms.values()))
        metrics.media_viewers.set(self.viewer_count)
        metrics.media_relayed.set(sum(len(r) for r in self.relays.values()))

    async def _stats_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.media_stats_interval)
            try:
                await self.sample()
            except Exception:
                log.exception("media: stats sample failed")

    async def sample(self) -> None:
        """One stats sample: rates from the core's counters, loss and RTT from aiortc's RTCP stats."""
        now = time.monotonic()
        elapsed = max(now - self._last.at, 1e-3)
        previous, current = self._last.values, {}
        self._prune()
        for room in list(self.rooms.values()):
            for pub in list(room.publications.values()):
                for kind, fanout in pub.fanouts.items():
                    key = (f"p:{room.room_id}:{pub.publisher_id}", kind)
                    current[key] = (fanout.stats.bytes_in, fanout.stats.frames_in)
                    drops_key = (f"d:{room.room_id}:{pub.publisher_id}", kind)
                    current[drops_key] = (fanout.stats.viewer_drops, 0)
                    new_drops = fanout.stats.viewer_drops - previous.get(drops_key, (0, 0))[0]
                    if new_drops > 0:
                        metrics.media_viewer_drops.inc(new_drops)
                    if key in previous:
                        b0, f0 = previous[key]
                        metrics.media_publisher_bitrate.labels(kind=kind).observe(
                            8 * (fanout.stats.bytes_in - b0) / elapsed
                        )
                        if kind == "video":
                            metrics.media_publisher_fps.observe((fanout.stats.frames_in - f0) / elapsed)
                for kind, transceiver in pub.transceivers.items():
                    for stat in (await transceiver.receiver.getStats()).values():
                        if getattr(stat, "type", "") == "inbound-rtp":
                            key = (f"l:{room.room_id}:{pub.publisher_id}", kind)
                            current[key] = (stat.packetsLost, stat.packetsReceived)
                            if key in previous:
                                lost = stat.packetsLost - previous[key][0]
                                got = stat.packetsReceived - previous[key][1]
                                if lost + got > 0:
                                    metrics.media_publisher_loss.observe(max(0, lost) / (lost + got))
            for sub in list(room.subscriptions.values()):
                for t in sub.tracks:
                    if not t.active:
                        continue
                    key = (f"v:{room.room_id}:{sub.viewer_id}:{t.publisher_id}", t.kind)
                    current[key] = (t.track.stats.bytes_forwarded, 0)
                    if key in previous:
                        rate = 8 * (t.track.stats.bytes_forwarded - previous[key][0]) / elapsed
                        metrics.media_viewer_bitrate.labels(kind=t.kind).observe(rate)
                    for stat in (await t.transceiver.sender.getStats()).values():
                        # before the viewer's first receiver report aiortc has no RTT yet (None)
                        if getattr(stat, "type", "") == "remote-inbound-rtp":
                            if stat.roundTripTime is not None:
                                metrics.media_viewer_rtt.observe(stat.roundTripTime)
                            if stat.fractionLost is not None:
                                metrics.media_viewer_loss.observe(stat.fractionLost / 256)
        self._last = _Sample(at=now, values=current)
        self._update_gauges()
