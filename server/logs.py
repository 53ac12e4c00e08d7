"""Structured logs: JSON lines (one object per record) and one line per connection event.

Joins and closes log at DEBUG (a join storm must not cost a write per connection unless
asked for with `--log-level DEBUG`), fatal refusals at INFO. Connection events carry the WebSocket's request id (the connection's UUID), so a join, its
refusals and its close can be put back together from the logs of many nodes.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from websockets.asyncio.server import ServerConnection

conn_log = logging.getLogger("liveroom.conn")


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...fields, "exc"}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """Human lines; a connection event's fields follow its message as `key=value`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            extra = " ".join(
                f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}"
                for k, v in fields.items()
                if k != "event"
            )
            line = f"{line} {extra}" if extra else line
        return line


# websockets logs every HTTP answer (the demo page's static files) and every connection at
# INFO: two lines per file. They are DEBUG matters; HTTP errors (4xx/5xx) still log at INFO.
_ROUTINE = frozenset(
    {"HTTP response sent (%d %s)", "connection rejected (%d %s)", "connection open", "connection closed"}
)


class RoutineHttpFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in _ROUTINE or logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        status = record.args[0] if isinstance(record.args, tuple) and record.args else None
        return isinstance(status, int) and status >= 400


def configure(level: str, fmt: str) -> None:
    """Root logging for `liveroom serve`: `fmt` is "text" (human) or "json" (one object a line)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    quiet = logging.getLogger("websockets.server")
    if not any(isinstance(f, RoutineHttpFilter) for f in quiet.filters):
        quiet.addFilter(RoutineHttpFilter())
    if level.upper() != "DEBUG":  # aioice logs each candidate pair's checks at INFO: ~8 lines a viewer
        logging.getLogger("aioice").setLevel(logging.WARNING)


def request_id(ws: ServerConnection) -> str:
    return str(ws.id)


class Throttle:
    """At most `burst` lines, then `rate` a second; how many were dropped goes on the next line."""

    def __init__(self, rate: float = 5.0, burst: float = 20.0) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._at, self.dropped = burst, 0.0, 0

    def allow(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            self.dropped += 1
            return False
        self._tokens -= 1
        return True

    def admit(self, now: float) -> int | None:
        """allow(), and when it does, how many lines were dropped before this one (the count
        starts over); None when this line is dropped too."""
        if not self.allow(now):
            return None
        dropped, self.dropped = self.dropped, 0
        return dropped


_refusals = Throttle()  # a flood of bad joins must not cost a log line each


def connection_event(event: str, ws: ServerConnection, level: int, **fields: Any) -> None:
    """One line per connection event (join, refused, close); free when the level is off.
    Refusals are throttled (5 a second after a burst of 20, with the count dropped)."""
    if conn_log.isEnabledFor(level):
        if event == "refused":
            dropped = _refusals.admit(time.monotonic())
            if dropped is None:
                return
            if dropped:
                fields["dropped"] = dropped
        conn_log.log(level, event, extra={"fields": {"event": event, "request_id": request_id(ws), **fields}})


class RefusalLog:
    """One line per `interval` seconds at most for refused requests, with how many were not logged.

    Why: anything an unauthenticated client can trigger at will must not cost a log write
    per request (log flooding); the counters in /metrics keep the exact numbers.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._next = 0.0
        self._skipped = 0

    def refused(self, what: str, clock: float) -> None:
        if clock < self._next:
            self._skipped += 1
            return
        skipped, self._skipped = self._skipped, 0
        self._next = clock + self.interval
        more = f" (+{skipped} more since the last line)" if skipped else ""
        self.logger.warning("refused: %s%s", what[:200], more)


class QuietFilter(logging.Filter):
    """For websockets' logger: its per-connection INFO lines ("connection open", "HTTP response
    sent (404 ...)", "connection rejected (403 ...)") only with --log-level DEBUG. Anyone can
    open connections at will; joins and closes are logged by conn_log, refusals by RefusalLog."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
