# ruff: noqa: RUF001  (full-width and look-alike characters are the point of these tests)
"""Unit tests of the abuse building blocks: buckets with an injected clock, normalisation, filters."""

from __future__ import annotations

import math
import os

import msgpack
import pytest

from server.abuse import content
from server.abuse.admission import ConcurrencyCap, JoinGate, origin_allowed, parse_origins
from server.abuse.content import MASK, REJECT, SHADOW, WordFilter, WordList, normalise, parse_word_list
from server.abuse.ratelimit import (
    BucketTable,
    Limit,
    LimitError,
    TokenBucket,
    UsageLedger,
    parse_limits,
    reconcile,
)
from server.abuse.tokens import Keyring, key_id, nonce_of
from server.wire import auth, protocol
from server.wire.protocol import ErrorCode, ProtocolError

# -- token buckets ---------------------------------------------------------------------------


def test_bucket_burst_then_refill() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token every 0.5 s
    assert bucket.take(100.5) == 0.0
    assert bucket.take(100.5) > 0
    assert bucket.take(110.0) == 0.0  # refilled, capped at burst
    assert bucket.tokens == pytest.approx(2.0)


def test_bucket_debit_and_full() -> None:
    bucket = TokenBucket(rate=1, burst=5, now=0.0)
    bucket.debit(12)  # spent on other nodes
    assert bucket.tokens == -5  # bounded below: debt never exceeds one burst
    assert bucket.take(0.0) == pytest.approx(6.0)
    assert not bucket.full(5.0) and bucket.full(10.0)


def test_bucket_table_sweeps_idle_full_buckets() -> None:
    now = [0.0]
    table = BucketTable(Limit(1, 2), clock=lambda: now[0])
    table.take("a", 0.0)
    table.take("b", 0.0)
    assert len(table) == 2
    now[0] = 0.5
    assert table.sweep(now[0]) == 0  # not refilled yet
    assert table.sweep(5.0) == 2 and len(table) == 0


def test_parse_limits() -> None:
    limits = parse_limits("danmaku.conn=1/2, like.ip=0")
    assert limits["danmaku.conn"] == Limit(1, 2)
    assert "like.ip" not in limits  # rate 0 disables one bucket
    assert limits["danmaku.user"] == Limit(3, 8)  # defaults kept
    assert parse_limits("off") == {}
    for bad in ("danmaku=1/2", "nope.conn=1/1", "danmaku.conn=x/1", "danmaku.conn=1/0"):
        with pytest.raises(LimitError):
            parse_limits(bad)


def test_cross_node_reconciliation_debits_local_buckets() -> None:
    """Two nodes' ledgers swapped through a fake exchange: each debits the other's spending."""
    clock = [0.0]
    node_a = {"danmaku": BucketTable(Limit(1, 4), clock=lambda: clock[0])}
    node_b = {"danmaku": BucketTable(Limit(1, 4), clock=lambda: clock[0])}
    ledger_a, ledger_b = UsageLedger(), UsageLedger()
    for _ in range(3):  # the user spends 3 on node A
        assert node_a["danmaku"].take("u", 0.0) == 0.0
        ledger_a.add("danmaku|u")
    spent_a, spent_b = ledger_a.take_all(), ledger_b.take_all()
    reconcile(node_b, spent_a)
    reconcile(node_a, spent_b)
    assert node_b["danmaku"].take("u", 0.0) == 0.0  # 1 left of 4 on node B
    assert node_b["danmaku"].take("u", 0.0) > 0
    assert ledger_a.take_all() == {}


# -- admission ------------------------------------------------------------------------------


def test_concurrency_cap() -> None:
    cap = ConcurrencyCap(2)
    assert cap.acquire("ip") and cap.acquire("ip") and not cap.acquire("ip")
    cap.release("ip")
    assert cap.acquire("ip")
    for _ in range(3):
        cap.release("ip")
    assert cap.held("ip") == 0 and len(cap) == 0


def test_join_gate_in_flight_and_lag() -> None:
    lag = [0.0]
    gate = JoinGate(max_inflight=2, max_lag=0.5, lag=lambda: lag[0])
    assert gate.enter() == 0 and gate.enter() == 0
    assert gate.enter() > 0  # saturated: a retry-after, not a queue
    gate.leave()
    assert gate.enter() == 0
    gate.leave()
    lag[0] = 2.0
    assert gate.enter() >= 1.0


