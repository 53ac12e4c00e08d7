"""The abuse guard: the one object the connection code calls, in order of cost.

Per frame:   connection frame bucket (before decoding)            -> 4300
Per message: action buckets: connection, user, IP (after decoding) -> 4300
             mute (a float compare)                                -> 4401
             length + control characters (protocol.clean_text)     -> 4201/4202
             normalise + banned words / contact spam / repeats     -> 4303/4304/4305
             room budget (danmaku shed, the sender sees its own)   -> no error
Per join:    IP join bucket, admission gate, token (keys, nonce),
             user join bucket, user connection cap, ban/kick       -> 4308/4302/41xx/4306/4301/4402/4403
Per connection: IP connection cap (first thing in the handler)     -> 4301
Per request: Host allow-list (DNS rebinding), Origin allow-list    -> HTTP 403

The HTTP doors (WHIP, WHEP, stats, admin: server.abuse.doors.DOORS) call `authorize`,
which runs the same checks in the same order for what each door declares.

Every rejection raises ProtocolError; Connection.reject (server/edge/connection.py) answers with
the error frame, counts it, and asks `on_reject` what the refusal costs (`Strike`: tell, stay
quiet, or refuse with 4307 and close). A message handled here (shadow-dropped, shed) comes back
as `Shadowed`: the guard decides, the connection writes (server/abuse/decisions.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import secrets
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from server.abuse import metrics as abuse_metrics
from server.abuse.admission import (
    ConcurrencyCap,
    JoinGate,
    LoopLag,
    host_allowed,
    origin_allowed,
    parse_hosts,
    parse_origins,
)
from server.abuse.connstate import ConnState
from server.abuse.content import (
    REJECT,
    SHADOW,
    RepeatTracker,
    WordList,
    fingerprint,
    has_contact_spam,
    normalise,
)
from server.abuse.decisions import Shadowed, Strike
from server.abuse.doors import Door
from server.abuse.moderation import Moderation, sanction_error
from server.abuse.ratelimit import (
    ACTIONS,
    BucketTable,
    Clock,
    LimitError,
    TokenBucket,
    UsageLedger,
    parse_limits,
    reconcile,
)
from server.abuse.tokens import Keyring, nonce_of
from server.broker.base import Sanction
from server.config import Config, ConfigError
from server.wire import auth, hls_token, protocol, publish_key
from server.wire.protocol import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from server.broker.base import Sanctions
    from server.delivery.peer import Peer

log = logging.getLogger("liveroom.abuse")

PENALTY_MAX = 1.0  # seconds a rate-limited connection goes unread, at most
STRIKE_RATE = 2.0  # rejections forgiven per second once a connection has used its strikes


def one_header(headers: Any, name: str) -> str | None:
    """A header that must appear at most once (Host, Origin): two of them are a 400.
    `headers`: websockets' Headers (get_all) or aiohttp's CIMultiDictProxy (getall)."""
    values = headers.get_all(name) if hasattr(headers, "get_all") else headers.getall(name, [])
    if len(values) > 1:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"more than one {name} header")
    return values[0] if values else None


def _own_hosts(config: Config, origins: frozenset[str]) -> list[str]:
    """Names this node answers to without --allowed-hosts: localhost, its bind name, the
    media URL's host, the allowed origins' hosts, the machine's name."""
    names = ["localhost", config.host, socket.gethostname()]
    names += [urlsplit(url).netloc for url in (config.media_url, *origins) if url]
    return [name for name in names if name]


# pins and product edits spend the moderation bucket; replies have their own room throttle
_STAFF_BUCKETED = frozenset({protocol.Pin, protocol.Unpin, protocol.ProductEdit})
# follows, schedules, reservations and link actions: rare clicks, one bucket
_FOLLOW_BUCKETED = frozenset({protocol.Follow, protocol.Schedule, protocol.Reserve, protocol.Link})


