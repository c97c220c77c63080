"""Interoperability with the stomp.py client library (TCP and WebSocket)."""

from __future__ import annotations

import queue
import threading
import time

import pytest
import stomp

from stampede_client import uid

TIMEOUT = 5.0


class Collector(stomp.ConnectionListener):
    def __init__(self):
        self.frames: "queue.Queue" = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connected_frame = None
        self.heartbeats = 0
        self.errors = []
        self.backlog = []

    def on_connected(self, frame):
        self.connected_frame = frame
        self.connected.set()

    def on_message(self, frame):
        self.frames.put(("MESSAGE", frame))

    def on_receipt(self, frame):
        self.frames.put(("RECEIPT", frame))

    def on_error(self, frame):
        self.errors.append(frame)
        self.frames.put(("ERROR", frame))

    def on_disconnected(self):
        self.disconnected.set()

    def on_heartbeat(self):
        self.heartbeats += 1

    def wait(self, kind, pred=lambda f: True, timeout=TIMEOUT):
        for i, (k, f) in enumerate(self.backlog):
            if k == kind and pred(f):
                return self.backlog.pop(i)[1]
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} within {timeout}s; backlog={self.backlog!r} errors={self.errors!r}")
            try:
                k, f = self.frames.get(timeout=left)
            except queue.Empty:
                continue
            if k == kind and pred(f):
                return f
            if k == "ERROR":
                raise AssertionError(f"unexpected ERROR: {f.headers!r} {f.body!r}")
            self.backlog.append((k, f))

    def receipt(self, rid, timeout=TIMEOUT):
        return self.wait("RECEIPT", lambda f: f.headers.get("receipt-id") == rid, timeout)

    def message(self, timeout=TIMEOUT):
        return self.wait("MESSAGE", timeout=timeout)


def _connect(conn, login="pyuser", **kw):
    lst = Collector()
    conn.set_listener("collector", lst)
    conn.connect(login, "secret", wait=False, **kw)
    assert lst.connected.wait(TIMEOUT), f"no CONNECTED; errors={lst.errors!r}"
    return lst


def make_conn(server, kind, **kw):
    if kind == "tcp12":
        return stomp.Connection12([(server.host, server.stomp_port)], **kw)
    if kind == "tcp11":
        return stomp.Connection11([(server.host, server.stomp_port)], **kw)
    if kind == "tcp10":
        return stomp.Connection10([(server.host, server.stomp_port)], **kw)
    if kind == "ws":
        return stomp.WSConnection([(server.host, server.http_port)], ws_path="/ws", **kw)
    raise ValueError(kind)


@pytest.fixture
def conns():
    made = []
    yield made
    for c in made:
        try:
            if c.is_connected():
                c.disconnect()
        except Exception:
            pass


@pytest.mark.parametrize("kind", ["tcp12", "ws"])
def test_stomppy_roundtrip(server, conns, kind):
    room = uid()
    dest = f"/topic/{room}"
    conn = make_conn(server, kind)
    conns.append(conn)
    lst = _connect(conn, login="py-" + kind)
    hdrs = lst.connected_frame.headers
    assert hdrs["version"] == "1.2"
    assert hdrs["server"].startswith("stampede/")
    conn.subscribe(dest, id="sub-py", ack="client-individual", receipt="r-sub")
    lst.receipt("r-sub")
    conn.send(dest, "h\u00e9llo \u2603", headers={"x-custom": "a:b\nc\\d", "plain": "v"}, receipt="r-send")
    lst.receipt("r-send")
    m = lst.message()
    assert m.body == "h\u00e9llo \u2603"
    assert m.headers["x-custom"] == "a:b\nc\\d"
    assert m.headers["plain"] == "v"
    assert m.headers["x-sender"] == "py-" + kind
    assert m.headers["x-seq"] == "1"
    assert m.headers["subscription"] == "sub-py"
    assert m.headers["message-id"] == f"{room}:1"
    assert m.headers["destination"] == dest
    conn.ack(m.headers["ack"], receipt="r-ack")
    lst.receipt("r-ack")
    conn.begin("tx1")
    conn.send(dest, "in tx", transaction="tx1")
    conn.commit("tx1", receipt="r-commit")
    lst.receipt("r-commit")
    m2 = lst.message()
    assert m2.body == "in tx"
    assert m2.headers["x-seq"] == "2"
    conn.nack(m2.headers["ack"], receipt="r-nack")
    lst.receipt("r-nack")
    conn.unsubscribe("sub-py", receipt="r-unsub")
    lst.receipt("r-unsub")
    conn.disconnect(receipt="r-bye")
    assert lst.disconnected.wait(TIMEOUT)
    assert not lst.errors


