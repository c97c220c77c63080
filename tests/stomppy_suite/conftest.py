"""Runs stomp.py's own test suite (vendored in tests/) against stampede over plain TCP.

At session start this starts one stampede (binary from $STAMPEDE_BIN, default
target/release/stampede) on free loopback ports with a fresh data dir, and points
stomp.py's test configuration at its STOMP TCP port through the environment
variables upstream's tests/testutils.py reads (STD_HOST/STD_PORT, and the
RabbitMQ/stompserver/Artemis equivalents, so that every plain-TCP broker test
talks to stampede).  The server is stopped at session end.

Tests listed in expectations.SKIPPED are marked skipped with their reason.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from expectations import SKIPPED  # noqa: E402

REPO = HERE.parents[1]
READY_RE = re.compile(r"^stampede ready http=(\S+):(\d+) stomp=(\S+):(\d+)\s*$")
READY_TIMEOUT = 20.0

_server = {}


def _die_with_parent():
    # If this pytest process is killed (e.g. the outer test's subprocess timeout),
    # the kernel sends the server SIGTERM instead of leaving it running (Linux only).
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _start_stampede(config):
    binary = os.environ.get("STAMPEDE_BIN", str(REPO / "target" / "release" / "stampede"))
    tmp = Path(tempfile.mkdtemp(prefix="stomppy-suite-"))
    stderr_path = tmp / "stampede.stderr"
    args = [binary, "--listen", "127.0.0.1:0", "--stomp-listen", "127.0.0.1:0",
            "--data-dir", str(tmp / "data"), "--shards", "2", "--max-publish-rate", "0"]
    stderr = open(stderr_path, "wb")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent)
    stderr.close()
    found = {}

    def read_stdout():
        for raw in proc.stdout:
            m = READY_RE.match(raw.decode("utf-8", "replace").strip())
            if m and not found:
                found["stomp"] = (m.group(3), int(m.group(4)))
        # keep draining until exit so the server never blocks on a full pipe

    t = threading.Thread(target=read_stdout, daemon=True)
    t.start()
    deadline = time.monotonic() + READY_TIMEOUT
    while not found and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if not found:
        proc.kill()
        proc.wait()
        raise pytest.UsageError("stampede did not become ready: %s\n%s"
                                % (args, stderr_path.read_text(errors="replace")[-4000:]))
    host, port = found["stomp"]
    _server.update(proc=proc, tmp=tmp, stderr=stderr_path)
    for prefix in ("STD", "RABBITMQ", "STOMPSERVER", "ARTEMIS"):
        os.environ[prefix + "_HOST"] = host
        os.environ[prefix + "_PORT"] = str(port)
    return host, port


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        raise pytest.UsageError("run this suite without xdist: it shares one server and fixed stub ports")
    host, port = _start_stampede(config)
    config._stampede_addr = (host, port)


def pytest_report_header(config):
    addr = getattr(config, "_stampede_addr", None)
    if addr:
        return "stampede STOMP/TCP at %s:%d (stderr: %s)" % (addr[0], addr[1], _server.get("stderr"))


def pytest_unconfigure(config):
    proc = _server.pop("proc", None)
    if proc is None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if os.environ.get("STOMPPY_SUITE_KEEP_TMP") != "1":
        shutil.rmtree(_server.pop("tmp"), ignore_errors=True)


def _skip_reason(nodeid):
    for key, reason in SKIPPED.items():
        if nodeid == key or nodeid.startswith(key + "::"):
            return reason
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        reason = _skip_reason(item.nodeid)
        if reason:
            item.add_marker(pytest.mark.skip(reason="not run against stampede: " + reason))


try:
    import pytest_mock  # noqa: F401
except ImportError:
    # Upstream's tests use pytest-mock's `mocker` for a handful of client-side
    # checks; this is the small subset they need (patch.object, Mock, MagicMock),
    # built on unittest.mock, so the suite needs no extra package.
    class _Mocker:
        Mock = mock.Mock
        MagicMock = mock.MagicMock

        def __init__(self):
            self._patches = []
            mocker = self

            class _Patch:
                def object(self, target, attribute, *args, **kwargs):
                    p = mock.patch.object(target, attribute, *args, **kwargs)
                    mocked = p.start()
                    mocker._patches.append(p)
                    return mocked

            self.patch = _Patch()

        def stopall(self):
            for p in reversed(self._patches):
                p.stop()
            self._patches.clear()

    @pytest.fixture
    def mocker():
        m = _Mocker()
        yield m
        m.stopall()
