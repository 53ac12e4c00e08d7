"""tests/ci_skips.py: a skip fails under CI=true (with its reason) and stays a listed skip outside."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIPPING = """
import pytest

@pytest.mark.skipif(True, reason="redis-server not installed")
def test_marked():
    pass

@pytest.fixture
def chromium():
    pytest.skip("chromium not installed")

def test_fixture(chromium):
    pass

def test_body():
    pytest.skip("coturn not installed")

@pytest.mark.xfail(reason="known", strict=True)
def test_xfail():
    assert False
"""


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the child pytest runs in a temp dir: find tests.ci_skips
    return pytester.runpytest_subprocess("-p", "tests.ci_skips", "-rs", "-p", "no:cacheprovider")


def test_skips_fail_under_ci_with_their_reasons(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_skipping=SKIPPING)
    result = _run(pytester, monkeypatch, "true")
    result.assert_outcomes(failed=1, errors=2, xfailed=1)  # a skip in setup is a setup failure
    out = result.stdout.str()
    for reason in ("redis-server not installed", "chromium not installed", "coturn not installed"):
        assert "skipped under CI=true, a failure in CI: " in out and reason in out, out
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_module_skip_fails_collection_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        test_module="""
import pytest
pytest.importorskip("no_such_module_liveroom", reason="playwright is not installed")

def test_never():
    pass
"""
    )
    result = _run(pytester, monkeypatch, "true")
    assert result.ret != pytest.ExitCode.OK
    assert "playwright is not installed" in result.stdout.str()
    result.assert_outcomes(errors=1)


@pytest.mark.parametrize("ci", [None, "false"])
def test_skips_are_listed_outside_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    pytester.makepyfile(test_skipping=SKIPPING)
    result = _run(pytester, monkeypatch, ci)
    result.assert_outcomes(skipped=3, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*short test summary info*",
            "SKIPPED*redis-server not installed",
            "SKIPPED*chromium not installed",
            "SKIPPED*coturn not installed",
        ]
    )
