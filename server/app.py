"""The composition root: build every component, serve WebSocket + HTTP, shut down cleanly."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import signal
import threading
from pathlib import Path

from websockets.asyncio.server import Server, ServerConnection, serve

from server.abuse.guard import Guard
from server.abuse.moderation import Moderation
from server.admin.routes import AdminApi, add_admin_routes
from server.analytics.recorder import make_analytics
from server.broker.base import Broker
from server.broker.follow_store import make_follow_store
from server.broker.gift_store import make_gift_store
from server.broker.idempotency import make_send_log
from server.broker.memory import MemoryBroker
from server.broker.pk_store import make_pk_store
from server.broker.redis_clients import RedisClients
from server.config import Config, ConfigError
from server.delivery.fanout import RoomFanout
from server.delivery.hub import Hub
from server.edge.client import Client, Services, WsWriter
from server.edge.connection import Handler, handler_table
from server.edge.handshake import HeadFirstConnection
from server.edge.hls import HlsHttp
from server.edge.http import HttpRoutes
from server.edge.replay import ReplayHttp
from server.edge.rtmp import RtmpIngest
from server.edge.rtmp_key import PublishKeyHttp
from server.edge.whip import MediaHttp
from server.logs import QuietFilter
from server.media import use_loopback_candidates
from server.media.claim import MediaClaims, RedisMediaClaims
from server.media.gateway import MediaGateway
from server.media.hls.archive import Archive
from server.media.hls.live import HlsService
from server.media.hls.recording import RecordConfig
from server.node.answers import Answers
from server.node.fans import Fans
from server.node.gifts import GiftDesk
from server.node.node import Node
from server.node.pk import Links
from server.room.gifts import Catalogue, CatalogueError
from server.webhooks.callback import GiftCallback
from server.webhooks.sender import Webhooks, make_webhooks
from server.wire import protocol

log = logging.getLogger("liveroom")
WS_LOG = logging.getLogger("liveroom.ws")
WS_LOG.addFilter(QuietFilter())

# Seconds from SIGTERM to exit, whatever Redis does (down, or accepting and never answering):
# past it the graceful stop is cancelled, and a thread ends the process if even that hangs.
SHUTDOWN_TIMEOUT = 15.0


def make_broker(config: Config) -> Broker:
    node_id = config.node_id or f"node-{secrets.token_hex(3)}"
    if config.redis_url:
        from server.broker.redis import RedisBroker  # imported only when used

        if not config.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("--redis must be a redis://host:port/db URL")
        return RedisBroker(
            config.redis_url,
            node_id,
            history_size=config.history_size,
            recent_size=config.recent_size,
            history_ttl=config.history_ttl,
            presence_ttl=config.presence_ttl,
            dm_keep=config.dm_keep,
            dm_ttl=config.dm_ttl,
            dm_per_sender=config.dm_store_per_sender,
            cluster=config.redis_cluster,
            wait_replicas=None if config.redis_wait_replicas < 0 else config.redis_wait_replicas,
            wait_degrade=config.redis_wait_degrade,
            replica_check_s=config.redis_replica_check,
            wait_timeout_ms=config.redis_wait_timeout,
        )
    return MemoryBroker(
        node_id=node_id,
        history_size=config.history_size,
        recent_size=config.recent_size,
        history_ttl=config.history_ttl,
        dm_store_users=config.dm_store_users,
        dm_store_bytes=config.dm_store_bytes,
        dm_ttl=config.dm_ttl,
        dm_per_sender=config.dm_store_per_sender,
    )


def load_catalogue(path: str) -> Catalogue:
    """The gift catalogue file (--gift-catalogue), or the built-in one."""
    if not path:
        return Catalogue()
    try:
        with open(path, encoding="utf-8") as file:
            return Catalogue.parse(file.read(), path)
    except (OSError, CatalogueError) as exc:
        raise ConfigError(f"gift catalogue: {exc}") from None


def make_archive(config: Config, webhooks: Webhooks | None) -> Archive | None:
    """--record DIR: the node's recordings (checked writable now), each announced by a signed
    `recording.ready` webhook (its id names the recording: a receiver drops repeats)."""
    if not config.record:
        return None
    archive = Archive(RecordConfig(Path(config.record), config.record_max_mb * 1024 * 1024))
    try:
        archive.check()
    except OSError as exc:
        raise ConfigError(f"--record {config.record}: {exc}") from None
    if webhooks is not None:
        archive.ready_listeners.append(
            lambda meta: webhooks.emit(
                "recording.ready", meta, f"recording.ready:{meta['room']}:{meta['id']}"
            )
        )
    return archive


def gift_callback(config: Config) -> GiftCallback | None:
    """The signed authorisation callback, or None: a demo balance per user."""
    if not config.gift_auth_url:
        return None
    secret = config.gift_auth_secret or config.webhook_secret
    return GiftCallback(config.gift_auth_url, secret, config.gift_auth_timeout)


class App:
    """The composition root: builds every component of one node and passes each what it needs.

    No component builds another or reaches back for what it was not given; the order below
    is the direction of their dependencies (docs/ARCHITECTURE.md). Used by `liveroom serve`
    and, in-process, by the tests.
    """

    def __init__(self, config: Config, broker: Broker | None = None) -> None:
        self.config = config
        self.broker = broker or make_broker(config)
        node_id = config.node_id or self.broker.node_id
        # the node's Redis clients besides the broker's own connection: claims, send log, analytics
        self.redis = RedisClients(config.redis_url, config.redis_cluster) if config.redis_url else None
        commands = self.redis.commands if self.redis is not None else None
        self.fanout = RoomFanout(config, WsWriter())
        self.hub = Hub(config, self.broker, self.fanout)
        self.analytics = make_analytics(  # hooks only buffer; flushed to the store each second
            self.redis.text if self.redis is not None else None,
            node_id,
            config.analytics_flush,
            config.analytics_funnel,
            pipeline=getattr(self.broker, "pipelined", None),  # the Redis broker's, when it is one
        )
        self.webhooks = make_webhooks(  # signed POSTs of room/host/viewer/moderation events, or None
            config.webhook_url, config.webhook_secret, node_id, commands
        )
        if self.webhooks is not None:
            self.analytics.listeners.append(self.webhooks.on_records)
        self.archive = make_archive(config, self.webhooks)  # --record: recordings, or None
        if self.archive is not None:
            self.hub.on_events(self.archive.on_events)  # the recorded rooms' danmaku
        self.moderation = Moderation(self.broker.limits, self.hub, self.webhooks, config.tick_ms)
        self.broker.watch_sanctions(self.moderation.on_sanction)
        self.guard = Guard(config, self.broker.limits, self.moderation)  # rate limits, admission, content
        claims = RedisMediaClaims(commands) if commands is not None else MediaClaims()
        self.media = MediaGateway(  # WebRTC of this node's rooms
            config, self.broker.inbox, self.hub, node_id, claims, self.guard.keyring.signing[1]
        )
        self.sends = make_send_log(commands)  # cid -> first answer
        self.node = Node(config, self.broker, self.hub, self.guard, self.media, self.analytics, self.sends)
        self.answers = Answers(config, self.hub, self.analytics)  # replies, pins, product edits
        self.gifts = GiftDesk(  # catalogue, authorisation, combos, leaderboard, gift.sent
            config,
            self.hub,
            make_gift_store(commands),
            self.sends,
            load_catalogue(config.gift_catalogue),
            gift_callback(config),
            self.webhooks,
        )
        self.node.gift_catalogue = self.gifts.catalogue.describe()  # in every snapshot
        self.fans = Fans(  # follows, scheduled lives, live notices on the user channel
            config,
            self.hub,
            self.broker,
            make_follow_store(commands),
            self.webhooks,
        )
        self.node.on_live.append(self.fans.on_live)
        self.links = Links(  # cross-room links and PK rounds, scored from gifts and likes
            config, self.hub, self.broker, make_pk_store(commands), node_id
        )
        self.gifts.listeners.append(self.links.on_gift)
        self.node.on_likes.append(self.links.on_likes)
        self.services = Services(config, self.node, self.guard, self.handler_table())
        self.routes = HttpRoutes(config, self.guard, lambda: self.node.ready, http_url=lambda: self.media.url)
        self.broker.watch_sanctions(self.media.on_sanction)  # a ban or kick ends WHIP/WHEP sessions too
        self.media_http = MediaHttp(config, self.guard, self.media, self.hub)  # WHIP/WHEP, http_port
        self.admin = AdminApi(
            config,
            self.broker,
            self.hub,
            self.node,
            self.analytics,
            self.moderation,
            self.guard,
            self.archive,
        )
        add_admin_routes(self.media_http.app, self.admin)  # operator API (docs/API.md), same port
        # LL-HLS per live room, on the first request (or when a host goes live, recording on)
        self.hls = HlsService(self.media, archive=self.archive)
        HlsHttp(self.guard, self.media, self.hls).add_routes(self.media_http.app)
        ReplayHttp(self.guard, self.archive).add_routes(self.media_http.app)
        self.rtmp = RtmpIngest(self.guard, self.media) if config.rtmp_port >= 0 else None
        PublishKeyHttp(self.guard, lambda: self.rtmp_port).add_routes(self.media_http.app)  # RTMP keys
        self.server: Server | None = None
        self.http_port = 0
        self.rtmp_port = 0

    def handler_table(self) -> dict[type, Handler]:
        """The one routing table: each message type a joined connection may send -> its handler
        (the guard has checked it already; join, leave and ping are the connection's own)."""
        node = self.node
        return handler_table(
            {
                protocol.Danmaku: node.danmaku,
                protocol.Like: node.like,
                protocol.DirectMessage: node.direct_message,
                protocol.DmSeen: node.dm_seen,
                protocol.SlowMode: node.slow_mode,
                protocol.Viewers: node.viewers,
                protocol.Mod: self.moderation.handle,
                protocol.Block: self.moderation.handle,
                protocol.Stats: self.analytics.stats_message,
                protocol.Gift: self.gifts.handle,
                protocol.Follow: self.fans.handle,
                protocol.Schedule: self.fans.handle,
                protocol.Reserve: self.fans.handle,
                protocol.Link: self.links.handle,
                **dict.fromkeys(protocol.MEDIA_MESSAGES, self.media.handle),
                **dict.fromkeys(protocol.ANSWER_MESSAGES, self.answers.handle),
            }
        )

    async def _handle(self, ws: ServerConnection) -> None:
        if self.node.draining:
            await ws.close(1012, "server restarting, reconnect")
            return
        await Client(self.services, ws).run()

    async def start(self) -> None:
        await self.broker.start()
        self.server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self.routes,
            process_response=self.routes.process_response,
            create_connection=HeadFirstConnection,  # bytes after the request head wait for the answer
            logger=WS_LOG,  # per-connection lines at DEBUG only (QuietFilter)
            compression=None,  # per-connection deflate would defeat encode-once fan-out
            max_size=self.config.max_frame,
            max_queue=64,
            ping_interval=self.config.ping_interval,
            ping_timeout=self.config.ping_timeout,
            open_timeout=self.config.join_timeout,
            server_header=None,
            # asyncio's default of 100 overflows in join bursts (docs/BENCHMARKS.md): the kernel
            # then drops SYNs and clients stall 1-3 s in retransmits; admission control decides instead
            backlog=4096,
            reuse_port=self.config.reuse_port or None,  # --workers: the kernel spreads connections
        )
        self.node.start()
        self.guard.start()
        self.analytics.start()
        if self.webhooks is not None:
            self.webhooks.start()
        if self.config.host in ("127.0.0.1", "localhost"):  # ICE candidates on loopback only
            use_loopback_candidates()
        self.http_port = await self.media_http.start(self.config.host, self.config.http_port)
        self.media.url = self.config.media_url or f"http://{self.config.host}:{self.http_port}"
        self.media.start()
        self.links.start()
        if self.rtmp is not None:  # encoders push RTMP; each stream is published like a WHIP host
            self.rtmp_port = await self.rtmp.start(self.config.host, self.config.rtmp_port)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting, flush pending batches, close clients with 1012, close the broker."""
        if self.server is not None:
            self.server.close(close_connections=False)
        self.node.draining = True
        await self.guard.stop()
        await self.node.stop()  # the last tick
        await self.analytics.stop()
        await self.hls.close()  # recordings finish here: their recording.ready goes out below
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.node.close_connections()
        await self.sends.close()
        await self.gifts.close()
        await self.fans.close()
        await self.links.close()
        if self.rtmp is not None:
            await self.rtmp.stop()
        await self.media_http.stop()
        await self.media.close()
        if self.server is not None:
            await self.server.wait_closed()
        await self.broker.close()
        if self.redis is not None:
            await self.redis.close()


def tune_gc() -> None:
    """Keep the cyclic GC from pausing the loop for a full pass over every connection's objects.

    With thousands of connections a gen-2 collection walks them all and stalls joins and
    fan-out for 100+ ms (measured: join p99 230-260 ms -> 57-67 ms at 5,000 joins/500/s,
    docs/BENCHMARKS.md). Startup objects are frozen out of collection, and collections run
    less often; the server creates few reference cycles, so memory does not grow from it.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


