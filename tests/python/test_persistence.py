"""Durable history (issue 4): RECEIPT after commit, a kill -9 crash loses no
receipted message, sequences continue after a restart, gap-free replay while
messages keep arriving, the history API, back-pressure from a full writer
queue, retention and the graceful shutdown."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import threading
import time

import pytest

from conftest import ADMIN, ConnectionClosed, build_frame, start_server, uid
from stampede_client import owner_shard
from stampede_client import FrameParser  # noqa: E402


@pytest.fixture
def restartable(tmp_path, request):
    """start(*args) runs a server on this test's data dir (again and again)."""
    servers = []
    request.node._stampede_servers = servers

    def start(*args):
        srv = start_server(tmp_path, *args)
        servers.append(srv)
        return srv

    yield start
    for s in servers:
        s.stop()


def history(srv, room, **params):
    q = "&".join(f"{k}={v}" for k, v in params.items())
    status, headers, body = srv.http("GET", f"/api/rooms/{room}/messages" + (f"?{q}" if q else ""), headers=ADMIN)
    assert status == 200, (status, body)
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def all_history(srv, room):
    """Every stored message of the room, read forward page by page."""
    out, after = [], 0
    while True:
        page = history(srv, room, after=after, limit=1000)
        out += page["messages"]
        if not page["has_more"]:
            return out
        after = page["messages"][-1]["seq"]


def stop_gracefully(srv, timeout=10):
    srv.proc.send_signal(signal.SIGTERM)
    rc = srv.proc.wait(timeout)
    srv.stopped = True
    return rc


# ---------------------------------------------------------------------------
# receipts, history API, restart


def test_receipt_means_stored_and_history_pages(server, room):
    c = server.connected("tcp", login="alice")
    for i in range(1, 26):
        c.send(f"/topic/{room}", f"m{i}", headers=[("x-n", str(i))], receipt=True)
        # The RECEIPT came: the message is already readable from the store.
        if i in (1, 13):
            assert [m["body"] for m in history(server, room, after=i - 1)["messages"]] == [f"m{i}"]
    page = history(server, room, after=0, limit=10)
    assert [m["seq"] for m in page["messages"]] == list(range(1, 11)) and page["has_more"]
    page = history(server, room, after=20, limit=10)
    assert [m["seq"] for m in page["messages"]] == list(range(21, 26)) and not page["has_more"]
    page = history(server, room, before=11, limit=5)
    assert [m["seq"] for m in page["messages"]] == list(range(6, 11)) and page["has_more"]
    page = history(server, room, before=3, limit=5)
    assert [m["seq"] for m in page["messages"]] == [1, 2] and not page["has_more"]
    latest = history(server, room, limit=3)
    assert [m["seq"] for m in latest["messages"]] == [23, 24, 25] and latest["has_more"]
    m = history(server, room, after=6, limit=1)["messages"][0]
    assert m == {"seq": 7, "message_id": f"{room}:7", "sender": "alice", "timestamp": m["timestamp"],
                 "headers": {"x-n": "7"}, "body": "m7", "base64": False}
    assert abs(m["timestamp"] / 1000 - time.time()) < 60
    assert history(server, uid("empty"))["messages"] == []


def test_binary_bodies_come_back_as_base64(server, room):
    c = server.connected("tcp")
    blob = bytes([0xFF, 0x00, 0x10, 0x80])
    c.send(f"/topic/{room}", blob, receipt=True)
    m = history(server, room)["messages"][0]
    assert m["base64"] is True and base64.b64decode(m["body"]) == blob


@pytest.mark.parametrize("query,word", [
    ("after=x", "after"), ("limit=0", "limit"), ("limit=1001", "limit"), ("after=-1", "after"),
    ("after=1&before=5", "not both"), ("limit=5&limit=6", "twice"), ("since=3", "unknown"),
])
def test_history_api_refuses_bad_parameters(server, query, word):
    status, headers, body = server.http("GET", f"/api/rooms/lobby/messages?{query}", headers=ADMIN)
    assert status == 400, body
    assert word in json.loads(body)["error"]


def test_history_api_errors(server):
    status, _, body = server.http("GET", "/api/rooms/bad%20room/messages", headers=ADMIN)
    assert status == 400 and "invalid room" in json.loads(body)["error"]
    status, _, body = server.http("POST", "/api/rooms/lobby/messages", body=b"x", headers=ADMIN)
    assert status == 405
    status, _, body = server.http("GET", "/api/rooms/lobby/nothing", headers=ADMIN)
    assert status == 404


