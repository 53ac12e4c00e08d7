"""Locust users that speak the liveroom WebSocket protocol (msgpack frames).

    locust -f load_tests/locustfile.py --headless -u 50 -r 10 -t 60s --host ws://127.0.0.1:8080

Four user classes, mixed by their weights (or pick some: `locust ... Viewer Chatter`):
Viewer (joins, stays, receives), Chatter (danmaku at --chat-rate per second), Liker
(bursts of --like-burst likes) and DMer (direct messages to other simulated users).

Why a hand-made User: Locust's built-in clients speak HTTP. Here a websocket-client
connection (plain sockets, so gevent's monkey patching makes it cooperative) has a
receiver greenlet, and every request/response pair and every received event is
reported through `environment.events.request`, so the web UI and the CSV show:

- `WS join`: connect to snapshot;
- `WS danmaku`: a Chatter's danmaku until it comes back in a batch (matched by cid);
- `WS like`: a burst until a `likes` total covers it (a lower bound when several
  Likers share a room, since their likes raise the same total);
- `WS dm`: a DM until its `dm_ack`; `WS ping`: ping until pong;
- `RECV <event>`: each received event (danmaku, likes, presence, dm, ...) with its age
  (receipt time minus the server's `ts`; same machine, same clock).

Chatters, Likers and DMers act once as soon as they have joined, and a stopping user
waits up to 10 s for the answers still on their way, so even a short run measures
every kind of round trip and its last requests are counted, not dropped. With
`--each-once` each user does each of its round trips once (and a ping) and the run stops
when every one is answered (tests/test_load_tests.py: nothing hangs on how much gets done in -t).

Tokens are minted locally from LIVEROOM_SECRET (or the dev default), as the server
would accept them. Only loopback hosts are accepted unless LIVEROOM_LOAD_ALLOW_REMOTE=1
(point it at a staging server you own, never at someone else's).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import time
from typing import Any
from urllib.parse import urlsplit

import gevent
import msgpack
import websocket
from locust import User, between, constant_pacing, events, task
from locust.env import Environment

from load_tests.bench import letters
from server.config import DEFAULT_SECRET
from server.wire import auth

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PENDING_TIMEOUT = 10.0  # seconds before an unanswered request counts as a failure
_ids = itertools.count()
_online_uids: set[str] = set()  # users of this Locust process that are joined: DM targets
_finished: set[str] = set()  # --each-once: users whose round trips were all answered


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--room", default=os.environ.get("LIVEROOM_ROOM", "load"), help="room id prefix")
    parser.add_argument("--rooms", type=int, default=int(os.environ.get("LIVEROOM_ROOMS", "1")))
    parser.add_argument(
        "--chat-rate",
        type=float,
        default=float(os.environ.get("LIVEROOM_CHAT_RATE", "1")),
        help="per Chatter",
    )
    parser.add_argument("--like-burst", type=int, default=int(os.environ.get("LIVEROOM_LIKE_BURST", "10")))
    parser.add_argument(
        "--each-once",
        action="store_true",
        help="each user does each of its round trips once; the run stops when all are answered "
        "(-t stays the limit): a check that does not depend on how much a slow machine does in -t",
    )


def _option(environment: Environment, name: str, default: Any) -> Any:
    options = environment.parsed_options
    return getattr(options, name, default) if options is not None else default


class LiveroomConnection:
    """One WebSocket connection with a receiver greenlet; reports everything to Locust stats."""

    def __init__(self, user: LiveroomUser, url: str, uid: str) -> None:
        self.user = user
        self.url = url
        self.uid = uid
        self.fire = user.environment.events.request.fire
        self.ws: websocket.WebSocket | None = None
        self.receiver: gevent.Greenlet | None = None
        # cid (or ping ts) -> (request name, perf_counter at send)
        self.pending: dict[str | int, tuple[str, float]] = {}
        self.likes: list[tuple[int, float]] = []  # (total that covers the burst, perf_counter at send)
        self.likes_total = 0
        self.snapshot: dict[str, Any] = {}

    # -- reporting ----------------------------------------------------------------------

    def report(self, name: str, started: float, length: int = 0, exc: BaseException | None = None) -> None:
        self.fire(
            request_type="WS",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exc,
            context={"uid": self.uid},
        )

    def report_event(self, kind: str, ts: int | None, length: int) -> None:
        age = max(0.0, time.time() * 1000 - ts) if isinstance(ts, (int, float)) else 0.0
        self.fire(request_type="RECV", name=kind, response_time=age, response_length=length, exception=None)

    # -- connection ------------------------------------------------------------------------

    def connect(self) -> None:
        started = time.perf_counter()
        try:
            self.ws = websocket.create_connection(self.url, timeout=PENDING_TIMEOUT, enable_multithread=True)
            _, data = self.ws.recv_data()
            frame = msgpack.unpackb(data)
            if frame.get("t") != "snapshot":
                raise ConnectionError(f"first frame is {frame.get('t')!r}, not a snapshot")
        except Exception as exc:
            self.report("join", started, exc=exc)
            raise
        self.snapshot = frame
        self.likes_total = frame.get("likes", 0)
        self.report("join", started, len(data))
        self.ws.settimeout(None)
        self.receiver = gevent.spawn(self._receive_loop)

    def close(self) -> None:
        if self.receiver is not None:
            self.receiver.kill(block=False)
        if self.ws is not None:
            with contextlib.suppress(Exception):  # already gone: nothing to close
                self.ws.close()

    def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        self.ws.send(msgpack.packb(message), opcode=websocket.ABNF.OPCODE_BINARY)

    def request(self, name: str, message: dict[str, Any]) -> None:
        """Send a message that expects an answer carrying the same cid."""
        cid = f"{self.uid}:{next(_ids)}"
        self.pending[cid] = (name, time.perf_counter())
        try:
            self.send({**message, "cid": cid})
        except Exception as exc:
            self.pending.pop(cid, None)
            self.report(name, time.perf_counter(), exc=exc)

    def expire(self, force: bool = False) -> None:
        """Count requests with no answer after PENDING_TIMEOUT (or all, when forced) as failures."""
        now = time.perf_counter()
        for cid, (name, started) in list(self.pending.items()):
            if force or now - started > PENDING_TIMEOUT:
                del self.pending[cid]
                self.report(
                    name, started, exc=TimeoutError(f"no answer to {name} in {PENDING_TIMEOUT:.0f} s")
                )
        while self.likes and (force or now - self.likes[0][1] > PENDING_TIMEOUT):
            _, started = self.likes.pop(0)
            self.report("like", started, exc=TimeoutError("like not in any likes total"))

    def drain(self, timeout: float) -> None:
        """Wait (cooperatively) until every request has its answer, or count the rest as failures."""
        deadline = time.perf_counter() + timeout
        while (self.pending or self.likes) and self.receiver is not None and not self.receiver.dead:
            if time.perf_counter() >= deadline:
                break
            gevent.sleep(0.02)
        self.expire(force=True)

    # -- receiving ---------------------------------------------------------------------------

    def _receive_loop(self) -> None:
        assert self.ws is not None
        while True:
            try:
                opcode, data = self.ws.recv_data()
            except Exception as exc:
                if self.user.running:
                    self.report("disconnected", time.perf_counter(), exc=exc)
                return
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                if self.user.running:
                    self.report("disconnected", time.perf_counter(), exc=ConnectionError("closed by server"))
                return
            if opcode != websocket.ABNF.OPCODE_BINARY:
                continue
            self._dispatch(msgpack.unpackb(data), len(data))

    def _dispatch(self, frame: dict[str, Any], length: int) -> None:
        kind = frame.get("t")
        if kind == "batch":
            for event in frame.get("events", ()):
                self._on_event(event)
            return
        if kind in ("dm_ack", "pong"):
            key = frame.get("cid") if kind == "dm_ack" else frame.get("ts")
            entry = self.pending.pop(key, None) if isinstance(key, (str, int)) else None
            if entry is not None:
                self.report(entry[0], entry[1], length)
            return
        if kind == "error":
            ref = frame.get("ref")
            entry = self.pending.pop(ref, None) if isinstance(ref, str) else None
            name = entry[0] if entry else f"error {frame.get('code')}"
            started = entry[1] if entry else time.perf_counter()
            self.report(name, started, length, exc=RuntimeError(f"{frame.get('code')}: {frame.get('msg')}"))
            return
        self.report_event(str(kind), frame.get("ts"), length)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("t")
        self.report_event(str(kind), event.get("ts"), 0)
        if kind == "danmaku" and event.get("uid") == self.uid:
            cid = event.get("cid")
            entry = self.pending.pop(cid, None) if isinstance(cid, str) else None
            if entry is not None:
                self.report(entry[0], entry[1])
        elif kind == "likes":
            self.likes_total = max(self.likes_total, event.get("total", 0))
            while self.likes and self.likes[0][0] <= self.likes_total:
                _, started = self.likes.pop(0)
                self.report("like", started)


class LiveroomUser(User):
    """Base: join a room on start, keep a receiver running, leave on stop."""

    abstract = True
    role: auth.Role = "viewer"
    prefix = "u"

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.uid = f"{self.prefix}{os.getpid()}-{next(_ids)}"
        self.running = False
        self.conn: LiveroomConnection | None = None

    def on_start(self) -> None:
        host = self.host or "ws://127.0.0.1:8080"
        parts = urlsplit(host)
        if parts.hostname not in LOOPBACK and os.environ.get("LIVEROOM_LOAD_ALLOW_REMOTE") != "1":
            raise RuntimeError(f"refusing non-loopback host {host!r} (set LIVEROOM_LOAD_ALLOW_REMOTE=1)")
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        rooms = max(1, _option(self.environment, "rooms", 1))
        room = f"{_option(self.environment, 'room', 'load')}-{random.randrange(rooms)}"
        secret = os.environ.get("LIVEROOM_SECRET", DEFAULT_SECRET)
        token = auth.mint(secret, room=room, user=self.uid, role=self.role)
        self.running = True
        self.conn = LiveroomConnection(self, f"{scheme}://{parts.netloc}/ws?token={token}", self.uid)
        self.conn.connect()
        _online_uids.add(self.uid)
        self.on_arrival()
        if _option(self.environment, "each_once", False):
            self._once()

    def _once(self) -> None:
        """--each-once: a ping besides the arrival's round trip, wait for every answer; the last
        user to finish stops the run. Until then (and after) this user only waits."""
        assert self.conn is not None
        self.ping()
        self.conn.drain(PENDING_TIMEOUT)
        _finished.add(self.uid)
        runner = self.environment.runner
        if runner is not None and len(_finished) >= runner.target_user_count:
            gevent.spawn(runner.quit)  # not from this greenlet: quit() stops every user, this one too
        gevent.sleep(PENDING_TIMEOUT * 100)  # stopped by quit() (or -t) long before this ends

    def on_arrival(self) -> None:
        """What this kind of user does as soon as it has joined (before its first wait)."""

    def on_stop(self) -> None:
        _online_uids.discard(self.uid)
        if self.conn is not None:
            # answers already on their way count: a run's last requests are measured, not dropped
            self.conn.drain(PENDING_TIMEOUT)
        self.running = False
        if self.conn is not None:
            self.conn.close()

    @task
    def ping(self) -> None:
        """Everyone pings now and then: a round trip that never waits for a tick."""
        assert self.conn is not None
        key = next(_ids)  # ts must be a number; the server echoes it, so it keys the pending map
        self.conn.pending[key] = ("ping", time.perf_counter())
        self.conn.send({"t": "ping", "ts": key})
        self.conn.expire()


class Viewer(LiveroomUser):
    """Joins and stays; what it measures is what it receives (RECV lines)."""

    weight = 6
    prefix = "v"
    wait_time = between(2, 4)


class Chatter(LiveroomUser):
    """Sends danmaku at --chat-rate per second and times each until it comes back in a batch."""

    weight = 2
    prefix = "c"

    def wait_time(self) -> float:
        return constant_pacing(1.0 / max(0.01, _option(self.environment, "chat_rate", 1.0)))(self)

    @task(10)
    def danmaku(self) -> None:
        assert self.conn is not None
        # no digits: "u12345-67 #89" reads as a phone number to the contact filter (4304)
        self.conn.request("danmaku", {"t": "danmaku", "text": f"hello room, line {letters(next(_ids))}"})
        self.conn.expire()

    def on_arrival(self) -> None:
        self.danmaku()


class Liker(LiveroomUser):
    """Sends a burst of likes, then rests: the way people tap the like button."""

    weight = 1
    prefix = "l"
    wait_time = between(1, 3)

    @task(5)
    def like_burst(self) -> None:
        conn = self.conn
        assert conn is not None
        burst = max(1, _option(self.environment, "like_burst", 10))
        started = time.perf_counter()
        for _ in range(burst):
            conn.send({"t": "like", "count": 1})
        # covered once a likes total reaches what this connection saw plus its own burst
        conn.likes.append((conn.likes_total + burst, started))
        conn.expire()

    def on_arrival(self) -> None:
        self.like_burst()


class DMer(LiveroomUser):
    """Sends direct messages to other simulated users and times each until its dm_ack."""

    weight = 1
    prefix = "d"
    wait_time = between(1, 2)

    @task(5)
    def direct_message(self) -> None:
        assert self.conn is not None
        others = [u for u in _online_uids if u != self.uid]
        to = random.choice(others) if others else f"offline-{self.uid}"  # kept for later: still acked
        self.conn.request("dm", {"t": "dm", "to": to, "text": f"hi there, note {letters(next(_ids))}"})
        self.conn.expire()

    def on_arrival(self) -> None:
        self.direct_message()
