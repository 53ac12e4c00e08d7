"""Abuse counters, next to liveroom_rejections_total{reason} (which Connection.reject increments).

Labels are bounded: action/scope names from server.abuse.ratelimit, policy names, mod actions.
"""

from __future__ import annotations

from prometheus_client import Counter

rate_limited = Counter(
    "liveroom_rate_limited_total", "Messages refused by a token bucket", ["action", "scope"]
)
content_filtered = Counter(
    "liveroom_content_filtered_total", "Danmaku and DMs acted on by the content filter", ["policy"]
)
danmaku_shed = Counter(
    "liveroom_danmaku_shed_total",
    "Danmaku dropped by the room budget (the sender still sees its own)",
)
moderation_actions = Counter("liveroom_moderation_actions_total", "Moderation actions applied", ["action"])
origin_refused = Counter("liveroom_origin_refused_total", "WebSocket handshakes refused for their Origin")
host_refused = Counter("liveroom_host_refused_total", "requests refused for their Host (DNS rebinding)")
