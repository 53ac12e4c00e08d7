"""RTMP ingest: OBS, FFmpeg and hardware encoders push RTMP; viewers see a WHIP-like host.

Why nginx: the RTMP server side (handshake, chunk streams, AMF commands, many encoders at once)
is Debian's nginx with libnginx-mod-rtmp, a well-kept implementation run by the node as a child
process on --rtmp-port. Python options were worse: pyrtmp 0.3.1 installs a top-level `tests`
package and forces DEBUG logging; FFmpeg's RTMP *listen* mode (through PyAV) takes one
connection per listener and never tells us the stream key.

The flow: nginx calls `on_publish` (an HTTP callback on a loopback-only port of this node) with
the stream name and URL arguments; this module checks the stream key, a host token, through the
Guard's `rtmp` door (keys, join buckets, nonce, bans: server.abuse.doors) and answers 2xx or
the door's refusal (nginx then drops the encoder). Accepted, the node pulls the stream back from
nginx over loopback (server.media.rtmp_pull: FFmpeg's RTMP client, H.264 as is, AAC decoded) and
publishes it through a loopback aiortc peer connection into MediaGateway.whip, exactly as a WHIP
host does (same caps, same codec rules, same live events). nginx calls `on_update` every few
seconds: a session that ended on our side (kicked, banned, unpublished) is answered 403 and nginx
drops the encoder.

Stream key: a publish key (server.wire.publish_key, from POST /rtmp/<room>/key: server.edge.
rtmp_key), or `rtmp://host:port/live/<room>?token=<host token>`, or server
`rtmp://host:port/live` with the host token itself as the stream key (the room is the token's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from server import metrics
from server.abuse.doors import RTMP, http_error
from server.broker.base import BrokerUnavailable
from server.deadline import within
from server.logs import RefusalLog
from server.media.rtmp_pull import RtmpPull
from server.wire import protocol, publish_key
from server.wire.auth import Identity
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.abuse.guard import Guard
    from server.media.gateway import MediaGateway

log = logging.getLogger("liveroom.rtmp")

NGINX = "/usr/sbin/nginx"
RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"
APP = "live"  # the RTMP application: rtmp://host:port/live/...
UPDATE_EVERY = 5  # s between nginx's on_update calls (a kicked host's encoder is dropped by then)
START_TIMEOUT = 10.0  # s for nginx to listen
MAX_KEY = 255  # bytes of a publish command's stream name with its arguments (NGX_RTMP_MAX_NAME - 1)

CONF = """load_module {module};
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
rtmp {{
  server {{
    listen {host}:{port};
    chunk_size 4096;
    notify_method post;
    application {app} {{
      live on;
      record off;
      idle_streams off;
      allow play 127.0.0.1;
      deny play all;
      on_publish http://127.0.0.1:{callback}/on_publish;
      on_update http://127.0.0.1:{callback}/on_update;
      on_publish_done http://127.0.0.1:{callback}/on_publish_done;
      notify_update_timeout {update}s;
      notify_update_strict on;
    }}
  }}
}}
"""


def free_port(host: str) -> int:
    """A port free right now (nginx cannot report the port it bound for `listen 0`)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Session:
    """One encoder pushing one stream: its identity, its pull and its publisher connection."""

    name: str  # nginx's stream name
    who: Identity
    ip: str
    pull: RtmpPull
    pc: RTCPeerConnection
    rid: str = ""
    ended: bool = False


