"""Who may enter which room (issue 12, part 2): --join open|invite, the
members and devices API and who may call it.

The API is called over real HTTP; under `--auth none` a user proves who
they are with `Authorization: Bearer <user id>` (as insecure as the CONNECT
`login`), under `--auth jwt` with their token; the admin with
`--admin-token`. Servers run with two shards so a room's owner is often not
the shard the client landed on.
"""
import json
import time

import jwt
import pytest

from conftest import ADMIN
from stampede_client import owner_shard, uid

SECRET = "a-test-secret-of-at-least-thirty-two-bytes"


def as_user(user):
    return {"Authorization": f"Bearer {user}"}


def call(srv, method, path, headers=None):
    status, hdrs, body = srv.http(method, path, headers=headers)
    return status, (json.loads(body) if body and hdrs.get("content-type", "").startswith("application/json") else body), hdrs


def add_member(srv, room, user):
    status, body, _ = call(srv, "PUT", f"/api/rooms/{room}/members/{user}", ADMIN)
    assert status == 200, body
    return body


@pytest.fixture
def invite(server_factory):
    return server_factory("--shards", "2", "--join", "invite")


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_invite_only_refuses_a_non_members_subscribe_and_leaks_nothing(invite, transport):
    room = uid("inv")
    member = invite.connected(transport, login="alice")
    add_member(invite, room, "alice")
    member.subscribe(f"/topic/{room}")
    # The intruder subscribes without waiting, then the member talks: the
    # intruder gets the ERROR and never a MESSAGE.
    intruder = invite.connected(transport, login="mallory")
    intruder.send_frame("SUBSCRIBE", [("destination", f"/topic/{room}"), ("id", "x"), ("receipt", "rx")])
    member.send(f"/topic/{room}", "secret", receipt=True)
    err = intruder.expect_error("not a member", receipt_id="rx")
    assert b"secret" not in err.raw
    assert member.expect_message().body == b"secret"


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_invite_only_refuses_a_non_members_send(invite, transport):
    room = uid("inv")
    add_member(invite, room, "alice")
    alice = invite.connected(transport, login="alice")
    alice.subscribe(f"/topic/{room}")
    mallory = invite.connected(transport, login="mallory")
    mallory.send_frame("SEND", [("destination", f"/topic/{room}"), ("receipt", "r1")], "spam")
    mallory.expect_error("not a member", receipt_id="r1")
    alice.assert_silent(0.3, "the refused message")
    status, body, _ = call(invite, "GET", f"/api/rooms/{room}/messages", ADMIN)
    assert status == 200 and body["messages"] == [], body


def test_a_member_added_through_the_api_may_enter_at_once_and_replays_history(invite):
    room = uid("inv")
    add_member(invite, room, "alice")
    alice = invite.connected("tcp", login="alice")
    for i in range(3):
        alice.send(f"/topic/{room}", f"m{i}", receipt=True)
    add_member(invite, room, "bob")
    bob = invite.connected("tcp", login="bob")
    bob.subscribe(f"/topic/{room}", headers=[("x-since-seq", "0")])
    assert [m.body for m in bob.messages(3)] == [b"m0", b"m1", b"m2"]
    alice.send(f"/topic/{room}", "live")
    assert bob.expect_message().body == b"live"


def test_a_replay_asked_by_a_non_member_sends_nothing(invite):
    room = uid("inv")
    add_member(invite, room, "alice")
    alice = invite.connected("tcp", login="alice")
    alice.send(f"/topic/{room}", "stored", receipt=True)
    mallory = invite.connected("tcp", login="mallory")
    mallory.send_frame("SUBSCRIBE", [("destination", f"/topic/{room}"), ("id", "x"), ("x-since-seq", "0")])
    err = mallory.expect_error("not a member")
    assert b"stored" not in err.raw


