"""Raw STOMP frames against stampede, over plain TCP and (for the key rules) WebSocket.

Every rule of the contract's "STOMP 1.2 / 1.1 / 1.0" section has a test here.
"""

from __future__ import annotations

import re
import statistics
import threading
import time

import pytest

from stampede_client import (
    ConnectionClosed,
    TcpStomp,
    Timeout,
    build_frame,
    esc,
    uid,
)

TRANSPORTS = ["tcp", "ws"]


def plain_client(server, transport):
    """A client that offers no WS subprotocol, so only CONNECT decides the version."""
    return server.client(transport, subprotocols=None)


def pubsub(server, transport="tcp", version="1.2", ack=None, sub_id="s1", room=None, login=None):
    """(subscriber, publisher, destination): subscriber already subscribed."""
    room = room or uid("room")
    dest = f"/topic/{room}"
    sub = server.connected(transport, version=version)
    sub.subscribe(dest, sub_id, ack=ack)
    pub = server.connected(transport, version=version, login=login)
    return sub, pub, dest


# ==========================================================================
# CONNECT / version negotiation
# ==========================================================================


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connect_without_accept_version_is_1_0(server, transport):
    c = plain_client(server, transport)
    f = c.connect(version=None, heart_beat=None)
    assert f["version"] == "1.0"
    assert f["heart-beat"] == "10000,10000"
    assert re.fullmatch(r"stampede/\S+", f["server"]), f
    assert re.fullmatch(r"\d+-\d+", f["session"]), f
    assert f.body == b""


@pytest.mark.parametrize("offered,expected", [
    ("1.0", "1.0"),
    ("1.1", "1.1"),
    ("1.2", "1.2"),
    ("1.0,1.1", "1.1"),
    ("1.1,1.0", "1.1"),
    ("1.0,1.1,1.2", "1.2"),
    ("1.2,1.1,1.0", "1.2"),
    ("1.0,1.2", "1.2"),
    ("1.1,2.0", "1.1"),
    ("1.2,3.0", "1.2"),
])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_version_negotiation_highest_common(server, transport, offered, expected):
    c = plain_client(server, transport)
    f = c.connect(version=offered)
    assert f["version"] == expected


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_common_version_is_error_with_version_header(server, transport):
    c = plain_client(server, transport)
    c.send_frame("CONNECT", [("accept-version", "2.0,3.1"), ("host", "localhost"), ("receipt", "v-1")])
    f = c.expect_error("version", receipt_id="v-1")
    assert f["version"] == "1.0,1.1,1.2"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stomp_command_is_connect(server, transport):
    c = plain_client(server, transport)
    f = c.connect(version="1.2", command="STOMP")
    assert f["version"] == "1.2"
    room = uid()
    c.subscribe(f"/topic/{room}")
    c.send(f"/topic/{room}", "via STOMP", receipt=True)
    assert c.expect_message().body == b"via STOMP"


def test_connected_heart_beat_is_server_settings(server_factory):
    srv = server_factory("--heartbeat-send-ms", "1234", "--heartbeat-receive-ms", "4321")
    c = srv.tcp()
    f = c.connect(heart_beat="0,0")
    assert f["heart-beat"] == "1234,4321"
    c2 = srv.tcp()
    f2 = c2.connect(heart_beat="5000,7000")
    assert f2["heart-beat"] == "1234,4321"


def test_session_ids_are_distinct(server):
    sessions = set()
    for _ in range(6):
        c = server.tcp()
        f = c.connect()
        assert re.fullmatch(r"\d+-\d+", f["session"])
        sessions.add(f["session"])
        w = server.ws()
        g = w.connect()
        assert re.fullmatch(r"\d+-\d+", g["session"])
        sessions.add(g["session"])
    assert len(sessions) == 12


# ==========================================================================
# frame syntax: CRLF, heart-beat EOLs, escaping, repeated headers, bodies
# ==========================================================================


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_crlf_line_endings(server, transport):
    room = uid()
    c = server.client(transport)
    c.send_raw(build_frame("CONNECT", [("accept-version", "1.2"), ("host", "x")], eol=b"\r\n"))
    assert c.expect("CONNECTED")["version"] == "1.2"
    c.send_raw(build_frame("SUBSCRIBE", [("destination", f"/topic/{room}"), ("id", "s1"), ("receipt", "r1")],
                           eol=b"\r\n"))
    c.expect_receipt("r1")
    c.send_raw(build_frame("SEND", [("destination", f"/topic/{room}"), ("k", "v"), ("receipt", "r2")],
                           b"crlf body", eol=b"\r\n"))
    c.expect_receipt("r2")
    m = c.expect_message()
    assert m["k"] == "v"
    assert m["subscription"] == "s1"
    assert m["destination"] == f"/topic/{room}"
    assert m.body == b"crlf body"
    # mixed: CRLF command line, LF headers
    c.send_raw(b"SEND\r\ndestination:/topic/" + room.encode() + b"\nk:w\r\n\r\nmixed\x00")
    m = c.expect_message()
    assert m["k"] == "w" and m.body == b"mixed"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_heartbeat_eols_between_frames(server, transport):
    room = uid()
    dest = f"/topic/{room}"
    c = server.client(transport)
    c.connect()
    c.send_raw(b"\n")
    c.send_raw(b"\r\n\n" + build_frame("SUBSCRIBE", [("destination", dest), ("id", "s1"), ("receipt", "r1")],
                                       trailer=b"\n\r\n\n"))
    c.expect_receipt("r1")
    c.send_raw(build_frame("SEND", [("destination", dest)], b"one", trailer=b"\n") +
               b"\r\n" + build_frame("SEND", [("destination", dest), ("receipt", "r2")], b"two", trailer=b"\n\n"))
    c.expect_receipt("r2")
    assert [m.body for m in c.messages(2)] == [b"one", b"two"]
    c.send_raw(b"\n\n\n")
    c.ping_roundtrip(dest)


def test_escaping_1_2_round_trip(server):
    room = uid()
    dest = f"/topic/{room}"
    sub12 = server.connected("tcp", version="1.2")
    sub12.subscribe(dest, "s12")
    pub = server.connected("tcp", version="1.2")
    value = "a\r\nb:c\\d"
    pub.send_frame("SEND", [("destination", dest), ("k", esc(value)), (esc("we:ird"), "x"), ("receipt", "r")],
                   b"esc")
    pub.expect_receipt("r")
    m = sub12.expect_message()
    assert m["k"] == value
    assert m["we:ird"] == "x"
    # on the wire the server must have escaped CR and LF again
    assert b"\\r\\n" in m.raw


def test_escaping_1_1_round_trip(server):
    room = uid()
    dest = f"/topic/{room}"
    sub11 = server.connected("tcp", version="1.1")
    sub11.subscribe(dest, "s11")
    sub12 = server.connected("tcp", version="1.2")
    sub12.subscribe(dest, "s12")
    pub = server.connected("tcp", version="1.1")
    value = "a\nb:c\\d"
    pub.send_frame("SEND", [("destination", dest), ("k", esc(value, "1.1")), ("receipt", "r")], b"esc11")
    pub.expect_receipt("r")
    assert sub11.expect_message()["k"] == value
    assert sub12.expect_message()["k"] == value