@pytest.mark.parametrize("shards", [1, 2])
def test_sequences_continue_after_restart(restartable, shards):
    room = uid("restart")
    srv = restartable("--shards", str(shards))
    c = srv.connected("tcp")
    for i in range(3):
        c.send(f"/topic/{room}", f"before-{i}", receipt=True)
    c.close()
    assert stop_gracefully(srv) == 0
    srv = restartable("--shards", str(shards))
    # The first thing the new server hears of the room is a replay request
    # (from a shard that may not own it): it waits for the room's last seq.
    back = subscriber_off_owner(srv, room, shards)
    back.subscribe(f"/topic/{room}", id="back", headers=[("x-since-seq", "1")])
    assert [m.body for m in back.messages(2)] == [b"before-1", b"before-2"]
    sub = srv.connected("ws")
    sub.subscribe(f"/topic/{room}")
    pub = srv.connected("tcp")
    pub.send(f"/topic/{room}", "after", receipt=True)
    m = sub.expect_message()
    assert m["x-seq"] == "4" and m["message-id"] == f"{room}:4"
    assert back.expect_message()["x-seq"] == "4"
    assert [x["body"] for x in all_history(srv, room)] == ["before-0", "before-1", "before-2", "after"]


def test_commit_receipt_waits_until_the_transaction_is_stored(server, room):
    c = server.connected("tcp")
    c.simple("BEGIN", [("transaction", "t1")])
    for i in range(3):
        c.send_frame("SEND", [("destination", f"/topic/{room}"), ("transaction", "t1")], f"t{i}")
    c.simple("COMMIT", [("transaction", "t1")])
    assert [m["body"] for m in history(server, room)["messages"]] == ["t0", "t1", "t2"]


@pytest.mark.server_args("--persist", "false")
def test_persistence_off_refuses_replay_and_history(server, room):
    c = server.connected("tcp")
    c.send(f"/topic/{room}", "x", receipt=True)
    status, _, body = server.http("GET", f"/api/rooms/{room}/messages", headers=ADMIN)
    assert status == 404 and "disabled" in json.loads(body)["error"]
    c.send_frame("SUBSCRIBE", [("destination", f"/topic/{room}"), ("id", "a"), ("x-since-seq", "0")])
    c.expect_error("history is disabled")


def test_bad_replay_headers_are_errors(server, room):
    c = server.connected("tcp")
    c.send_frame("SUBSCRIBE", [("destination", f"/topic/{room}"), ("id", "a"), ("x-since-seq", "-3")])
    c.expect_error("invalid x-since-seq")
    c = server.connected("tcp")
    c.send_frame("SUBSCRIBE", [("destination", f"/topic/{room}"), ("id", "a"),
                               ("x-since-seq", "1"), ("x-replay-last", "2")])
    c.expect_error("conflicting replay headers")


