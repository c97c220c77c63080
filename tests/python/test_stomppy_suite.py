"""stomp.py's own test suite (vendored in tests/stomppy_suite/) against stampede over plain TCP.

Runs the suite in a subprocess (its conftest starts its own stampede) and asserts
that the set of failing tests is exactly the documented list in
tests/stomppy_suite/expectations.py: a new failure fails this test, and so does a
documented failure that starts passing.  Also checks that README.md's section
"stomp.py's own test suite" names the same failures.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "tests" / "stomppy_suite"
sys.path.insert(0, str(SUITE))
from expectations import EXPECTED_FAILURES, SKIPPED  # noqa: E402

RESULT_RE = re.compile(r"^(PASSED|FAILED|ERROR|XPASS|XFAIL) (\S+)")
SKIP_RE = re.compile(r"^SKIPPED \[(\d+)\] ")
SUMMARY_RE = re.compile(r"^(=+ )?(\d+ (passed|failed|skipped|errors?)[, ]*)+.* in [\d.]+s")


def readme_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## stomp\.py's own test suite\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, "README.md has no section \"## stomp.py's own test suite\""
    return m.group(1)


def test_readme_lists_the_expected_failures():
    section = readme_section()
    for nodeid in EXPECTED_FAILURES:
        assert nodeid in section, f"README section does not list expected failure {nodeid}"
    listed = set(re.findall(r"`(tests/test_\w+\.py::[^`]+)`", section))
    assert listed <= set(EXPECTED_FAILURES) | set(SKIPPED), \
        f"README lists tests that are not in expectations.py: {sorted(listed - set(EXPECTED_FAILURES) - set(SKIPPED))}"


@pytest.mark.timeout(360)
def test_stomppy_suite_failures_are_exactly_the_documented_ones():
    env = dict(os.environ)
    env.setdefault("STAMPEDE_BIN", str(REPO / "target" / "release" / "stampede"))
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist",
           "-c", str(SUITE / "pytest.ini"), "--rootdir", str(SUITE),
           "-rA", "-q", "--timeout", "60", "tests"]
    proc = subprocess.run(cmd, cwd=SUITE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=330)
    out = proc.stdout.decode("utf-8", "replace")
    tail = "\n".join(out.splitlines()[-120:])

    outcomes = {}
    skipped = 0
    for line in out.splitlines():
        m = RESULT_RE.match(line)
        if m:
            outcomes.setdefault(m.group(2), set()).add(m.group(1))
        m = SKIP_RE.match(line)
        if m:
            skipped += int(m.group(1))
    assert proc.returncode in (0, 1), f"pytest exit status {proc.returncode} (not a test result):\n{tail}"
    assert any(SUMMARY_RE.match(l) for l in out.splitlines()), f"no pytest summary line:\n{tail}"

    failing = {n for n, o in outcomes.items() if o & {"FAILED", "ERROR", "XPASS"}}
    passed = {n for n, o in outcomes.items() if o == {"PASSED"} or o == {"XFAIL"}}
    expected = set(EXPECTED_FAILURES)
    new = sorted(failing - expected)
    fixed = sorted(expected - failing)
    assert not new and not fixed, (
        "stomp.py suite outcome differs from tests/stomppy_suite/expectations.py\n"
        f"  new failures: {new}\n"
        f"  documented failures that now pass (remove them from expectations.py and README.md): {fixed}\n"
        f"{tail}")
    # Guard against a suite that silently stopped running (collection, config).
    assert len(passed) >= 75, f"only {len(passed)} stomp.py tests passed:\n{tail}"
    assert skipped >= 1, f"the skip list was not applied:\n{tail}"