def test_escaping_1_1_rejects_backslash_r(server):
    c = server.connected("tcp", version="1.1")
    c.send_frame("SEND", [("receipt", "e1"), ("destination", f"/topic/{uid()}"), ("k", "a\\rb")], b"x")
    c.expect_error("escape", receipt_id="e1")


@pytest.mark.parametrize("version", ["1.1", "1.2"])
@pytest.mark.parametrize("bad", ["a\\tb", "a\\", "\\x", "a\\ b"])
def test_invalid_escape_is_error(server, version, bad):
    c = server.connected("tcp", version=version)
    c.send_frame("SEND", [("receipt", "e1"), ("destination", f"/topic/{uid()}"), ("k", bad)], b"x")
    c.expect_error("escape", receipt_id="e1")


def test_invalid_escape_in_header_name_is_error(server):
    c = server.connected("tcp", version="1.2")
    c.send_frame("SEND", [("receipt", "e1"), ("destination", f"/topic/{uid()}"), ("a\\tb", "v")], b"x")
    c.expect_error("escape", receipt_id="e1")


def test_1_0_headers_are_not_unescaped(server):
    room = uid()
    dest = f"/topic/{room}"
    sub10 = server.connected("tcp", version="1.0")
    sub10.subscribe(dest, "s10")
    sub12 = server.connected("tcp", version="1.2")
    sub12.subscribe(dest, "s12")
    pub = server.connected("tcp", version="1.0")
    literal = "a\\nb\\tc\\"  # backslashes are plain characters in 1.0
    pub.send_frame("SEND", [("destination", dest), ("k", literal), ("colon", "x:y"), ("receipt", "r")], b"ten")
    pub.expect_receipt("r")
    m10 = sub10.expect_message()
    assert m10["k"] == literal
    assert b"\nk:a\\nb\\tc\\\n" in m10.raw
    assert m10["colon"] == "x:y"
    m12 = sub12.expect_message()
    assert m12["k"] == literal
    assert m12["colon"] == "x:y"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connect_headers_are_not_unescaped(server, transport):
    room = uid()
    dest = f"/topic/{room}"
    sub = server.connected("tcp", version="1.2")
    sub.subscribe(dest)
    login = "a\\\\b\\c"  # raw bytes: a \ \ b \ c  -- would be "a\b:" if unescaped
    pub = server.client(transport)
    f = pub.connect(version="1.2", login=login, passcode="p\\tq")  # \t would be an invalid escape
    assert f["version"] == "1.2"
    pub.send(dest, "who am i", receipt=True)
    m = sub.expect_message()
    assert m["x-sender"] == login


def test_first_repeated_header_wins(server):
    room_a, room_b = uid(), uid()
    sub = server.connected("tcp")
    sub.send_frame("SUBSCRIBE", [("destination", f"/topic/{room_a}"), ("id", "first-id"), ("id", "second-id"),
                                 ("receipt", "r0")])
    sub.expect_receipt("r0")
    sub_b = server.connected("tcp")
    sub_b.subscribe(f"/topic/{room_b}", "sb")
    pub = server.connected("tcp")
    pub.send_frame("SEND", [("destination", f"/topic/{room_a}"), ("destination", f"/topic/{room_b}"),
                            ("k", "first"), ("k", "second"), ("receipt", "r1"), ("receipt", "r2")], b"dup")
    pub.expect_receipt("r1")
    m = sub.expect_message()
    assert m["subscription"] == "first-id"
    assert m["destination"] == f"/topic/{room_a}"
    assert m["k"] == "first"
    sub_b.assert_silent(0.5)
    # UNSUBSCRIBE by the id that won
    sub.unsubscribe("first-id")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_content_length_body_with_nul_bytes(server, transport):
    sub, pub, dest = pubsub(server, transport)
    body = b"\x00a\x00\x00b\x00" + bytes(range(1, 40)) + b"\x00"
    pub.send(dest, body, receipt=True, content_length=True)
    m = sub.expect_message()
    assert m.body == body
    assert m["content-length"] == str(len(body))


def test_body_without_content_length(server):
    sub, pub, dest = pubsub(server)
    pub.send(dest, b"no length here", receipt=True, content_length=False)
    m = sub.expect_message()
    assert m.body == b"no length here"
    assert m["content-length"] == str(len(b"no length here"))


def test_empty_body(server):
    sub, pub, dest = pubsub(server)
    pub.send(dest, b"", receipt=True)
    m = sub.expect_message()
    assert m.body == b""
    assert m["content-length"] == "0"


def test_header_values_are_not_trimmed(server):
    sub, pub, dest = pubsub(server)
    pub.send(dest, "x", headers=[("spaced", "  two leading, two trailing  "), ("tab", "\tt\t"), ("empty", "")],
             receipt=True)
    m = sub.expect_message()
    assert m["spaced"] == "  two leading, two trailing  "
    assert m["tab"] == "\tt\t"
    assert m["empty"] == ""


def test_destination_value_is_not_trimmed(server):
    c = server.connected("tcp")
    c.send_frame("SEND", [("receipt", "e1"), ("destination", f"/topic/{uid()} ")], b"x")
    c.expect_error("destination", receipt_id="e1")


def test_large_body_under_default_frame_limit(server):
    sub, pub, dest = pubsub(server)
    body = bytes((i * 7) % 251 for i in range(60000))
    pub.send(dest, body, receipt=True)
    m = sub.expect_message()
    assert m.body == body


# ==========================================================================
# receipts
# ==========================================================================


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_receipt_on_every_frame_type(server, transport):
    room = uid()
    dest = f"/topic/{room}"
    c = server.connected(transport)

    def frame(cmd, hdrs, rid, body=b""):
        c.send_frame(cmd, hdrs + [("receipt", rid)], body)
        return c.expect_receipt(rid)

    frame("SUBSCRIBE", [("destination", dest), ("id", "s1"), ("ack", "client-individual")], "r-subscribe")
    frame("SEND", [("destination", dest)], "r-send", b"m1")
    m1 = c.expect_message()
    frame("ACK", [("id", m1["ack"])], "r-ack")
    frame("SEND", [("destination", dest)], "r-send2", b"m2")
    m2 = c.expect_message()
    frame("NACK", [("id", m2["ack"])], "r-nack")
    frame("BEGIN", [("transaction", "t1")], "r-begin")
    frame("SEND", [("destination", dest), ("transaction", "t1")], "r-send-tx", b"m3")
    frame("COMMIT", [("transaction", "t1")], "r-commit")
    m3 = c.expect_message()
    assert m3.body == b"m3"
    frame("BEGIN", [("transaction", "t2")], "r-begin2")
    frame("ABORT", [("transaction", "t2")], "r-abort")
    frame("ACK", [("id", m3["ack"])], "r-ack3")
    frame("UNSUBSCRIBE", [("id", "s1")], "r-unsubscribe")
    frame("DISCONNECT", [], "r-disconnect")
    if transport == "ws":
        assert c.expect_ws_close() == 1000
    else:
        c.expect_closed()


