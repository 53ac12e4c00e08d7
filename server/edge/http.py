"""Plain HTTP GETs on the WebSocket port: health, readiness, metrics, dev tokens, the HTTP port's
public URL (`/api/config`, for the dashboard), the demo page."""

from __future__ import annotations

import json
import logging
import mimetypes
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from server import metrics
from server.abuse.doors import STATUS, WS, error_body
from server.logs import RefusalLog
from server.wire import auth, protocol
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.abuse.guard import Guard
    from server.config import Config

refusals = RefusalLog(logging.getLogger("liveroom.http"))
STATIC_DIR = Path(__file__).resolve().parents[2] / "client_demo"
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


def _refused(error: ProtocolError) -> Response:
    """A refusal on the WS port: same status and JSON body as on the HTTP doors."""
    status = HTTPStatus(STATUS.get(error.code, 400))
    return _response(status, error_body(error.code, error.message).encode(), "application/json")


class HttpRoutes:
    """`process_request` hook for websockets: answers GETs that are not the WebSocket path."""

    def __init__(
        self,
        config: Config,
        guard: Guard,
        ready: Callable[[], bool],
        static_dir: Path = STATIC_DIR,
        http_url: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.config = config
        self.guard = guard
        self.ready = ready
        self.http_url = http_url  # the HTTP port's public base URL, known once it listens
        self.static_dir = static_dir.resolve()

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            return self._route(request)
        except ValueError:  # e.g. urlsplit of "//[" or a path with NUL: the client's mistake
            return _refused(ProtocolError(ErrorCode.BAD_REQUEST, "malformed request target"))

    def process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> Response:
        """websockets' own refusals (a GET /ws that is no WebSocket handshake: 400, 426) in JSON too."""
        if response.status_code < 400 or response.headers.get("Content-Type", "").startswith(
            "application/json"
        ):
            return response
        code = ErrorCode.BAD_REQUEST
        message = (
            response.body.decode(errors="replace").strip().splitlines()[0][:200] if response.body else ""
        )
        refused = _refused(ProtocolError(code, message or response.reason_phrase))
        if response.status_code != 505:  # 505 (not HTTP/1.1): a malformed request from the client: 400
            refused.status_code, refused.reason_phrase = response.status_code, response.reason_phrase
        for name in ("Upgrade", "Allow"):
            if name in response.headers:
                refused.headers[name] = response.headers[name]
        return refused

    def _route(self, request: Request) -> Response | None:
        url = urlsplit(request.path)
        path = url.path
        if path in (WS_PATH, "/api/dev/token"):
            try:  # DNS rebinding (Host), cross-site WebSocket hijacking (Origin)
                self.guard.request_allowed(WS, request.headers)
            except ProtocolError as error:
                metrics.rejections.labels(reason=error.code.name.lower()).inc()
                refusals.refused(f"GET {path[:80]} {error.code.name}", time.monotonic())
                return _refused(error)
        if path == WS_PATH:
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
        if path == "/api/config":  # what every snapshot says as `media_url`: no secret
            return _json(HTTPStatus.OK, {"http_url": self.http_url()})
        return self._static(path)

    def _dev_token(self, query: dict[str, list[str]]) -> Response:
        """Mint a viewer token for the demo page; only when dev tokens are enabled."""
        if not self.config.dev_tokens_enabled:
            return _refused(ProtocolError(ErrorCode.NOT_FOUND, "dev tokens are disabled"))
        room = query.get("room", ["demo"])[0]
        user = query.get("user", [""])[0]
        name = query.get("name", [user])[0] or user
        role = query.get("role", ["viewer"])[0]
        if not (protocol.valid_id(room) and protocol.valid_id(user)) or role not in auth.ROLES:
            return _refused(
                ProtocolError(
                    ErrorCode.BAD_FIELD,
                    "room and user must be 1-64 chars of [A-Za-z0-9_.:-]; role host|moderator|viewer|assistant",
                )
            )
        # signed with the node's signing key: the one every door checks first (LIVEROOM_SECRETS)
        token = self.guard.keyring.mint(room=room, user=user, name=name, role=role)
        return _json(HTTPStatus.OK, {"token": token, "room": room, "user": user, "role": role})

    def _static(self, path: str) -> Response:
        if path == "/" or path.startswith("/room/"):
            path = "/index.html"
        try:  # a name over 255 bytes (ENAMETOOLONG) or a path the OS refuses: no such file
            target = (self.static_dir / path.lstrip("/")).resolve()
            found = target.is_relative_to(self.static_dir) and target.is_file()
        except OSError:
            found = False
        if not found:
            return _refused(ProtocolError(ErrorCode.NOT_FOUND, "not found"))
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".js":
            content_type = "text/javascript"
        if content_type.startswith("text/"):
            content_type += "; charset=utf-8"
        return _response(HTTPStatus.OK, target.read_bytes(), content_type, cache=target.suffix != ".html")
