"""HTTP and WebSocket behaviour of the --listen port."""

from __future__ import annotations

import socket
import time

import pytest
from websocket import ABNF

from stampede_client import build_frame, uid


def raw_http(server, request: bytes, timeout: float = 5.0) -> bytes:
    """Send a raw HTTP request and read until the server closes the connection."""
    s = socket.create_connection((server.host, server.http_port), timeout=timeout)
    try:
        s.sendall(request)
        chunks = []
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not close the HTTP connection; got {b''.join(chunks)!r}")
            try:
                d = s.recv(65536)
            except socket.timeout:
                raise AssertionError(f"server did not close the HTTP connection; got {b''.join(chunks)!r}")
            except ConnectionResetError:
                break
            if not d:
                break
            chunks.append(d)
        return b"".join(chunks)
    finally:
        s.close()


def parse_http(resp: bytes):
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


# ==========================================================================
# plain HTTP
# ==========================================================================


def test_healthz(server):
    status, headers, body = server.http("GET", "/healthz")
    assert status == 200
    assert body == b"ok\n"


def test_healthz_closes_connection_even_for_keep_alive(server):
    resp = raw_http(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    status, headers, body = parse_http(resp)
    assert status == 200
    assert headers.get("connection", "").lower() == "close"
    assert body == b"ok\n"


@pytest.mark.parametrize("method,path", [("POST", "/"), ("GET", "/nope"), ("GET", "/healthz/x"),
                                         ("GET", "/wss"), ("POST", "/healthz"), ("PUT", "/nope")])
def test_other_requests_are_404(server, method, path):
    status, headers, body = server.http(method, path)
    assert status == 404


def test_404_closes_connection(server):
    resp = raw_http(server, b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = parse_http(resp)
    assert status == 404
    assert headers.get("connection", "").lower() == "close"


@pytest.mark.parametrize("path", ["/ws", "/ws?room=lobby"])
def test_ws_without_upgrade_is_426(server, path):
    resp = raw_http(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status, headers, _ = parse_http(resp)
    assert status == 426
    assert headers.get("connection", "").lower() == "close"


def test_http_does_not_disturb_stomp(server):
    c = server.connected("ws")
    for _ in range(5):
        assert server.http("GET", "/healthz")[0] == 200
        assert server.http("GET", "/nope")[0] == 404
    c.ping_roundtrip(f"/topic/{uid()}")


# ==========================================================================
# subprotocols
# ==========================================================================


@pytest.mark.parametrize("offered,expected", [
    (["v10.stomp"], "v10.stomp"),
    (["v11.stomp"], "v11.stomp"),
    (["v12.stomp"], "v12.stomp"),
    (["v10.stomp", "v11.stomp"], "v11.stomp"),
    (["v10.stomp", "v11.stomp", "v12.stomp"], "v12.stomp"),
    (["v12.stomp", "v10.stomp"], "v12.stomp"),
    (["v11.stomp", "v10.stomp"], "v11.stomp"),
    (["mqtt", "v11.stomp"], "v11.stomp"),
])
def test_subprotocol_highest_offered(server, offered, expected):
    c = server.ws(subprotocols=offered)
    assert c.ws.getstatus() == 101
    assert c.subprotocol == expected
    raw = c.ws.getheaders().get("sec-websocket-protocol")
    assert raw == expected, f"server must echo exactly one subprotocol, got {raw!r}"
    c.connect()
    c.ping_roundtrip(f"/topic/{uid()}")


def test_no_subprotocol_offered_is_accepted(server):
    c = server.ws(subprotocols=None)
    assert c.ws.getstatus() == 101
    assert "sec-websocket-protocol" not in c.ws.getheaders()
    assert c.connect()["version"] == "1.2"
    c.ping_roundtrip(f"/topic/{uid()}")


# ==========================================================================
# inbound byte stream
# ==========================================================================


def test_several_frames_in_one_ws_message(server):
    room = uid()
    dest = f"/topic/{room}"
    c = server.ws()
    blob = (build_frame("CONNECT", [("accept-version", "1.2"), ("host", "x")], trailer=b"\n") +
            build_frame("SUBSCRIBE", [("destination", dest), ("id", "s1"), ("receipt", "r1")]) +
            b"\r\n" +
            build_frame("SEND", [("destination", dest), ("receipt", "r2")], b"one") +
            build_frame("SEND", [("destination", dest), ("receipt", "r3")], b"two", trailer=b"\n\n"))
    c.send_raw(blob)
    assert c.expect("CONNECTED")["version"] == "1.2"
    c.expect_receipt("r1")
    c.expect_receipt("r2")
    c.expect_receipt("r3")
    assert [m.body for m in c.messages(2)] == [b"one", b"two"]
    # every server frame came in its own WS message (checked by the client) and nothing else
    assert len([m for m in c.messages_log if m[1] != b"\n"]) == 6


@pytest.mark.parametrize("binary", [False, True])
def test_one_frame_split_over_several_ws_messages(server, binary):
    room = uid()
    dest = f"/topic/{room}"
    c = server.ws()
    connect = build_frame("CONNECT", [("accept-version", "1.2"), ("host", "x")], eol=b"\r\n")
    # split inside the command, between CR and LF, and before the NUL
    for chunk in (connect[:3], connect[3:17], connect[17:-3], connect[-3:-1], connect[-1:]):
        c.send_raw(chunk, binary=binary)
    c.expect("CONNECTED")
    sub = build_frame("SUBSCRIBE", [("destination", dest), ("id", "s1"), ("receipt", "r1")])
    for i in range(len(sub)):  # one byte per message
        c.send_raw(sub[i:i + 1], binary=binary)
    c.expect_receipt("r1")
    body = b"x" * 3000
    send = build_frame("SEND", [("destination", dest), ("receipt", "r2")], body)
    c.send_raw(send[:1000], binary=binary)
    c.send_raw(send[1000:2500], binary=binary)
    c.send_raw(send[2500:] + build_frame("SEND", [("destination", dest)], b"tail")[:5], binary=binary)
    c.send_raw(build_frame("SEND", [("destination", dest)], b"tail")[5:], binary=binary)
    c.expect_receipt("r2")
    msgs = c.messages(2)
    assert msgs[0].body == body
    assert msgs[1].body == b"tail"


def test_utf8_frame_split_across_binary_messages(server):
    room = uid()
    dest = f"/topic/{room}"
    c = server.ws()
    c.connect()
    c.subscribe(dest)
    body = "\u2603 snow \u00e9t\u00e9".encode()
    frame = build_frame("SEND", [("destination", dest), ("k", "\u00fc"), ("receipt", "r")], body)
    cut = frame.index("\u2603".encode()) + 1  # inside the 3-byte snowman
    c.send_raw(frame[:cut], binary=True)
    c.send_raw(frame[cut:], binary=True)
    c.expect_receipt("r")
    m = c.expect_message()
    assert m.body == body
    assert m["k"] == "\u00fc"


@pytest.mark.parametrize("binary", [False, True])
def test_frame_split_over_continuation_fragments(server, binary):
    room = uid()
    dest = f"/topic/{room}"
    c = server.ws()
    connect = build_frame("CONNECT", [("accept-version", "1.2"), ("host", "x")])
    c.send_fragments([connect[:4], connect[4:20], connect[20:]], binary=binary)
    c.expect("CONNECTED")
    sub = build_frame("SUBSCRIBE", [("destination", dest), ("id", "s1"), ("receipt", "r1")])
    send = build_frame("SEND", [("destination", dest), ("receipt", "r2")], b"fragmented body")
    both = sub + send
    # one message in fragments, the second frame straddling the fragment boundaries
    c.send_fragments([both[:10], both[10:len(sub) + 7], both[len(sub) + 7:-2], both[-2:]], binary=binary)
    c.expect_receipt("r1")
    c.expect_receipt("r2")
    assert c.expect_message().body == b"fragmented body"
    # and a frame split over a fragmented message followed by a plain message
    third = build_frame("SEND", [("destination", dest), ("receipt", "r3")], b"mixed")
    c.send_fragments([third[:5], third[5:12]], binary=binary)
    c.send_raw(third[12:], binary=binary)
    c.expect_receipt("r3")
    assert c.expect_message().body == b"mixed"


def test_text_fragments_may_split_a_utf8_character(server):
    room = uid()
    dest = f"/topic/{room}"
    c = server.ws()
    c.connect()
    c.subscribe(dest)
    frame = build_frame("SEND", [("destination", dest), ("receipt", "r")], "a\u2603b".encode())
    cut = frame.index("\u2603".encode()) + 2
    c.send_fragments([frame[:cut], frame[cut:]], binary=False)
    c.expect_receipt("r")
    assert c.expect_message().text == "a\u2603b"


def test_text_and_binary_messages_form_one_stream(server):
    room = uid()
    dest = f"/topic/{room}"
    c = server.ws()
    c.connect()
    c.subscribe(dest)
    frame = build_frame("SEND", [("destination", dest), ("receipt", "r")], b"alternating")
    for i in range(0, len(frame), 7):
        c.send_raw(frame[i:i + 7], binary=bool((i // 7) % 2))
    c.expect_receipt("r")
    assert c.expect_message().body == b"alternating"


# ==========================================================================
# outbound framing
# ==========================================================================


def test_outbound_text_for_utf8_binary_otherwise(server):
    room = uid()
    dest = f"/topic/{room}"
    c = server.ws()
    f = c.connect()
    assert f.opcode == ABNF.OPCODE_TEXT
    c.subscribe(dest)
    pub = server.connected("tcp")
    pub.send(dest, "h\u00e9llo \u2603".encode(), receipt=True)
    m = c.expect_message()
    assert m.opcode == ABNF.OPCODE_TEXT
    assert m.text == "h\u00e9llo \u2603"
    pub.send(dest, b"\xff\xfe\x00\x01\x80", receipt=True)
    m = c.expect_message()
    assert m.opcode == ABNF.OPCODE_BINARY
    assert m.body == b"\xff\xfe\x00\x01\x80"
    pub.send(dest, b"nul\x00inside", receipt=True)  # NUL is valid UTF-8
    m = c.expect_message()
    assert m.opcode == ABNF.OPCODE_TEXT
    assert m.body == b"nul\x00inside"
    rid = c.next_receipt_id()
    c.send_frame("SEND", [("destination", dest), ("receipt", rid)], b"x")
    r = c.expect_receipt(rid)
    assert r.opcode == ABNF.OPCODE_TEXT


def test_outbound_one_frame_per_message_under_load(server):
    room = uid()
    dest = f"/topic/{room}"
    c = server.ws()
    c.connect()
    c.subscribe(dest)
    pub = server.connected("tcp")
    for i in range(200):
        pub.send_frame("SEND", [("destination", dest)], f"burst-{i}")
    pub.ping_roundtrip(dest)
    msgs = c.messages(201)
    assert [m.text for m in msgs[:200]] == [f"burst-{i}" for i in range(200)]
    # WsStomp asserts that each WS message holds exactly one frame
    assert len([x for x in c.messages_log if x[1] != b"\n"]) == 1 + 1 + 201


def test_heartbeats_are_text_newline_messages(server_factory):
    srv = server_factory("--heartbeat-send-ms", "200", "--heartbeat-receive-ms", "200")
    c = srv.ws()
    c.connect(heart_beat="0,200")
    c.assert_silent(1.5)
    hb = [m for m in c.messages_log if m[1] == b"\n"]
    assert len(hb) >= 3
    assert all(op == ABNF.OPCODE_TEXT for op, _ in hb)
    # nothing else than the CONNECTED frame and heart-beats
    others = [m for m in c.messages_log if m[1] != b"\n"]
    assert len(others) == 1


def test_ws_client_heartbeat_messages_keep_connection(server_factory):
    srv = server_factory("--heartbeat-send-ms", "200", "--heartbeat-receive-ms", "200")
    c = srv.ws()
    c.connect(heart_beat="300,0")
    end = time.monotonic() + 1.8
    while time.monotonic() < end:
        c.send_raw(b"\n")
        c.assert_silent(0.1)
    c.ping_roundtrip(f"/topic/{uid()}")


# ==========================================================================
# control frames, closing
# ==========================================================================


@pytest.mark.parametrize("payload", [b"", b"ping-payload", bytes(range(100))])
def test_ping_pong(server, payload):
    c = server.ws()
    c.ws.ping(payload)
    op, data = c.recv_ws(5)
    assert op == ABNF.OPCODE_PONG
    assert data == payload
    c.connect()
    c.ws.ping(b"after-connect")
    op, data = c.recv_ws(5)
    assert op == ABNF.OPCODE_PONG
    assert data == b"after-connect"
    c.ping_roundtrip(f"/topic/{uid()}")


def test_ping_between_fragments(server):
    c = server.ws()
    connect = build_frame("CONNECT", [("accept-version", "1.2"), ("host", "x")])
    c.ws.send_frame(ABNF.create_frame(connect[:10], ABNF.OPCODE_TEXT, 0))
    c.ws.ping(b"mid")
    c.ws.send_frame(ABNF.create_frame(connect[10:], ABNF.OPCODE_CONT, 1))
    op, data = c.recv_ws(5)
    assert (op, data) == (ABNF.OPCODE_PONG, b"mid")
    c.expect("CONNECTED")


@pytest.mark.parametrize("after_connect", [False, True])
def test_close_handshake(server, after_connect):
    c = server.ws()
    if after_connect:
        c.connect()
        c.subscribe(f"/topic/{uid()}")
    c.ws.send_close(1000, b"bye")
    op, data = c.recv_ws(5)
    assert op == ABNF.OPCODE_CLOSE, f"expected a close reply, got opcode {op}"
    c.close_frame_received = True
    c._wait_tcp_eof(5)
    # the server is fine afterwards
    d = server.connected("ws")
    d.ping_roundtrip(f"/topic/{uid()}")


@pytest.mark.parametrize("sent,echoed", [(1000, 1000), (1001, 1001), (4000, 4000), (1005, 1002), (1006, 1002)])
def test_close_code_is_echoed_unless_reserved(server, sent, echoed):
    # RFC 6455 §5.5.1: the reply echoes the peer's code; 1005/1006 must never
    # appear on the wire, so receiving one is a protocol error (1002).
    c = server.ws()
    c.connect()
    c.ws.send_close(sent, b"")
    op, data = c.recv_ws(5)
    assert op == ABNF.OPCODE_CLOSE
    assert int.from_bytes(data[:2], "big") == echoed
    c.close_frame_received = True
    c._wait_tcp_eof(5)


def test_close_code_after_protocol_error(server):
    c = server.ws()
    c.connect()
    c.send_frame("FROB", [("receipt", "x")])
    f = c.expect_error("unknown command", receipt_id="x", ws_codes=(1002,))
    assert f.opcode == ABNF.OPCODE_TEXT
    # ERROR came as a message, then the close frame: nothing in between
    assert c.messages_log[-1][1] == f.raw


def test_close_code_after_policy_error(server_factory):
    srv = server_factory("--max-subscriptions", "1")
    c = srv.ws()
    c.connect()
    c.subscribe("/topic/a", "s1")
    c.send_frame("SUBSCRIBE", [("destination", "/topic/b"), ("id", "s2"), ("receipt", "x")])
    c.expect_error("too many subscriptions", receipt_id="x", ws_codes=(1008,))


def test_close_code_after_frame_too_large(server_factory):
    srv = server_factory("--max-frame-size", "2048")
    c = srv.ws()
    c.connect()
    c.send_frame("SEND", [("receipt", "x"), ("destination", "/topic/a")], b"y" * 5000)
    c.expect_error("frame too large", receipt_id="x", ws_codes=(1009,))


def test_close_code_after_error_before_connect(server):
    c = server.ws()
    c.send_frame("SEND", [("destination", "/topic/a"), ("receipt", "x")], b"early")
    c.expect_error("not connected", receipt_id="x")


@pytest.mark.parametrize("with_receipt", [True, False])
def test_close_code_after_disconnect(server, with_receipt):
    c = server.ws()
    c.connect()
    if with_receipt:
        c.send_frame("DISCONNECT", [("receipt", "bye")])
        c.expect_receipt("bye")
    else:
        c.send_frame("DISCONNECT", [])
    assert c.expect_ws_close() == 1000


def test_abrupt_ws_close_leaves_server_healthy(server):
    room = uid()
    dest = f"/topic/{room}"
    for _ in range(5):
        c = server.ws()
        c.connect()
        c.subscribe(dest)
        c.ws.sock.close()  # no close frame
    watcher = server.connected("ws")
    watcher.subscribe(dest)
    p = server.connected("tcp")
    p.send(dest, "after abrupt closes", receipt=True)
    assert watcher.expect_message().body == b"after abrupt closes"
    assert server.http("GET", "/healthz")[0] == 200


def test_ws_room_query_without_sharding_works(server):
    room = uid()
    c = server.ws(path=f"/ws?room={room}")
    c.connect()
    c.subscribe(f"/topic/{room}")
    d = server.connected("tcp")
    d.send(f"/topic/{room}", "via query", receipt=True)
    assert c.expect_message().body == b"via query"
