"""Prometheus metrics. Labels are bounded sets (message types, error codes): never per user or room."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

CLIENT_TYPES = frozenset(
    {
        "join",
        "leave",
        "danmaku",
        "like",
        "dm",
        "dm_seen",
        "ping",
        "stats",
        "publish",
        "unpublish",
        "subscribe",
        "unsubscribe",
        "answer",
        "invite",
    }
)

connections = Gauge("liveroom_connections", "Open WebSocket connections")
rooms = Gauge("liveroom_rooms", "Rooms with at least one local connection")
joins = Counter("liveroom_joins_total", "Successful joins")
join_latency = Histogram(
    "liveroom_join_seconds",
    "Connection open to snapshot written",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
messages_in = Counter("liveroom_messages_in_total", "Client messages accepted", ["type"])
rejections = Counter("liveroom_rejections_total", "Client messages or connections rejected", ["reason"])
batch_events = Histogram(
    "liveroom_batch_events", "Events per batch", buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
)
dropped_batches = Counter(
    "liveroom_dropped_batches_total", "Batches skipped for a viewer whose write buffer was full"
)
slow_consumer_closes = Counter(
    "liveroom_slow_consumer_closes_total", "Connections closed for falling too far behind"
)
dms = Counter("liveroom_dms_total", "Direct messages accepted", ["delivery"])


def message_type_label(kind: str) -> str:
    return kind if kind in CLIENT_TYPES else "other"


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST


# -- media (WebRTC SFU): aggregates only, never a per-user or per-room label -----------------
media_publishers = Gauge("liveroom_media_publishers", "Publications (hosts, co-hosts) on this node")
media_viewers = Gauge("liveroom_media_viewers", "Media viewers (WS subscribers + WHEP) on this node")
media_rooms = Gauge("liveroom_media_rooms", "Rooms with media on this node")
media_relays = Counter(
    "liveroom_media_relays_total",
    "Streams this node pulled from another node (cascading), by outcome",
    ["event"],
)
media_failovers = Counter(
    "liveroom_media_failovers_total",
    "Rooms whose origin node stopped renewing its media claim (this node reaped)",
)
media_relayed = Gauge("liveroom_media_relayed_streams", "Streams this node currently pulls from origin nodes")
media_signaling = Counter("liveroom_media_signaling_total", "Media signaling requests", ["op", "result"])
_BITRATE_BUCKETS = (16e3, 32e3, 64e3, 128e3, 256e3, 512e3, 1e6, 2e6, 4e6, 8e6)
media_publisher_bitrate = Histogram(
    "liveroom_media_publisher_bitrate_bps",
    "Ingest bitrate per published track",
    ["kind"],
    buckets=_BITRATE_BUCKETS,
)
media_publisher_fps = Histogram(
    "liveroom_media_publisher_fps",
    "Frames per second per published video track",
    buckets=(1, 5, 10, 15, 20, 25, 30, 45, 60),
)
media_publisher_loss = Histogram(
    "liveroom_media_publisher_loss_ratio",
    "Packets lost / expected from publishers, per sample",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
)
media_viewer_bitrate = Histogram(
    "liveroom_media_viewer_bitrate_bps",
    "Forwarded bitrate per viewer track",
    ["kind"],
    buckets=_BITRATE_BUCKETS,
)
media_viewer_loss = Histogram(
    "liveroom_media_viewer_loss_ratio",
    "Fraction lost reported by viewers (RTCP receiver reports)",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
)
media_viewer_rtt = Histogram(
    "liveroom_media_viewer_rtt_seconds",
    "Round-trip time to viewers (RTCP receiver reports)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
hls_requests = Counter(
    "liveroom_hls_requests_total",
    "LL-HLS requests this node answered 200 (behind a cache: its misses), by kind",
    ["kind"],  # playlist, blocking (reload), part, segment, init
)
rtmp_refusals = Counter(
    "liveroom_rtmp_refusals_total",
    "RTMP publishes refused at the rtmp door (nginx-rtmp drops the encoder: RTMP carries no error)",
    ["code"],  # the refusal's code name, e.g. TOKEN_EXPIRED, BANNED
)
media_viewer_drops = Counter(
    "liveroom_media_viewer_dropped_frames_total", "Frames dropped for viewers (bounded queues, keyframe gate)"
)


sampled_danmaku = Counter(
    "liveroom_sampled_danmaku_total",
    "Danmaku left out of a room's frames by its event budget (kept in history; senders get their own)",
)


class HotCounters:
    """Counters bumped for every batch of every room: plain ints, exported at scrape time.

    prometheus_client's `inc()` takes a lock; with thousands of active rooms that was a few
    per cent of a node's CPU for three counters.
    """

    __slots__ = ("batches", "fanout_writes", "room_frames")

    def __init__(self) -> None:
        self.batches = 0  # room batches fanned out to local viewers
        self.fanout_writes = 0  # batch frames written to viewer sockets
        self.room_frames = 0  # frames sent to a room's local viewers (merged batches count once)

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "liveroom_batches", "Room batches fanned out to local viewers", self.batches
        )
        yield CounterMetricFamily(
            "liveroom_fanout_writes", "Batch frames written to viewer sockets", self.fanout_writes
        )
        yield CounterMetricFamily(
            "liveroom_room_frames",
            "Batch frames sent to a room's local viewers (at most one per room per tick; batches merged)",
            self.room_frames,
        )


hot = HotCounters()
REGISTRY.register(hot)  # type: ignore[arg-type]


# -- Redis broker (server/broker/redis.py) --------------------------------------------------
broker_bad_messages = Counter(
    "liveroom_broker_bad_messages_total", "Messages from the broker that did not decode (dropped)"
)
broker_disconnects = Counter("liveroom_broker_disconnects_total", "Times the broker connection was lost")
broker_resyncs = Counter(
    "liveroom_broker_resyncs_total", "Room streams re-read after a gap or reconnect", ["outcome"]
)
room_resets = Counter(
    "liveroom_room_resets_total",
    "Rooms whose stream restarted under the node, by how their connections were told",
    ["told"],  # snapshot: in-band on the live connection; reconnect: closed with 1012
)
broker_local_batches = Counter(
    "liveroom_broker_local_batches_total", "Batches sequenced locally while the broker was unreachable"
)
broker_kept_dropped = Counter(
    "liveroom_broker_kept_dropped_total",
    "Events of rooms closed on this node dropped while waiting for their Redis shard (over the bound)",
)
broker_abuse_fallbacks = Counter(
    "liveroom_broker_abuse_fallbacks_total",
    "Abuse checks answered from this node alone because the broker was unreachable (fail open)",
    ["op"],
)
broker_usage_exchanges = Counter(
    "liveroom_broker_usage_exchanges_total", "Rate-limit usage exchanges with the other nodes (done)"
)
broker_dm_unreplicated = Counter(
    "liveroom_broker_dm_unreplicated_total",
    "DMs stored on a Redis primary and acked with replicated=false: no replica confirmed them in time (WAIT)",
)
broker_dm_refused = Counter(
    "liveroom_broker_dm_refused_total",
    "DMs refused with 4501 before anything was stored, per Redis shard and reason",
    ["shard", "reason"],
)
broker_shard_replicas = Gauge(
    "liveroom_broker_shard_replicas", "Replicas a Redis primary reports as connected", ["shard"]
)
broker_shard_up = Gauge(
    "liveroom_broker_shard_up", "1 while this node's connections to a Redis shard serve, else 0", ["shard"]
)
broker_tick_pipelines = Counter(
    "liveroom_broker_tick_pipelines_total",
    "Ticks (or single publishes) sent to Redis as one pipeline per shard",
)
tick_seconds = Histogram(
    "liveroom_tick_seconds",
    "Duration of one tick: draining every changed room and publishing them (one round trip per shard)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
tick_rooms = Counter("liveroom_tick_rooms_total", "Room publishes handed to the broker by ticks")
unencodable_events = Counter(
    "liveroom_events_unencodable_total",
    "Events dropped on the hot path because they could not be encoded (e.g. a lone surrogate)",
)
