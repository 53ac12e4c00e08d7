"""Close codes have one home (protocol.ErrorCode) and the browser client agrees with the server."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import server
from server.wire.protocol import FRESH_TOKEN_CODES, NO_RETRY_CODES, ErrorCode

ROOT = Path(server.__file__).resolve().parent
LIVE_JS = (ROOT.parent / "client_demo" / "live.js").read_text()


def _js_set(name: str) -> set[int]:
    match = re.search(rf"const {name} = new Set\(\[([\d,\s]*)\]\)", LIVE_JS)
    assert match, f"{name} not found in client_demo/live.js"
    return {int(code) for code in match.group(1).split(",") if code.strip()}


def test_browser_no_retry_set_is_the_servers() -> None:
    assert _js_set("NO_RETRY") == {int(code) for code in NO_RETRY_CODES}


def test_browser_fresh_token_set_is_the_servers() -> None:
    assert _js_set("FRESH_TOKEN") == {int(code) for code in FRESH_TOKEN_CODES}


def test_no_retry_codes_are_ones_the_server_closes_with() -> None:
    closing = {c for c in ErrorCode if c.name in {"UNSUPPORTED_VERSION", "ROOM_CLOSED"}}
    from server.wire.protocol import FATAL_CODES

    assert FATAL_CODES | closing >= NO_RETRY_CODES
    assert FRESH_TOKEN_CODES <= FATAL_CODES


# numbers in the 4000s that are not codes: socket backlog, Unicode code points (content.py)
NOT_CODES = {4096, 4447, 4448}


def test_no_application_code_written_out_outside_protocol() -> None:
    """A 4xxx number anywhere in the server but protocol.py would be a code outside ErrorCode
    (as the admin API's 4410 once was)."""
    found = []
    for path in ROOT.rglob("*.py"):
        if path == ROOT / "wire" / "protocol.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and type(node.value) is int
                and 4000 <= node.value < 5000
                and node.value not in NOT_CODES
            ):
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {node.value}")
    assert not found, found
