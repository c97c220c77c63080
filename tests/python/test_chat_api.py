"""What the chat page (GET /) needs from the server (issue 15): the page
itself with the server's settings, a user's rooms with their newest seq
(`GET /api/users/{user}/rooms`) and who is online in a room (`GET
/api/rooms/{room}/online`, answered by the room's owner shard). The page in
a browser is tested in tests/node/test/chat.test.mjs."""
import json
import re
import time

import pytest

from conftest import ADMIN
from stampede_client import uid


def as_user(user):
    return {"Authorization": f"Bearer {user}"}


def call(srv, method, path, headers=None):
    status, hdrs, body = srv.http(method, path, headers=headers)
    if hdrs.get("content-type", "").startswith("application/json"):
        body = json.loads(body)
    return status, body, hdrs


def page_config(body: bytes) -> dict:
    m = re.search(rb'<script id="config" type="application/json">(.*?)</script>', body)
    assert m, body[:300]
    return json.loads(m.group(1))


def test_the_page_is_served_with_its_settings_and_a_strict_policy(server_factory):
    srv = server_factory()
    status, body, hdrs = call(srv, "GET", "/")
    assert status == 200 and hdrs["content-type"].startswith("text/html")
    assert "default-src 'none'" in hdrs["content-security-policy"]
    assert "connect-src 'self'" in hdrs["content-security-policy"]
    assert page_config(body) == {"auth": "none", "history": True}
    assert b"https://" not in body and b"http://" not in body, "no CDN, nothing fetched from elsewhere"
    assert call(srv, "GET", "/index.html")[0] == 200
    assert call(srv, "POST", "/")[0] == 404
    plain = server_factory("--persist", "false")
    assert page_config(call(plain, "GET", "/")[1]) == {"auth": "none", "history": False}
    jwt_srv = server_factory("--auth", "jwt", env={"STAMPEDE_JWT_SECRET": "s" * 40})
    assert page_config(call(jwt_srv, "GET", "/")[1])["auth"] == "jwt"


def wait_api(srv, path, headers, pred, timeout=5.0):
    """Memberships are stored by the writer after the SUBSCRIBE: poll."""
    deadline = time.monotonic() + timeout
    while True:
        status, body, _ = call(srv, "GET", path, headers)
        if status == 200 and pred(body):
            return body
        assert time.monotonic() < deadline, (status, body)
        time.sleep(0.05)


def test_a_users_rooms_newest_first_with_their_last_seq(server_factory):
    srv = server_factory("--shards", "2")
    quiet, busy = uid("quiet"), uid("busy")
    alice = srv.connected("tcp", login="alice")
    alice.subscribe(f"/topic/{quiet}", id="q")
    alice.subscribe(f"/topic/{busy}", id="b")
    for i in range(3):
        alice.send(f"/topic/{busy}", f"m{i}", receipt=True)
    body = wait_api(srv, "/api/users/alice/rooms", as_user("alice"), lambda b: len(b["rooms"]) == 2)
    assert body["user"] == "alice"
    assert [(r["room"], r["last_seq"]) for r in body["rooms"]] == [(busy, 3), (quiet, 0)]
    assert body["rooms"][0]["last_timestamp"] > 0
    # Only alice herself (or the admin) may list them.
    assert call(srv, "GET", "/api/users/alice/rooms")[0] == 401
    assert call(srv, "GET", "/api/users/alice/rooms", as_user("bob"))[0] == 403
    assert call(srv, "GET", "/api/users/alice/rooms", ADMIN)[0] == 200
    assert call(srv, "POST", "/api/users/alice/rooms", ADMIN)[0] == 405
    assert call(srv, "GET", "/api/users/nobody/rooms", ADMIN)[1]["rooms"] == []
    plain = server_factory("--persist", "false")
    status, body, _ = call(plain, "GET", "/api/users/alice/rooms", as_user("alice"))
    assert status == 404 and "persist" in body["error"]


def test_who_is_online_comes_from_the_rooms_owner(server_factory):
    srv = server_factory("--shards", "2")
    room = uid("online")
    alice = srv.connected("tcp", login="alice")
    bob = srv.connected("tcp", login="bob")
    alice.subscribe(f"/topic/{room}")
    bob.subscribe(f"/topic/{room}")
    path = f"/api/rooms/{room}/online"
    body = wait_api(srv, path, as_user("alice"), lambda b: b["online"] == ["alice", "bob"])
    assert body == {"room": room, "online": ["alice", "bob"], "has_more": False}
    # HTTP connections land on either shard; every answer is the owner's.
    for _ in range(8):
        assert call(srv, "GET", path, as_user("bob"))[1]["online"] == ["alice", "bob"]
    # No credentials: 401 (under --join open anyone may join, so ask).
    assert call(srv, "GET", path)[0] == 401
    assert call(srv, "GET", path, ADMIN)[1]["online"] == ["alice", "bob"]
    # bob leaves: he is a member still, online no more.
    bob.disconnect()
    wait_api(srv, path, as_user("bob"), lambda b: b["online"] == ["alice"])
    # A room nobody uses has nobody online.
    assert call(srv, "GET", f"/api/rooms/{uid('empty')}/online", ADMIN)[1]["online"] == []
    assert call(srv, "GET", "/api/rooms/bad%20name/online", ADMIN)[0] == 400
    plain = server_factory("--persist", "false")
    assert call(plain, "GET", path, as_user("alice"))[0] == 404


def test_an_invite_only_rooms_online_list_is_for_its_members(server_factory):
    srv = server_factory("--shards", "2", "--join", "invite")
    room = uid("club")
    status, body, _ = call(srv, "PUT", f"/api/rooms/{room}/members/alice", ADMIN)
    assert status == 200, body
    alice = srv.connected("tcp", login="alice")
    alice.subscribe(f"/topic/{room}")
    path = f"/api/rooms/{room}/online"
    assert wait_api(srv, path, as_user("alice"), lambda b: b["online"] == ["alice"])["online"] == ["alice"]
    status, body, _ = call(srv, "GET", path, as_user("mallory"))
    assert status == 403, body
    assert "alice" not in json.dumps(body)
