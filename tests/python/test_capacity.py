"""The capacity report (src/capacity.rs): `--check-capacity`, the start-up
line and its warnings, and tuning/check.sh, which runs the former.

50,000,000 connections is more than the open-file limit and the memory of
any machine this runs on (~12 KiB each: ~570 GiB); 100 fits everywhere.
"""

from __future__ import annotations

import os
import re
import subprocess

from conftest import REPO, stampede_bin

TIMEOUT = 30
TOO_MANY = "50000000"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAMPEDE_")}
    env.update(extra)
    return env


def check_capacity(tmp_path, *args):
    data_dir = tmp_path / "data"
    p = subprocess.run([str(stampede_bin()), "--check-capacity", "--data-dir", str(data_dir), *args],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT,
                       env=clean_env(), cwd=str(tmp_path))
    assert not data_dir.exists(), "--check-capacity must not touch the data dir (it runs beside a live server)"
    return p


def test_check_capacity_fits(tmp_path):
    p = check_capacity(tmp_path, "--max-connections", "100", "--shards", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert out.startswith("stampede capacity check: 1 shards, max_connections 100\n"), out
    for row in ("open files", "memory", "somaxconn", "memlock", "cores"):
        assert re.search(rf"^  (ok  |LOW |\?\?  ){row} ", out, re.M), f"no {row!r} row:\n{out}"
    assert "fs.nr_open" in out and "KiB each" in out
    assert out.rstrip("\n").splitlines()[-1].startswith("ok: this host allows ~"), out
    assert "ready" not in out, "it reports and exits; no server starts"


def test_check_capacity_too_many(tmp_path):
    p = check_capacity(tmp_path, "--max-connections", TOO_MANY)
    assert p.returncode == 1, p.stdout + p.stderr
    out = p.stdout
    assert re.search(r"^  LOW memory ", out, re.M), out
    assert re.search(rf"^warning: max_connections {TOO_MANY} is above the ~\d+ idle connections "
                     r"that [\d.]+ GiB of available memory holds", out, re.M), out
    assert out.rstrip("\n").splitlines()[-1].startswith(
        f"too many: max_connections {TOO_MANY} is above the ~"), out


def test_check_capacity_default_max_connections(tmp_path):
    # Derived from the open-file limit, so the files cannot be short.
    p = check_capacity(tmp_path)
    assert "(default: open files - 64)" in p.stdout.splitlines()[0], p.stdout
    assert "LOW open files" not in p.stdout, p.stdout


def test_start_up_line_and_warning(server_factory):
    srv = server_factory("--max-connections", TOO_MANY)
    log = ANSI.sub("", srv.stderr_text(1 << 20))
    lines = [l for l in log.splitlines() if "capacity: nofile=" in l]
    assert len(lines) == 1, log
    line = lines[0]
    assert " INFO " in line, line
    for part in ("somaxconn=", "memlock=", "cores=", "shards=", "GiB available; allows ~",
                 "KiB each); ", f"max_connections={TOO_MANY}"):
        assert part in line, f"{part!r} missing from {line!r}"
    warnings = [l for l in log.splitlines() if " WARN " in l and "capacity: " in l]
    assert any(f"max_connections {TOO_MANY} is above" in w and "available memory" in w for w in warnings), log
    # A warning, not a refusal: it serves.
    srv.assert_running()
    srv.connected("tcp").ping_roundtrip("/topic/capacity")
    assert len(srv.stdout_lines) == 1, "the report goes to the log, not stdout"


def run_script(*args, **env):
    return subprocess.run(["bash", str(REPO / "tuning" / "check.sh"), *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT,
                          env=clean_env(**env))


def test_capacity_check_script(tmp_path):
    bin_ = str(stampede_bin())
    ok = run_script("100", STAMPEDE_BIN=bin_)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("host facts (this shell):\n"), ok.stdout
    for fact in ("open files soft/hard", "fs.nr_open", "memlock", "net.core.somaxconn",
                 "ip_local_port_range", "cores", "MemTotal", "io_uring"):
        assert f"  {fact}" in ok.stdout, (fact, ok.stdout)
    verdict = ok.stdout[ok.stdout.index("stampede capacity check: "):]
    assert "max_connections 100\n" in verdict.splitlines(keepends=True)[0], ok.stdout
    low = run_script(TOO_MANY, STAMPEDE_BIN=bin_)
    assert low.returncode == 1, low.stdout + low.stderr
    assert "too many:" in low.stdout
    # Flags after N are passed on.
    shards = run_script("100", "--shards", "3", STAMPEDE_BIN=bin_)
    assert shards.returncode == 0 and "3 shards" in shards.stdout, shards.stdout + shards.stderr
    missing = run_script("100", STAMPEDE_BIN=str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no stampede binary" in missing.stderr, missing.stderr
    usage = run_script("lots", STAMPEDE_BIN=bin_)
    assert usage.returncode == 2 and "usage:" in usage.stderr, usage.stderr