def test_removing_a_member_ends_their_subscriptions_without_an_error(invite):
    room = uid("inv")
    dest = f"/topic/{room}"
    for u in ("alice", "bob"):
        add_member(invite, room, u)
    alice = invite.connected("tcp", login="alice")
    alice.subscribe(dest)
    # bob on every shard, so the eviction crosses shards too.
    bobs = list(invite.on_distinct_shards(2).values())
    for b in bobs:
        b.send_frame("DISCONNECT", [])
    bobs = []
    for _ in range(8):
        b = invite.connected("tcp", login="bob")
        b.subscribe(dest)
        bobs.append(b)
    alice.send(dest, "before", receipt=True)
    for b in bobs:
        assert b.expect_message().body == b"before"
    status, body, _ = call(invite, "DELETE", f"/api/rooms/{room}/members/bob", ADMIN)
    assert status == 200 and body == {"room": room, "user": "bob", "member": False, "changed": True}
    alice.send(dest, "after", receipt=True)
    assert alice.expect_message().body == b"before"
    assert alice.expect_message().body == b"after"
    for b in bobs:
        b.assert_silent(0.2, "a message after the removal")
    # Still connected, no ERROR; only a SEND to the room now gets one.
    bobs[0].send_frame("SEND", [("destination", dest), ("receipt", "r9")], "x")
    bobs[0].expect_error("not a member", receipt_id="r9")


def test_open_rooms_make_subscribers_members(server_factory):
    srv = server_factory("--shards", "2")
    room = uid("open")
    for u in ("carol", "dave"):
        c = srv.connected("tcp", login=u)
        c.subscribe(f"/topic/{room}")
    # Stored in the writer's next batch.
    deadline = time.monotonic() + 5
    while True:
        status, body, _ = call(srv, "GET", f"/api/rooms/{room}/members", ADMIN)
        if status == 200 and body["members"] == ["carol", "dave"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 200 and body == {"room": room, "members": ["carol", "dave"]}
    # A member may read the history and the members; others may not.
    assert call(srv, "GET", f"/api/rooms/{room}/messages", as_user("carol"))[0] == 200
    assert call(srv, "GET", f"/api/rooms/{room}/members", as_user("dave"))[0] == 200
    assert call(srv, "GET", f"/api/rooms/{room}/messages", as_user("eve"))[0] == 403
    assert call(srv, "GET", f"/api/rooms/{room}/members", as_user("eve"))[0] == 403


def test_an_open_room_that_is_full_refuses_newcomers(server_factory):
    srv = server_factory("--shards", "2", "--max-room-members", "2")
    room = uid("full")
    add_member(srv, room, "a")
    add_member(srv, room, "b")
    status, body, _ = call(srv, "PUT", f"/api/rooms/{room}/members/c", ADMIN)
    assert status == 409 and "max-room-members" in body["error"]
    a = srv.connected("tcp", login="a")
    a.subscribe(f"/topic/{room}")
    c = srv.connected("tcp", login="c")
    c.send_frame("SUBSCRIBE", [("destination", f"/topic/{room}"), ("id", "s"), ("receipt", "rc")])
    c.expect_error("room full", receipt_id="rc")


def test_devices_are_bounded_per_user(server_factory):
    srv = server_factory("--max-devices-per-user", "2")
    for t in ("tok-1", "tok-2"):
        status, body, _ = call(srv, "PUT", f"/api/users/alice/devices/{t}", as_user("alice"))
        assert status == 200 and body["changed"] is True, body
    status, body, _ = call(srv, "PUT", "/api/users/alice/devices/tok-1", as_user("alice"))
    assert status == 200 and body["changed"] is False
    status, body, _ = call(srv, "PUT", "/api/users/alice/devices/tok-3", as_user("alice"))
    assert status == 409, body
    status, body, _ = call(srv, "GET", "/api/users/alice/devices", as_user("alice"))
    assert body == {"user": "alice", "devices": ["tok-1", "tok-2"]}
    status, body, _ = call(srv, "DELETE", "/api/users/alice/devices/tok-1", ADMIN)
    assert status == 200 and body["changed"] is True
    status, body, _ = call(srv, "GET", "/api/users/alice/devices", ADMIN)
    assert body["devices"] == ["tok-2"]


def token(sub, secret=SECRET, exp_in=300):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + exp_in}, secret, algorithm="HS256")


