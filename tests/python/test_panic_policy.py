"""The panic policy: a panic on any thread ends the whole process (status 70).

A shard that died while the others served on would leave its connections
dark; a dead SQLite writer would never send the RECEIPTs it owes. These
tests use a binary built with the test-only `fault-injection` feature
(`scripts/test.sh` builds it as `target/release/stampede-fault`), whose
`STAMPEDE_FAULT_PANIC=shard|writer` panics shard 0's thread or the writer's
thread a set time after start-up.
"""
import os
import time
from pathlib import Path

import pytest

from conftest import REPO, start_server
from stampede_client import TcpStomp

PANIC_EXIT = 70
FAULT_AFTER_MS = 500


def fault_bin() -> Path:
    return Path(os.environ.get("STAMPEDE_FAULT_BIN",
                               str(REPO / "target" / "release" / "stampede-fault")))


@pytest.mark.parametrize("thread", ["shard", "writer"])
def test_a_panicking_thread_ends_the_process_within_a_second(tmp_path, thread):
    binary = fault_bin()
    if not binary.exists():
        pytest.fail(f"{binary} not found: scripts/test.sh builds it with "
                    "`cargo build --release --features fault-injection`")
    srv = start_server(tmp_path, "--shards", "2", binary=binary,
                       env={"STAMPEDE_FAULT_PANIC": thread,
                            "STAMPEDE_FAULT_PANIC_AFTER_MS": str(FAULT_AFTER_MS),
                            # As a service runs it (systemd sets no
                            # RUST_BACKTRACE): symbolising a backtrace from
                            # the line tables takes up to a second on this
                            # loaded 2-core machine, and it is the exit's
                            # latency under test, not the backtrace's.
                            "RUST_BACKTRACE": "0"})
    ready = time.monotonic()
    try:
        # It serves until the fault.
        c = TcpStomp(srv.host, srv.stomp_port)
        c.send_frame("CONNECT", {"accept-version": "1.2"})
        assert c.recv_frame(timeout=2).command == "CONNECTED"
        rc = srv.proc.wait(timeout=FAULT_AFTER_MS / 1000 + 5)
        gone = time.monotonic() - ready
    finally:
        srv.stop()
    assert rc == PANIC_EXIT, srv.stderr_text()
    # The fault fires FAULT_AFTER_MS after start-up (a little before the
    # ready line is read here); the exit follows within a second.
    assert gone < FAULT_AFTER_MS / 1000 + 1.0, f"exited {gone:.2f} s after ready"
    log = srv.stderr_text()
    assert "fault injection" in log and "exiting with status 70" in log, log


def test_a_release_build_has_no_fault_hook(tmp_path):
    srv = start_server(tmp_path, env={"STAMPEDE_FAULT_PANIC": "shard",
                                      "STAMPEDE_FAULT_PANIC_AFTER_MS": "0"})
    try:
        time.sleep(0.5)
        assert srv.proc.poll() is None, srv.stderr_text()
        c = TcpStomp(srv.host, srv.stomp_port)
        c.send_frame("CONNECT", {"accept-version": "1.2"})
        assert c.recv_frame(timeout=2).command == "CONNECTED"
    finally:
        srv.stop()
