"""Plain HTTP GETs on the WebSocket port: health, readiness, metrics, dev tokens, the demo page."""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from server import auth, metrics, protocol

if TYPE_CHECKING:
    from server.abuse.guard import Guard
    from server.config import Config

STATIC_DIR = Path(__file__).resolve().parent.parent / "client_demo"
WS_PATH = "/ws"


def _response(status: HTTPStatus, body: bytes, content_type: str, cache: bool = False) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "max-age=300" if cache else "no-store"),
            ("X-Content-Type-Options", "nosniff"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def _text(status: HTTPStatus, text: str) -> Response:
    return _response(status, text.encode(), "text/plain; charset=utf-8")


def _json(status: HTTPStatus, obj: object) -> Response:
    return _response(status, json.dumps(obj).encode(), "application/json")


class HttpRoutes:
    """`process_request` hook for websockets: answers GETs that are not the WebSocket path."""

    def __init__(
        self, config: Config, guard: Guard, ready: Callable[[], bool], static_dir: Path = STATIC_DIR
    ) -> None:
        self.config = config
        self.guard = guard
        self.ready = ready
        self.static_dir = static_dir.resolve()

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        path = url.path
        if path == WS_PATH:
            if not self.guard.origin_allowed(request):  # cross-site WebSocket hijacking
                metrics.rejections.labels(reason="origin_forbidden").inc()
                return _text(HTTPStatus.FORBIDDEN, "origin not allowed\n")
            return None  # the WebSocket handshake proceeds
        if path == "/healthz":
            return _text(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if self.ready():
                return _text(HTTPStatus.OK, "ready\n")
            return _text(HTTPStatus.SERVICE_UNAVAILABLE, "not ready\n")
        if path == "/metrics":
            body, content_type = metrics.render()
            return _response(HTTPStatus.OK, body, content_type)
        if path == "/api/dev/token":
            return self._dev_token(parse_qs(url.query))
        return self._static(path)

    def _dev_token(self, query: dict[str, list[str]]) -> Response:
        """Mint a viewer token for the demo page; only when dev tokens are enabled."""
        if not self.config.dev_tokens_enabled:
            return _json(HTTPStatus.NOT_FOUND, {"error": "dev tokens are disabled"})
        room = query.get("room", ["demo"])[0]
        user = query.get("user", [""])[0]
        name = query.get("name", [user])[0] or user
        role = query.get("role", ["viewer"])[0]
        if not (protocol.valid_id(room) and protocol.valid_id(user)) or role not in auth.ROLES:
            return _json(
                HTTPStatus.BAD_REQUEST,
                {"error": "room and user must be 1-64 chars of [A-Za-z0-9_.:-]; role host|moderator|viewer"},
            )
        token = auth.mint(self.config.secret, room=room, user=user, name=name, role=role)
        return _json(HTTPStatus.OK, {"token": token, "room": room, "user": user, "role": role})

    def _static(self, path: str) -> Response:
        if path == "/" or path.startswith("/room/"):
            path = "/index.html"
        target = (self.static_dir / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.static_dir) or not target.is_file():
            return _text(HTTPStatus.NOT_FOUND, "not found\n")
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".js":
            content_type = "text/javascript"
        if content_type.startswith("text/"):
            content_type += "; charset=utf-8"
        return _response(HTTPStatus.OK, target.read_bytes(), content_type, cache=target.suffix != ".html")
