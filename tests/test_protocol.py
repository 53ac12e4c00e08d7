"""The sans-I/O protocol and token code, without sockets."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.config import DEFAULT_SECRET, Config, ConfigError, from_env
from server.wire import auth, protocol
from server.wire.protocol import ErrorCode, ProtocolError


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_decoder_raises_only_protocol_errors_on_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        protocol.parse_client_message(data)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)
frames = st.dictionaries(
    st.sampled_from(["t", "text", "to", "count", "cid", "ts", "token", "room", "resume", "v", "x"]),
    msgpack_values | st.sampled_from(["danmaku", "like", "dm", "ping", "join", "leave"]),
    max_size=6,
)


@settings(max_examples=500, deadline=None)
@given(frames)
def test_decoder_raises_only_protocol_errors_on_arbitrary_maps(frame: dict) -> None:
    try:
        message = protocol.parse_client_message(msgpack.packb(frame))
    except ProtocolError:
        return
    expected = {
        "danmaku": protocol.Danmaku,
        "like": protocol.Like,
        "dm": protocol.DirectMessage,
        "ping": protocol.Ping,
        "join": protocol.Join,
        "leave": protocol.Leave,
    }
    assert type(message) is expected[frame["t"]]  # the type the frame names, nothing else
    # and its fields are the frame's, not defaults or another field's
    if isinstance(message, protocol.Danmaku):
        assert message.text == frame["text"] and message.cid == frame.get("cid")
    elif isinstance(message, protocol.DirectMessage):
        assert (message.to, message.text, message.cid) == (frame["to"], frame["text"], frame.get("cid"))
    elif isinstance(message, protocol.Like):
        assert message.count == frame.get("count", 1)
    elif isinstance(message, protocol.Ping):
        ts = frame.get("ts")
        assert message.ts == ts or (message.ts != message.ts and ts != ts)  # NaN stays NaN
    elif isinstance(message, protocol.Join):
        assert (message.token, message.room) == (frame.get("token"), frame.get("room"))


def test_decoder_limits() -> None:
    deep = {"t": "ping", "x": [[[[[[1]]]]]]}
    with pytest.raises(ProtocolError) as info:
        protocol.parse_client_message(msgpack.packb(deep))
    assert info.value.code == ErrorCode.BAD_FRAME
    with pytest.raises(ProtocolError):
        protocol.parse_client_message(msgpack.packb({"t": "danmaku", "text": "x" * 5000}))
    with pytest.raises(ProtocolError):
        protocol.parse_client_message(msgpack.packb({"t": "ping", "x": list(range(100))}))


def test_clean_text() -> None:
    assert protocol.clean_text(" a\u200b\u202eb\x1b ", 10) == "a\u200bb"  # zero-width is the filter's job
    assert protocol.clean_text("弹幕 ok", 10) == "弹幕 ok"
    with pytest.raises(ProtocolError):
        protocol.clean_text("\x00\n", 10)
    with pytest.raises(ProtocolError):
        protocol.clean_text("abc", 2)


def test_token_round_trip_and_errors() -> None:
    token = auth.mint(DEFAULT_SECRET, room="r", user="u", role="host", name="Ü")
    who = auth.verify(DEFAULT_SECRET, token, "r")
    assert (who.uid, who.room, who.role, who.name) == ("u", "r", "host", "Ü")
    with pytest.raises(ProtocolError) as info:
        auth.verify(DEFAULT_SECRET, token, "other")
    assert info.value.code == ErrorCode.WRONG_ROOM
    expired = auth.mint(DEFAULT_SECRET, room="r", user="u", now=1_000_000, ttl=10)
    with pytest.raises(ProtocolError) as info:
        auth.verify(DEFAULT_SECRET, expired)
    assert info.value.code == ErrorCode.TOKEN_EXPIRED
    with pytest.raises(ValueError):
        auth.mint(DEFAULT_SECRET, room="bad room", user="u")


def test_token_secret_vetted_once_and_still_checked() -> None:
    """The HS256 secret is vetted once per secret (join CPU), and the vetting still refuses keys."""
    secret = "vetted-once-" + "x" * 32
    token = auth.mint(secret, room="r", user="u")
    before = auth._vetted.cache_info()
    for _ in range(3):
        assert auth.verify(secret, token, "r").uid == "u"
    after = auth._vetted.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 2)
    with pytest.raises(ProtocolError) as info:  # another secret: the signature does not match
        auth.verify("another-" + "y" * 32, token, "r")
    assert info.value.code == ErrorCode.TOKEN_INVALID
    pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----"
    with pytest.raises(ProtocolError) as info:  # an asymmetric key is never an HMAC secret
        auth.verify(pem, token, "r")
    assert info.value.code == ErrorCode.TOKEN_INVALID


def test_token_cli_round_trip() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "server", "token", "--room", "demo", "--user", "alice", "--role", "moderator"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    token = out.stdout.strip()
    assert "\n" not in token
    who = auth.verify(DEFAULT_SECRET, token, "demo")
    assert (who.uid, who.role) == ("alice", "moderator")


def test_config_refuses_default_secret_in_prod() -> None:
    with pytest.raises(ConfigError):
        Config(env="prod").check()
    Config(env="prod", secret="s" * 32).check()
    assert from_env({"LIVEROOM_TICK_MS": "20", "LIVEROOM_DEV_TOKENS": "off"}).tick_ms == 20
    with pytest.raises(ConfigError):
        from_env({"LIVEROOM_PORT": "eighty"})


GOOD = "g" * 32


@pytest.mark.parametrize(
    "fields",
    [
        {"secret": GOOD, "secret_old": DEFAULT_SECRET},
        {"secret": GOOD, "secret_old": f"{'o' * 32}, {DEFAULT_SECRET}"},
        {"secret": GOOD, "secret_old": "short"},
        {"secrets": f"k2:{GOOD},k1:{DEFAULT_SECRET}"},
        {"secrets": f"k1:{DEFAULT_SECRET}"},
        {"secrets": f"k2:{GOOD},k1:short"},
        {"secret": GOOD, "secrets": f"k1:{DEFAULT_SECRET}"},
    ],
)
def test_prod_refuses_the_dev_secret_and_short_keys_in_every_position(fields: dict[str, str]) -> None:
    """--secret-old and LIVEROOM_SECRETS are keys tokens are checked against: the public dev
    secret there would let anyone mint a host token (issue #24)."""
    with pytest.raises(ConfigError):
        Config(env="prod", **fields).check()


def test_prod_starts_with_a_ring_alone() -> None:
    """LIVEROOM_SECRETS without LIVEROOM_SECRET: --secret is unused then, so not required."""
    Config(env="prod", secrets=f"k2:{GOOD},k1:{'o' * 40}").check()
    Config(env="prod", secret=GOOD, secret_old="o" * 32).check()
    config = from_env({"LIVEROOM_ENV": "prod", "LIVEROOM_SECRETS": f"k2:{GOOD}"})
    config.check()


def test_serve_refuses_prod_with_the_dev_secret_as_an_old_key() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--env",
            "prod",
            *("--secret", GOOD, "--secret-old", DEFAULT_SECRET),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "--secret-old" in out.stderr, out.stderr


def test_serve_refuses_prod_with_default_secret() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--env", "prod", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "secret" in out.stderr