@pytest.mark.parametrize("kind", ["tcp12", "ws"])
def test_stomppy_binary_body(server, conns, kind):
    room = uid()
    dest = f"/topic/{room}"
    # Over WebSocket a body that is not UTF-8 must go in a binary message
    # (RFC 6455 §8.1: a text message with invalid UTF-8 is closed with
    # 1007); stomp.py sends text unless told `binary_mode`.
    extra = {"binary_mode": True} if kind == "ws" else {}
    conn = make_conn(server, kind, auto_decode=False, **extra)
    conns.append(conn)
    lst = _connect(conn)
    conn.subscribe(dest, id="1", receipt="r1")
    lst.receipt("r1")
    body = bytes(range(256)) + b"\x00\x00tail"
    conn.send(dest, body, receipt="r2")
    lst.receipt("r2")
    m = lst.message()
    assert m.body == body
    assert m.headers["content-length"] == str(len(body))
    conn.disconnect(receipt="bye")
    assert lst.disconnected.wait(TIMEOUT)


def test_stomppy_tcp_and_ws_chat(server, conns):
    room = uid()
    dest = f"/topic/{room}"
    tcp = make_conn(server, "tcp12")
    ws = make_conn(server, "ws")
    conns += [tcp, ws]
    lt = _connect(tcp, login="tcp-user")
    lw = _connect(ws, login="ws-user")
    tcp.subscribe(dest, id="t", receipt="rt")
    lt.receipt("rt")
    ws.subscribe(dest, id="w", receipt="rw")
    lw.receipt("rw")
    tcp.send(dest, "from tcp", receipt="s1")
    lt.receipt("s1")
    ws.send(dest, "from ws", receipt="s2")
    lw.receipt("s2")
    for lst in (lt, lw):
        got = [lst.message(), lst.message()]
        assert [(m.body, m.headers["x-sender"]) for m in got] == [("from tcp", "tcp-user"), ("from ws", "ws-user")]
        assert [m.headers["x-seq"] for m in got] == ["1", "2"]
    tcp.disconnect()
    ws.disconnect()


@pytest.mark.parametrize("kind", ["tcp11", "tcp10"])
def test_stomppy_older_versions(server, conns, kind):
    room = uid()
    dest = f"/topic/{room}"
    conn = make_conn(server, kind)
    conns.append(conn)
    lst = _connect(conn)
    expected_version = {"tcp11": "1.1", "tcp10": "1.0"}[kind]
    assert lst.connected_frame.headers.get("version", "1.0") == expected_version
    conn.subscribe(dest, id="old", receipt="r1")
    lst.receipt("r1")
    conn.send(dest, "older", receipt="r2")
    lst.receipt("r2")
    m = lst.message()
    assert m.body == "older"
    assert m.headers["x-seq"] == "1"
    conn.disconnect(receipt="bye")
    assert lst.disconnected.wait(TIMEOUT)


@pytest.mark.parametrize("kind", ["tcp12", "ws"])
def test_stomppy_heartbeats(server_factory, conns, kind):
    srv = server_factory("--heartbeat-send-ms", "200", "--heartbeat-receive-ms", "200")
    conn = make_conn(srv, kind, heartbeats=(200, 200))
    conns.append(conn)
    lst = _connect(conn)
    assert lst.connected_frame.headers["heart-beat"] == "200,200"
    time.sleep(2.0)
    assert not lst.disconnected.is_set(), "server dropped a stomp.py client that sends heart-beats"
    assert lst.heartbeats >= 3, f"only {lst.heartbeats} heart-beats received"
    room = uid()
    conn.subscribe(f"/topic/{room}", id="1", receipt="r1")
    lst.receipt("r1")
    conn.disconnect()


def test_stomppy_error_reported(server, conns):
    conn = make_conn(server, "tcp12")
    conns.append(conn)
    lst = _connect(conn)
    conn.send("/exchange/not-a-room", "x", receipt="bad")
    f = lst.wait("ERROR")
    assert "destination" in f.headers["message"].lower()
    assert f.headers.get("receipt-id") == "bad"
    assert lst.disconnected.wait(TIMEOUT)


@pytest.mark.parametrize("kind", ["tcp12", "ws"])
def test_stomppy_reconnect_with_since_seq_replays_what_was_missed(server, conns, kind):
    """A stomp.py client that saw seq 2 reconnects with x-since-seq:2 and
    gets 3..5 from the store, then live messages; escaped headers survive
    the round trip through SQLite."""
    room = uid()
    dest = f"/topic/{room}"
    pub = make_conn(server, kind)
    conns.append(pub)
    plst = _connect(pub, login="writer")
    for i in range(1, 6):
        pub.send(dest, f"m{i}", headers={"x-custom": f"a:b\nc{i}"}, receipt=f"r{i}")
        plst.receipt(f"r{i}")
    sub = make_conn(server, kind)
    conns.append(sub)
    slst = _connect(sub, login="reader")
    sub.subscribe(dest, id="again", headers={"x-since-seq": "2"}, receipt="r-sub")
    slst.receipt("r-sub")
    got = [slst.message() for _ in range(3)]
    assert [m.headers["x-seq"] for m in got] == ["3", "4", "5"]
    assert [m.body for m in got] == ["m3", "m4", "m5"]
    assert got[0].headers["x-custom"] == "a:b\nc3"
    assert got[0].headers["x-sender"] == "writer"
    assert got[0].headers["message-id"] == f"{room}:3"
    pub.send(dest, "live", receipt="r-live")
    plst.receipt("r-live")
    m = slst.message()
    assert (m.headers["x-seq"], m.body) == ("6", "live")
