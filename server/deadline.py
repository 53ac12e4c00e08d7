"""`within`: `asyncio.wait_for` without its Python 3.11 flaw.

On 3.11, `asyncio.wait_for` drops a cancel that arrives in the same loop iteration as its
awaitable's result: it returns the result, and the task carries on as if never cancelled. A
`while True: await wait_for(ws.recv(), t)` reader cancelled while frames flow then runs on,
and whoever awaits it after `task.cancel()` hangs (a CI run lost a test to this). `asyncio.timeout`
delivers the cancel in every case, so every deadline in the project goes through it; ruff bans
`asyncio.wait_for` (pyproject.toml) so the flaw does not come back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(aw: Awaitable[T], seconds: float | None) -> T:
    """Await `aw` for at most `seconds` (None: no limit); TimeoutError after, and `aw` cancelled."""
    async with asyncio.timeout(seconds):
        return await aw
