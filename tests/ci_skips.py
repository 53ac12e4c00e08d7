"""Under CI=true a skip is a failure: a broken install step must turn CI red, not test less.

Tests skip when a real service they drive (redis-server, Chromium, coturn) is missing, which
is fine on a developer's machine (pytest's `-rfEs`, set in pyproject, lists every skip with its
reason at the end of the run). In CI (`CI=true`, as `.ci/run` is run) the same skip fails the
test with the skip's reason in the failure text. Loaded by tests/conftest.py (`pytest_plugins`).
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

PREFIX = "skipped under CI=true, a failure in CI"


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def _reason(longrepr: object) -> str:
    """A skip's longrepr is (path, line, 'Skipped: reason'); keep all three in the failure."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, line, message = longrepr
        return f"{path}:{line}: {message}"
    return str(longrepr)


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and in_ci():
        report.longrepr = f"{PREFIX}: {_reason(report.longrepr)}"
        report.outcome = "failed"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test skipped by a mark, a fixture or its body (setup or call phase)."""
    report = yield
    _fail_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """A whole module skipped while it is imported (`pytest.importorskip`, `allow_module_level`)."""
    report = yield
    _fail_skip(report)
    return report
