"""client_demo/errors.js is the pages' one table of error texts: it must cover ErrorCode exactly."""

from __future__ import annotations

import re
from pathlib import Path

from server.wire.protocol import ErrorCode

TABLE = (Path(__file__).resolve().parent.parent / "client_demo" / "errors.js").read_text()
ROWS = re.findall(r'^\s*(\d{4}): \["([A-Z_]+)", "([^"]+)"', TABLE, re.M)
ENTRIES = {int(code): name for code, name, _ in ROWS}
TEXTS = {int(code): text for code, _, text in ROWS}


def test_every_code_has_its_name_and_a_text() -> None:
    assert {int(c): c.name for c in ErrorCode} == ENTRIES


def test_contact_spam_speaks_of_links_not_dms() -> None:
    text = TEXTS[ErrorCode.CONTACT_SPAM].lower()
    assert "link" in text and "messaging" not in text


def test_texts_are_distinct() -> None:
    assert len(set(TEXTS.values())) == len(TEXTS)
