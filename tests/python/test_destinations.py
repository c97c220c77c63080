"""Spring-compatible destination prefixes (issue 17, part 1): `/queue/<name>`
is a room like `/topic/<name>` (and a different one), with its order,
`x-seq`, history and replay; anything outside `--destination-prefixes` gets
an ERROR naming them. The frames of the write-up this project answers
(shared/seed) are sent byte for byte over TCP and WebSocket."""
import json

import pytest

from conftest import ADMIN
from stampede_client import uid

# From the write-up, byte for byte (a SEND to /queue/a, a SUBSCRIBE to /queue/foo).
SEED_SEND = b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\n\x00"
SEED_SUBSCRIBE = b"SUBSCRIBE\nid:0\ndestination:/queue/foo\nack:client\n\n\x00"


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_the_write_ups_frames_work_as_written(server_factory, transport):
    srv = server_factory("--shards", "2")
    sub_a = srv.connected(transport, login="reader")
    sub_a.subscribe("/queue/a", id="qa")
    topic_a = srv.connected(transport, login="other")
    topic_a.subscribe("/topic/a", id="ta")
    sender = srv.connected(transport, login="writer")
    sender.send_raw(SEED_SEND)
    m = sub_a.expect_message()
    assert m.body == b"hello queue a\n"
    assert m.get("destination") == "/queue/a"
    assert m.get("content-type") == "text/plain"
    assert m.get("subscription") == "qa"
    assert int(m.get("x-seq")) >= 1
    assert m.get("message-id") == f"queue/a:{m.get('x-seq')}"
    topic_a.assert_silent(0.3, "a /topic/a subscriber gets nothing sent to /queue/a")

    foo = srv.connected(transport, login="foo-reader")
    foo.send_raw(SEED_SUBSCRIBE)
    # The subscription is in place once a message sent after it arrives.
    sender.send("/queue/foo", "to foo", receipt=True)
    m = foo.expect_message()
    assert (m.body, m.get("destination"), m.get("subscription")) == (b"to foo", "/queue/foo", "0")
    assert m.get("ack"), "ack:client subscriptions get an ack id"
    foo.send_frame("ACK", [("id", m.get("ack")), ("receipt", "acked")])
    foo.expect_receipt("acked")


def test_a_queue_room_has_history_and_replay(server_factory):
    srv = server_factory("--shards", "2")
    name = uid("q")
    pub = srv.connected("tcp", login="alice")
    for i in range(1, 4):
        pub.send(f"/queue/{name}", f"m{i}", receipt=True)
    pub.send(f"/topic/{name}", "not in the queue", receipt=True)
    # Replay from the store, then live, in one order.
    late = srv.connected("tcp", login="alice")
    late.subscribe(f"/queue/{name}", headers=[("x-since-seq", "1")])
    got = late.messages(2)
    assert [m.body for m in got] == [b"m2", b"m3"]
    assert all(m.get("destination") == f"/queue/{name}" for m in got)
    # The history API names the room with its prefix, the / written %2F.
    status, _, body = srv.http("GET", f"/api/rooms/queue%2F{name}/messages", headers=ADMIN)
    assert status == 200, body
    page = json.loads(body)
    assert page["room"] == f"queue/{name}"
    assert [m["body"] for m in page["messages"]] == ["m1", "m2", "m3"]
    assert [m["message_id"] for m in page["messages"]] == [f"queue/{name}:{i}" for i in (1, 2, 3)]
    status, _, body = srv.http("GET", f"/api/rooms/{name}/messages", headers=ADMIN)
    assert [m["body"] for m in json.loads(body)["messages"]] == ["not in the queue"]
    # A prefix that is not configured is no room.
    status, _, body = srv.http("GET", f"/api/rooms/exchange%2F{name}/messages", headers=ADMIN)
    assert status == 400 and b"/topic/,/queue/" in body


@pytest.mark.parametrize("dest,why", [
    ("/app/chat.send", "/app/ destination needs server-side handlers"),
    ("/exchange/x", "destinations are /topic/<name> or /queue/<name>"),
    ("/queue/", "destinations are /topic/<name> or /queue/<name>"),
    ("/queue/a/b", "destinations are /topic/<name> or /queue/<name>"),
    ("/user/app/x", "user destinations (subscribe to /user/topic/<name> or /user/queue/<name>"),
])
@pytest.mark.parametrize("command", ["SEND", "SUBSCRIBE"])
def test_other_destinations_get_an_error_naming_the_prefixes(server, dest, why, command):
    c = server.connected("tcp")
    headers = [("destination", dest), ("receipt", "r")]
    if command == "SUBSCRIBE":
        headers.append(("id", "s"))
    c.send_frame(command, headers, b"x" if command == "SEND" else b"")
    err = c.expect_error("invalid destination", receipt_id="r")
    assert why in err.body.decode(), err.body
    c.expect_closed()


def test_prefixes_are_a_setting(server_factory):
    srv = server_factory("--destination-prefixes", "/topic/")
    c = srv.connected("tcp")
    c.send_frame("SEND", [("destination", "/queue/a"), ("receipt", "r")], b"x")
    err = c.expect_error("invalid destination", receipt_id="r")
    assert "destinations are /topic/<name> with" in err.body.decode()
    only_queue = server_factory("--destination-prefixes", "/queue/")
    d = only_queue.connected("tcp")
    d.subscribe("/queue/jobs")
    d.send("/queue/jobs", "x", receipt=True)
    assert d.expect_message().get("destination") == "/queue/jobs"
    d.send_frame("SEND", [("destination", "/topic/jobs"), ("receipt", "r2")], b"x")
    d.expect_error("invalid destination", receipt_id="r2")


