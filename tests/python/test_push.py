"""Push notifications to away members through FCM HTTP v1 (issue 12).

Every test runs stampede against the fake FCM (`bench/src/fakefcm`, its
fixtures are in test_fake_fcm.py): a service account signed with a key made
here, the token endpoint and `messages:send` of the fake, which records
what it accepted. A member is away from a room when none of their
connections subscribes to it.
"""
import json
import sqlite3
import time

import pytest
from cryptography.hazmat.primitives import serialization

from conftest import ADMIN, start_server
from stampede_client import uid
from test_fake_fcm import FAKE_FCM, PROJECT, fake_fcm_factory, key  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(not FAKE_FCM.exists(), reason=f"fake-fcm not built ({FAKE_FCM})")


def service_account(path, key, fake):
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": PROJECT, "private_key_id": "test-key",
        "private_key": pem, "client_email": "push@demo-project.iam.gserviceaccount.com",
        "token_uri": fake.token_url,
    }))
    return path


def push_args(tmp_path, key, fake, *extra):
    creds = service_account(tmp_path / "sa.json", key, fake)
    if "--push-threads" not in extra:
        extra = ("--push-threads", "4", *extra)
    return ("--fcm-credentials", str(creds), "--fcm-endpoint", f"http://127.0.0.1:{fake.port}", *extra)


def api(srv, method, path, headers=ADMIN):
    status, _, body = srv.http(method, path, headers=headers)
    assert status == 200, (method, path, status, body)
    return json.loads(body)


def member_with_devices(srv, room, user, *tokens):
    api(srv, "PUT", f"/api/rooms/{room}/members/{user}")
    for t in tokens:
        api(srv, "PUT", f"/api/users/{user}/devices/{t}")


def pushes(fake, want, timeout=10.0, settle=0.5):
    """The fake's accepted messages once at least `want` arrived (and
    `settle` s more passed, so extra ones would show)."""
    deadline = time.monotonic() + timeout
    while True:
        got = fake.received()["messages"]
        if len(got) >= want or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(settle)
    return fake.received()["messages"]


@pytest.fixture
def push_server(server_factory, fake_fcm_factory, key, tmp_path):  # noqa: F811
    def start(*extra, fake_args=()):
        fake = fake_fcm_factory(*fake_args)
        srv = server_factory("--shards", "2", *push_args(tmp_path, key, fake, *extra))
        return srv, fake
    return start


def test_an_away_member_gets_one_push_per_device_and_the_present_and_the_sender_none(push_server):
    srv, fake = push_server()
    room = uid("push")
    member_with_devices(srv, room, "alice", "tok-alice")          # present: subscribed
    member_with_devices(srv, room, "bob", "tok-bob-1", "tok-bob-2")  # away
    member_with_devices(srv, room, "carol", "tok-carol")          # away, but the sender
    alice = srv.connected("tcp", login="alice")
    alice.subscribe(f"/topic/{room}")
    carol = srv.connected("ws", login="carol")
    carol.send(f"/topic/{room}", "hello bob", receipt=True)
    assert alice.expect_message().body == b"hello bob"
    got = pushes(fake, 2)
    assert sorted(m["message"]["token"] for m in got) == ["tok-bob-1", "tok-bob-2"], got
    for rec in got:
        msg = rec["message"]
        assert rec["project"] == PROJECT
        assert msg["notification"] == {"title": room, "body": "hello bob"}
        assert msg["data"] == {"room": room, "seq": "1", "message_id": f"{room}:1", "sender": "carol"}
        assert msg["android"]["collapse_key"] == room
        assert msg["apns"]["headers"]["apns-collapse-id"] == room
    stats = api(srv, "GET", "/api/push")
    assert stats["sent"] == 2 and stats["dropped"] == 0 and stats["failed"] == 0, stats


def test_a_member_who_leaves_is_pushed_again(push_server):
    srv, fake = push_server()
    room = uid("push")
    member_with_devices(srv, room, "bob", "tok-bob")
    bob = srv.connected("tcp", login="bob")
    bob.subscribe(f"/topic/{room}")
    pub = srv.connected("tcp", login="dave")
    pub.send(f"/topic/{room}", "while here", receipt=True)
    assert bob.expect_message().body == b"while here"
    bob.unsubscribe()
    pub.send(f"/topic/{room}", "while away", receipt=True)
    got = pushes(fake, 1)
    assert [m["message"]["notification"]["body"] for m in got] == ["while away"]


def test_a_long_text_is_cut_to_fit_fcms_payload(push_server):
    srv, fake = push_server()
    room = uid("push")
    member_with_devices(srv, room, "bob", "tok-bob")
    pub = srv.connected("tcp", login="dave")
    pub.send(f"/topic/{room}", "ü" * 30000, receipt=True)
    got = pushes(fake, 1)
    assert len(got) == 1
    body = got[0]["message"]["notification"]["body"]
    assert body.startswith("üüü") and len(json.dumps({"message": got[0]["message"]}, ensure_ascii=False,
                                                         separators=(",", ":")).encode()) <= 4096


