"""A failed test's report shows the logs of the child processes it started (node processes'
WARNING lines say what their broker saw: "redis shard ... lost", "redis connection lost").

A fixture registers each process's log as (title, read) in the test's stash (`CHILD_LOGS`);
the report hook appends them as sections, which pytest prints under the failure. Loaded by
tests/conftest.py (`pytest_plugins`); imported as `tests.child_logs` everywhere, so the stash
key is one object (conftest.py itself is imported twice: as `conftest` and `tests.conftest`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import pytest

CHILD_LOGS = pytest.StashKey[list[tuple[str, Callable[[], str]]]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed phase (setup, call or teardown): the children's logs, as they are now."""
    report = yield
    if report.failed:
        for title, read in item.stash.get(CHILD_LOGS, []):
            report.sections.append((title, read()))
    return report
