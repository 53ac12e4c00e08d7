"""Prometheus metrics. Labels are bounded sets (message types, error codes): never per user or room."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

CLIENT_TYPES = frozenset({"join", "leave", "danmaku", "like", "dm", "ping"})

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
batches = Counter("liveroom_batches_total", "Room batches fanned out to local viewers")
batch_events = Histogram(
    "liveroom_batch_events", "Events per batch", buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
)
fanout_writes = Counter("liveroom_fanout_writes_total", "Batch frames written to viewer sockets")
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
