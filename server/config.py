"""Configuration from CLI flags and LIVEROOM_* environment variables, with safe defaults."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields

DEFAULT_SECRET = "dev-only-secret-change-me-in-production"
MIN_SECRET_LEN = 32  # characters of every signing or checking key in prod


class ConfigError(Exception):
    """The configuration cannot be used; the message says what to change."""


# `--profile NAME`: defaults for a purpose, under environment variables and flags.
# "load": load tests from one machine, where every simulated client shares 127.0.0.1. Limits
# counted per address would refuse them (4301 past 100 connections, 4300 on the per-address
# buckets), so those are off; per-connection and per-user limits, content filters and
# moderation stay on, as in production. Never for a public server: nothing caps one address.
PROFILES: dict[str, dict[str, object]] = {
    "load": {"max_conns_per_ip": 0, "rate_limits": "join.ip=0,danmaku.ip=0,like.ip=0,dm.ip=0,gift.ip=0"},
}


@dataclass(slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    env: str = "dev"  # "dev" or "prod"
    secret: str = DEFAULT_SECRET
    tick_ms: int = 50
    presence_ms: int = 1000  # a room's online count is published at most this often
    history_size: int = 1000  # events kept per room for reconnect recovery
    recent_size: int = 50  # danmaku in the join snapshot
    redis_url: str | None = None
    redis_cluster: bool = False  # Redis Cluster: sharded pub/sub (SSUBSCRIBE/SPUBLISH)
    reuse_port: bool = False  # SO_REUSEPORT: several processes share the port (set by --workers)
    # replicas that must hold a DM before it is acked; -1: 1 on a cluster, else 0
    redis_wait_replicas: int = -1
    redis_wait_degrade: bool = False
    redis_replica_check: float = 5.0  # seconds between asking each primary for its replicas
    redis_wait_timeout: int = 500  # ms a DM's WAIT may take before it is acked `replicated: false`
    history_ttl: int = 600  # seconds: a room's history expires this long after its last event
    presence_ttl: float = 6.0  # seconds: a node that stops heartbeating stops counting online
    dm_keep: int = 1000  # unacknowledged DMs kept per user
    dev_tokens: bool | None = None  # None: on in dev, off in prod
    max_frame: int = 64 * 1024  # bytes; larger frames close the connection (1009)
    danmaku_max_len: int = 200  # characters
    dm_max_len: int = 1000  # characters
    write_buffer_limit: int = 512 * 1024  # bytes queued for one viewer before batches drop
    max_dropped_batches: int = 400  # consecutive drops (~20 s at 50 ms) before closing
    # the event budget (server/delivery/budget.py): above sample_above danmaku/s in a room (0:
    # never), a frame carries frame_danmaku viewers' danmaku, a fair sample; the rest is counted
    sample_above: int = 2000
    frame_danmaku: int = 40
    # room-size pacing: "VIEWERS:MS,...": a room with at least VIEWERS local viewers gets a frame
    # every MS at most (never more often than the tick); "" turns it off
    frame_tiers: str = "5000:100,20000:250"
    join_timeout: float = 10.0  # seconds to send a join frame when no token in the URL
    body_timeout: float = 10.0  # seconds an HTTP request's body has to arrive (media port); then 408
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    node_id: str = ""
    http_port: int = 8081  # WHIP/WHEP (aiohttp) next to the WebSocket port; 0: any free port
    rtmp_port: int = -1  # RTMP ingest (nginx-rtmp, server.edge.rtmp); -1: off, 0: any free port
    media_url: str = ""  # public base URL of http_port put in snapshots (default http://host:port)
    media_max_publishers: int = 4  # per room (host + co-hosts)
    media_max_viewers: int = 200  # media viewers (WS subscribers + WHEP) per node
    media_gop_cache_frames: int = 60  # per published video track: a new viewer starts at once; 0: off
    media_stats_interval: float = 5.0  # seconds between media stats samples for /metrics
    ice_servers: str = ""  # STUN/TURN URLs handed to clients (comma-separated)
    turn_secret: str = ""  # TURN REST shared secret (coturn static-auth-secret) for time-limited credentials
    turn_ttl: int = 3600  # seconds a TURN credential stays valid
    media_public_ip: str = ""  # address advertised in the node's host ICE candidates (1:1 NAT)
    media_udp_ports: str = ""  # "min-max": UDP ports of the node's ICE candidates (firewall rules)
    media_claim_ttl: float = 3.0  # seconds a dead origin keeps its rooms' media claim (renewed every third)
    # abuse resistance (server.abuse; README "Abuse resistance")
    rate_limits: str = ""  # "action.scope=rate/burst,..." over the defaults; "off" disables
    max_conns_per_ip: int = 100  # concurrent connections; 0: no cap
    max_conns_per_user: int = 5
    max_joins_inflight: int = 200  # joins being served at once before refusing with 4302
    max_loop_lag: float = 1.0  # seconds of smoothed event-loop lag before refusing joins
    banned_words: str | None = None  # path of the banned-words file (reloaded on change/SIGHUP)
    contact_filter: bool = True  # refuse links, phone numbers, WeChat/QQ ids in danmaku
    repeat_max: int = 3  # same (or near-same) text per user within repeat_window; 0: off
    repeat_window: float = 15.0  # seconds
    abuse_strikes: int = 100  # rejections (refilled 2/s) before closing with 4307; 0: never
    allowed_origins: str = ""  # extra browser origins besides the server's own host; "*": any
    allowed_hosts: str = ""  # extra Host names besides localhost, IP literals and the node's own; "*": any
    media_sessions_per_user: int = 3  # WHIP/WHEP sessions per user per room; 0: no cap
    media_sessions_per_ip: int = 20  # WHIP/WHEP sessions per client IP; 0: no cap
    media_ice_timeout: float = 10.0  # seconds a WHIP/WHEP session has to connect ICE before it is torn down
    dm_store_users: int = 10_000  # memory broker: users with stored DMs, at most
    dm_store_bytes: int = 16 * 1024 * 1024  # memory broker: bytes of stored DMs, at most
    dm_store_per_sender: int = 1000  # stored DMs one sender may have waiting, at most (both brokers)
    dm_ttl: int = 30 * 86400  # seconds a stored DM is kept
    secret_old: str = ""  # previous secret(s), comma-separated, still accepted (key rotation)
    secrets: str = ""  # "kid1:secret1,kid2:secret2": key ids and secrets, the first signs
    join_nonce: bool = False  # one join per token (jti claim), shared through the broker
    analytics_flush: float = 1.0  # seconds between analytics buffer flushes to the store
    analytics_funnel: str = "joined,watched:30,interacted,dm_host"  # stats funnel steps (docs/API.md)
    admin_token: str = ""  # Bearer secret of the admin API and any room's stats; empty: admin API off
    webhook_url: str = ""  # POST target of webhook events; empty: no webhooks
    webhook_secret: str = ""  # HMAC-SHA256 key signing webhook bodies
    reply_interval: float = 3.0  # seconds between two assistant replies in a room (server.node.answers)
    reply_repeat_window: float = 20.0  # seconds before the same answer may be given again in a room
    gift_catalogue: str = ""  # YAML/JSON file of gifts (id, name, value, tier); empty: the built-in one
    gift_auth_url: str = ""  # POST each gift here to authorise it (signed); empty: a demo balance per user
    gift_auth_secret: str = ""  # HMAC-SHA256 key signing the authorisation calls (default: webhook_secret)
    gift_auth_timeout: float = 2.0  # seconds the authorisation may take; past it the gift is refused (4702)
    gift_demo_balance: int = 10_000  # coins each user starts with when no callback authorises gifts
    combo_window: float = 3.0  # seconds: the same gift from the same sender within it is one "x N"
    pk_like_weight: int = 1  # PK points per like (a gift counts its value)
    live_notice_every: float = 60.0  # seconds: a host's followers are told at most once per this
    # keep each live room's HLS segments under record/<room>/<id>/ and a VOD playlist (docs/API.md
    # "Recordings"); empty: off. record_max_mb bounds one recording (~675 MB an hour at 1.5 Mbit/s)
    record: str = ""
    record_max_mb: int = 4096
    demo: bool = False  # serve also starts client_demo.host streaming a test pattern into room "demo"
    profile: str = ""  # a named set of defaults (PROFILES); "" for none

    @property
    def dev_tokens_enabled(self) -> bool:
        return self.dev_tokens if self.dev_tokens is not None else self.env == "dev"

    def frame_tier_list(self) -> list[tuple[int, int]]:
        """frame_tiers parsed: (local viewers, frame ms), largest audience first."""
        tiers = []
        for item in filter(None, (part.strip() for part in self.frame_tiers.split(","))):
            viewers, sep, ms = item.partition(":")
            if not (sep and viewers.isdigit() and ms.isdigit() and 5 <= int(ms) <= 5000):
                raise ConfigError(f"frame_tiers: {item!r} is not VIEWERS:MS with 5 <= MS <= 5000")
            tiers.append((int(viewers), int(ms)))
        return sorted(tiers, reverse=True)

    def ring_keys(self) -> list[tuple[str, str]]:
        """Every key a token may be checked against, and where it was set: LIVEROOM_SECRETS alone
        when set (--secret is then unused: server.abuse.tokens.Keyring), else --secret and --secret-old."""
        if self.secrets.strip():
            items = [item.strip().partition(":") for item in self.secrets.split(",")]
            return [(f"LIVEROOM_SECRETS key {kid[:16]!r}", value) for kid, _, value in items]
        olds = [old.strip() for old in self.secret_old.split(",") if old.strip()]
        return [("--secret", self.secret), *(("--secret-old", old) for old in olds)]

    def check(self) -> None:
        if self.env not in ("dev", "prod"):
            raise ConfigError("env must be 'dev' or 'prod'")
        if self.env == "prod":
            for where, key in self.ring_keys():
                if key == DEFAULT_SECRET:
                    raise ConfigError(
                        f"refusing to start in prod with the public dev secret as {where}: set LIVEROOM_SECRET"
                    )
                if len(key) < MIN_SECRET_LEN:
                    raise ConfigError(
                        f"in prod every key must be at least {MIN_SECRET_LEN} characters ({where})"
                    )
        if not 5 <= self.tick_ms <= 1000:
            raise ConfigError("tick_ms must be between 5 and 1000")
        if self.sample_above < 0 or self.frame_danmaku < 1:
            raise ConfigError("sample_above must be >= 0 and frame_danmaku >= 1")
        self.frame_tier_list()  # raises on a malformed list
        if self.recent_size < 0 or self.history_size < self.recent_size:
            raise ConfigError("history_size must be >= recent_size >= 0")
        if self.history_ttl < 1 or self.presence_ttl <= 0 or self.dm_keep < 1:
            raise ConfigError("history_ttl, presence_ttl and dm_keep must be positive")
        if self.webhook_url and not self.webhook_secret:
            raise ConfigError("--webhook-url needs --webhook-secret (bodies are signed)")
        if self.gift_auth_url and not (self.gift_auth_secret or self.webhook_secret):
            raise ConfigError("--gift-auth-url needs --gift-auth-secret (calls are signed)")
        if self.gift_auth_timeout <= 0 or self.combo_window <= 0 or self.gift_demo_balance < 0:
            raise ConfigError("gift_auth_timeout and combo_window must be positive, gift_demo_balance >= 0")
        if self.pk_like_weight < 0 or self.live_notice_every < 0:
            raise ConfigError("pk_like_weight and live_notice_every must be >= 0")
        if self.body_timeout <= 0:
            raise ConfigError("body_timeout must be positive")
        if self.turn_ttl < 60:
            raise ConfigError("turn_ttl must be at least 60 seconds")
        if self.media_udp_ports:
            low, sep, high = self.media_udp_ports.partition("-")
            if not (sep and low.isdigit() and high.isdigit() and 1024 <= int(low) <= int(high) <= 65535):
                raise ConfigError("media_udp_ports must be MIN-MAX within 1024-65535")
        if self.media_claim_ttl <= 0:
            raise ConfigError("media_claim_ttl must be positive")
        if self.reply_interval < 0 or self.reply_repeat_window < 0:
            raise ConfigError("reply_interval and reply_repeat_window must be >= 0")
        if self.media_sessions_per_user < 0 or self.media_sessions_per_ip < 0 or self.media_ice_timeout <= 0:
            raise ConfigError("media session caps must be >= 0 and media_ice_timeout > 0")
        if self.redis_replica_check <= 0:
            raise ConfigError("redis_replica_check must be positive")
        if self.redis_wait_timeout <= 0:
            raise ConfigError("redis_wait_timeout must be a positive number of milliseconds")
        if min(self.dm_store_users, self.dm_store_bytes, self.dm_ttl, self.dm_store_per_sender) < 1:
            raise ConfigError(
                "dm_store_users, dm_store_bytes, dm_store_per_sender and dm_ttl must be positive"
            )
        if self.media_max_publishers < 1 or self.media_max_viewers < 0:
            raise ConfigError("media_max_publishers must be >= 1 and media_max_viewers >= 0")
        if self.media_gop_cache_frames < 0:
            raise ConfigError("media_gop_cache_frames must be >= 0")
        if self.record_max_mb < 1:
            raise ConfigError("record_max_mb must be at least 1")


_BOOL = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def with_profile(name: str) -> Config:
    """Defaults, with those of a profile (PROFILES) over them."""
    if name and name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}: one of {', '.join(sorted(PROFILES))}")
    config = Config(profile=name)
    for key, value in PROFILES.get(name, {}).items():
        setattr(config, key, value)
    return config


def from_env(environ: dict[str, str] | None = None, profile: str | None = None) -> Config:
    """Defaults (of the profile, LIVEROOM_PROFILE or `profile`) overridden by LIVEROOM_<FIELD> variables."""
    environ = dict(os.environ if environ is None else environ)
    config = with_profile(profile if profile is not None else environ.get("LIVEROOM_PROFILE", ""))
    for f in fields(Config):
        raw = environ.get(f"LIVEROOM_{f.name.upper()}")
        if raw is None or f.name == "profile":
            continue
        current = getattr(config, f.name)
        try:
            if f.name == "dev_tokens" or isinstance(current, bool):
                value: object = _BOOL[raw.lower()]
            elif isinstance(current, int):
                value = int(raw)
            elif isinstance(current, float):
                value = float(raw)
            else:
                value = raw
        except (KeyError, ValueError):
            raise ConfigError(f"LIVEROOM_{f.name.upper()}={raw!r} is not a valid value") from None
        setattr(config, f.name, value)
    return config


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port, 0 for any free port (default 8080)")
    parser.add_argument("--env", choices=["dev", "prod"], help="dev (default) or prod")
    parser.add_argument("--secret", help="token signing secret (prefer LIVEROOM_SECRET)")
    parser.add_argument("--tick-ms", dest="tick_ms", type=int, help="batch tick in ms (default 50)")
    parser.add_argument(
        "--sample-above",
        dest="sample_above",
        type=int,
        help="a room's danmaku/s above which frames carry a sample (default 2000; 0: never)",
    )
    parser.add_argument(
        "--frame-danmaku",
        dest="frame_danmaku",
        type=int,
        help="viewers' danmaku in a sampled frame (default 40)",
    )
    parser.add_argument(
        "--frame-tiers",
        dest="frame_tiers",
        help='room-size pacing "VIEWERS:MS,..." (default "5000:100,20000:250"; "" off)',
    )
    parser.add_argument(
        "--presence-ms", dest="presence_ms", type=int, help="online-count updates at most this often"
    )
    parser.add_argument("--history-size", dest="history_size", type=int, help="events kept per room")
    parser.add_argument("--recent-size", dest="recent_size", type=int, help="danmaku in join snapshot")
    parser.add_argument("--redis", dest="redis_url", help="redis://host:port/db (default: in-memory)")
    parser.add_argument(
        "--redis-cluster", dest="redis_cluster", action="store_const", const=True, help="Redis Cluster mode"
    )
    parser.add_argument(
        "--redis-wait-replicas",
        dest="redis_wait_replicas",
        type=int,
        help="replicas that must have a DM before it is acked (WAIT; default 1 with --redis-cluster, else 0)",
    )
    parser.add_argument(
        "--redis-wait-degrade",
        dest="redis_wait_degrade",
        action="store_const",
        const=True,
        help="a shard short of replicas acks DMs on its primary alone (replicated=false) instead of 4501",
    )
    parser.add_argument(
        "--redis-wait-timeout",
        dest="redis_wait_timeout",
        type=int,
        help="ms a DM's WAIT may take before the DM is acked replicated=false (default 500)",
    )
    parser.add_argument(
        "--redis-replica-check",
        dest="redis_replica_check",
        type=float,
        help="seconds between replica checks of each Redis primary (5; a WARNING each time one is short)",
    )
    parser.add_argument("--history-ttl", dest="history_ttl", type=int, help="seconds of room history (600)")
    parser.add_argument(
        "--presence-ttl", dest="presence_ttl", type=float, help="seconds before a silent node stops counting"
    )
    parser.add_argument("--node-id", dest="node_id", help="node name (default: random)")
    parser.add_argument(
        "--http-port", dest="http_port", type=int, help="WHIP/WHEP port, 0 for any free port (default 8081)"
    )
    parser.add_argument(
        "--rtmp-port",
        dest="rtmp_port",
        type=int,
        help="RTMP ingest port (off by default; 0: any free port; needs nginx + libnginx-mod-rtmp)",
    )
    parser.add_argument(
        "--media-max-publishers", dest="media_max_publishers", type=int, help="publishers per room (4)"
    )
    parser.add_argument(
        "--media-max-viewers", dest="media_max_viewers", type=int, help="media viewers per node (200)"
    )
    parser.add_argument(
        "--media-gop-cache-frames",
        dest="media_gop_cache_frames",
        type=int,
        help="frames of the latest keyframe group kept per video track for new viewers (60; 0: off)",
    )
    parser.add_argument("--ice-servers", dest="ice_servers", help="STUN/TURN URLs for clients (a,b)")
    parser.add_argument(
        "--turn-secret", dest="turn_secret", help="TURN REST shared secret (prefer the variable)"
    )
    parser.add_argument(
        "--turn-ttl", dest="turn_ttl", type=int, help="seconds a TURN credential lasts (3600)"
    )
    parser.add_argument("--media-public-ip", dest="media_public_ip", help="address in host ICE candidates")
    parser.add_argument("--media-udp-ports", dest="media_udp_ports", help="MIN-MAX UDP ports for ICE")
    parser.add_argument(
        "--media-claim-ttl",
        dest="media_claim_ttl",
        type=float,
        help="seconds before a dead origin's media is dropped (3)",
    )
    parser.add_argument("--rate-limits", dest="rate_limits", help="action.scope=rate/burst,... or off")
    parser.add_argument("--max-conns-per-ip", dest="max_conns_per_ip", type=int, help="default 100")
    parser.add_argument("--max-conns-per-user", dest="max_conns_per_user", type=int, help="default 5")
    parser.add_argument("--banned-words", dest="banned_words", help="banned-words file (docs/PROTOCOL.md)")
    parser.add_argument("--allowed-origins", dest="allowed_origins", help="extra browser origins (a,b)")
    parser.add_argument("--allowed-hosts", dest="allowed_hosts", help="extra Host names (a,b) or *")
    parser.add_argument(
        "--media-sessions-per-user", dest="media_sessions_per_user", type=int, help="per room (3)"
    )
    parser.add_argument("--media-sessions-per-ip", dest="media_sessions_per_ip", type=int, help="default 20")
    parser.add_argument("--media-ice-timeout", dest="media_ice_timeout", type=float, help="seconds (10)")
    parser.add_argument("--dm-store-users", dest="dm_store_users", type=int, help="memory broker (10000)")
    parser.add_argument("--dm-store-bytes", dest="dm_store_bytes", type=int, help="memory broker (16 MiB)")
    parser.add_argument(
        "--dm-store-per-sender", dest="dm_store_per_sender", type=int, help="stored DMs per sender (1000)"
    )
    parser.add_argument("--dm-ttl", dest="dm_ttl", type=int, help="seconds a stored DM is kept (2592000)")
    parser.add_argument(
        "--body-timeout", dest="body_timeout", type=float, help="seconds for an HTTP body to arrive (10)"
    )
    parser.add_argument("--secret-old", dest="secret_old", help="previous secret still accepted (rotation)")
    parser.add_argument("--join-nonce", dest="join_nonce", action="store_const", const=True)
    parser.add_argument("--analytics-flush", dest="analytics_flush", type=float, help="seconds (1.0)")
    parser.add_argument("--analytics-funnel", dest="analytics_funnel", help="funnel steps (docs/API.md)")
    parser.add_argument(
        "--admin-token", dest="admin_token", help="admin API secret (prefer LIVEROOM_ADMIN_TOKEN)"
    )
    parser.add_argument("--webhook-url", dest="webhook_url", help="POST webhook events here")
    parser.add_argument("--webhook-secret", dest="webhook_secret", help="HMAC-SHA256 webhook signing key")
    parser.add_argument(
        "--reply-interval", dest="reply_interval", type=float, help="s between assistant replies (3)"
    )
    parser.add_argument(
        "--reply-repeat-window",
        dest="reply_repeat_window",
        type=float,
        help="s before an answer repeats (20)",
    )
    parser.add_argument("--gift-catalogue", dest="gift_catalogue", help="gift catalogue file (YAML/JSON)")
    parser.add_argument("--gift-auth-url", dest="gift_auth_url", help="POST each gift here to authorise it")
    parser.add_argument("--gift-auth-secret", dest="gift_auth_secret", help="key signing gift authorisations")
    parser.add_argument(
        "--gift-auth-timeout", dest="gift_auth_timeout", type=float, help="s for the authorisation (2)"
    )
    parser.add_argument(
        "--gift-demo-balance", dest="gift_demo_balance", type=int, help="demo coins per user (10000)"
    )
    parser.add_argument("--combo-window", dest="combo_window", type=float, help="s of a gift combo (3)")
    parser.add_argument("--pk-like-weight", dest="pk_like_weight", type=int, help="PK points per like (1)")
    parser.add_argument(
        "--live-notice-every", dest="live_notice_every", type=float, help="s between a host's notices (60)"
    )
    parser.add_argument(
        "--record", dest="record", metavar="DIR", help="record live rooms' HLS under DIR (off by default)"
    )
    parser.add_argument(
        "--record-max-mb", dest="record_max_mb", type=int, help="MB at most per recording (4096)"
    )
    parser.add_argument(
        "--demo", dest="demo", action="store_const", const=True, help="also stream a test pattern (room demo)"
    )
    parser.add_argument(
        "--profile",
        dest="profile",
        choices=sorted(PROFILES),
        help="named defaults: 'load' turns off per-address limits for load tests from one machine",
    )
    dev = parser.add_mutually_exclusive_group()
    dev.add_argument("--dev-tokens", dest="dev_tokens", action="store_const", const=True)
    dev.add_argument("--no-dev-tokens", dest="dev_tokens", action="store_const", const=False)


def from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """Flags win over environment variables, which win over defaults."""
    config = from_env(environ, getattr(args, "profile", None))
    for f in fields(Config):
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(config, f.name, value)
    config.check()
    return config