@pytest.mark.parametrize("bad", ["topic", "/user/", "/Topic/", "/a/,/a/", ""])
def test_bad_prefixes_stop_the_server_with_a_reason(tmp_path, bad):
    import subprocess
    from conftest import stampede_bin
    p = subprocess.run([str(stampede_bin()), "--listen", "127.0.0.1:0", "--stomp-listen", "off",
                        "--data-dir", str(tmp_path), "--destination-prefixes", bad],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "prefix" in p.stderr, p.stderr


def bobs_on_two_shards(srv, transport="tcp"):
    """Two sessions of bob on different shards (SO_REUSEPORT places them)."""
    found = {}
    for _ in range(40):
        c = srv.connected(transport, login="bob")
        found.setdefault(c.shard, c)
        if len(found) == 2:
            return list(found.values())
    pytest.fail("could not land bob on two shards")


@pytest.mark.parametrize("join", ["open", "invite"])
def test_direct_messages_reach_every_session_of_the_user_and_only_them(server_factory, join):
    srv = server_factory("--shards", "2", "--join", join)
    name = uid("dm")
    bob1, bob2 = bobs_on_two_shards(srv)
    for b in (bob1, bob2):
        b.subscribe(f"/user/queue/{name}", id="dm")
    alice = srv.connected("tcp", login="alice")
    alice.subscribe(f"/user/queue/{name}", id="dm")
    carol = srv.connected("ws", login="carol")
    carol.send(f"/user/bob/queue/{name}", "psst", receipt=True)
    for b in (bob1, bob2):
        m = b.expect_message()
        assert (m.body, m.get("destination"), m.get("x-sender")) == (b"psst", f"/user/queue/{name}", "carol")
        assert m.get("subscription") == "dm"
    alice.assert_silent(0.3, "alice's own /user/queue/ gets nothing sent to bob")
    carol.send(f"/user/alice/queue/{name}", "for alice", receipt=True)
    assert alice.expect_message().body == b"for alice"
    bob1.assert_silent(0.2, "bob gets nothing sent to alice")


def test_nobody_subscribes_to_another_users_destination(server):
    bob = server.connected("tcp", login="bob")
    bob.send_frame("SUBSCRIBE", [("destination", "/user/alice/queue/dm"), ("id", "x"), ("receipt", "r")])
    err = bob.expect_error("not your destination", receipt_id="r")
    assert "/user/alice/queue/dm" in err.body.decode()
    # Not even his own by name: /user/queue/<name> is how a user subscribes.
    bob2 = server.connected("tcp", login="bob")
    bob2.send_frame("SUBSCRIBE", [("destination", "/user/bob/queue/dm"), ("id", "x"), ("receipt", "r")])
    bob2.expect_error("not your destination", receipt_id="r")


def test_a_user_catches_up_on_missed_direct_messages(server_factory):
    srv = server_factory("--shards", "2")
    name = uid("dm")
    bob = srv.connected("tcp", login="bob")
    bob.subscribe(f"/user/queue/{name}", id="dm")
    carol = srv.connected("tcp", login="carol")
    carol.send(f"/user/bob/queue/{name}", "one", receipt=True)
    seen = int(bob.expect_message().get("x-seq"))
    bob.disconnect()
    for body in ("two", "three"):
        carol.send(f"/user/bob/queue/{name}", body, receipt=True)
    back = srv.connected("ws", login="bob")
    back.subscribe(f"/user/queue/{name}", id="dm", headers=[("x-since-seq", str(seen))])
    got = back.messages(2)
    assert [m.body for m in got] == [b"two", b"three"]
    assert all(m.get("destination") == f"/user/queue/{name}" for m in got)
    # bob reads his own history; nobody else may.
    path = f"/api/rooms/user%2Fbob%2Fqueue%2F{name}/messages"
    status, _, body = srv.http("GET", path, headers={"Authorization": "Bearer bob"})
    assert status == 200, body
    assert [m["body"] for m in json.loads(body)["messages"]] == ["one", "two", "three"]
    status, _, body = srv.http("GET", path, headers={"Authorization": "Bearer carol"})
    assert status == 403, body


@pytest.mark.parametrize("dest", [
    "/queue/" + "q" * 129,           # a name over 128 characters
    "/user/queue/" + "q" * 129,
    "/queue/caf\u00e9",               # outside A-Z a-z 0-9 _ . ~ -
    "/user/queue/a:b",
])
def test_queue_and_user_names_are_validated_like_rooms(server, dest):
    c = server.connected("tcp", login="bob")
    c.send_frame("SUBSCRIBE", [("destination", dest), ("id", "s"), ("receipt", "r")])
    c.expect_error("invalid destination", receipt_id="r")


def test_the_subscription_limit_counts_queue_and_user_destinations(server_factory):
    srv = server_factory("--max-subscriptions", "3")
    c = srv.connected("tcp", login="bob")
    c.subscribe("/topic/a", id="1")
    c.subscribe("/queue/a", id="2")
    c.subscribe("/user/queue/a", id="3")
    c.send_frame("SUBSCRIBE", [("destination", "/user/topic/b"), ("id", "4"), ("receipt", "r")])
    c.expect_error("too many subscriptions", receipt_id="r")
