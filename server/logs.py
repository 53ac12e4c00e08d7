"""Structured logs: JSON lines (one object per record) and one line per connection event.

Joins and closes log at DEBUG (a join storm must not cost a write per connection unless
asked for with `--log-level DEBUG`), fatal refusals at INFO. Connection events carry the WebSocket's request id (the connection's UUID), so a join, its
refusals and its close can be put back together from the logs of many nodes.
"""

from __future__ import annotations

import json
import logging
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


def request_id(ws: ServerConnection) -> str:
    return str(ws.id)


def connection_event(event: str, ws: ServerConnection, level: int, **fields: Any) -> None:
    """One line per connection event (join, refused, close); free when the level is off."""
    if conn_log.isEnabledFor(level):
        conn_log.log(level, event, extra={"fields": {"event": event, "request_id": request_id(ws), **fields}})