def test_origin_allow_list() -> None:
    allowed, any_origin = parse_origins("https://app.example.com, https://other.example/")
    assert origin_allowed(None, "h:1", allowed, any_origin)  # non-browser
    assert origin_allowed("http://h:1", "h:1", allowed, any_origin)  # same host
    assert origin_allowed("https://other.example", "h:1", allowed, any_origin)
    assert not origin_allowed("https://evil.example", "h:1", allowed, any_origin)
    assert not origin_allowed("null", "h:1", allowed, any_origin)
    assert origin_allowed("https://evil.example", "h:1", *parse_origins("*"))


# -- normalisation and the word filter ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello", "hello"),
        ("ＨＥＬＬＯ", "hello"),  # full-width
        ("he\u200bl\u200dlo", "hello"),  # zero-width space and joiner
        ("ＳＰＡＭ垃圾", "spam垃圾"),
        ("Straße", "strasse"),  # case folding, not just lower()
        ("ｅ\ufe0fｘ", "ex"),  # variation selector
        ("①②", "12"),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    norm, index = normalise(text)
    assert norm == expected
    if index is not None:
        assert len(index) == len(norm) and all(0 <= i < len(text) for i in index)


def _filter(lines: list[str]) -> WordFilter:
    return WordFilter(parse_word_list(lines))


def test_word_list_format() -> None:
    entries = parse_word_list(
        ["# comment", "", "spam", "[mask]", "Darn", "shadow: Buy Followers", "[reject]", "坏"]
    )
    assert entries == [("spam", REJECT), ("darn", MASK), ("buy followers", SHADOW), ("坏", REJECT)]
    with pytest.raises(ValueError):
        parse_word_list(["[nope]"])


@pytest.mark.parametrize(
    "text",
    ["SPAM here", "ｓｐａｍ", "s\u200bp\u200da\u2060m!", "这是ＳＰＡＭ广告", "Sp\u00adAm"],
)
def test_reject_survives_tricky_unicode(text: str) -> None:
    assert _filter(["spam"]).check(text).policy == REJECT


def test_whole_words_for_latin_anywhere_for_chinese() -> None:
    f = _filter(["ass", "坏蛋"])
    assert f.check("first class").policy == 0
    assert f.check("you ASS").policy == REJECT
    assert f.check("大坏蛋们").policy == REJECT


def test_mask_maps_back_to_original_positions() -> None:
    f = _filter(["[mask]", "darn", "傻瓜"])
    assert f.check("oh DARN it").text == "oh **** it"
    # full-width and zero-width characters in the match: every original character is masked
    assert f.check("oh ｄａ\u200bｒｎ!").text == "oh *****!"
    assert f.check("你是傻瓜吗").text == "你是**吗"
    # several matches, mixed scripts
    assert f.check("Darn 傻瓜 darn").text == "**** ** ****"


def test_strictest_policy_wins() -> None:
    f = _filter(["[mask]", "darn", "[shadow]", "buy now", "[reject]", "scam"])
    assert f.check("darn, buy now").policy == SHADOW
    assert f.check("darn scam buy now").policy == REJECT
    assert f.check("all good").policy == 0


def test_word_list_reload(tmp_path) -> None:
    path = tmp_path / "words.txt"
    path.write_text("alpha\n", encoding="utf-8")
    words = WordList(str(path))
    assert words.filter.check("ALPHA").policy == REJECT
    assert not words.maybe_reload()  # unchanged
    path.write_text("[mask]\nbeta\n", encoding="utf-8")
    os.utime(path, (1, 1))  # a different mtime, whatever the clock resolution
    assert words.maybe_reload()
    assert words.filter.check("alpha").policy == 0
    assert words.filter.check("beta").text == "****"
    path.write_text("[nope]\n", encoding="utf-8")
    assert not words.reload()  # a bad file keeps the previous list
    assert words.filter.check("beta").policy == MASK


@pytest.mark.parametrize(
    "text",
    [
        "visit http://spam.example",
        "go to www.cheap.shop",
        "buy at cheapstuff.com now",
        "加微信 abc12345",
        "ＶＸ：ｗｘ＿ａｂｃ１２３",
        "qq 12345678",
        "call 138 1234 5678",
        "+44 20 7946 0958",
    ],
)
def test_contact_spam(text: str) -> None:
    assert content.has_contact_spam(normalise(text)[0])


