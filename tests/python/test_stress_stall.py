"""The stall hunt (scripts/stress-stall.py, issue 11) runs and finds no stall
in its short version: fan-out runs of several shapes, each on a fresh server,
with a watcher that fails a run whose deliveries stop."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "stress-stall.py")
SERVER = os.environ.get("STAMPEDE_BIN", os.path.join(ROOT, "target/release/stampede"))
BENCH = os.environ.get("STAMPEDE_BENCH_BIN", os.path.join(ROOT, "target/release/stampede-bench"))


@pytest.mark.skipif(not os.path.exists(BENCH), reason="stampede-bench not built")
@pytest.mark.skipif(not os.path.exists(SERVER), reason="stampede not built")
# Runs start within 35 s; a stall's evidence (ss, gdb skipped) takes ~10 s more.
@pytest.mark.timeout(110)
def test_quick_stress_run_has_no_stall(tmp_path):
    env = dict(os.environ, STAMPEDE_BIN=SERVER, STAMPEDE_BENCH_BIN=BENCH)
    r = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--no-gdb", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    summary = (tmp_path / "summary.md").read_text() if (tmp_path / "summary.md").exists() else ""
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:] + summary
    runs = [line for line in (tmp_path / "runs.jsonl").read_text().splitlines() if line]
    assert len(runs) >= 5, r.stdout