def test_durability_setting(server_factory, tmp_path):
    srv = server_factory("--durability", "off")
    c = srv.connected("tcp")
    c.send("/topic/d", "x", receipt=True)
    import subprocess
    from conftest import stampede_bin
    r = subprocess.run([str(stampede_bin()), "--durability", "sometimes", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "full" in r.stderr and "normal" in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# crash safety


class RawStomp:
    """A minimal pipelining STOMP-over-TCP client (fast enough for 20,000 frames)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.parser = FrameParser()
        self.sock.sendall(build_frame("CONNECT", [("accept-version", "1.2"), ("host", "x"),
                                                   ("heart-beat", "0,0")]))
        assert self.next().command == "CONNECTED"

    def next(self):
        while True:
            f = self.parser.next()
            if f is not None:
                return f
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionClosed()
            self.parser.feed(data)


@pytest.mark.parametrize("args,window,kill_after", [
    # A client that keeps 400 SENDs in flight, killed after 6,000 RECEIPTs.
    ([], 400, 6_000),
    # Everything sent at once to a writer that commits only 8 messages per
    # transaction: it falls far behind the shard, so thousands of sequenced
    # messages wait for their commit when the kill comes (a RECEIPT sent
    # before the commit shows as loss here).
    (["--persist-batch", "8"], None, 1_500),
], ids=["windowed", "slow-writer"])
def test_kill_9_loses_no_receipted_message(restartable, args, window, kill_after):
    """20,000 SENDs with receipts over 4 rooms, kill -9 part-way: after a
    restart every receipted message is stored, each room's stored seqs run
    1..n without a gap, nothing is stored twice, and the rooms go on with
    seqs never given before."""
    srv = restartable(*args)
    rooms = [uid("crash") for _ in range(4)]
    c = RawStomp(srv.stomp_port)
    total = 20_000
    frames = [build_frame("SEND", [("destination", f"/topic/{rooms[i % 4]}"), ("receipt", str(i))],
                          f"{rooms[i % 4]} {i}") for i in range(total)]
    sent = 0
    if window is None:
        def send_all():
            try:
                c.sock.sendall(b"".join(frames))
            except OSError:
                pass  # the server is gone

        threading.Thread(target=send_all, daemon=True).start()
        sent = total
    receipted, killed = set(), False
    try:
        while len(receipted) < total:
            if window is not None and sent < total and sent - len(receipted) < window:
                end = min(total, len(receipted) + window)
                c.sock.sendall(b"".join(frames[sent:end]))
                sent = end
            f = c.next()
            assert f.command == "RECEIPT", f
            receipted.add(int(f["receipt-id"]))
            if len(receipted) >= kill_after and not killed:
                os.kill(srv.proc.pid, signal.SIGKILL)
                killed = True
    except (ConnectionClosed, OSError):
        pass
    assert killed and kill_after <= len(receipted) < total
    srv.proc.wait(10)
    srv.stopped = True

    srv = restartable()
    stored = {}
    for room in rooms:
        msgs = all_history(srv, room)
        assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1)), f"gap in {room}"
        for m in msgs:
            r, n = m["body"].split()
            assert r == room
            assert int(n) not in stored, f"message {n} stored twice"
            stored[int(n)] = m["seq"]
    missing = receipted - stored.keys()
    assert not missing, f"{len(missing)} receipted messages lost, e.g. {sorted(missing)[:5]}"
    # Per room, what was stored is a prefix of what was sent, in order.
    for i, room in enumerate(rooms):
        ns = sorted(n for n in stored if n % 4 == i)
        assert ns == list(range(i, i + 4 * len(ns), 4))
    # And the rooms continue past every seq given before the crash (some
    # were delivered live and never stored; none is given again): after
    # the reservation, so the seqs skip at most --seq-reserve (issue 10).
    pub = srv.connected("tcp")
    pub.send(f"/topic/{rooms[0]}", "after the crash", receipt=True)
    last_stored = sum(1 for n in stored if n % 4 == 0)
    new_seq = all_history(srv, rooms[0])[-1]["seq"]
    assert last_stored < new_seq <= last_stored + 2 * 65_536 + 1, (last_stored, new_seq)


# ---------------------------------------------------------------------------
# replay


def subscriber_off_owner(srv, room, shards):
    """A WebSocket client on a shard that does not own `room` (if there are several)."""
    owner = owner_shard(room, shards)
    for _ in range(60):
        c = srv.connected("tcp")
        if shards == 1 or c.shard != owner:
            return c
    pytest.skip("could not land a connection off the owner shard")


@pytest.mark.parametrize("shards", [1, 2])
def test_replay_while_publishing_has_no_gap_and_no_duplicate(server_factory, shards):
    srv = server_factory("--shards", str(shards))
    room = uid("replay")
    total = 3_000
    pub = srv.connected("tcp")
    started = threading.Event()
    errors = []

    def publish():
        try:
            for i in range(1, total + 1):
                pub.send(f"/topic/{room}", f"p{i}", receipt=(i % 50 == 0))
                if i == 1_000:
                    started.set()
        except Exception as e:  # surfaced below
            errors.append(e)
            started.set()

    t = threading.Thread(target=publish)
    t.start()
    started.wait(30)
    # Join mid-stream: everything from seq 1 (stored) and on (live).
    full = subscriber_off_owner(srv, room, shards)
    full.subscribe(f"/topic/{room}", id="full", headers=[("x-since-seq", "0")])
    # And one that saw up to 700 before.
    part = subscriber_off_owner(srv, room, shards)
    part.subscribe(f"/topic/{room}", id="part", headers=[("x-since-seq", "700")])
    t.join(60)
    assert not errors, errors
    got_full = [int(m["x-seq"]) for m in full.messages(total, timeout=30)]
    assert got_full == list(range(1, total + 1))
    got_part = [int(m["x-seq"]) for m in part.messages(total - 700, timeout=30)]
    assert got_part == list(range(701, total + 1))
    full.assert_silent(0.3)


@pytest.mark.parametrize("shards", [1, 2])
def test_replay_last_k_then_live(server_factory, shards):
    srv = server_factory("--shards", str(shards), "--replay-page", "7")
    room = uid("last")
    pub = srv.connected("tcp")
    for i in range(1, 51):
        pub.send(f"/topic/{room}", f"b{i}", receipt=(i == 50))
    sub = subscriber_off_owner(srv, room, shards)
    sub.subscribe(f"/topic/{room}", headers=[("x-replay-last", "20")])
    pub.send(f"/topic/{room}", "live", receipt=True)
    msgs = sub.messages(21)
    assert [int(m["x-seq"]) for m in msgs] == list(range(31, 52))
    assert msgs[0].body == b"b31" and msgs[-1].body == b"live"
    # x-since-seq past the end: only live messages.
    late = subscriber_off_owner(srv, room, shards)
    late.subscribe(f"/topic/{room}", id="late", headers=[("x-since-seq", "1000")])
    pub.send(f"/topic/{room}", "next", receipt=True)
    assert late.expect_message()["x-seq"] == "52"


def test_replay_honours_client_acks(server, room):
    pub = server.connected("tcp")
    for i in range(5):
        pub.send(f"/topic/{room}", f"a{i}", receipt=(i == 4))
    sub = server.connected("tcp")
    sub.subscribe(f"/topic/{room}", ack="client-individual", headers=[("x-since-seq", "2")])
    msgs = sub.messages(3)
    assert [m["x-seq"] for m in msgs] == ["3", "4", "5"]
    for m in msgs:
        sub.simple("ACK", [("id", m["ack"])])


# ---------------------------------------------------------------------------
# back-pressure, retention, shutdown


@pytest.mark.parametrize("shards", [1, 2])
def test_full_writer_queue_pauses_publishers_and_loses_nothing(server_factory, shards):
    srv = server_factory("--shards", str(shards), "--persist-queue", "16", "--persist-batch", "4",
                         "--max-outbound-bytes", str(64 << 20))
    rooms = [uid("bp") for _ in range(3)]
    subs = srv.connected("ws")
    for i, r in enumerate(rooms):
        subs.subscribe(f"/topic/{r}", id=f"s{i}")
    c = RawStomp(srv.stomp_port)
    n = 3_000
    payload = b"".join(build_frame("SEND", [("destination", f"/topic/{rooms[i % 3]}"),
                                            ("receipt", str(i))], f"{i}") for i in range(n))
    sender = threading.Thread(target=c.sock.sendall, args=(payload,))
    sender.start()
    got = set()
    while len(got) < n:
        f = c.next()
        assert f.command == "RECEIPT", f
        got.add(int(f["receipt-id"]))
    sender.join(30)
    assert got == set(range(n))
    live = subs.messages(n, timeout=30)
    for r in rooms:
        assert [int(m["x-seq"]) for m in live if m["destination"] == f"/topic/{r}"] == list(range(1, n // 3 + 1))
        assert len(all_history(srv, r)) == n // 3


def test_retention_per_room_keeps_the_newest_and_the_sequence(restartable, room):
    srv = restartable("--retention-per-room", "5", "--retention-interval-s", "1")
    c = srv.connected("tcp")
    for i in range(1, 21):
        c.send(f"/topic/{room}", f"r{i}", receipt=(i == 20))
    deadline = time.time() + 10
    while time.time() < deadline:
        seqs = [m["seq"] for m in all_history(srv, room)]
        if seqs == [16, 17, 18, 19, 20]:
            break
        time.sleep(0.2)
    assert seqs == [16, 17, 18, 19, 20]
    c.close()
    assert stop_gracefully(srv) == 0
    srv = restartable()
    srv.connected("tcp").send(f"/topic/{room}", "r21", receipt=True)
    assert [m["seq"] for m in all_history(srv, room)] == [16, 17, 18, 19, 20, 21]


def test_retention_by_age(restartable, tmp_path, room):
    srv = restartable()
    c = srv.connected("tcp")
    for i in range(1, 11):
        c.send(f"/topic/{room}", f"d{i}", receipt=(i == 10))
    c.close()
    assert stop_gracefully(srv) == 0
    db = sqlite3.connect(tmp_path / "data" / "stampede.db")
    three_days_ago = int(time.time() * 1000) - 3 * 86_400_000
    db.execute("UPDATE messages SET ts_ms = ? WHERE room = ? AND seq <= 6", (three_days_ago, room))
    db.commit()
    db.close()
    srv = restartable("--retention-days", "2", "--retention-interval-s", "1")
    deadline = time.time() + 10
    while time.time() < deadline:
        seqs = [m["seq"] for m in all_history(srv, room)]
        if seqs == [7, 8, 9, 10]:
            break
        time.sleep(0.2)
    assert seqs == [7, 8, 9, 10]


def test_sigterm_commits_and_closes_clients_going_away(restartable, room):
    srv = restartable("--shards", "2")
    ws = srv.connected("ws")
    ws.subscribe(f"/topic/{room}")
    tcp = srv.connected("tcp")
    raw = RawStomp(srv.stomp_port)
    # Pipelined, no receipts: everything the server read before the signal
    # is committed before it exits.
    raw.sock.sendall(b"".join(build_frame("SEND", [("destination", f"/topic/{room}")], f"s{i}")
                              for i in range(500)))
    ws.messages(500, timeout=20)
    assert stop_gracefully(srv) == 0
    with pytest.raises(ConnectionClosed):
        ws.recv_frame(5)
    assert ws.close_code == 1001
    tcp.expect_error("server shutting down")
    # The log was folded into the database: stampede.db alone is a backup.
    wal = srv.data_dir / "stampede.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    backup = sqlite3.connect(f"file:{srv.data_dir / 'stampede.db'}?mode=ro&immutable=1", uri=True)
    assert backup.execute("SELECT count(*) FROM messages WHERE room = ?", (room,)).fetchone()[0] == 500
    backup.close()
    srv = restartable()
    assert len(all_history(srv, room)) == 500


def test_a_message_the_store_refuses_gets_an_error_not_a_receipt(restartable, tmp_path):
    """A damaged database (a room's last_seq and reservation set back, so
    the next seq is already stored) refuses the message: its sender gets
    ERROR with the receipt-id instead of a RECEIPT, and other rooms go on
    being stored."""
    room, other = uid("bad"), uid("fine")
    srv = restartable()
    c = srv.connected("tcp")
    for i in range(3):
        c.send(f"/topic/{room}", f"ok{i}", receipt=True)
    c.close()
    assert stop_gracefully(srv) == 0
    db = sqlite3.connect(tmp_path / "data" / "stampede.db")
    db.execute("UPDATE rooms SET last_seq = 1, reserved_seq = 1 WHERE room = ?", (room,))
    db.commit()
    db.close()
    srv = restartable()
    good = srv.connected("tcp")
    good.send(f"/topic/{other}", "fine", receipt=True)
    bad = srv.connected("tcp")
    bad.send_frame("SEND", [("destination", f"/topic/{room}"), ("receipt", "r-dup")], "dup")
    bad.expect_error("message not stored", receipt_id="r-dup")
    good.send(f"/topic/{other}", "still fine", receipt=True)
    assert [m["body"] for m in all_history(srv, other)] == ["fine", "still fine"]
    assert [m["body"] for m in all_history(srv, room)] == ["ok0", "ok1", "ok2"]
    assert "message not stored" in srv.stderr_text()


@pytest.mark.parametrize("shards", [1, 2])
def test_replay_storm_through_a_tiny_writer_queue(server_factory, shards):
    """A reconnect storm: 150 replaying SUBSCRIBEs at once queue 150 replay
    barriers behind a 16-slot writer queue; every subscription gets its
    room's history, then live messages."""
    srv = server_factory("--shards", str(shards), "--persist-queue", "16",
                         "--max-subscriptions", "200")
    rooms = [uid("storm") for _ in range(150)]
    pub = RawStomp(srv.stomp_port)
    pub.sock.sendall(b"".join(build_frame("SEND", [("destination", f"/topic/{r}"), ("receipt", f"{r}-{i}")],
                                          f"{r} {i}") for i in (1, 2, 3) for r in rooms))
    for _ in range(3 * len(rooms)):
        assert pub.next().command == "RECEIPT"
    sub = RawStomp(srv.stomp_port)
    sub.sock.sendall(b"".join(build_frame("SUBSCRIBE", [("destination", f"/topic/{r}"), ("id", r),
                                                        ("x-since-seq", "1"), ("receipt", f"sub-{r}")])
                              for r in rooms))
    got = {r: [] for r in rooms}
    receipts = 0
    while receipts < len(rooms) or sum(map(len, got.values())) < 2 * len(rooms):
        f = sub.next()
        if f.command == "RECEIPT":
            receipts += 1
        else:
            assert f.command == "MESSAGE", f
            got[f["subscription"]].append(int(f["x-seq"]))
    assert all(seqs == [2, 3] for seqs in got.values()), got


def test_a_seq_delivered_live_is_never_given_again_after_kill_9(restartable):
    """Issue 10, defect 4: messages a subscriber saw live but that were not
    yet stored at a `kill -9` (their senders got no RECEIPT) used to have
    their seqs given again after the restart, so a client resuming with
    `x-since-seq` silently missed the new messages. Now no client sees two
    different messages with one (room, seq)."""
    # One message per commit, each with an fsync: the writer falls far
    # behind what is delivered live.
    srv = restartable("--persist-batch", "1")
    room = uid("live")
    dest = f"/topic/{room}"
    sub = srv.connected("tcp")
    sub.subscribe(dest, "s", receipt="rs")
    pub = RawStomp(srv.stomp_port)
    n = 3_000
    pub.sock.sendall(b"".join(build_frame("SEND", [("destination", dest)], f"old {i}") for i in range(n)))
    seen = {}
    while len(seen) < n:
        m = sub.expect_message()
        seen[int(m["x-seq"])] = m.body
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(10)
    srv.stopped = True
    srv = restartable("--persist-batch", "1")
    stored = all_history(srv, room)
    assert len(stored) < n, "the writer kept up; nothing was only delivered live"
    # Resume as a client would, from the last seq it saw.
    last_seen = max(seen)
    again = srv.connected("tcp")
    again.subscribe(dest, "s2", receipt="r2", headers={"x-since-seq": str(last_seen)})
    new = srv.connected("tcp")
    new.send(dest, "new", receipt=True)
    m = again.expect_message()
    assert m.body == b"new", m
    assert int(m["x-seq"]) > last_seen, (m["x-seq"], last_seen)
    # And no stored message has a seq whose live message was another one.
    for s_msg in all_history(srv, room):
        if s_msg["seq"] in seen:
            assert seen[s_msg["seq"]] == s_msg["body"].encode(), s_msg


def test_the_seq_of_a_refused_message_is_never_given_again(restartable, tmp_path):
    """Issue 10, defect 4: a message the store refuses (here a damaged
    database; a full disk alike) was already delivered live. Its sender
    gets ERROR, and after a restart its seq is not given to another
    message."""
    room = uid("refused")
    dest = f"/topic/{room}"
    srv = restartable()
    c = srv.connected("tcp")
    for i in range(3):
        c.send(dest, f"ok{i}", receipt=True)
    c.close()
    assert stop_gracefully(srv) == 0
    db = sqlite3.connect(tmp_path / "data" / "stampede.db")
    # Set back by one: the next seq (3) is already stored, so the next
    # message is refused; the ones after it are not.
    db.execute("UPDATE rooms SET last_seq = 2, reserved_seq = 2 WHERE room = ?", (room,))
    db.commit()
    db.close()
    srv = restartable()
    sub = srv.connected("tcp")
    sub.subscribe(dest, "s")
    bad = srv.connected("tcp")
    bad.send_frame("SEND", [("destination", dest), ("receipt", "r-dup")], "refused")
    bad.expect_error("message not stored", receipt_id="r-dup")
    live = sub.expect_message()
    assert live.body == b"refused"
    refused_seq = int(live["x-seq"])
    assert stop_gracefully(srv) == 0
    srv = restartable()
    sub = srv.connected("tcp")
    sub.subscribe(dest, "s")
    pub = srv.connected("tcp")
    pub.send(dest, "next", receipt=True)
    m = sub.expect_message()
    assert m.body == b"next" and int(m["x-seq"]) > refused_seq, (m["x-seq"], refused_seq)
