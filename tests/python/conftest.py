"""Fixtures for the stampede black-box tests.

``server_factory(*extra_args, env=None)`` starts a fresh server (own temp data dir,
port 0 everywhere) and returns a :class:`Server`; every server started is stopped
(SIGTERM, then SIGKILL after 5 s) at teardown.  ``server`` is one default server;
a test can give it extra flags with ``@pytest.mark.server_args("--flag", "value")``.

Helpers (raw TCP / WebSocket STOMP clients, frame builders, parser) live in
stampede_client.py next to this file and are re-exported here.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stampede_client import (  # noqa: E402,F401  (re-exported for tests)
    DEFAULT_TIMEOUT,
    WS_ALL_SUBPROTOCOLS,
    ConnectionClosed,
    Frame,
    FrameParser,
    StompClient,
    TcpStomp,
    Timeout,
    WsStomp,
    build_frame,
    esc,
    uid,
    unesc,
)

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 20.0
# Every test server gets this admin token (unless the test gives its own):
# the history, members and devices API need credentials.
ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READY_RE = re.compile(r"^stampede ready http=(\S+):(\d+) stomp=(\S+)\s*$")


def stampede_bin() -> Path:
    return Path(os.environ.get("STAMPEDE_BIN", str(REPO / "target" / "release" / "stampede")))


class Server:
    def __init__(self, proc: subprocess.Popen, args: list, data_dir: Path, stderr_path: Path):
        self.proc = proc
        self.args = args
        self.data_dir = data_dir
        self.stderr_path = stderr_path
        self.host = "127.0.0.1"
        self.http_port: Optional[int] = None
        self.stomp_port: Optional[int] = None
        self.stdout_lines: list = []
        self.clients: list = []
        self.stopped = False

    # ---- addresses
    @property
    def http_addr(self):
        return (self.host, self.http_port)

    def ws_url(self, path: str = "/ws") -> str:
        return f"ws://{self.host}:{self.http_port}{path}"

    # ---- clients (closed automatically at teardown)
    def tcp(self, **kw) -> TcpStomp:
        assert self.stomp_port is not None, "server started with --stomp-listen off"
        c = TcpStomp(self.host, self.stomp_port, **kw)
        self.clients.append(c)
        return c

    def ws(self, path: str = "/ws", subprotocols=WS_ALL_SUBPROTOCOLS, **kw) -> WsStomp:
        c = WsStomp(self.ws_url(path), subprotocols=subprotocols, **kw)
        self.clients.append(c)
        return c

    def client(self, transport: str, **kw) -> StompClient:
        if transport == "tcp":
            kw.pop("subprotocols", None)
            return self.tcp(**kw)
        if transport == "ws":
            return self.ws(**kw)
        raise ValueError(transport)

    def on_distinct_shards(self, want: int, tries: int = 40, transport: str = "tcp") -> dict:
        """Connected clients on up to `want` different shards ({shard: client});
        SO_REUSEPORT places connections, so keep connecting until it spreads."""
        found: dict = {}
        for _ in range(tries):
            c = self.connected(transport)
            found.setdefault(c.shard, c)
            if len(found) >= want:
                break
        return found

    def connected(self, transport: str = "tcp", version: str = "1.2", **kw) -> StompClient:
        """A client that already got CONNECTED."""
        c = self.client(transport)
        c.connect(version=version, **kw)
        return c

    def http(self, method: str, path: str, headers: Optional[dict] = None, body=None, timeout=DEFAULT_TIMEOUT):
        conn = http.client.HTTPConnection(self.host, self.http_port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), data
        finally:
            conn.close()

    # ---- diagnostics
    def stderr_text(self, limit: int = 20000) -> str:
        try:
            data = self.stderr_path.read_bytes()
        except OSError:
            return "<no stderr>"
        return data[-limit:].decode("utf-8", "replace")

    def assert_running(self):
        rc = self.proc.poll()
        assert rc is None, f"stampede exited with status {rc}; stderr:\n{self.stderr_text()}"

    def stop(self):
        if self.stopped:
            return
        self.stopped = True
        for c in self.clients:
            try:
                c.close()
            except Exception:
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(base_dir: Path, *extra_args: str, env: Optional[dict] = None,
                 listen: str = "127.0.0.1:0", stomp_listen: str = "127.0.0.1:0",
                 binary: Optional[Path] = None, wrap: tuple = ()) -> Server:
    """`wrap`: a command that execs the server in place (`ip netns exec NS`)."""
    binary = binary or stampede_bin()
    if not binary.exists():
        pytest.fail(f"stampede binary not found at {binary} (set STAMPEDE_BIN or run cargo build --release)")
    data_dir = base_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = base_dir / "stderr.log"
    args = [*wrap, str(binary), "--listen", listen, "--stomp-listen", stomp_listen,
            "--data-dir", str(data_dir), *[str(a) for a in extra_args]]
    if "--admin-token" not in args:
        args += ["--admin-token", ADMIN_TOKEN]
    full_env = dict(os.environ)
    # keep env-var configuration from leaking into the tests
    for k in list(full_env):
        if k.startswith("STAMPEDE_") and k != "STAMPEDE_BIN":
            del full_env[k]
    full_env.setdefault("RUST_BACKTRACE", "1")
    if env:
        full_env.update(env)
    stderr_f = open(stderr_path, "wb")
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_f,
                            env=full_env, cwd=str(base_dir))
    stderr_f.close()
    srv = Server(proc, args, data_dir, stderr_path)

    ready = threading.Event()
    first_line: list = []

    def reader():
        # keep draining stdout for the life of the process so it can never block on a full pipe
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            srv.stdout_lines.append(line)
            if not first_line and READY_RE.match(line):
                first_line.append(line)
                ready.set()
        ready.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    ready.wait(READY_TIMEOUT)
    if not first_line:
        rc = proc.poll()
        srv.stop()
        pytest.fail(
            f"stampede did not print its ready line within {READY_TIMEOUT}s "
            f"(exit status {rc}); args={args}\nstdout:\n" + "\n".join(srv.stdout_lines) +
            f"\nstderr:\n{srv.stderr_text()}")
    m = READY_RE.match(first_line[0])
    http_host, http_port, stomp = m.group(1), int(m.group(2)), m.group(3)
    srv.host = http_host
    srv.http_port = http_port
    assert http_port != 0
    if stomp == "off":
        srv.stomp_port = None
    else:
        sh, sp = stomp.rsplit(":", 1)
        srv.stomp_port = int(sp)
        assert srv.stomp_port != 0
    return srv


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.when in ("call", "setup"):
        for i, srv in enumerate(getattr(item, "_stampede_servers", [])):
            rep.sections.append((f"stampede server {i} ({' '.join(srv.args[1:])}) stderr tail",
                                 srv.stderr_text(4000)))


@pytest.fixture
def server_factory(tmp_path_factory, request):
    servers: list = []
    request.node._stampede_servers = servers

    def start(*extra_args, env=None, **kw) -> Server:
        base = tmp_path_factory.mktemp("stampede")
        srv = start_server(base, *extra_args, env=env, **kw)
        servers.append(srv)
        return srv

    yield start
    crashed = []
    for s in servers:
        if s.proc.poll() is not None and not s.stopped:
            crashed.append(f"server {s.args} exited during the test with status {s.proc.returncode}; "
                           f"stderr:\n{s.stderr_text()}")
        s.stop()
    if crashed:
        pytest.fail("\n\n".join(crashed))


@pytest.fixture
def server(server_factory, request) -> Server:
    marker = request.node.get_closest_marker("server_args")
    args = marker.args if marker else ()
    return server_factory(*args)


@pytest.fixture
def room() -> str:
    return uid("room")
