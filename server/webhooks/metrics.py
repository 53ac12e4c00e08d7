"""Prometheus counters of webhook delivery (labels: bounded results and event types)."""

from __future__ import annotations

from prometheus_client import Counter

deliveries = Counter(
    "liveroom_webhook_deliveries_total",
    "Webhook events by outcome (ok, retry, dropped, queue_full)",
    ["result"],
)
