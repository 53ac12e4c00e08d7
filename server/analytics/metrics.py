"""Prometheus counters of the analytics pipeline (labels: record kinds, a bounded set)."""

from __future__ import annotations

from prometheus_client import Counter

records = Counter("liveroom_analytics_records_total", "Analytics records flushed to the store", ["kind"])
dropped = Counter(
    "liveroom_analytics_dropped_total", "Analytics records dropped (buffer full or store write failed)"
)
flushes = Counter("liveroom_analytics_flushes_total", "Analytics buffer flushes", ["result"])