def test_unregistered_deletes_the_device(push_server):
    srv, fake = push_server()
    fake.control("/fake/config", {"unregistered": ["tok-dead"]})
    room = uid("push")
    member_with_devices(srv, room, "bob", "tok-dead", "tok-live")
    pub = srv.connected("tcp", login="dave")
    pub.send(f"/topic/{room}", "hi", receipt=True)
    got = pushes(fake, 1)
    assert [m["message"]["token"] for m in got] == ["tok-live"]
    deadline = time.monotonic() + 5
    while api(srv, "GET", "/api/users/bob/devices")["devices"] != ["tok-live"]:
        assert time.monotonic() < deadline, "the dead device was not deleted"
        time.sleep(0.05)
    assert api(srv, "GET", "/api/push")["dead_tokens"] == 1


def test_429_with_retry_after_is_retried_after_the_delay(push_server):
    srv, fake = push_server()
    fake.control("/fake/fail", {"status": 429, "count": 1, "retry_after_s": 2})
    room = uid("push")
    member_with_devices(srv, room, "bob", "tok-bob")
    pub = srv.connected("tcp", login="dave")
    t0 = time.time()
    pub.send(f"/topic/{room}", "later", receipt=True)
    got = pushes(fake, 1, timeout=15)
    assert len(got) == 1
    assert got[0]["at_ms"] / 1000 - t0 >= 1.9, "sent again before Retry-After"
    r = fake.received()
    assert r["attempts"] == 2 and r["statuses"].get("429") == 1, r


def test_an_expired_access_token_is_refreshed(push_server):
    srv, fake = push_server()
    room = uid("push")
    member_with_devices(srv, room, "bob", "tok-bob")
    pub = srv.connected("tcp", login="dave")
    pub.send(f"/topic/{room}", "one", receipt=True)
    assert len(pushes(fake, 1, settle=0)) == 1
    fake.control("/fake/expire-tokens")
    pub.send(f"/topic/{room}", "two", receipt=True)
    got = pushes(fake, 2, settle=0.2)
    assert [m["message"]["notification"]["body"] for m in got] == ["one", "two"]
    r = fake.received()
    assert r["token_requests"] == 2 and r["statuses"].get("401") == 1, r


def test_a_message_whose_commit_failed_is_never_pushed(fake_fcm_factory, key, tmp_path):  # noqa: F811
    fake = fake_fcm_factory()
    args = push_args(tmp_path, key, fake)
    srv = start_server(tmp_path, *args)
    room, other = uid("bad"), uid("fine")
    try:
        member_with_devices(srv, room, "bob", "tok-bob")
        member_with_devices(srv, other, "eve", "tok-eve")
        c = srv.connected("tcp", login="dave")
        c.send(f"/topic/{room}", "stored", receipt=True)
        assert len(pushes(fake, 1)) == 1
    finally:
        srv.stop()
    db = sqlite3.connect(tmp_path / "data" / "stampede.db")
    db.execute("UPDATE rooms SET last_seq = 0, reserved_seq = 0 WHERE room = ?", (room,))
    db.commit()
    db.close()
    fake.control("/fake/reset")
    srv = start_server(tmp_path, *args)
    try:
        bad = srv.connected("tcp", login="dave")
        bad.send_frame("SEND", [("destination", f"/topic/{room}"), ("receipt", "r-dup")], "not stored")
        bad.expect_error("message not stored", receipt_id="r-dup")
        good = srv.connected("tcp", login="dave")
        good.send(f"/topic/{other}", "stored too", receipt=True)
        got = pushes(fake, 1, settle=1.0)
        assert [m["message"]["notification"]["body"] for m in got] == ["stored too"], got
    finally:
        srv.stop()


def test_with_fcm_down_chat_goes_on_and_the_push_queue_stays_bounded(push_server):
    srv, fake = push_server("--push-threads", "1", "--push-queue", "16", "--push-retries", "1",
                            "--max-publish-rate", "0")
    fake.control("/fake/config", {"down": True})
    room = uid("push")
    member_with_devices(srv, room, "bob", "tok-bob")
    alice = srv.connected("tcp", login="alice")
    alice.subscribe(f"/topic/{room}")
    pub = srv.connected("tcp", login="dave")
    t0 = time.monotonic()
    for i in range(300):
        pub.send(f"/topic/{room}", f"m{i}", receipt=True)
    elapsed = time.monotonic() - t0
    assert [m.body for m in alice.messages(300)] == [f"m{i}".encode() for i in range(300)]
    stats = api(srv, "GET", "/api/push")
    assert stats["waiting"] <= 16, stats
    assert stats["dropped"] > 0, stats
    # 300 receipted messages while every push waits on a dead FCM: chat
    # did not wait for it (one retry alone takes a second).
    assert elapsed < 10, elapsed
    fake.control("/fake/config", {"down": False})


def test_a_fixed_access_token_and_project_work(server_factory, fake_fcm_factory):  # noqa: F811
    fake = fake_fcm_factory("--accept-token", "fixed-token")
    srv = server_factory("--fcm-access-token", "fixed-token", "--fcm-project", PROJECT,
                         "--fcm-endpoint", f"http://127.0.0.1:{fake.port}")
    room = uid("push")
    member_with_devices(srv, room, "bob", "tok-bob")
    srv.connected("tcp", login="dave").send(f"/topic/{room}", "hi", receipt=True)
    got = pushes(fake, 1)
    assert len(got) == 1 and got[0]["authorization"] == "Bearer fixed-token"
    assert fake.received()["token_requests"] == 0
