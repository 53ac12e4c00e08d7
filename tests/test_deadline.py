"""`within` keeps every cancel: a reader cancelled as its frame arrives stops (CI lost a test to
`asyncio.wait_for` dropping that cancel on Python 3.11, server/deadline.py)."""

from __future__ import annotations

import asyncio

import pytest

from server.deadline import within


async def test_a_cancel_arriving_with_the_result_stops_the_reader() -> None:
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future[int]] = []
    frames = 0

    async def reader() -> None:
        nonlocal frames
        while True:
            pending.append(loop.create_future())
            await within(pending[-1], 60)
            frames += 1

    task = asyncio.create_task(reader())
    while not pending:
        await asyncio.sleep(0)
    pending[-1].set_result(1)  # the frame arrives...
    task.cancel()  # ...in the same loop iteration as the cancel
    with pytest.raises(asyncio.CancelledError):
        await task  # with asyncio.wait_for this waited for the next frame (here: 60 s)
    assert frames == 0 and len(pending) == 1


async def test_the_deadline_cancels_what_it_awaited() -> None:
    never = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await within(never, 0.01)
    assert never.cancelled()


async def test_the_result_comes_back() -> None:
    assert await within(asyncio.sleep(0, result="done"), None) == "done"