class Guard:
    """Every check of every door, in order of cost, over one set of buckets and caps.

    About 400 lines on purpose: a check that guards the WebSocket must guard WHIP, WHEP,
    stats and admin too, and the per-IP, per-user and per-connection buckets a join, a frame
    and an HTTP request spend are shared, so splitting it by door would duplicate the order
    and the state. The parts with their own concept already live beside it (admission,
    content, limits, tokens, connstate, moderation).
    """

    def __init__(
        self, config: Config, sanctions: Sanctions, moderation: Moderation, clock: Clock = time.monotonic
    ) -> None:
        self.sanctions = sanctions  # the broker's part for sanctions, nonces and shared rate usage
        self.config = config
        self.clock = clock
        try:
            limits = parse_limits(config.rate_limits)
            self.keyring = Keyring.from_config(config.secret, config.secret_old, config.secrets)
            self.words = WordList(config.banned_words)
        except (LimitError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        if config.env == "prod" and any(len(secret) < 32 for _, secret in self.keyring.keys):
            raise ConfigError("in prod every secret must be at least 32 characters")
        self._conn_limits = {k.split(".")[0]: v for k, v in limits.items() if k.endswith(".conn")}
        self._user = {
            k.split(".")[0]: BucketTable(v, clock) for k, v in limits.items() if k.endswith(".user")
        }
        self._ip = {k.split(".")[0]: BucketTable(v, clock) for k, v in limits.items() if k.endswith(".ip")}
        room = limits.get("danmaku.room")
        self._room_budget = BucketTable(room, clock) if room is not None else None
        self._messages = {
            (action, scope): f"too many {action} messages ({scope} limit)"
            for action in ACTIONS
            for scope in ("conn", "user", "ip")
        }
        self._counters = {key: abuse_metrics.rate_limited.labels(*key) for key in self._messages}
        self._ledger = UsageLedger() if sanctions.multi_node and self._user else None
        self.ip_cap = ConcurrencyCap(config.max_conns_per_ip)
        self.user_cap = ConcurrencyCap(config.max_conns_per_user)
        self.lag = LoopLag()
        self.gate = JoinGate(config.max_joins_inflight, config.max_loop_lag, lambda: self.lag.value)
        self.origins, self.any_origin = parse_origins(config.allowed_origins)
        self.hosts, self.any_host = parse_hosts(config.allowed_hosts, _own_hosts(config, self.origins))
        self._repeats: dict[str, RepeatTracker] = {}
        self.moderation = moderation
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.lag.start()
        self._task = asyncio.get_running_loop().create_task(self._maintain())

    async def stop(self) -> None:
        await self.lag.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def reload(self) -> None:
        """SIGHUP: re-read the banned-words file now."""
        self.words.reload()

    async def _maintain(self) -> None:
        """Once a second: cross-node usage exchange; every few seconds: word file, sweeps."""
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            try:
                if self._ledger is not None:
                    remote = await self.sanctions.exchange_usage(self._usage())
                    reconcile(self._user, remote)
                if ticks % 3 == 0:
                    self.words.maybe_reload()
                if ticks % 10 == 0:
                    self._sweep()
            except Exception:
                log.exception("abuse maintenance failed")

    def _usage(self) -> dict[str, float]:
        """What this node spent since the last exchange, plus 0.0 for every user whose bucket
        is still here: the other nodes' spending must reach it even while it is quiet here."""
        assert self._ledger is not None
        usage = self._ledger.take_all()
        for action, table in self._user.items():
            if action != "join":  # joins are counted per node only (they never reach the ledger)
                for uid in table.active_keys():
                    usage.setdefault(f"{action}|{uid}", 0.0)
        return usage

    def _sweep(self) -> None:
        now = self.clock()
        tables = [*self._user.values(), *self._ip.values()]
        if self._room_budget is not None:
            tables.append(self._room_budget)
        for table in tables:
            table.sweep(now)
        window = self.config.repeat_window
        stale = [uid for uid, tracker in self._repeats.items() if tracker.idle(now, window)]
        for uid in stale:
            del self._repeats[uid]

    # -- connections and joins -----------------------------------------------------------------

    def request_allowed(self, door: Door, headers: Any) -> None:
        """Host allow-list (DNS rebinding), then, where the door checks it, the Origin allow-list
        (cross-site WebSocket hijacking); refusals are HTTP 403 before anything else runs."""
        host, origin = one_header(headers, "Host"), one_header(headers, "Origin")
        if door.host_check and not host_allowed(host, self.hosts, self.any_host):
            abuse_metrics.host_refused.inc()
            raise ProtocolError(ErrorCode.HOST_FORBIDDEN, "host not allowed")
        if door.origin_check and not origin_allowed(origin, host, self.origins, self.any_origin):
            abuse_metrics.origin_refused.inc()
            raise ProtocolError(ErrorCode.ORIGIN_FORBIDDEN, "origin not allowed")

    def authorize_node(self, door: Door, token: str, room: str) -> auth.Identity:
        """Another node pulling a room's media to cascade it (server/media/relay.py).

        A node credential is signed with a key derived from the signing secret that no client
        token endpoint uses; it may only pull media (WHEP), and client limits do not apply to it
        (the origin carries one stream per edge, whatever the edge's audience).
        """
        if door.name != "whep":
            raise ProtocolError(ErrorCode.MEDIA_FORBIDDEN, "a node credential may only pull media (WHEP)")
        node = auth.verify_node(self.keyring.signing[1], token, room)
        return auth.Identity(uid=f"node.{node}", name=node, room=room, role="viewer")

    async def authorize(
        self, door: Door, ip: str, token: str | None, room: str | None = None, *, new_session: bool = True
    ) -> auth.Identity | None:
        """The HTTP doors' authorisation (the WebSocket's is `admit`, same checks and order).

        IP join bucket, then the credential the door takes (None: the admin token), then for a
        new session the user join bucket and the join nonce, then bans and kicks in the room.
        """
        now = self.clock()
        if "ip" in door.rate:
            self._join_rate("ip", ip, now)
        if door.credential != "room" and token and self.is_admin(token):
            return None
        if door.credential == "admin":
            try:  # a signed room token is a known caller without the admin right: 403, not 401
                self.keyring.verify(token, None)
            except ProtocolError as error:
                raise ProtocolError(error.code, "admin token required") from None
            raise ProtocolError(ErrorCode.FORBIDDEN, "admin token required")
        who = self.keyring.verify(token, room)
        if door.credential == "host_or_admin" and who.role != "host":
            raise ProtocolError(ErrorCode.FORBIDDEN, "only a host of this room or an admin")
        if new_session:
            await self._new_session(door, who, now, lambda: nonce_of(token or ""))
        return who

    async def authorize_publish_key(self, door: Door, ip: str, key: str) -> auth.Identity:
        """The `rtmp` door with a publish key (server.wire.publish_key) instead of a host token:
        the same checks in the same order (IP join bucket, the key's signature and expiry, user
        join bucket, its nonce with --join-nonce, bans and kicks in its room)."""
        now = self.clock()
        if "ip" in door.rate:
            self._join_rate("ip", ip, now)
        grant = publish_key.verify([secret for _, secret in self.keyring.keys], key, time.time())
        who = auth.Identity(grant.uid, auth.display_name(grant.name, grant.uid), grant.room, "host")
        ttl = grant.exp + auth.CLOCK_SKEW - time.time()
        await self._new_session(
            door, who, now, lambda: (f"rtmpkey:{grant.nonce}", max(ttl, 1.0)), "publish key"
        )
        return who

    def mint_publish_key(self, who: auth.Identity, ttl: int = publish_key.DEFAULT_TTL) -> tuple[str, int]:
        """An RTMP publish key for a host the `rtmp_key` door admitted, and when it expires (epoch s)."""
        exp = int(time.time()) + ttl
        key = publish_key.mint(self.keyring.signing[1], room=who.room, uid=who.uid, name=who.name, exp=exp)
        return key, exp

    async def _new_session(
        self,
        door: Door,
        who: auth.Identity,
        now: float,
        nonce: Callable[[], tuple[str, float]],
        credential: str = "token",
    ) -> None:
        """What a new session on an HTTP door runs after its credential: the user join bucket,
        the one-time nonce (`nonce()`: its id and lifetime, read only with --join-nonce), bans."""
        if "user" in door.rate:
            self._join_rate("user", who.uid, now)
        if door.nonce and self.config.join_nonce:
            await self._claim(*nonce(), credential)
        if door.sanctions:
            self._sanctioned(await self.sanctions.sanctions(who.room, who.uid))

    def mint_hls(self, who: auth.Identity, ttl: int = hls_token.DEFAULT_TTL) -> tuple[str, int]:
        """An HLS URL token for a viewer the `hls` door admitted, and when it expires (epoch s)."""
        exp = int(time.time()) + ttl
        return hls_token.mint(self.keyring.signing[1], room=who.room, uid=who.uid, exp=exp), exp

    async def authorize_hls(self, token: str, room: str) -> hls_token.HlsGrant:
        """Each HLS file request: the URL token's HMAC and expiry, then bans and kicks in the room
        (a viewer banned after fetching the token is refused from the next request on)."""
        grant = hls_token.verify([secret for _, secret in self.keyring.keys], token, room, time.time())
        self._sanctioned(await self.sanctions.sanctions(room, grant.uid))
        return grant

    def is_admin(self, token: str) -> bool:
        """The admin token, compared in constant time; never when the admin API is off."""
        admin = self.config.admin_token
        # surrogateescape: a header's non-UTF-8 bytes come as lone surrogates; a mismatch, not a 500
        presented = token.encode("utf-8", "surrogateescape")
        return bool(admin) and hmac.compare_digest(admin.encode(), presented)

    async def _claim_nonce(self, token: str | None) -> None:
        """With --join-nonce a token starts one session, on whichever door (shared by every node)."""
        if self.config.join_nonce:
            assert token is not None
            await self._claim(*nonce_of(token))

    async def _claim(self, jti: str, ttl: float, credential: str = "token") -> None:
        if not await self.sanctions.claim_nonce(jti, ttl):
            raise ProtocolError(ErrorCode.TOKEN_REPLAYED, f"this {credential} was already used to join")

    @staticmethod
    def _sanctioned(sanctions: list[Sanction]) -> float:
        """Raise for a ban or kick; else when a mute ends (epoch seconds, inf: until lifted, 0: none)."""
        muted = 0.0
        for sanction in sanctions:
            if sanction.kind == "mute":
                muted = math.inf if sanction.until is None else sanction.until / 1000
            else:
                raise sanction_error(sanction)
        return muted

    def connect(self, client: Peer) -> None:
        """First thing in a connection's handler: the per-IP connection cap."""
        ip = client.remote_ip  # behind a proxy every client shares it: set the caps for that (README)
        if not self.ip_cap.acquire(ip):
            raise ProtocolError(ErrorCode.TOO_MANY_CONNECTIONS, "too many connections from your address")
        now = self.clock()
        buckets = {action: limit.bucket(now) for action, limit in self._conn_limits.items()}
        strikes = None
        if self.config.abuse_strikes:
            strikes = TokenBucket(STRIKE_RATE, self.config.abuse_strikes, now)
        state = ConnState(ip, buckets, strikes)
        state.ip_held = True
        client.abuse = state

    def disconnect(self, client: Peer) -> None:
        state = client.abuse
        if state is None:
            return
        if state.ip_held:
            state.ip_held = False
            self.ip_cap.release(state.ip)
        if state.uid is not None:
            self.user_cap.release(state.uid)
            state.uid = None
        self.joined(client)

    async def admit(self, client: Peer, token: str | None, room: str | None) -> auth.Identity:
        """Verify a join: cheap refusals first, the signature next, the broker last."""
        state = client.abuse
        assert state is not None
        now = self.clock()
        self._join_rate("ip", state.ip, now)
        wait = self.gate.enter()
        if wait:
            raise ProtocolError(ErrorCode.NODE_BUSY, "server busy: retry later", retry_after=wait)
        state.inflight = True
        who = self.keyring.verify(token, room)
        self._join_rate("user", who.uid, now)
        if not self.user_cap.acquire(who.uid):
            raise ProtocolError(ErrorCode.TOO_MANY_CONNECTIONS, "too many connections for this user")
        state.uid = who.uid
        await self._claim_nonce(token)
        state.muted_until = self._sanctioned(await self.sanctions.sanctions(who.room, who.uid))
        return who

    def joined(self, client: Peer) -> None:
        """The snapshot is written (or the join failed): the join is no longer in flight."""
        state = client.abuse
        if state is not None and state.inflight:
            state.inflight = False
            self.gate.leave()

    def _join_rate(self, scope: str, key: str, now: float) -> None:
        table = (self._ip if scope == "ip" else self._user).get("join")
        if table is not None:
            wait = table.take(key, now)
            if wait:
                self._counters["join", scope].inc()
                raise ProtocolError(
                    ErrorCode.JOIN_THROTTLED, self._messages["join", scope], retry_after=round(wait, 2)
                )

    # -- messages ------------------------------------------------------------------------

    def frame(self, client: Peer) -> None:
        """Every frame, before it is decoded."""
        state = client.abuse
        if state is not None and state.frames is not None:
            wait = state.frames.take(self.clock())
            if wait:
                self._limited("frame", "conn", wait, None)

    def check(self, client: Peer, message: protocol.ClientMessage) -> protocol.ClientMessage | Shadowed:
        """Rate, mute and content checks after decoding; `Shadowed` when the message goes no
        further (only its sender is answered)."""
        kind = type(message)
        if kind is protocol.Danmaku:
            return self._danmaku(client, message)  # type: ignore[arg-type]
        if kind is protocol.DirectMessage:
            return self._dm(client, message)  # type: ignore[arg-type]
        state = client.abuse
        if state is None:
            return message
        if kind is protocol.Like:
            self._rate(client, "like", state.like, None)
        elif kind is protocol.Gift:  # paid, but a muted user is silenced everywhere in the room
            self._rate(client, "gift", state.gift, message.cid)  # type: ignore[union-attr]
            self._not_muted(state, message.cid)  # type: ignore[union-attr]
        elif kind in _FOLLOW_BUCKETED:
            self._rate(client, "follow", state.follow, message.cid)  # type: ignore[union-attr]
            if kind is protocol.Link:
                self._not_muted(state, message.cid)  # type: ignore[union-attr]
        elif kind is protocol.Mod or kind is protocol.Block or kind in _STAFF_BUCKETED:
            self._rate(client, "mod", state.mod, message.cid)  # type: ignore[union-attr]
        if (kind is protocol.Reply or kind is protocol.Pin) and message.text is not None:  # type: ignore[union-attr]
            message.text = self._staff_words(message.text, message.cid)  # type: ignore[union-attr]
        return message

    def _staff_words(self, text: str, ref: object) -> str:
        """Answers and pinned messages go through the banned-words list (masked, or refused with
        4303 for `reject` and `shadow` words: everyone would see them); the contact filter does
        not apply, an answer may carry a link."""
        norm, index = normalise(text)
        verdict = self.words.filter.check(text, norm, index)
        if verdict.policy in (REJECT, SHADOW):
            abuse_metrics.content_filtered.labels(policy="reject").inc()
            raise ProtocolError(ErrorCode.CONTENT_REJECTED, "message contains a banned word", ref)
        return verdict.text

    async def dm_allowed(self, sender: str, message: protocol.DirectMessage) -> None:
        """The recipient may have blocked the sender (stored in the broker: any node)."""
        if await self.sanctions.dm_blocked(message.to, sender):
            raise ProtocolError(ErrorCode.DM_BLOCKED, "this user does not accept your messages", message.cid)

    def _rate(self, client: Peer, action: str, bucket: TokenBucket | None, ref: object) -> float:
        now = self.clock()
        if bucket is not None:
            wait = bucket.take(now)
            if wait:
                self._limited(action, "conn", wait, ref)
        state = client.abuse
        assert state is not None
        table = self._user.get(action)
        if table is not None and state.uid is not None:
            wait = table.take(state.uid, now)
            if wait:
                self._limited(action, "user", wait, ref)
            if self._ledger is not None:
                self._ledger.add(f"{action}|{state.uid}")
        table = self._ip.get(action)
        if table is not None:
            wait = table.take(state.ip, now)
            if wait:
                self._limited(action, "ip", wait, ref)
        return now

    def _limited(self, action: str, scope: str, wait: float, ref: object) -> None:
        self._counters[action, scope].inc()
        raise ProtocolError(ErrorCode.RATE_LIMITED, self._messages[action, scope], ref, round(wait, 2))

    def _danmaku(self, client: Peer, message: protocol.Danmaku) -> protocol.Danmaku | Shadowed:
        state, who = client.abuse, client.identity
        assert who is not None and client.room_id is not None
        now = self.clock()
        if state is not None:
            now = self._rate(client, "danmaku", state.danmaku, message.cid)
            self._not_muted(state, message.cid)
        text = protocol.clean_text(message.text, self.config.danmaku_max_len, message.cid)
        text, shadow = self._content(who, text, message.cid, now, contact=True)
        if shadow:
            return self._echo(client, text, message.cid)
        budget = self._room_budget
        if budget is not None and not who.can_moderate and budget.take(client.room_id, now):
            abuse_metrics.danmaku_shed.inc()
            return self._echo(client, text, message.cid)
        message.text = text
        return message

    @staticmethod
    def _not_muted(state: ConnState, ref: object) -> None:
        """A muted user sends no danmaku, gifts or link requests (4401) until the mute ends."""
        if state.muted_until:
            left = state.muted_until - time.time()
            if left > 0:
                retry = None if left == math.inf else round(left, 1)
                raise ProtocolError(ErrorCode.MUTED, "you are muted in this room", ref, retry)
            state.muted_until = 0.0

    def _dm(self, client: Peer, message: protocol.DirectMessage) -> protocol.DirectMessage | Shadowed:
        state, who = client.abuse, client.identity
        assert who is not None
        now = self._rate(client, "dm", state.dm, message.cid) if state is not None else self.clock()
        text = protocol.clean_text(message.text, self.config.dm_max_len, message.cid)
        text, shadow = self._content(who, text, message.cid, now, contact=False)
        if shadow:  # the sender is told it was delivered; nobody gets it
            ts = protocol.now_ms()
            ack: dict[str, object] = {"t": "dm_ack", "id": f"{ts:x}-{secrets.token_hex(4)}", "to": message.to}
            ack.update(ts=ts, delivered=True)
            if message.cid is not None:
                ack["cid"] = message.cid
            return Shadowed(protocol.pack(ack))
        message.text = text
        return message

    def _content(
        self, who: auth.Identity, text: str, ref: object, now: float, *, contact: bool
    ) -> tuple[str, bool]:
        """(text to send, shadow-drop?) after the word filter, contact spam and repeat checks."""
        norm, index = normalise(text)
        verdict = self.words.filter.check(text, norm, index)
        if verdict.policy == REJECT:
            abuse_metrics.content_filtered.labels(policy="reject").inc()
            raise ProtocolError(ErrorCode.CONTENT_REJECTED, "message contains a banned word", ref)
        if not who.can_moderate:
            if contact and self.config.contact_filter and has_contact_spam(norm):
                abuse_metrics.content_filtered.labels(policy="contact").inc()
                raise ProtocolError(ErrorCode.CONTACT_SPAM, "links and contact details are not allowed", ref)
            if self.config.repeat_max:
                tracker = self._repeats.get(who.uid)
                if tracker is None:
                    tracker = self._repeats[who.uid] = RepeatTracker()
                wait = tracker.check(
                    fingerprint(norm), now, self.config.repeat_window, self.config.repeat_max
                )
                if wait:
                    raise ProtocolError(ErrorCode.REPEATED, "you said that already", ref, round(wait, 1))
        if verdict.policy:
            abuse_metrics.content_filtered.labels(policy=verdict.name).inc()
        return verdict.text, verdict.policy == SHADOW

    def _echo(self, client: Peer, text: str, cid: str | int | None) -> Shadowed:
        """The sender alone sees its danmaku, in the next tick as if broadcast (no seq: not sequenced)."""
        who = client.identity
        assert who is not None and client.room_id is not None
        event: dict[str, object] = {"t": "danmaku", "uid": who.uid, "name": who.name, "ts": protocol.now_ms()}
        event["text"] = text
        if cid is not None:
            event["cid"] = cid
        frame = protocol.batch_frame(client.room_id, [event])
        return Shadowed(frame, self.config.tick_ms / 1000)

    # -- rejections ------------------------------------------------------------------------

    @staticmethod
    def penalty(error: ProtocolError) -> float:
        """Seconds to stop reading a connection after a rate-limit refusal.

        While its handler sleeps, the connection's frames queue up to max_queue, then
        websockets stops reading the socket and TCP flow control holds the flood at the
        sender: a flood costs a few refusals per retry period, not one per frame sent.
        """
        if error.code == ErrorCode.RATE_LIMITED and error.retry_after:
            return min(error.retry_after, PENALTY_MAX)
        return 0.0

    def on_reject(self, client: Peer, error: ProtocolError) -> Strike:
        """What a refusal costs: the error frame, nothing, or the last strike (4307, closed).

        A client that does not read its errors (write buffer past the limit)
        gets no more of them: they would only pile up in memory.
        """
        state = client.abuse
        if state is None or error.fatal:
            return Strike.TELL
        if state.strikes is not None and state.strikes.take(self.clock()):
            state.strikes = None  # close once
            return Strike.OUT
        return Strike.TELL if client.buffered() <= self.config.write_buffer_limit else Strike.QUIET
