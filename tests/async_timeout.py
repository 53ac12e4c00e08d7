"""Async tests time out inside their own event loop, so a hung await fails one test, not the run.

pytest-timeout's default method raises from a SIGALRM handler; while a test awaits on uvloop
(where every async test runs, tests/conftest.py) that exception never reaches the test: a test
stuck on an await hung the run for 18 minutes past its 180 s limit. So each coroutine test runs inside
`asyncio.timeout`, a little shorter than its pytest-timeout limit: a hang fails that test with
a TimeoutError whose traceback shows the await it was stuck in, its finally blocks and
fixtures' teardowns run, and the run goes on. Loaded by tests/conftest.py (`pytest_plugins`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import pytest

MARGIN = 10.0  # seconds: the loop's timeout fires first, pytest-timeout stays the backstop


def limit(item: pytest.Item) -> float | None:
    """The test's pytest-timeout limit (its `timeout` mark, else the ini value), less MARGIN."""
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        value = marker.args[0] if marker.args else marker.kwargs.get("timeout", 0)
    else:
        value = item.config.getini("timeout")
    seconds = float(value or 0)
    return max(seconds - MARGIN, seconds / 2) if seconds > 0 else None


def bounded(test: Callable[..., Awaitable[Any]], seconds: float) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                return await test(*args, **kwargs)
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # the test's own wait timed out: its message says which
            raise TimeoutError(
                f"the test did not finish within {seconds:.0f} s (tests/async_timeout.py)"
            ) from exc

    return run


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    seconds = limit(item)
    test = getattr(item, "obj", None)
    if seconds is None or not inspect.iscoroutinefunction(test):
        return (yield)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(item, "obj", bounded(test, seconds))
        return (yield)
