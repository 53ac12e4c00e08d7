"""The forwarding core's process-wide counters, exported to Prometheus at scrape time (no copying)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily

from server.media.forward import COUNTERS


class _ForwardingCollector:
    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "liveroom_media_frames_tapped", "Encoded frames taken from publishers", COUNTERS["frames_tapped"]
        )
        yield CounterMetricFamily(
            "liveroom_media_bytes_tapped", "Encoded bytes taken from publishers", COUNTERS["bytes_tapped"]
        )
        yield CounterMetricFamily(
            "liveroom_media_frames_decoded",
            "Frames that reached an aiortc decoder on the server (must stay 0)",
            COUNTERS["frames_to_decoder"],
        )
        yield CounterMetricFamily(
            "liveroom_media_frames_stale",
            "Publishers' frames dropped for being older than one already forwarded (aiortc's jitter buffer)",
            COUNTERS["frames_stale"],
        )


REGISTRY.register(_ForwardingCollector())  # type: ignore[arg-type]
