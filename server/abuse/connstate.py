"""Per-connection abuse state: its own buckets, what it holds, whether it is muted."""

from __future__ import annotations

from server.abuse.ratelimit import TokenBucket


class ConnState:
    """Per-connection abuse state: its own buckets, what it holds, whether it is muted."""

    __slots__ = (
        "danmaku",
        "dm",
        "follow",
        "frames",
        "gift",
        "inflight",
        "ip",
        "ip_held",
        "like",
        "mod",
        "muted_until",
        "strikes",
        "uid",
    )

    def __init__(self, ip: str, buckets: dict[str, TokenBucket | None], strikes: TokenBucket | None) -> None:
        self.ip = ip
        self.ip_held = False
        self.uid: str | None = None  # set once the user cap is held
        self.inflight = False
        self.muted_until = 0.0  # epoch seconds (inf: until unmuted)
        self.frames = buckets.get("frame")
        self.danmaku = buckets.get("danmaku")
        self.like = buckets.get("like")
        self.dm = buckets.get("dm")
        self.mod = buckets.get("mod")
        self.gift = buckets.get("gift")
        self.follow = buckets.get("follow")
        self.strikes = strikes
