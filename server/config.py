"""Configuration from CLI flags and LIVEROOM_* environment variables, with safe defaults."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields

DEFAULT_SECRET = "dev-only-secret-change-me-in-production"


class ConfigError(Exception):
    """The configuration cannot be used; the message says what to change."""


@dataclass(slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    env: str = "dev"  # "dev" or "prod"
    secret: str = DEFAULT_SECRET
    tick_ms: int = 50
    history_size: int = 1000  # events kept per room for reconnect recovery
    recent_size: int = 50  # danmaku in the join snapshot
    redis_url: str | None = None
    dev_tokens: bool | None = None  # None: on in dev, off in prod
    max_frame: int = 64 * 1024  # bytes; larger frames close the connection (1009)
    danmaku_max_len: int = 200  # characters
    dm_max_len: int = 1000  # characters
    write_buffer_limit: int = 512 * 1024  # bytes queued for one viewer before batches drop
    max_dropped_batches: int = 400  # consecutive drops (~20 s at 50 ms) before closing
    join_timeout: float = 10.0  # seconds to send a join frame when no token in the URL
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    node_id: str = ""
    http_port: int = 8081  # WHIP/WHEP (aiohttp) next to the WebSocket port; 0: any free port
    media_url: str = ""  # public base URL of http_port put in snapshots (default http://host:port)
    media_max_publishers: int = 4  # per room (host + co-hosts)
    media_max_viewers: int = 200  # media viewers (WS subscribers + WHEP) per node
    media_stats_interval: float = 5.0  # seconds between media stats samples for /metrics

    @property
    def dev_tokens_enabled(self) -> bool:
        return self.dev_tokens if self.dev_tokens is not None else self.env == "dev"

    def check(self) -> None:
        if self.env not in ("dev", "prod"):
            raise ConfigError("env must be 'dev' or 'prod'")
        if self.env == "prod" and self.secret == DEFAULT_SECRET:
            raise ConfigError("refusing to start in prod with the default secret: set LIVEROOM_SECRET")
        if self.env == "prod" and len(self.secret) < 32:
            raise ConfigError("in prod the secret must be at least 32 characters")
        if not 5 <= self.tick_ms <= 1000:
            raise ConfigError("tick_ms must be between 5 and 1000")
        if self.recent_size < 0 or self.history_size < self.recent_size:
            raise ConfigError("history_size must be >= recent_size >= 0")
        if self.media_max_publishers < 1 or self.media_max_viewers < 0:
            raise ConfigError("media_max_publishers must be >= 1 and media_max_viewers >= 0")


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


def from_env(environ: dict[str, str] | None = None) -> Config:
    """Defaults overridden by LIVEROOM_<FIELD> variables (e.g. LIVEROOM_TICK_MS=20)."""
    environ = dict(os.environ if environ is None else environ)
    config = Config()
    for f in fields(Config):
        raw = environ.get(f"LIVEROOM_{f.name.upper()}")
        if raw is None:
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
    parser.add_argument("--history-size", dest="history_size", type=int, help="events kept per room")
    parser.add_argument("--recent-size", dest="recent_size", type=int, help="danmaku in join snapshot")
    parser.add_argument("--redis", dest="redis_url", help="redis://host:port/db (default: in-memory)")
    parser.add_argument("--node-id", dest="node_id", help="node name (default: random)")
    parser.add_argument(
        "--http-port", dest="http_port", type=int, help="WHIP/WHEP port, 0 for any free port (default 8081)"
    )
    parser.add_argument(
        "--media-max-publishers", dest="media_max_publishers", type=int, help="publishers per room (4)"
    )
    parser.add_argument(
        "--media-max-viewers", dest="media_max_viewers", type=int, help="media viewers per node (200)"
    )
    dev = parser.add_mutually_exclusive_group()
    dev.add_argument("--dev-tokens", dest="dev_tokens", action="store_const", const=True)
    dev.add_argument("--no-dev-tokens", dest="dev_tokens", action="store_const", const=False)


def from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """Flags win over environment variables, which win over defaults."""
    config = from_env(environ)
    for f in fields(Config):
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(config, f.name, value)
    config.check()
    return config
