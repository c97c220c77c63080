"""Observability (issue 13): /metrics, /readyz, /status, --metrics-listen.

/metrics is parsed with the Prometheus project's own Python parser
(prometheus_client) and checked with `promtool check metrics`; the counters
must match what the test's clients did.
"""
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO
from stampede_client import TcpStomp, build_frame, uid


def fault_bin() -> Path:
    return Path(os.environ.get("STAMPEDE_FAULT_BIN",
                               str(REPO / "target" / "release" / "stampede-fault")))


def get(host, port, path, timeout=10.0):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), resp.read()
    finally:
        conn.close()


def metrics_addr(srv):
    """The --metrics-listen address from the line before the ready line."""
    for line in srv.stdout_lines:
        if line.startswith("stampede metrics http="):
            host, port = line.split("=", 1)[1].rsplit(":", 1)
            return host, int(port)
    raise AssertionError(f"no metrics line in {srv.stdout_lines}")


class Scrape:
    """One /metrics page: raw text and parsed samples."""

    def __init__(self, text: str):
        self.text = text
        self.samples = []
        self.types = {}
        for fam in text_string_to_metric_families(text):
            self.types[fam.name] = fam.type
            self.samples.extend(fam.samples)

    def total(self, name: str, missing=None, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels`
        (`missing`, if given, when there is none)."""
        found = [s for s in self.samples if s.name == name
                 and all(s.labels.get(k) == v for k, v in labels.items())]
        if not found and missing is not None:
            return missing
        assert found, f"no sample {name}{labels} in /metrics"
        return sum(s.value for s in found)

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.samples)


def scrape(host, port) -> Scrape:
    status, headers, body = get(host, port, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    return Scrape(body.decode())


def promtool_check(text: str):
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found (Debian package prometheus; scripts/test.sh installs it)"
    r = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=30)
    assert r.returncode == 0, f"promtool check metrics failed:\n{r.stdout.decode()}{r.stderr.decode()}"
    # promtool's linter prints problems even when it exits 0 for some of them
    assert not r.stdout.strip() and not r.stderr.strip(), r.stdout.decode() + r.stderr.decode()


def wait_until(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ---- counters match what the clients did --------------------------------------------------


def test_metrics_pass_promtool_and_count_what_the_clients_did(server_factory):
    srv = server_factory("--shards", "2")
    host, port = srv.host, srv.http_port
    before = scrape(host, port)
    promtool_check(before.text)
    assert before.types["stampede_connections"] == "gauge"
    assert before.types["stampede_frames_received"] == "counter"  # parser drops _total
    assert before.types["stampede_publish_delivery_seconds"] == "histogram"
    assert before.total("stampede_shards") == 2
    assert before.total("stampede_build_info") == 1
    assert before.total("stampede_ready") == 1
    assert before.total("process_resident_memory_bytes") > 1_000_000
    assert before.total("process_open_fds") > 5

    room = uid()
    dest = f"/topic/{room}"
    n_subs, m = 3, 20
    subs = []
    for _ in range(n_subs):
        c = srv.connected("tcp")
        c.subscribe(dest)
        subs.append(c)
    ws = srv.ws()  # one WebSocket session too
    ws.connect()
    pub = srv.connected("tcp")
    for i in range(m):
        pub.send(dest, f"hello {i}", receipt=True)
    for c in subs:
        got = c.messages(m)
        assert [f.body for f in got] == [f"hello {i}".encode() for i in range(m)]
    # one ERROR of a known kind
    bad = srv.connected("tcp")
    bad.send_frame("SEND", [("destination", "/exchange/nope")], b"x")
    bad.expect_error("invalid destination")

    after = wait_until(lambda: (lambda s: s if s.total("stampede_sessions") == n_subs + 2 else None)(
        scrape(host, port)), what="sessions to settle")
    promtool_check(after.text)

    def delta(name, **labels):
        return after.total(name, **labels) - before.total(name, missing=0, **labels)

    tcp_conns = n_subs + 2  # subscribers, publisher, the refused sender
    assert delta("stampede_connections_accepted_total", listener="stomp") == tcp_conns
    # the scrapes themselves and the WebSocket are on the HTTP listener
    assert delta("stampede_connections_accepted_total", listener="http") >= 2
    assert after.total("stampede_connections", transport="stomp") == n_subs + 1
    assert after.total("stampede_connections", transport="ws") == 1
    assert after.total("stampede_sessions") == n_subs + 2
    assert after.total("stampede_subscriptions") == n_subs
    assert delta("stampede_messages_published_total") == m
    assert delta("stampede_messages_delivered_total") == n_subs * m
    assert delta("stampede_messages_replayed_total") == 0
    # frames in: every CONNECT, SUBSCRIBE, SEND; out: CONNECTED, RECEIPTs, MESSAGEs, the ERROR
    frames_in = (tcp_conns + 1) + n_subs + m + 1
    assert delta("stampede_frames_received_total") == frames_in
    frames_out = (tcp_conns + 1) + n_subs + m + n_subs * m + 1
    assert delta("stampede_frames_sent_total") == frames_out
    assert delta("stampede_received_bytes_total") > m * len("hello 0")
    assert delta("stampede_sent_bytes_total") > n_subs * m * len("hello 0")
    assert delta("stampede_errors_sent_total", kind="invalid destination") == 1
    assert delta("stampede_send_receipt_seconds_count") == m
    # one observation per message and shard with subscribers: 1 or 2 shards
    assert m <= delta("stampede_publish_delivery_seconds_count") <= 2 * m
    assert delta("stampede_writer_stored_messages_total") == m
    assert delta("stampede_writer_commits_total") >= 1
    assert delta("stampede_writer_batch_messages_sum") == m
    assert delta("stampede_writer_commit_seconds_count") == delta("stampede_writer_commits_total")
    assert after.total("stampede_writer_queue_capacity") == 65536
    assert after.total("stampede_scrape_missing_shards") == 0


def test_refusals_and_slow_consumers_are_counted(server_factory):
    # one shard, room for 2 connections; scrapes go to the metrics listener,
    # which may take a few connections beyond --max-connections
    srv = server_factory("--shards", "1", "--max-connections", "2",
                         "--max-outbound-bytes", "262144", "--connect-timeout-ms", "300",
                         "--metrics-listen", "127.0.0.1:0")
    mhost, mport = metrics_addr(srv)
    before = scrape(mhost, mport)

    # a malformed request on the HTTP listener
    with socket.create_connection((srv.host, srv.http_port), timeout=5) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    # a connection that never finishes its HTTP request
    idle = socket.create_connection((srv.host, srv.http_port), timeout=5)
    wait_until(lambda: scrape(mhost, mport).total(
        "stampede_connections_refused_total", reason="handshake_timeout") >= 1,
        what="the handshake timeout")
    idle.close()

    # full: with only the scrape's own connection open, two clients fit and a third is refused
    wait_until(lambda: scrape(mhost, mport).total("stampede_connections") == 1,
               what="only the scrape's connection open")
    a = srv.connected("tcp")
    b = srv.connected("tcp")
    third = TcpStomp(srv.host, srv.stomp_port)
    srv.clients.append(third)
    f = third.recv_frame(5)
    assert f.command == "ERROR" and f["message"] == "server full", f
    a.close()
    b.close()
    wait_until(lambda: scrape(mhost, mport).total("stampede_connections") == 1,
               what="the clients to be gone")

    # a slow consumer: it subscribes and never reads
    dest = f"/topic/{uid()}"
    slow = TcpStomp(srv.host, srv.stomp_port, rcvbuf=4096)
    srv.clients.append(slow)
    slow.connect()
    slow.subscribe(dest)
    pub = srv.connected("tcp")
    pub.sock.settimeout(30)
    frame = build_frame("SEND", [("destination", dest)], b"s" * 8000)
    for _ in range(0, 2000, 100):
        pub.send_raw(frame * 100)
    wait_until(lambda: scrape(mhost, mport).total(
        "stampede_disconnects_total", reason="slow_consumer") >= 1, timeout=30,
        what="the slow consumer to be cut off")

    after = scrape(mhost, mport)
    promtool_check(after.text)

    def delta(name, **labels):
        return after.total(name, **labels) - before.total(name, missing=0, **labels)

    assert delta("stampede_connections_refused_total", reason="bad_request", transport="http") == 1
    assert delta("stampede_connections_refused_total", reason="handshake_timeout") == 1
    assert delta("stampede_connections_refused_total", reason="full", transport="stomp") == 1
    assert delta("stampede_disconnects_total", reason="slow_consumer") == 1
    assert delta("stampede_errors_sent_total", kind="slow consumer") == 1
    assert delta("stampede_connections_accepted_total", listener="metrics") >= 4
    assert delta("stampede_connections_accepted_total", listener="stomp") == 4


def test_connect_and_heart_beat_timeouts_are_counted(server_factory):
    srv = server_factory("--shards", "1", "--connect-timeout-ms", "300", "--heartbeat-receive-ms", "200")
    host, port = srv.host, srv.http_port
    quiet = socket.create_connection((srv.host, srv.stomp_port), timeout=5)  # never CONNECTs
    hb = srv.connected("tcp", heart_beat="200,0")  # promises a beat every 200 ms, sends none
    hb.expect_error("heart-beat timeout", timeout=5)
    s = wait_until(lambda: (lambda x: x if x.total(
        "stampede_connections_refused_total", reason="connect_timeout", transport="stomp") >= 1
        else None)(scrape(host, port)), what="the connect timeout")
    assert s.total("stampede_disconnects_total", reason="heartbeat_timeout") == 1
    assert s.total("stampede_errors_sent_total", kind="heart-beat timeout") == 1
    quiet.close()


# ---- /readyz ---------------------------------------------------------------------------


def slow_writer_server(server_factory, queue: int):
    """A server whose writer stores 40 messages a second (one per 25 ms round)."""
    binary = fault_bin()
    if not binary.exists():
        pytest.fail(f"fault-injection binary not found at {binary} (scripts/test.sh builds it)")
    return server_factory("--shards", "2", "--persist-queue", str(queue), "--persist-batch", "1",
                          env={"STAMPEDE_FAULT_WRITER_DELAY_MS": "25"}, binary=binary)


def test_readyz_is_503_while_the_writer_queue_is_full(server_factory):
    srv = slow_writer_server(server_factory, 16)
    host, port = srv.host, srv.http_port
    status, _, body = get(host, port, "/readyz")
    assert (status, body) == (200, b"ready\n")
    dest = f"/topic/{uid()}"
    pub = srv.connected("tcp")
    n = 120  # 120 x 25 ms: about three seconds of writing
    pub.send_raw(b"".join(build_frame("SEND", [("destination", dest)], f"m{i}") for i in range(n)))
    status, body = wait_until(lambda: (lambda r: (r[0], r[2]) if r[0] == 503 else None)(
        get(host, port, "/readyz")), what="/readyz to answer 503")
    assert b"writer's queue is full" in body, body
    assert get(host, port, "/healthz")[0] == 200, "liveness is not readiness"
    s = scrape(host, port)
    assert s.total("stampede_writer_queue_depth") >= 8
    # once the writer catches up, ready again
    pub.send_frame("SEND", [("destination", dest), ("receipt", "last")], b"last")
    pub.expect_receipt("last", timeout=30)
    wait_until(lambda: get(host, port, "/readyz")[0] == 200, timeout=20, what="ready again")


def test_readyz_is_503_while_draining_and_observability_stays_up(server_factory):
    # The drain commits everything read: with 120 queued for a writer
    # storing 40/s, it takes about three seconds.
    srv = slow_writer_server(server_factory, 120)
    host, port = srv.host, srv.http_port
    dest = f"/topic/{uid()}"
    pub = srv.connected("tcp")
    pub.send_raw(b"".join(build_frame("SEND", [("destination", dest)], f"m{i}") for i in range(200)))
    wait_until(lambda: scrape(host, port).total("stampede_writer_queue_depth") >= 100,
               what="a queue for the writer")
    srv.proc.send_signal(signal.SIGTERM)
    # (before the signal lands, the full writer queue may be the reason)
    status, _, body = wait_until(lambda: (lambda r: r if r[0] == 503 and b"draining" in r[2] else None)(
        get(host, port, "/readyz")), what="/readyz to answer 503 (draining) during the drain")
    assert get(host, port, "/healthz")[0] == 200
    s = scrape(host, port)
    assert s.total("stampede_ready") == 0
    # no new clients while draining: a WebSocket upgrade and the API get 503
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert sock.recv(200).startswith(b"HTTP/1.1 503"), "upgrade during drain"
    assert get(host, port, f"/api/rooms/{dest[7:]}/messages")[0] == 503
    assert srv.proc.wait(30) == 0
    srv.stopped = True


# ---- --metrics-listen and /status --------------------------------------------------------------


def test_metrics_listen_separates_the_observability_endpoints(server_factory):
    srv = server_factory("--shards", "2", "--metrics-listen", "127.0.0.1:0")
    mhost, mport = metrics_addr(srv)
    assert mport != srv.http_port
    # the public listener: no /metrics, no /status; health and readiness stay
    for path in ("/metrics", "/status"):
        status, _, body = get(srv.host, srv.http_port, path)
        assert status == 404 and b"--metrics-listen" in body, (path, status, body)
    assert get(srv.host, srv.http_port, "/readyz")[0] == 200
    assert get(srv.host, srv.http_port, "/healthz")[0] == 200
    # the metrics listener: only those
    promtool_check(scrape(mhost, mport).text)
    status, headers, body = get(mhost, mport, "/status")
    assert status == 200 and headers["content-type"].startswith("text/html"), headers
    assert get(mhost, mport, "/readyz")[0] == 200
    for path in ("/api/rooms/x/messages", "/", "/ws"):
        assert get(mhost, mport, path)[0] == 404, path
    with socket.create_connection((mhost, mport), timeout=5) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert not sock.recv(200).startswith(b"HTTP/1.1 101"), "no WebSocket on the metrics listener"
    # and the WebSocket endpoint still works on the public one
    ws = srv.ws()
    ws.connect()


def test_status_page_is_served_from_the_binary(server):
    status, headers, body = get(server.host, server.http_port, "/status")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp, csp
    text = body.decode()
    assert "<canvas" in text or "canvas" in text
    assert "http://" not in text and "https://" not in text, "the page loads nothing from elsewhere"


def test_many_scrapes_at_once_are_answered_or_refused_cleanly(server):
    import concurrent.futures as cf

    def one(_):
        return get(server.host, server.http_port, "/metrics")[0]

    with cf.ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(one, range(200)))
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 100