def test_receipt_on_connect(server):
    c = server.tcp()
    c.send_frame("CONNECT", [("accept-version", "1.2"), ("host", "x"), ("receipt", "r-connect")])
    c.expect("CONNECTED")
    c.expect_receipt("r-connect")


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_receipts_in_every_version(server, version):
    c = server.connected("tcp", version=version)
    room = uid()
    c.subscribe(f"/topic/{room}", "s1")
    c.send(f"/topic/{room}", "x", receipt=True)
    c.expect_message()
    c.disconnect()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_disconnect_receipt_then_close(server, transport):
    c = server.connected(transport)
    c.send_frame("DISCONNECT", [("receipt", "bye-77")])
    c.expect_receipt("bye-77")
    c.expect_closed()


def test_subscribe_receipt_means_live_on_every_shard(server_factory):
    srv = server_factory("--shards", "4")
    room = uid()
    dest = f"/topic/{room}"
    # publishers on as many shards as we can find
    pubs = srv.on_distinct_shards(4)
    assert len(pubs) >= 2, "could not get publishers on two shards"
    for i in range(12):
        s = srv.connected("tcp" if i % 2 else "ws")
        s.subscribe(dest, f"s{i}")  # waits for the RECEIPT
        for shard, p in pubs.items():
            p.send(dest, f"after-receipt-{i}-{shard}")
        want = {f"after-receipt-{i}-{sh}" for sh in pubs}
        for _ in range(len(want)):
            m = s.wait_for(lambda f: f.command == "MESSAGE" and f.text in want, 5,
                           what=f"messages sent right after SUBSCRIBE receipt #{i}")
            want.discard(m.text)
        assert not want
        s.close()


def test_send_receipt_means_sequenced(server_factory):
    srv = server_factory("--shards", "4")
    room = uid()
    dest = f"/topic/{room}"
    pubs = srv.on_distinct_shards(2)
    assert len(pubs) >= 2, "could not get publishers on two shards"
    a, b = list(pubs.values())[:2]
    sub = srv.connected("tcp")
    sub.subscribe(dest)
    expected = []
    for i in range(25):
        a.send(dest, f"a{i}", receipt=True)
        b.send(dest, f"b{i}", receipt=True)
        expected += [f"a{i}", f"b{i}"]
    msgs = sub.messages(len(expected))
    assert [m.text for m in msgs] == expected
    assert [int(m["x-seq"]) for m in msgs] == list(range(1, len(expected) + 1))


# ==========================================================================
# protocol errors (ERROR + message keyword + receipt-id + close, bystander unaffected)
# ==========================================================================


def F(cmd, headers=(), body=b"", **kw):
    return (cmd, list(headers), body, kw)


SUB_A = F("SUBSCRIBE", [("destination", "/topic/alpha"), ("id", "s1")])
SUB_B = F("SUBSCRIBE", [("destination", "/topic/beta"), ("id", "s2")])

# (id, version, server args, setup frames (each acknowledged by a receipt), bad frame, keyword, ws close code)
ERROR_CASES = [
    ("unknown-command", "1.2", [], [], F("FROB", [("destination", "/topic/a")]), "unknown command", 1002),
    ("lowercase-command", "1.2", [], [], F("send", [("destination", "/topic/a")], b"x"), "unknown command", 1002),
    ("send-missing-destination", "1.2", [], [], F("SEND", [], b"x"), "missing header", None),
    ("subscribe-missing-destination", "1.2", [], [], F("SUBSCRIBE", [("id", "s1")]), "missing header", None),
    ("subscribe-missing-id", "1.2", [], [], F("SUBSCRIBE", [("destination", "/topic/a")]), "missing header", None),
    ("unsubscribe-missing-id", "1.2", [], [], F("UNSUBSCRIBE"), "missing header", None),
    ("begin-missing-transaction", "1.2", [], [], F("BEGIN"), "missing header", None),
    ("commit-missing-transaction", "1.2", [], [], F("COMMIT"), "missing header", None),
    ("abort-missing-transaction", "1.2", [], [], F("ABORT"), "missing header", None),
    ("ack-missing-id", "1.2", [], [], F("ACK"), "missing header", None),
    ("nack-missing-id", "1.2", [], [], F("NACK"), "missing header", None),
    ("ack-1.1-missing-subscription", "1.1", [], [], F("ACK", [("message-id", "alpha:1")]), "missing header", None),
    ("ack-1.1-missing-message-id", "1.1", [], [], F("ACK", [("subscription", "s1")]), "missing header", None),
    ("send-unknown-prefix", "1.2", [], [], F("SEND", [("destination", "/exchange/a")], b"x"), "destination", None),
    ("subscribe-unknown-prefix", "1.2", [], [], F("SUBSCRIBE", [("destination", "/exchange/a"), ("id", "s1")]),
     "destination", None),
    ("send-no-prefix", "1.2", [], [], F("SEND", [("destination", "alpha")], b"x"), "destination", None),
    ("duplicate-subscription-id", "1.2", [], [SUB_A],
     F("SUBSCRIBE", [("destination", "/topic/beta"), ("id", "s1")]), "subscription", None),
    ("unsubscribe-unknown-id", "1.2", [], [SUB_A], F("UNSUBSCRIBE", [("id", "nope")]), "unknown subscription", None),
    ("send-unknown-transaction", "1.2", [], [],
     F("SEND", [("destination", "/topic/a"), ("transaction", "nope")], b"x"), "unknown transaction", None),
    ("commit-unknown-transaction", "1.2", [], [], F("COMMIT", [("transaction", "nope")]), "unknown transaction", None),
    ("abort-unknown-transaction", "1.2", [], [], F("ABORT", [("transaction", "nope")]), "unknown transaction", None),
    ("commit-after-commit", "1.2", [], [F("BEGIN", [("transaction", "t1")]), F("COMMIT", [("transaction", "t1")])],
     F("COMMIT", [("transaction", "t1")]), "unknown transaction", None),
    ("commit-after-abort", "1.2", [], [F("BEGIN", [("transaction", "t1")]), F("ABORT", [("transaction", "t1")])],
     F("COMMIT", [("transaction", "t1")]), "unknown transaction", None),
    ("begin-open-transaction", "1.2", [], [F("BEGIN", [("transaction", "t1")])],
     F("BEGIN", [("transaction", "t1")]), "transaction already", None),
    ("ack-unknown-id", "1.2", [], [SUB_A], F("ACK", [("id", "nope")]), "unknown ack", None),
    ("nack-unknown-id", "1.2", [], [SUB_A], F("NACK", [("id", "nope")]), "unknown ack", None),
    ("ack-1.1-unknown", "1.1", [], [SUB_A], F("ACK", [("message-id", "alpha:99"), ("subscription", "s1")]),
     "unknown ack", None),
    ("subscribe-with-body", "1.2", [], [], F("SUBSCRIBE", [("destination", "/topic/a"), ("id", "s1")], b"body"),
     "must not have a body", None),
    ("subscribe-with-body-no-length", "1.2", [], [],
     F("SUBSCRIBE", [("destination", "/topic/a"), ("id", "s1")], b"body", content_length=False),
     "must not have a body", None),
    ("begin-with-body", "1.2", [], [], F("BEGIN", [("transaction", "t1")], b"oops"), "must not have a body", None),
    ("unsubscribe-with-body", "1.2", [], [SUB_A], F("UNSUBSCRIBE", [("id", "s1")], b"oops"),
     "must not have a body", None),
    ("disconnect-with-body", "1.2", [], [], F("DISCONNECT", [], b"oops"), "must not have a body", None),
    ("content-length-not-a-number", "1.2", [], [],
     F("SEND", [("destination", "/topic/a")], b"hello", content_length="abc"), "content-length", None),
    ("content-length-negative", "1.2", [], [],
     F("SEND", [("destination", "/topic/a")], b"hello", content_length="-1"), "content-length", None),
    ("content-length-fraction", "1.2", [], [],
     F("SEND", [("destination", "/topic/a")], b"hello", content_length="1.5"), "content-length", None),
    ("content-length-empty", "1.2", [], [],
     F("SEND", [("destination", "/topic/a")], b"hello", content_length=""), "content-length", None),
    ("content-length-untrimmed", "1.2", [], [],
     F("SEND", [("destination", "/topic/a")], b"hello", content_length=" 5"), "content-length", None),
    ("frame-too-large-content-length", "1.2", ["--max-frame-size", "1024"], [],
     F("SEND", [("destination", "/topic/a")], b"x" * 2000), "frame too large", 1009),
    ("frame-too-large-no-content-length", "1.2", ["--max-frame-size", "1024"], [],
     F("SEND", [("destination", "/topic/a")], b"x" * 2000, content_length=False), "frame too large", 1009),
    ("too-many-headers", "1.2", ["--max-headers", "8"], [],
     F("SEND", [("destination", "/topic/a")] + [(f"h{i}", "v") for i in range(20)], b"x"),
     "too many headers", None),
    ("header-too-long", "1.2", ["--max-header-length", "256"], [],
     F("SEND", [("destination", "/topic/a"), ("long", "y" * 1000)], b"x"), "header too long", None),
    ("too-many-subscriptions", "1.2", ["--max-subscriptions", "2"], [SUB_A, SUB_B],
     F("SUBSCRIBE", [("destination", "/topic/gamma"), ("id", "s3")]), "too many subscriptions", 1008),
    ("too-many-transactions", "1.2", ["--max-transactions", "2"],
     [F("BEGIN", [("transaction", "t1")]), F("BEGIN", [("transaction", "t2")])],
     F("BEGIN", [("transaction", "t3")]), "too many transactions", 1008),
    ("escape-1.2-tab", "1.2", [], [], F("SEND", [("destination", "/topic/a"), ("k", "a\\tb")], b"x"), "escape", None),
    ("escape-1.1-cr", "1.1", [], [], F("SEND", [("destination", "/topic/a"), ("k", "a\\rb")], b"x"), "escape", None),
]

