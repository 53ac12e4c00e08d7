"""docs/PROTOCOL.md must stay true: every error code and every client message type is in it."""

from __future__ import annotations

import re
from pathlib import Path

import msgpack
import pytest

from server.wire import protocol
from server.wire.protocol import ErrorCode, ProtocolError

DOC = (Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md").read_text()


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_every_error_code_is_documented(code: ErrorCode) -> None:
    assert re.search(rf"\b{int(code)}\b", DOC), f"{code.name} ({int(code)}) missing from PROTOCOL.md"
    assert code.name in DOC, f"{code.name} missing from PROTOCOL.md"


CLIENT_TYPES = [
    "join",
    "leave",
    "danmaku",
    "like",
    "dm",
    "dm_seen",
    "ping",
    "mod",
    "block",
    "unblock",
    "slow_mode",
    "viewers",
]
CLIENT_TYPES += list(protocol._MEDIA_PARSERS)
CLIENT_TYPES += list(protocol._ANSWER_PARSERS)


@pytest.mark.parametrize("kind", CLIENT_TYPES)
def test_every_client_message_type_is_known_and_documented(kind: str) -> None:
    try:
        protocol.parse_client_message(msgpack.packb({"t": kind}))
    except ProtocolError as error:
        assert error.code != ErrorCode.UNKNOWN_TYPE, kind
    assert f"`{kind}`" in DOC, f"client message {kind!r} missing from PROTOCOL.md"
