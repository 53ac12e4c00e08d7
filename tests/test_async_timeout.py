"""tests/async_timeout.py: an async test stuck on uvloop fails alone, with where it was stuck."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_hung_async_test_fails_and_the_run_goes_on(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(
        """
import uvloop

def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}
"""
    )
    pytester.makepyfile(
        test_hang="""
import asyncio

async def test_stuck():
    try:
        await asyncio.Event().wait()
    finally:
        print("cleaned up")

async def test_after():
    await asyncio.sleep(0)
"""
    )
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the child pytest runs in a temp dir
    # limit: max(12 - 10, 12 / 2) = 6 s; pytest-timeout alone would leave test_stuck hanging
    result = pytester.runpytest_subprocess("-p", "tests.async_timeout", "-o", "timeout=12", "-s", timeout=120)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        ["*cleaned up*", "*await asyncio.Event().wait()*", "*did not finish within 6 s*"]
    )