def test_api_auth_matrix_under_jwt(server_factory):
    srv = server_factory("--auth", "jwt", env={"STAMPEDE_JWT_SECRET": SECRET})
    room = uid("m")
    add_member(srv, room, "alice")
    alice = {"Authorization": f"Bearer {token('alice')}"}
    bob = {"Authorization": f"Bearer {token('bob')}"}
    forged = {"Authorization": f"Bearer {token('alice', secret='another-secret-of-thirty-two-bytes!!')}"}
    expired = {"Authorization": f"Bearer {token('alice', exp_in=-3600)}"}
    basic = {"Authorization": "Basic YWxpY2U6eA=="}
    endpoints = [
        # (method, path, who may: "admin" | "alice" | "member")
        ("PUT", f"/api/rooms/{room}/members/carol", "admin"),
        ("DELETE", f"/api/rooms/{room}/members/carol", "admin"),
        ("GET", f"/api/rooms/{room}/members", "member"),
        ("GET", f"/api/rooms/{room}/messages", "member"),
        ("PUT", "/api/users/alice/devices/tok-a", "alice"),
        ("GET", "/api/users/alice/devices", "alice"),
        ("DELETE", "/api/users/alice/devices/tok-a", "alice"),
    ]
    for method, path, who in endpoints:
        for creds in (None, forged, expired, basic):
            status, body, hdrs = call(srv, method, path, creds)
            assert status == 401, (method, path, creds, status, body)
            assert hdrs.get("www-authenticate", "").startswith("Bearer"), hdrs
            assert "error" in body
        status, body, _ = call(srv, method, path, bob)
        assert status == 403, (method, path, "bob", status, body)
        status, body, _ = call(srv, method, path, alice)
        assert status == (403 if who == "admin" else 200), (method, path, "alice", status, body)
        status, body, _ = call(srv, method, path, ADMIN)
        assert status == 200, (method, path, "admin", status, body)


def test_ids_are_validated_and_methods_checked(server_factory):
    srv = server_factory()
    bad = [
        ("PUT", "/api/rooms/bad%20room/members/alice"),
        ("PUT", "/api/rooms/lobby/members/has%20space"),
        ("PUT", "/api/rooms/lobby/members/" + "u" * 129),
        ("PUT", "/api/rooms/" + "r" * 129 + "/members/alice"),
        ("PUT", "/api/users/alice/devices/bad%2Ftoken"),
        ("PUT", "/api/users/alice/devices/" + "t" * 513),
        ("PUT", "/api/users/a%01b/devices/tok"),
    ]
    for method, path in bad:
        status, body, _ = call(srv, method, path, ADMIN)
        assert status == 400 and "error" in body, (path, status, body)
    assert call(srv, "POST", "/api/rooms/lobby/members/alice", ADMIN)[0] == 405
    assert call(srv, "PUT", "/api/rooms/lobby/members", ADMIN)[0] == 405
    assert call(srv, "GET", "/api/users/alice/devices/tok", ADMIN)[0] == 405
    assert call(srv, "GET", "/api/nothing", ADMIN)[0] == 404
    # No admin token configured: nobody is the admin.
    srv2 = server_factory("--admin-token", "")
    status, _, _ = call(srv2, "PUT", "/api/rooms/lobby/members/alice", ADMIN)
    assert status == 403


def test_join_invite_needs_the_store(server_factory):
    import subprocess
    from conftest import stampede_bin
    r = subprocess.run([str(stampede_bin()), "--join", "invite", "--persist", "false"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and "--join invite needs the store" in r.stderr


def test_membership_survives_a_restart(server_factory, tmp_path):
    from conftest import start_server
    srv = start_server(tmp_path, "--join", "invite")
    room = uid("keep")
    add_member(srv, room, "alice")
    srv.stop()
    srv = start_server(tmp_path, "--join", "invite")
    try:
        a = srv.connected("tcp", login="alice")
        a.subscribe(f"/topic/{room}")
        m = srv.connected("tcp", login="mallory")
        m.send_frame("SUBSCRIBE", [("destination", f"/topic/{room}"), ("id", "s")])
        m.expect_error("not a member")
    finally:
        srv.stop()


def test_open_joins_through_a_tiny_writer_queue_never_stall(server_factory):
    """Found by the churn test under load: the rows of newcomers are
    batched writes, and a batch of nothing else never told the shard
    that had found the writer's queue full that it had room again (the
    shard stopped reading its clients for good). 20,000 joins through a
    16-slot queue."""
    from test_room_eviction import churn
    srv = server_factory("--shards", "2", "--max-subscribe-rate", "0", "--persist-queue", "16")
    c = srv.connected("tcp", login="churner")
    churn(c, uid("churn"), 20_000)
    c.subscribe(f"/topic/{uid('after')}")