BAD_ROOMS = ["", "a b", "a/b", "caf\u00e9", "a*b", "a" * 129, "room ", " room", "a:b", "a\u00a0b", "a+b", "a%20b"]
for i, r in enumerate(BAD_ROOMS):
    ERROR_CASES.append((f"send-bad-room-{i}", "1.2", [], [], F("SEND", [("destination", "/topic/" + r)], b"x"),
                        "destination", None))
    ERROR_CASES.append((f"subscribe-bad-room-{i}", "1.2", [], [],
                        F("SUBSCRIBE", [("destination", "/topic/" + r), ("id", "s9")]), "destination", None))
for i, d in enumerate(["/topic", "/topic//a", "/topics/a", "/TOPIC/a", "topic/a"]):
    ERROR_CASES.append((f"bad-destination-{i}", "1.2", [], [], F("SEND", [("destination", d)], b"x"),
                        "destination", None))


def _bystander(srv):
    b = srv.connected("tcp", login="bystander")
    b.subscribe("/topic/bystander-room", "b1")
    return b


def _bystander_ok(b):
    b.send("/topic/bystander-room", "still here", receipt=True)
    assert b.expect_message().body == b"still here"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_error_cases(server_factory, transport, case):
    name, version, args, setup, bad, keyword, ws_code = case
    srv = server_factory(*args)
    bystander = _bystander(srv)
    c = srv.connected(transport, version=version)
    for i, (cmd, hdrs, body, kw) in enumerate(setup):
        rid = f"setup-{i}"
        c.send_frame(cmd, hdrs + [("receipt", rid)], body, **kw)
        c.expect_receipt(rid)
    cmd, hdrs, body, kw = bad
    c.send_frame(cmd, [("receipt", "bad-1")] + hdrs, body, **kw)
    codes = (ws_code,) if ws_code else (1002, 1008, 1009)
    c.expect_error(keyword, receipt_id="bad-1", ws_codes=codes)
    _bystander_ok(bystander)
    srv.assert_running()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("cmd", ["SEND", "SUBSCRIBE", "BEGIN", "DISCONNECT"])
def test_frame_before_connect(server, transport, cmd):
    bystander = _bystander(server)
    c = server.client(transport)
    hdrs = {"SEND": [("destination", "/topic/a")], "SUBSCRIBE": [("destination", "/topic/a"), ("id", "s1")],
            "BEGIN": [("transaction", "t")], "DISCONNECT": []}[cmd]
    c.send_frame(cmd, hdrs + [("receipt", "early")], b"x" if cmd == "SEND" else b"")
    c.expect_error("not connected", receipt_id="early")
    _bystander_ok(bystander)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("cmd", ["CONNECT", "STOMP"])
def test_second_connect(server, transport, cmd):
    c = server.connected(transport)
    c.send_frame(cmd, [("accept-version", "1.2"), ("host", "x"), ("receipt", "again")])
    c.expect_error("already connected", receipt_id="again")


def test_error_without_receipt_has_no_receipt_id(server):
    c = server.connected("tcp")
    c.send_frame("FROB", [])
    f = c.expect_error("unknown command")
    assert "receipt-id" not in f


def test_content_length_mismatch_is_error(server):
    bystander = _bystander(server)
    c = server.connected("tcp")
    # content-length says 3 but the byte after 3 body bytes is not NUL
    c.send_raw(b"SEND\ndestination:/topic/a\ncontent-length:3\nreceipt:cl\n\nhello\x00")
    f = c.expect_error(receipt_id="cl")
    assert f["message"]
    _bystander_ok(bystander)


# ---- limits: under the limit works, the limit frees up again --------------------------------


def test_limits_under_the_limit_work(server_factory):
    srv = server_factory("--max-frame-size", "1024", "--max-headers", "8", "--max-header-length", "256")
    room = uid()
    dest = f"/topic/{room}"
    c = srv.connected("tcp")
    c.subscribe(dest)
    c.send(dest, b"z" * 700, receipt=True)
    assert c.expect_message().body == b"z" * 700
    c.send(dest, b"h", headers=[("h1", "1"), ("h2", "2"), ("h3", "3")], receipt=True)  # 5 headers + content-length
    assert c.expect_message()["h3"] == "3"
    c.send(dest, b"l", headers=[("long", "q" * 150)], receipt=True)
    assert c.expect_message()["long"] == "q" * 150