async def run(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    app = App(config)
    await app.start()
    tune_gc()
    url = f"http://{config.host}:{app.port}"
    print(
        f"liveroom listening on {url} (node {app.node.node_id}, broker {type(app.broker).__name__})",
        flush=True,
    )
    print(f"demo page: {url}/room/demo", flush=True)
    print(f"media (WHIP/WHEP) on http://{config.host}:{app.http_port}", flush=True)
    if app.rtmp is not None:
        print(f"RTMP ingest on rtmp://{config.host}:{app.rtmp_port}/live", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.guard.reload)  # re-read the banned-words file
    demo = None
    if config.demo:  # a Python host streaming a test pattern into room "demo" (its own process)
        from server.demo import start_demo_host

        demo = await start_demo_host(config, app.port)
    await stop.wait()
    log.info("shutting down")
    watchdog = threading.Timer(SHUTDOWN_TIMEOUT + 3, _exit_now)  # the loop itself may be stuck
    watchdog.daemon = True
    watchdog.start()
    try:
        async with asyncio.timeout(SHUTDOWN_TIMEOUT):
            if demo is not None:
                await demo.stop()
            await app.stop()
    except TimeoutError:
        log.warning("shutdown took over %.0f s: exiting without finishing it", SHUTDOWN_TIMEOUT)
    watchdog.cancel()


def _exit_now() -> None:
    log.warning("shutdown hung: exiting at once")
    logging.shutdown()
    os._exit(1)