@pytest.mark.parametrize(
    "text", ["6666666666", "88888888", "hello world", "哈哈哈哈哈", "2024 is 1 year", "3.14"]
)
def test_not_contact_spam(text: str) -> None:
    assert not content.has_contact_spam(normalise(text)[0])


def test_repeat_tracker_near_same() -> None:
    tracker = content.RepeatTracker()
    fp = content.fingerprint
    assert tracker.check(fp(normalise("Buy now!")[0]), 0.0, 10.0, 2) == 0
    assert tracker.check(fp(normalise("buy   now!!!")[0]), 1.0, 10.0, 2) == 0
    assert tracker.check(fp(normalise("ＢＵＹ ＮＯＯＯＷ")[0]), 2.0, 10.0, 2) == pytest.approx(8.0)
    assert tracker.check(fp(normalise("something else")[0]), 2.0, 10.0, 2) == 0
    assert tracker.check(fp(normalise("buy now")[0]), 11.5, 10.0, 2) == 0  # window passed


# -- tokens ------------------------------------------------------------------------------------

OLD = "old-secret-old-secret-old-secret-0"
NEW = "new-secret-new-secret-new-secret-1"


def test_keyring_rotation() -> None:
    ring = Keyring.from_config(NEW, OLD)
    assert ring.signing == (key_id(NEW), NEW)
    old_token = auth.mint(OLD, room="r", user="u", kid=key_id(OLD))
    unnamed = auth.mint(OLD, room="r", user="u")  # no kid: every key is tried
    assert ring.verify(old_token, "r").uid == "u"
    assert ring.verify(unnamed, "r").uid == "u"
    assert ring.verify(ring.mint(room="r", user="v"), "r").uid == "v"
    with pytest.raises(ProtocolError) as info:
        ring.verify(auth.mint("x" * 40, room="r", user="u"), "r")
    assert info.value.code == ErrorCode.TOKEN_INVALID
    with pytest.raises(ProtocolError) as info:  # right key, wrong room: that error, not "invalid"
        ring.verify(old_token, "other")
    assert info.value.code == ErrorCode.WRONG_ROOM
    named = Keyring.from_config(NEW, secrets=f"k2:{NEW},k1:{OLD}")
    assert named.signing == ("k2", NEW)
    assert named.verify(auth.mint(OLD, room="r", user="u", kid="k1"), "r").uid == "u"
    with pytest.raises(ValueError):
        Keyring.from_config(NEW, secrets="nokid")


def test_nonce_of() -> None:
    jti, ttl = nonce_of(auth.mint(NEW, room="r", user="u", jti="abcdefgh12", ttl=100))
    assert jti == "abcdefgh12" and 100 < ttl <= 100 + auth.CLOCK_SKEW + 1


# -- protocol additions ----------------------------------------------------------------------


def test_parse_moderation_messages() -> None:
    parse = protocol.parse_client_message
    mod = parse(msgpack.packb({"t": "mod", "action": "mute", "uid": "bob", "duration": 60, "cid": 1}))
    assert mod == protocol.Mod("mute", "bob", None, 60.0, "", 1)
    delete = parse(msgpack.packb({"t": "mod", "action": "delete", "seq": 7}))
    assert isinstance(delete, protocol.Mod) and delete.seq == 7
    assert parse(msgpack.packb({"t": "block", "uid": "bob"})) == protocol.Block("bob", True, None)
    assert parse(msgpack.packb({"t": "unblock", "uid": "bob"})) == protocol.Block("bob", False, None)
    for bad in (
        {"t": "mod", "action": "explode", "uid": "bob"},
        {"t": "mod", "action": "mute"},
        {"t": "mod", "action": "mute", "uid": "bad id"},
        {"t": "mod", "action": "delete", "seq": 0},
        {"t": "mod", "action": "delete", "seq": True},
        {"t": "mod", "action": "mute", "uid": "bob", "duration": math.inf},
        {"t": "mod", "action": "mute", "uid": "bob", "duration": -1},
        {"t": "mod", "action": "ban", "uid": "bob", "reason": 5},
        {"t": "block"},
    ):
        with pytest.raises(ProtocolError) as info:
            parse(msgpack.packb(bad))
        assert info.value.code == ErrorCode.BAD_FIELD, bad