def test_frame_limit_covers_streamed_body(server_factory):
    """A body without content-length and without NUL must be cut off at max-frame-size."""
    srv = server_factory("--max-frame-size", "1024")
    bystander = _bystander(srv)
    c = srv.connected("tcp")
    c.send_raw(b"SEND\nreceipt:big\ndestination:/topic/a\n\n" + b"x" * 4000)  # no NUL yet
    c.expect_error("frame too large", receipt_id="big")
    _bystander_ok(bystander)


def test_subscription_limit_frees_on_unsubscribe(server_factory):
    srv = server_factory("--max-subscriptions", "2")
    c = srv.connected("tcp")
    c.subscribe("/topic/a", "s1")
    c.subscribe("/topic/b", "s2")
    c.unsubscribe("s1")
    c.subscribe("/topic/c", "s3")
    c.send_frame("SUBSCRIBE", [("destination", "/topic/d"), ("id", "s4"), ("receipt", "r4")])
    c.expect_error("too many subscriptions", receipt_id="r4")


def test_transaction_limit_frees_on_commit_and_abort(server_factory):
    srv = server_factory("--max-transactions", "2")
    c = srv.connected("tcp")
    c.simple("BEGIN", [("transaction", "t1")])
    c.simple("BEGIN", [("transaction", "t2")])
    c.simple("COMMIT", [("transaction", "t1")])
    c.simple("BEGIN", [("transaction", "t3")])
    c.simple("ABORT", [("transaction", "t2")])
    c.simple("BEGIN", [("transaction", "t4")])
    c.send_frame("BEGIN", [("transaction", "t5"), ("receipt", "r5")])
    c.expect_error("too many transactions", receipt_id="r5")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_max_transaction_frames(server_factory, transport):
    srv = server_factory("--max-transaction-frames", "3")
    room = uid()
    dest = f"/topic/{room}"
    watcher = srv.connected("tcp")
    watcher.subscribe(dest)
    c = srv.connected(transport)
    c.simple("BEGIN", [("transaction", "t1")])
    for i in range(3):
        c.send(dest, f"tx{i}", headers=[("transaction", "t1")], receipt=True)
    c.send_frame("SEND", [("destination", dest), ("transaction", "t1"), ("receipt", "r-over")], b"tx3")
    f = c.expect_error(receipt_id="r-over")
    assert f["message"]
    # the transaction died with the connection: nothing was delivered
    watcher.assert_silent(0.7)
    watcher.send(dest, "after", receipt=True)
    m = watcher.expect_message()
    assert m.body == b"after"
    assert m["x-seq"] == "1"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_max_pending_acks(server_factory, transport):
    srv = server_factory("--max-pending-acks", "3")
    room = uid()
    dest = f"/topic/{room}"
    sub = srv.connected(transport)
    sub.subscribe(dest, "s1", ack="client-individual")
    pub = srv.connected("tcp")
    for i in range(3):
        pub.send(dest, f"m{i}", receipt=True)
    msgs = sub.messages(3)
    assert [m.text for m in msgs] == ["m0", "m1", "m2"]
    pub.send(dest, "m3", receipt=True)
    sub.expect_error("too many unacknowledged", skip_messages=True)
    # the publisher and other subscribers are unaffected
    other = srv.connected("tcp")
    other.subscribe(dest, "o1")
    pub.send(dest, "m4", receipt=True)
    assert other.expect_message().body == b"m4"


def test_pending_acks_freed_by_ack(server_factory):
    srv = server_factory("--max-pending-acks", "3")
    room = uid()
    dest = f"/topic/{room}"
    sub = srv.connected("tcp")
    sub.subscribe(dest, "s1", ack="client-individual")
    sub2 = srv.connected("tcp")
    sub2.subscribe(dest, "s2", ack="client")
    pub = srv.connected("tcp")
    for i in range(12):
        pub.send(dest, f"m{i}", receipt=True)
        m = sub.expect_message()
        assert m.text == f"m{i}"
        sub.simple("ACK", [("id", m["ack"])])
        if i % 3 == 2:
            ms = sub2.messages(3)
            sub2.simple("ACK", [("id", ms[-1]["ack"])])  # cumulative ACK frees all three


def test_max_outbound_bytes_slow_consumer(server_factory):
    srv = server_factory("--max-outbound-bytes", "262144")
    room = uid()
    dest = f"/topic/{room}"
    slow = TcpStomp(srv.host, srv.stomp_port, rcvbuf=4096)
    srv.clients.append(slow)
    slow.connect()
    slow.subscribe(dest)
    bystander = _bystander(srv)
    pub = srv.connected("tcp")
    pub.sock.settimeout(30)
    n = 2000
    body = b"s" * 8000
    frame = build_frame("SEND", [("destination", dest)], body)
    for i in range(0, n, 100):
        pub.send_raw(frame * 100)
    pub.send(dest, "last", receipt=True, )
    # the publisher and a bystander are unaffected
    pub.ping_roundtrip("/topic/elsewhere")
    _bystander_ok(bystander)
    # the slow consumer was cut off: it cannot receive everything, and its connection ends
    got = 0
    error = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            f = slow.recv_frame(5)
        except ConnectionClosed:
            break
        if f.command == "MESSAGE":
            got += 1
        elif f.command == "ERROR":
            error = f
    else:
        pytest.fail("slow consumer connection was not closed")
    assert got < n + 1, f"slow consumer received all {got} messages; max-outbound-bytes not enforced"
    assert slow.closed
    # "exceeding any limit -> ERROR (+close)": the ERROR goes after what was already queued
    assert error is not None, "slow consumer was closed without an ERROR frame"
    assert error["message"]


