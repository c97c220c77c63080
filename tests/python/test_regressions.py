"""Regression tests for defects found in review (one test per defect)."""
import time

from stampede_client import build_frame, owner_shard, uid


def test_disconnect_receipt_waits_for_send_receipts_of_remote_rooms(server_factory):
    # SEND(receipt) to rooms owned by other shards, then DISCONNECT(receipt)
    # in the same write: every SEND receipt must come, and before the
    # DISCONNECT receipt (the DISCONNECT receipt confirms all earlier frames).
    srv = server_factory("--shards", "4")
    c = srv.connected("tcp")
    me = c.shard
    rooms = [r for r in (f"dr{i}-{uid()}" for i in range(40)) if owner_shard(r, 4) != me][:5]
    assert rooms, "need rooms owned by other shards"
    data = b"".join(
        build_frame("SEND", [("destination", f"/topic/{r}"), ("receipt", f"s{i}")], b"x")
        for i, r in enumerate(rooms)
    )
    data += build_frame("DISCONNECT", [("receipt", "bye")])
    c.send_raw(data)
    got = [c.expect("RECEIPT")["receipt-id"] for _ in range(len(rooms) + 1)]
    assert sorted(got[:-1]) == sorted(f"s{i}" for i in range(len(rooms)))
    assert got[-1] == "bye"
    c.expect_closed()


def test_frame_sent_a_byte_at_a_time(server):
    # An unfinished frame is only re-parsed when it can complete; it must
    # still complete, with or without content-length (NULs in the body).
    room = uid()
    sub = server.connected("tcp")
    sub.subscribe(f"/topic/{room}")
    pub = server.connected("tcp")
    body = b"a\0b\0c" * 50
    frames = [
        build_frame("SEND", [("destination", f"/topic/{room}"), ("content-length", str(len(body)))], body),
        build_frame("SEND", [("destination", f"/topic/{room}"), ("receipt", "r")], b"plain"),
    ]
    for f in frames:
        for i in range(len(f)):
            pub.send_raw(f[i:i + 1])
            if i % 64 == 0:
                time.sleep(0.001)
    pub.expect_receipt("r")
    m1 = sub.expect_message()
    m2 = sub.expect_message()
    assert m1.body == body
    assert m2.body == b"plain"


def test_commit_is_all_or_nothing(server):
    # A held SEND followed by a held ACK that names nothing pending: COMMIT
    # fails as a whole, so the SEND is never published.
    room = uid()
    sub = server.connected("tcp")
    sub.subscribe(f"/topic/{room}")
    c = server.connected("tcp")
    c.send_frame("BEGIN", [("transaction", "t1")])
    c.send_frame("SEND", [("destination", f"/topic/{room}"), ("transaction", "t1")], b"held")
    c.send_frame("ACK", [("id", "0-999"), ("transaction", "t1")])
    c.send_frame("COMMIT", [("transaction", "t1"), ("receipt", "c")])
    c.expect_error("unknown ack", receipt_id="c")
    sub.assert_silent(0.5, "MESSAGE from a failed COMMIT")


def test_transaction_bytes_are_bounded(server_factory):
    srv = server_factory("--max-transaction-bytes", "4096")
    c = srv.connected("tcp")
    c.send_frame("BEGIN", [("transaction", "t")])
    for i in range(3):
        c.send_frame("SEND", [("destination", "/topic/big"), ("transaction", "t"), ("receipt", f"r{i}")], b"x" * 1500)
    c.expect_receipt("r0")
    c.expect_receipt("r1")
    c.expect_error("too many bytes in transactions", receipt_id="r2")
    # another connection is unaffected
    srv.connected("tcp").ping_roundtrip(f"/topic/{uid()}")


def test_header_name_with_colon_is_escaped_for_1_0(server):
    # A 1.2 publisher's header name "x-sender:admin" (sent as x-sender\cadmin)
    # must not turn into a second x-sender line for a 1.0 subscriber.
    room = uid()
    sub10 = server.connected("tcp", version="1.0")
    sub10.subscribe(f"/topic/{room}", "s10")
    pub = server.connected("tcp", version="1.2", login="eve")
    pub.send_raw(f"SEND\ndestination:/topic/{room}\nx-sender\\cadmin:v\nreceipt:r\n\nhi\0".encode())
    pub.expect_receipt("r")
    m = sub10.expect_message()
    assert m["x-sender"] == "eve"
    assert b"\nx-sender\\cadmin:v\n" in m.raw
    assert m.raw.count(b"\nx-sender:") == 1


def test_max_connections_refuses_with_a_clear_answer(server_factory):
    # 2 shards x 2 connections: beyond a shard's share, STOMP clients get an
    # ERROR "server full" and HTTP clients a 503; the ones admitted keep working.
    import socket

    srv = server_factory("--max-connections", "4", "--shards", "2")
    admitted, refused = [], 0
    socks = []
    for _ in range(12):
        s = socket.create_connection((srv.host, srv.stomp_port), timeout=5)
        socks.append(s)
        s.sendall(b"CONNECT\naccept-version:1.2\n\n\0")
        data = b""
        while b"\0" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        if data.startswith(b"CONNECTED"):
            admitted.append(s)
        else:
            assert data.startswith(b"ERROR\nmessage:server full\n"), data
            refused += 1
    assert 1 <= len(admitted) <= 4
    assert refused == 12 - len(admitted)
    h = socket.create_connection((srv.host, srv.http_port), timeout=5)
    h.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
    first = h.recv(200)
    if len(admitted) == 4:
        # both shards hold their share: the HTTP listener is full too
        assert first.startswith(b"HTTP/1.1 503 Service Unavailable"), first
    else:
        # the kernel sent fewer than two connections to one shard
        assert first.startswith(b"HTTP/1.1 200"), first
    # an admitted session still chats
    a = admitted[0]
    a.sendall(b"SUBSCRIBE\nid:1\ndestination:/topic/full\n\n\0SEND\ndestination:/topic/full\n\nstill here\0")
    data = b""
    while not data.endswith(b"still here\0"):
        chunk = a.recv(4096)
        assert chunk, data
        data += chunk
    assert data.startswith(b"MESSAGE\n"), data
    for s in socks + [h]:
        s.close()
