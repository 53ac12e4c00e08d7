"""The gift authorisation callback: money stays with the platform, which says yes or no per gift.

Each gift is POSTed as JSON, signed like a webhook (`X-Liveroom-Signature: sha256=<HMAC>`), to
`--gift-auth-url`, and the gift goes out only on a 2xx whose body is `{"allow": true}` (a
`"balance"` in it is passed on to the sender). `{"allow": false, "reason": ...}`, or a 402/403,
refuses it (4701); no answer within `--gift-auth-timeout`, a network error or a 5xx refuses it
as unavailable (4702, retry). The gift's `id` is the same on every retry of one `cid`, so the
platform charges a gift once however often it is asked.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

from server.webhooks.sender import SIGNATURE_HEADER, sign
from server.wire.protocol import ErrorCode, ProtocolError

log = logging.getLogger("liveroom.gifts")
REFUSED_STATUS = frozenset({402, 403})


class GiftCallback:
    def __init__(self, url: str, secret: str, timeout: float) -> None:
        self.url = url
        self.secret = secret
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def authorize(self, gift: dict[str, Any], ref: Any) -> int | None:
        """Allowed: the sender's balance if the platform told it (else None); raises 4701/4702."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        body = json.dumps(gift, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.secret, body)}
        try:
            async with self._session.post(
                self.url, data=body, headers=headers, timeout=self.timeout
            ) as response:
                status = response.status
                answer = await response.json(content_type=None) if 200 <= status < 300 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("gift authorisation did not answer: %r", exc)
            raise ProtocolError(
                ErrorCode.GIFT_AUTH_UNAVAILABLE, "gift authorisation did not answer: retry", ref, 1.0
            ) from None
        if status in REFUSED_STATUS or (isinstance(answer, dict) and answer.get("allow") is False):
            reason = answer.get("reason") if isinstance(answer, dict) else None
            text = str(reason)[:100] if reason else "gift refused"
            raise ProtocolError(ErrorCode.GIFT_REFUSED, text, ref)
        if not (isinstance(answer, dict) and answer.get("allow") is True):
            raise ProtocolError(
                ErrorCode.GIFT_AUTH_UNAVAILABLE, f"gift authorisation answered HTTP {status}: retry", ref, 1.0
            )
        balance = answer.get("balance")
        return balance if isinstance(balance, int) and not isinstance(balance, bool) else None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