def test_max_connections(server_factory):
    srv = server_factory("--shards", "1", "--max-connections", "2")
    c1 = srv.connected("tcp")
    c2 = srv.connected("ws")
    c3 = srv.tcp()
    got_error = None
    try:
        c3.send_frame("CONNECT", [("accept-version", "1.2"), ("host", "x")])
    except OSError:
        pass
    try:
        f = c3.recv_frame(5)
        assert f.command == "ERROR", f"connection over --max-connections must get ERROR, got {f!r}"
        got_error = f
        c3.expect_closed()
    except ConnectionClosed:
        pass
    assert got_error is not None, "connection over --max-connections was closed without an ERROR frame"
    assert got_error["message"]
    # the existing connections are unaffected
    room = uid()
    c1.subscribe(f"/topic/{room}")
    c2.send(f"/topic/{room}", "hello", receipt=True)
    assert c1.expect_message().body == b"hello"
    # a slot frees up when a connection leaves
    c2.disconnect()
    deadline = time.monotonic() + 5
    while True:
        c4 = srv.tcp()
        try:
            c4.connect()
            break
        except (ConnectionClosed, AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connect_timeout(server_factory, transport):
    srv = server_factory("--connect-timeout-ms", "300")
    lazy = srv.client(transport)
    t0 = time.monotonic()
    quick = srv.connected(transport)
    deadline = t0 + 5
    while True:
        try:
            f = lazy.recv_frame(max(deadline - time.monotonic(), 0.01))
        except ConnectionClosed:
            break
        except Timeout:
            pytest.fail("a connection that never sent CONNECT was not closed")
        assert f.command == "ERROR", f"unexpected frame on a connection that never sent CONNECT: {f!r}"
    elapsed = time.monotonic() - t0
    assert 0.25 <= elapsed <= 2.5, f"closed after {elapsed:.2f}s, --connect-timeout-ms is 300"
    # a connected client is not subject to it
    time.sleep(0.6)
    quick.ping_roundtrip(f"/topic/{uid()}")


# ==========================================================================
# heart-beats (server: send 200 ms, receive 200 ms)
# ==========================================================================

HB = ("--heartbeat-send-ms", "200", "--heartbeat-receive-ms", "200")


@pytest.mark.parametrize("cy,interval", [(200, 0.2), (500, 0.5), (100, 0.2)])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_sends_heartbeats(server_factory, transport, cy, interval):
    srv = server_factory(*HB)
    c = srv.client(transport)
    f = c.connect(heart_beat=f"0,{cy}")
    assert f["heart-beat"] == "200,200"
    window = 2.4
    c.assert_silent(window)
    n = c.heartbeats
    expected = window / interval
    assert expected * 0.5 <= n <= expected * 1.5 + 1, \
        f"got {n} heart-beats in {window}s, expected about {expected:.0f} (every {interval}s)"
    gaps = [b - a for a, b in zip(c.heartbeat_times, c.heartbeat_times[1:])]
    assert gaps, "need at least two heart-beats"
    med = statistics.median(gaps)
    assert interval * 0.6 <= med <= interval * 1.6, f"median heart-beat gap {med:.3f}s, expected ~{interval}s"


@pytest.mark.parametrize("cx,lo,hi", [(300, 0.55, 2.0), (100, 0.35, 1.6)])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_silent_client_is_closed(server_factory, transport, cx, lo, hi):
    srv = server_factory(*HB)
    bystander = _bystander(srv)
    c = srv.client(transport)
    c.connect(heart_beat=f"{cx},0")
    t0 = time.monotonic()
    c.expect_error("heart-beat", timeout=4, closed=False)
    elapsed = time.monotonic() - t0
    c.expect_closed()
    if transport == "ws":
        assert c.close_code in (1002, 1008, 1009)
    assert lo <= elapsed <= hi, f"silent client (cx={cx}) closed after {elapsed:.2f}s, expected {lo}..{hi}s"
    assert c.heartbeats == 0, "client offered cy=0: the server must not send heart-beats"
    _bystander_ok(bystander)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_heartbeats_keep_connection(server_factory, transport):
    srv = server_factory(*HB)
    c = srv.client(transport)
    c.connect(heart_beat="300,0")
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        c.send_raw(b"\n")
        c.assert_silent(0.1)
    c.ping_roundtrip(f"/topic/{uid()}")


def test_client_frames_count_as_traffic(server_factory):
    srv = server_factory(*HB)
    c = srv.connected("tcp", heart_beat="300,0")
    end = time.monotonic() + 2.0
    i = 0
    while time.monotonic() < end:
        c.send_frame("SEND", [("destination", "/topic/keepalive")], f"k{i}")
        i += 1
        c.assert_silent(0.15)
    c.ping_roundtrip("/topic/keepalive")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_zero_heartbeat_disables_both_directions(server_factory, transport):
    srv = server_factory(*HB)
    c = srv.client(transport)
    c.connect(heart_beat="0,0")
    c.assert_silent(1.5)
    assert c.heartbeats == 0
    c.ping_roundtrip(f"/topic/{uid()}")


def test_client_without_heartbeat_header(server_factory):
    srv = server_factory(*HB)
    c = srv.tcp()
    c.connect(version="1.0", heart_beat=None)
    c.assert_silent(1.2)
    assert c.heartbeats == 0
    c.ping_roundtrip(f"/topic/{uid()}")


def test_server_zero_heartbeat_settings(server_factory):
    srv = server_factory("--heartbeat-send-ms", "0", "--heartbeat-receive-ms", "0")
    c = srv.tcp()
    f = c.connect(heart_beat="300,300")
    assert f["heart-beat"] == "0,0"
    c.assert_silent(1.5)
    assert c.heartbeats == 0
    c.ping_roundtrip(f"/topic/{uid()}")


# ==========================================================================
# ack modes
# ==========================================================================


def _three(pub, sub, dest):
    for i in range(3):
        pub.send(dest, f"m{i}", receipt=True)
    return sub.messages(3)


@pytest.mark.parametrize("ack", [None, "auto"])
def test_auto_ack(server, ack):
    sub, pub, dest = pubsub(server, ack=ack)
    msgs = _three(pub, sub, dest)
    for m in msgs:
        assert "ack" not in m, f"auto-ack MESSAGE must not carry an ack header: {m!r}"
    # nothing is pending in auto mode
    sub.send_frame("ACK", [("id", msgs[0]["message-id"]), ("receipt", "a1")])
    sub.expect_error("unknown ack", receipt_id="a1")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_ack_is_cumulative(server, transport):
    sub, pub, dest = pubsub(server, transport, ack="client")
    msgs = _three(pub, sub, dest)
    acks = [m["ack"] for m in msgs]
    assert len(set(acks)) == 3
    sub.simple("ACK", [("id", acks[1])])  # covers m0 and m1
    sub.send_frame("ACK", [("id", acks[0]), ("receipt", "again")])
    sub.expect_error("unknown ack", receipt_id="again")


def test_client_ack_later_ids_still_pending(server):
    sub, pub, dest = pubsub(server, ack="client")
    msgs = _three(pub, sub, dest)
    sub.simple("ACK", [("id", msgs[1]["ack"])])
    sub.simple("ACK", [("id", msgs[2]["ack"])])
    sub.send_frame("ACK", [("id", msgs[2]["ack"]), ("receipt", "dup")])
    sub.expect_error("unknown ack", receipt_id="dup")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_individual_ack(server, transport):
    sub, pub, dest = pubsub(server, transport, ack="client-individual")
    msgs = _three(pub, sub, dest)
    sub.simple("ACK", [("id", msgs[2]["ack"])])
    sub.simple("ACK", [("id", msgs[0]["ack"])])  # not covered by acking m2
    sub.simple("ACK", [("id", msgs[1]["ack"])])
    sub.send_frame("ACK", [("id", msgs[2]["ack"]), ("receipt", "dup")])
    sub.expect_error("unknown ack", receipt_id="dup")


def test_nack(server):
    sub, pub, dest = pubsub(server, ack="client-individual")
    msgs = _three(pub, sub, dest)
    sub.simple("NACK", [("id", msgs[0]["ack"])])
    sub.simple("ACK", [("id", msgs[1]["ack"])])
    sub.simple("NACK", [("id", msgs[2]["ack"])])
    sub.send_frame("ACK", [("id", msgs[0]["ack"]), ("receipt", "after-nack")])
    sub.expect_error("unknown ack", receipt_id="after-nack")


def test_nack_twice_is_unknown_ack(server):
    sub, pub, dest = pubsub(server, ack="client")
    msgs = _three(pub, sub, dest)
    sub.simple("NACK", [("id", msgs[2]["ack"])])
    sub.send_frame("NACK", [("id", msgs[2]["ack"]), ("receipt", "n2")])
    sub.expect_error("unknown ack", receipt_id="n2")


@pytest.mark.parametrize("mode", ["client", "client-individual"])
def test_ack_1_1_by_message_id_and_subscription(server, mode):
    room = uid()
    dest = f"/topic/{room}"
    sub = server.connected("tcp", version="1.1")
    sub.subscribe(dest, "sub-11", ack=mode)
    pub = server.connected("tcp", version="1.1")
    msgs = _three(pub, sub, dest)
    for i, m in enumerate(msgs, 1):
        assert "ack" not in m, f"1.1 MESSAGE must not carry an ack header: {m!r}"
        assert m["message-id"] == f"{room}:{i}"
        assert m["subscription"] == "sub-11"
    sub.simple("ACK", [("message-id", msgs[2]["message-id"]), ("subscription", "sub-11")])
    if mode == "client-individual":
        sub.simple("NACK", [("message-id", msgs[0]["message-id"]), ("subscription", "sub-11")])
    sub.send_frame("ACK", [("message-id", msgs[2]["message-id"]), ("subscription", "sub-11"), ("receipt", "x")])
    sub.expect_error("unknown ack", receipt_id="x")


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_no_ack_header_before_1_2(server, version):
    room = uid()
    dest = f"/topic/{room}"
    c = server.connected("tcp", version=version)
    c.subscribe(dest, "s", ack="client")
    c.send(dest, "x", receipt=True)
    m = c.expect_message()
    assert "ack" not in m, f"{version} MESSAGE must not carry an ack header: {m!r}"
    assert m["message-id"] == f"{room}:1"


def test_ack_header_is_per_message_and_only_in_client_modes(server):
    room = uid()
    dest = f"/topic/{room}"
    c = server.connected("tcp")
    c.subscribe(dest, "auto")
    c.subscribe(dest, "cli", ack="client")
    c.subscribe(dest, "ind", ack="client-individual")
    c.send(dest, "one", receipt=True)
    got = {m["subscription"]: m for m in c.messages(3)}
    assert set(got) == {"auto", "cli", "ind"}
    assert "ack" not in got["auto"]
    assert got["cli"]["ack"] and got["ind"]["ack"]
    assert got["cli"]["ack"] != got["ind"]["ack"]
    c.simple("ACK", [("id", got["cli"]["ack"])])
    c.simple("ACK", [("id", got["ind"]["ack"])])


# ==========================================================================
# transactions
# ==========================================================================


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_transaction_held_until_commit(server, transport):
    sub, pub, dest = pubsub(server, transport)
    pub.simple("BEGIN", [("transaction", "tx-1")])
    pub.send(dest, "t1", headers=[("transaction", "tx-1")], receipt=True)
    pub.send(dest, "outside", receipt=True)
    pub.send(dest, "t2", headers=[("transaction", "tx-1")], receipt=True)
    m = sub.expect_message()
    assert m.body == b"outside"
    sub.assert_silent(0.5)
    pub.simple("COMMIT", [("transaction", "tx-1")])
    msgs = sub.messages(2)
    assert [m.text for m in msgs] == ["t1", "t2"]
    assert [m["x-seq"] for m in msgs] == ["2", "3"]
    for m in msgs:
        assert "transaction" not in m


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_transaction_abort_drops(server, transport):
    sub, pub, dest = pubsub(server, transport)
    pub.simple("BEGIN", [("transaction", "tx-a")])
    pub.send(dest, "dropped", headers=[("transaction", "tx-a")], receipt=True)
    pub.simple("ABORT", [("transaction", "tx-a")])
    sub.assert_silent(0.5)
    pub.send(dest, "kept", receipt=True)
    m = sub.expect_message()
    assert m.body == b"kept"
    assert m["x-seq"] == "1"


@pytest.mark.parametrize("how", ["disconnect", "socket-close", "error"])
def test_transaction_dropped_on_disconnect(server, how):
    sub, pub, dest = pubsub(server)
    pub.simple("BEGIN", [("transaction", "tx-d")])
    pub.send(dest, "never", headers=[("transaction", "tx-d")], receipt=True)
    if how == "disconnect":
        pub.disconnect()
    elif how == "socket-close":
        pub.close()
    else:
        pub.send_frame("FROB", [])
        pub.expect_error("unknown command")
    sub.assert_silent(0.7)
    other = server.connected("tcp")
    other.send(dest, "later", receipt=True)
    m = sub.expect_message()
    assert m.body == b"later"
    assert m["x-seq"] == "1"


def test_transactional_ack_held_until_commit(server):
    sub, pub, dest = pubsub(server, ack="client-individual")
    msgs = _three(pub, sub, dest)
    # ACK in a transaction that is aborted: the message stays pending
    sub.simple("BEGIN", [("transaction", "ta")])
    sub.simple("ACK", [("id", msgs[0]["ack"]), ("transaction", "ta")])
    sub.simple("ABORT", [("transaction", "ta")])
    sub.simple("ACK", [("id", msgs[0]["ack"])])
    # ACK in a transaction is not applied before COMMIT
    sub.simple("BEGIN", [("transaction", "tb")])
    sub.simple("ACK", [("id", msgs[1]["ack"]), ("transaction", "tb")])
    sub.simple("NACK", [("id", msgs[2]["ack"]), ("transaction", "tb")])
    sub.simple("ACK", [("id", msgs[1]["ack"])])  # still pending: the transactional ACK is held
    sub.simple("BEGIN", [("transaction", "tc")])
    sub.simple("ACK", [("id", msgs[2]["ack"]), ("transaction", "tc")])
    sub.simple("COMMIT", [("transaction", "tc")])
    sub.send_frame("ACK", [("id", msgs[2]["ack"]), ("receipt", "gone")])
    sub.expect_error("unknown ack", receipt_id="gone")


@pytest.mark.parametrize("cmd", ["ACK", "NACK"])
def test_ack_with_unknown_transaction(server, cmd):
    sub, pub, dest = pubsub(server, ack="client-individual")
    msgs = _three(pub, sub, dest)
    sub.send_frame(cmd, [("id", msgs[0]["ack"]), ("transaction", "nope"), ("receipt", "u")])
    sub.expect_error("unknown transaction", receipt_id="u")


def test_transactions_are_per_connection(server):
    sub, pub, dest = pubsub(server)
    pub.simple("BEGIN", [("transaction", "shared-name")])
    other = server.connected("tcp")
    other.simple("BEGIN", [("transaction", "shared-name")])  # no clash with pub's
    other.send(dest, "o", headers=[("transaction", "shared-name")], receipt=True)
    other.simple("COMMIT", [("transaction", "shared-name")])
    assert sub.expect_message().body == b"o"
    pub.simple("ABORT", [("transaction", "shared-name")])


# ==========================================================================
# MESSAGE headers, rooms, subscriptions
# ==========================================================================


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_message_headers(server, transport):
    room = uid()
    dest = f"/topic/{room}"
    sub = server.connected(transport)
    sub.subscribe(dest, "sub-1", ack="client")
    pub = server.connected(transport, login="alice", passcode="secret")
    before = int(time.time() * 1000)
    pub.simple("BEGIN", [("transaction", "t")])
    pub.send(dest, "hello", headers=[("foo", "bar"), ("content-type", "text/plain;charset=utf-8"),
                                     ("transaction", "t")], receipt=True)
    pub.simple("COMMIT", [("transaction", "t")])
    pub.send(dest, "again", headers=[("foo", "baz")], receipt=True)
    after = int(time.time() * 1000)
    m1, m2 = sub.messages(2)
    for m, seq, body, foo in ((m1, 1, b"hello", "bar"), (m2, 2, b"again", "baz")):
        assert m.command == "MESSAGE"
        assert m["subscription"] == "sub-1"
        assert m["message-id"] == f"{room}:{seq}"
        assert m["destination"] == dest
        assert m["ack"]
        assert m["x-seq"] == str(seq)
        assert m["x-sender"] == "alice"
        ts = int(m["x-timestamp"])
        assert before - 5000 <= ts <= after + 5000, f"x-timestamp {ts} not near now ({before}..{after})"
        assert m["content-length"] == str(len(body))
        assert m["foo"] == foo
        assert m.body == body
        for h in ("receipt", "transaction", "passcode", "login"):
            assert h not in m, f"{h} must not be copied into MESSAGE: {m!r}"
    assert m1["content-type"] == "text/plain;charset=utf-8"
    assert int(m1["x-timestamp"]) <= int(m2["x-timestamp"])


def test_x_sender_anonymous(server):
    sub, pub, dest = pubsub(server, login=None)
    pub.send(dest, "anon", receipt=True)
    assert sub.expect_message()["x-sender"] == "anonymous"


def test_x_sender_per_version(server):
    room = uid()
    dest = f"/topic/{room}"
    sub = server.connected("tcp")
    sub.subscribe(dest)
    for v in ("1.0", "1.1", "1.2"):
        p = server.connected("tcp", version=v, login=f"user-{v}")
        p.send(dest, v, receipt=True)
        m = sub.expect_message()
        assert m["x-sender"] == f"user-{v}"
        assert m.body == v.encode()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_headers_cannot_be_spoofed(server, transport):
    room = uid()
    dest = f"/topic/{room}"
    sub = server.connected(transport)
    sub.subscribe(dest, "real-sub")
    pub = server.connected(transport, login="mallory")
    spoof = [("x-sender", "alice"), ("x-seq", "999"), ("x-timestamp", "1"), ("message-id", "fake:1"),
             ("subscription", "fake-sub"), ("ack", "fake-ack")]
    pub.send(dest, "spoof", headers=spoof, receipt=True)
    m = sub.expect_message()
    assert m["x-sender"] == "mallory"
    assert m["x-seq"] == "1"
    assert m["message-id"] == f"{room}:1"
    assert m["subscription"] == "real-sub"
    assert abs(int(m["x-timestamp"]) - time.time() * 1000) < 10000
    for name, value in spoof:
        assert (name, value) not in m.header_list, f"spoofed {name}:{value} leaked into {m!r}"
    assert "ack" not in m


def test_x_seq_is_per_room(server):
    ra, rb = uid(), uid()
    c = server.connected("tcp")
    c.subscribe(f"/topic/{ra}", "a")
    c.subscribe(f"/topic/{rb}", "b")
    for i in range(3):
        c.send(f"/topic/{ra}", f"a{i}", receipt=True)
        c.send(f"/topic/{rb}", f"b{i}", receipt=True)
    msgs = c.messages(6)
    a = [m for m in msgs if m["subscription"] == "a"]
    b = [m for m in msgs if m["subscription"] == "b"]
    assert [m["x-seq"] for m in a] == ["1", "2", "3"]
    assert [m["x-seq"] for m in b] == ["1", "2", "3"]
    assert [m["message-id"] for m in a] == [f"{ra}:{i}" for i in (1, 2, 3)]


def test_two_subscriptions_to_one_room_on_one_connection(server):
    room = uid()
    dest = f"/topic/{room}"
    c = server.connected("tcp")
    c.subscribe(dest, "first")
    c.subscribe(dest, "second")
    c.send(dest, "twice", receipt=True)
    msgs = c.messages(2)
    assert sorted(m["subscription"] for m in msgs) == ["first", "second"]
    assert msgs[0]["x-seq"] == msgs[1]["x-seq"] == "1"


def test_unsubscribe_stops_delivery(server):
    sub, pub, dest = pubsub(server)
    pub.send(dest, "before", receipt=True)
    assert sub.expect_message().body == b"before"
    sub.unsubscribe("s1")
    pub.send(dest, "after", receipt=True)
    sub.assert_silent(0.5)
    # the id can be reused after UNSUBSCRIBE
    sub.subscribe(dest, "s1")
    pub.send(dest, "again", receipt=True)
    m = sub.expect_message()
    assert m.body == b"again"
    assert m["x-seq"] == "3"


@pytest.mark.parametrize("room_name", ["a", "A-Z_a.z~0-9", "x" * 128, "...", "~", "-_-"])
def test_valid_room_names(server, room_name):
    room = room_name
    dest = f"/topic/{room}"
    c = server.connected("tcp")
    c.subscribe(dest)
    c.send(dest, "ok", receipt=True)
    m = c.expect_message()
    assert m["destination"] == dest
    assert m["message-id"] == f"{room}:1"


def test_rooms_are_case_sensitive(server):
    c = server.connected("tcp")
    c.subscribe("/topic/Room", "upper")
    c.send("/topic/room", "lower", receipt=True)
    c.assert_silent(0.4)
    c.send("/topic/Room", "upper", receipt=True)
    assert c.expect_message().body == b"upper"


def test_publisher_order_and_shared_order(server_factory):
    srv = server_factory("--shards", "2")
    room = uid()
    dest = f"/topic/{room}"
    subs = [srv.connected("tcp" if i % 2 else "ws") for i in range(4)]
    for i, s in enumerate(subs):
        s.subscribe(dest, f"s{i}")
    pubs = [srv.connected("tcp"), srv.connected("ws")]
    n = 100

    def run(p, k):
        for i in range(n):
            p.send_frame("SEND", [("destination", dest)], f"p{k}-{i}")

    ts = [threading.Thread(target=run, args=(p, k)) for k, p in enumerate(pubs)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    orders = [[m.text for m in s.messages(2 * n, timeout=20)] for s in subs]
    for o in orders[1:]:
        assert o == orders[0]
    for k in range(2):
        mine = [int(x.split("-")[1]) for x in orders[0] if x.startswith(f"p{k}-")]
        assert mine == list(range(n))


def test_utf8_headers_and_body(server):
    sub, pub, dest = pubsub(server)
    pub.send(dest, "h\u00e9llo \u2603 \U0001F600".encode(), headers=[("greeting", "gr\u00fc\u00df dich \u2603")],
             receipt=True)
    m = sub.expect_message()
    assert m["greeting"] == "gr\u00fc\u00df dich \u2603"
    assert m.text == "h\u00e9llo \u2603 \U0001F600"
