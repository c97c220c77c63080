"""Restarting on the same port right after ``kill -9``, and the guard against a
second instance on a port that is in use.

After ``kill -9`` the killed server's sockets outlive it for a moment (its
listeners and connections are still held by the io_uring ring the kernel tears
down after the process is gone), so an immediate restart on the same fixed port
must wait for them instead of failing with "Address already in use".  A live
instance's listener never goes away, so a second instance is still refused.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import READY_RE, Server, start_server, stampede_bin
from stampede_client import uid

RESTARTS = 10
CLIENTS = 12  # half over WebSocket, half over plain TCP; every third one subscribed
KILL_WAIT = 5.0
SECOND_INSTANCE_EXIT = 15.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _traffic(srv: Server, room: str) -> list:
    """Connect CLIENTS clients (some subscribed to `room`), publish to the room
    and check the subscribers got it: established, busy connections at kill time."""
    clients = []
    subscribers = []
    for i in range(CLIENTS):
        c = srv.connected("ws" if i % 2 == 0 else "tcp")
        if i % 3 == 0:
            c.subscribe(f"/topic/{room}", id="s1")
            subscribers.append(c)
        clients.append(c)
    publisher = clients[1]
    for n in range(3):
        publisher.send(f"/topic/{room}", f"m{n}", receipt=True)
    for s in subscribers:
        s.messages(3)
    # one more without waiting for it, so some frames are in flight at the kill
    publisher.send(f"/topic/{room}", "in flight")
    return clients


def _kill9(srv: Server):
    srv.proc.kill()
    srv.proc.wait(KILL_WAIT)


def test_restart_right_after_kill9_on_same_port(tmp_path):
    http_port, stomp_port = _free_port(), _free_port()
    listen, stomp_listen = f"127.0.0.1:{http_port}", f"127.0.0.1:{stomp_port}"
    base = tmp_path / "srv"
    servers: list = []
    failures: list = []

    def start() -> Server:
        srv = start_server(base, listen=listen, stomp_listen=stomp_listen)
        servers.append(srv)
        assert (srv.http_port, srv.stomp_port) == (http_port, stomp_port)
        return srv

    try:
        srv = start()
        for attempt in range(RESTARTS):
            room = uid("restart")
            _traffic(srv, room)
            old = srv
            _kill9(old)
            # at once, as a supervisor would: no pause between the reap and the start
            try:
                srv = start()
            except pytest.fail.Exception:
                log = (base / "stderr.log").read_text(errors="replace").strip().splitlines()
                failures.append(f"restart {attempt + 1}: {ANSI.sub('', log[-1]) if log else '(no stderr)'}")
                # keep going (bounded) so that the failure rate is reported
                deadline = time.monotonic() + 10
                while True:
                    try:
                        srv = start()
                        break
                    except pytest.fail.Exception:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
            old.stop()  # closes the killed server's clients
            # the new instance serves on the same ports
            c = srv.connected("tcp")
            c.ping_roundtrip(f"/topic/{room}")
            w = srv.connected("ws")
            w.ping_roundtrip(f"/topic/{room}")
        assert not failures, (
            f"{len(failures)} of {RESTARTS} restarts right after kill -9 did not print the ready line:\n"
            + "\n".join(failures))
    finally:
        for s in servers:
            s.stop()


def _start_raw(base: Path, listen: str, stomp_listen: str) -> subprocess.Popen:
    data_dir = base / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAMPEDE_")}
    return subprocess.Popen(
        [str(stampede_bin()), "--listen", listen, "--stomp-listen", stomp_listen, "--data-dir", str(data_dir)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(base))


@pytest.mark.parametrize("clash", ["both", "http", "stomp"])
def test_second_instance_on_same_port_is_refused(tmp_path, clash):
    http_port, stomp_port = _free_port(), _free_port()
    first = start_server(tmp_path / "first", listen=f"127.0.0.1:{http_port}",
                         stomp_listen=f"127.0.0.1:{stomp_port}")
    second = None
    try:
        room = uid("guard")
        sub = first.connected("ws")
        sub.subscribe(f"/topic/{room}", id="s1")
        pub = first.connected("tcp")
        pub.send(f"/topic/{room}", "before", receipt=True)
        assert sub.expect_message().text == "before"

        # a different data dir, so that only the port guard can stop it
        other_http = http_port if clash in ("both", "http") else _free_port()
        other_stomp = stomp_port if clash in ("both", "stomp") else _free_port()
        second = _start_raw(tmp_path / "second", f"127.0.0.1:{other_http}", f"127.0.0.1:{other_stomp}")
        try:
            out, err = second.communicate(timeout=SECOND_INSTANCE_EXIT)
        except subprocess.TimeoutExpired:
            second.kill()
            out, err = second.communicate(timeout=KILL_WAIT)
            pytest.fail(f"a second instance on a port in use did not exit within {SECOND_INSTANCE_EXIT}s; "
                        f"stdout={out!r} stderr={err.decode('utf-8', 'replace')[-2000:]}")
        err_text = err.decode("utf-8", "replace")
        assert second.returncode not in (0, None), f"second instance exited with {second.returncode}"
        assert not any(READY_RE.match(line) for line in out.decode("utf-8", "replace").splitlines()), \
            f"second instance announced itself: {out!r}"
        clashing = f"127.0.0.1:{http_port if clash in ('both', 'http') else stomp_port}"
        assert f"cannot listen on {clashing}" in err_text and "in use" in err_text, \
            f"no clear message about the port in use:\n{err_text[-2000:]}"

        # the first one still serves: old connections, and every new one
        first.assert_running()
        pub.send(f"/topic/{room}", "after", receipt=True)
        assert sub.expect_message().text == "after"
        for i in range(16):
            c = first.connected("ws" if i % 2 else "tcp")
            c.ping_roundtrip(f"/topic/{room}")
            c.close()
        status, _, body = first.http("GET", "/healthz")
        assert status == 200, body
    finally:
        if second is not None and second.poll() is None:
            second.kill()
            second.wait(KILL_WAIT)
        first.stop()