class RtmpIngest:
    """nginx-rtmp as a child process plus its callbacks; `start()` returns the RTMP port."""

    def __init__(self, guard: Guard, media: MediaGateway) -> None:
        self.guard = guard
        self.media = media
        self.sessions: dict[str, Session] = {}
        self.port = 0
        self.callback_port = 0
        self.refusals = RefusalLog(log)
        self.app = web.Application(client_max_size=16 * 1024)
        for call in ("on_publish", "on_update", "on_publish_done"):
            self.app.router.add_post(f"/{call}", getattr(self, f"_{call}"))
        self._runner: web.AppRunner | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._dir: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        if shutil.which(NGINX) is None or not Path(RTMP_MODULE).exists():
            raise RuntimeError("--rtmp-port needs nginx and libnginx-mod-rtmp (apt-get install them)")
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)  # loopback only: nginx is the only caller
        await site.start()
        self.callback_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.port = port or free_port(host)
        self._dir = tempfile.mkdtemp(prefix="liveroom-rtmp-")
        conf = Path(self._dir, "nginx.conf")
        conf.write_text(
            CONF.format(
                module=RTMP_MODULE,
                dir=self._dir,
                host=host,
                port=self.port,
                app=APP,
                callback=self.callback_port,
                update=UPDATE_EVERY,
            )
        )
        self._process = await asyncio.create_subprocess_exec(
            NGINX, "-p", self._dir, "-e", f"{self._dir}/error.log", "-c", str(conf)
        )
        await self._listening(host)
        log.info("rtmp: nginx-rtmp on %s:%d (callbacks on 127.0.0.1:%d)", host, self.port, self.callback_port)
        return self.port

    async def _listening(self, host: str) -> None:
        """Wait until nginx accepts connections (or exited: its error log says why)."""
        assert self._process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while loop.time() < deadline:
            if self._process.returncode is not None:
                break
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(host, self.port)
                writer.close()
                return
            await asyncio.sleep(0.05)
        error = Path(self._dir or ".", "error.log")
        detail = error.read_text()[-500:] if error.exists() else ""
        await self.stop()
        raise RuntimeError(f"nginx-rtmp did not start on {host}:{self.port}: {detail}")

    async def stop(self) -> None:
        """nginx first (its connections close, so each pull's FFmpeg read ends), then sessions."""
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await within(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        for session in list(self.sessions.values()):
            await self._end(session)
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    # -- nginx's callbacks ---------------------------------------------------------------------

    async def _on_publish(self, request: web.Request) -> web.Response:
        form = await request.post()
        name, ip = str(form.get("name", "")), str(form.get("addr", "?"))
        try:
            session = await self._admit(name, form.get("token"), ip)
        except BrokerUnavailable:
            error = ProtocolError(ErrorCode.BROKER_UNAVAILABLE, "broker unavailable: retry", retry_after=1)
            return self._refuse(name, ip, error)
        except ProtocolError as error:
            return self._refuse(name, ip, error)
        log.info("rtmp: %s publishes in %s from %s", session.who.uid, session.who.room, ip)
        return web.Response(status=200)

    def _refuse(self, name: str, ip: str, error: ProtocolError) -> web.Response:
        """The encoder learns nothing (nginx just drops it): the log line and the counter say why."""
        metrics.rtmp_refusals.labels(code=error.code.name).inc()
        self.refusals.refused(f"rtmp publish {name[:40]!r} from {ip}: {error.code.name}", _now())
        return http_error(error)

    async def _on_update(self, request: web.Request) -> web.Response:
        session = self.sessions.get(str((await request.post()).get("name", "")))
        if session is not None and session.rid not in self.media.resources:  # kicked, banned
            await self._end(session)
        if session is None or session.ended:  # ended here: nginx drops the encoder
            return http_error(ProtocolError(ErrorCode.MEDIA_BAD_STATE, "the session has ended"))
        return web.Response(status=200)

    async def _on_publish_done(self, request: web.Request) -> web.Response:
        session = self.sessions.get(str((await request.post()).get("name", "")))
        if session is not None:
            await self._end(session)
        return web.Response(status=200)

    async def _admit(self, name: str, query_token: object, ip: str) -> Session:
        """The `rtmp` door: a publish key, `<room>?token=<jwt>` or the token as the stream name."""
        if isinstance(query_token, str) and query_token:
            token, room = query_token, name
            if not protocol.valid_id(room):
                raise ProtocolError(ErrorCode.BAD_FIELD, "the stream name is not a valid room id")
        elif publish_key.looks_like_key(name):  # the short key of POST /rtmp/<room>/key
            return await self._start(name, await self.guard.authorize_publish_key(RTMP, ip, name), ip)
        else:
            token, room = name, None  # the stream key is the host token; its room is the room
        try:
            who = await self.guard.authorize(RTMP, ip, token or None, room)
        except ProtocolError as error:
            sent = len(name) + (len("?token=") + len(token) if room else 0)
            if error.code == ErrorCode.TOKEN_INVALID and sent == MAX_KEY:  # nginx may have cut it
                raise ProtocolError(
                    ErrorCode.TOKEN_INVALID,
                    f"{error.message}; the stream name and key reach nginx-rtmp's limit of {MAX_KEY}"
                    " bytes, so the key may have been cut: use a publish key (POST /rtmp/<room>/key)",
                ) from None
            raise
        assert who is not None  # the rtmp door takes room tokens only
        return await self._start(name, who, ip)

    async def _start(self, name: str, who: Identity, ip: str) -> Session:
        """An admitted stream: publish it into the room through a loopback peer connection."""
        existing = self.sessions.get(name)
        if existing is not None and not existing.ended:
            raise ProtocolError(ErrorCode.MEDIA_ALREADY_PUBLISHING, "this stream is already live")
        loop = asyncio.get_running_loop()
        pull = RtmpPull(f"rtmp://127.0.0.1:{self.port}/{APP}/{name}", loop)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        session = Session(name, who, ip, pull, pc)
        try:
            video = pc.addTransceiver(pull.video, direction="sendonly")
            h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.name in ("H264", "rtx")]
            video.setCodecPreferences(h264)
            pc.addTransceiver(pull.audio, direction="sendonly")
            # the node's own interfaces, gathered as its publishers' are (127.0.0.1 only in dev)
            await pc.setLocalDescription(await pc.createOffer())
            sdp = pc.localDescription.sdp
            session.rid, answer = await self.media.whip(who, who.room, sdp, ip, local=True)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except BaseException:
            await pc.close()
            raise
        self.sessions[name] = session
        pull.start()
        task = asyncio.create_task(self._watch(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return session

    async def _watch(self, session: Session) -> None:
        """End the session when the stream ends or the publisher connection closes (kick, ban)."""
        closed = asyncio.Event()

        @session.pc.on("connectionstatechange")
        def _state() -> None:
            if session.pc.connectionState in ("failed", "closed"):
                closed.set()

        ended = asyncio.create_task(session.pull.ended.wait())
        gone = asyncio.create_task(closed.wait())
        await asyncio.wait((ended, gone), return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        gone.cancel()
        if session.pull.error:
            log.info("rtmp: stream %s of %s ended: %s", session.who.room, session.who.uid, session.pull.error)
        await self._end(session)

    async def _end(self, session: Session) -> None:
        if session.ended:
            return
        session.ended = True
        session.pull.stop()
        with contextlib.suppress(ProtocolError):
            await self.media.delete_resource("whip", session.who.room, session.rid, session.who)
        await session.pc.close()
        # kept until nginx's publish_done: its next on_update for this name is answered 403
        self._forget_later(session)

    def _forget_later(self, session: Session) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(3 * UPDATE_EVERY, lambda: self._forget(session))

    def _forget(self, session: Session) -> None:
        if self.sessions.get(session.name) is session:
            del self.sessions[session.name]


def _now() -> float:
    return asyncio.get_running_loop().time()
