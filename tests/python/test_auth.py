"""Who a client is (issue 12, part 1): --auth none|jwt.

Tokens are made here with PyJWT, an independent implementation, and sent as
the CONNECT passcode or an `Authorization: Bearer` header, over STOMP/TCP and
WebSocket. Every refusal is the same ERROR (`authentication failed`, no
detail) and a close.
"""
import subprocess
import time

import jwt
import pytest

from conftest import stampede_bin
from stampede_client import uid

SECRET = "a-test-secret-of-at-least-thirty-two-bytes"
TRANSPORTS = ["tcp", "ws"]


def token(sub="alice", secret=SECRET, alg="HS256", **claims):
    body = {"sub": sub, "exp": int(time.time()) + 300, **claims}
    if sub is None:
        del body["sub"]
    return jwt.encode(body, secret, algorithm=alg)


@pytest.fixture
def jwt_server(server_factory):
    return server_factory("--auth", "jwt", env={"STAMPEDE_JWT_SECRET": SECRET})


def refused(srv, transport, **connect):
    c = srv.client(transport)
    c.connect(expect=False, **connect)
    err = c.expect_error("authentication failed", ws_codes=(1008,))
    assert err.body == b"the CONNECT credentials were not accepted", f"the refusal must not say why: {err!r}"
    return err


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_valid_token_names_the_user_and_x_sender(jwt_server, transport):
    room = f"/topic/{uid()}"
    sub = jwt_server.connected(transport, passcode=token("bob"))
    assert sub.connected_frame["user-name"] == "bob"
    sub.subscribe(room)
    # The login header claims someone else: the token wins, x-sender is the token's user.
    pub = jwt_server.connected(transport, login="mallory", passcode=token("alice"))
    pub.send(room, "hi", headers=[("x-sender", "eve")], receipt=True)
    m = sub.expect_message()
    assert m["x-sender"] == "alice" and m.body == b"hi"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_bearer_authorization_header_works(jwt_server, transport):
    c = jwt_server.connected(transport, headers=[("Authorization", f"Bearer {token('carol')}")])
    assert c.connected_frame["user-name"] == "carol"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", ["none", "garbage", "forged", "expired", "not-yet", "no-exp", "no-sub",
                                  "alg-none", "hs512", "bad-sub"])
def test_bad_tokens_are_refused_alike(jwt_server, transport, case):
    now = int(time.time())
    tokens = {
        "none": None,
        "garbage": "not.a.token",
        "forged": token(secret="another-secret-that-is-32-bytes-long!!"),
        "expired": token(exp=now - 120),  # beyond the 30 s leeway
        "not-yet": token(nbf=now + 120),
        "no-exp": jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
        "no-sub": token(sub=None),
        "alg-none": jwt.encode({"sub": "alice", "exp": now + 300}, None, algorithm="none"),
        "hs512": token(alg="HS512"),
        "bad-sub": token(sub="alice bob"),
    }
    refused(jwt_server, transport, login="alice", passcode=tokens[case])


def test_the_leeway_admits_a_token_just_expired(jwt_server):
    c = jwt_server.connected("tcp", passcode=token(exp=int(time.time()) - 5))
    assert c.connected_frame["user-name"] == "alice"


def test_the_secret_is_never_logged(server_factory):
    srv = server_factory("--auth", "jwt", env={"STAMPEDE_JWT_SECRET": SECRET, "RUST_LOG": "debug"})
    refused(srv, "tcp", passcode=token(secret="another-secret-that-is-32-bytes-long!!"))
    bad = token(exp=int(time.time()) - 120)
    refused(srv, "tcp", passcode=bad)
    time.sleep(0.2)
    log = srv.stderr_text(1 << 20)
    assert SECRET not in log
    assert bad not in log, "tokens are not logged either"
    assert "CONNECT refused: token refused" in log, "the operator sees why"


def test_none_takes_the_login(server):
    c = server.connected("tcp", login="dave")
    assert c.connected_frame["user-name"] == "dave"


def test_none_refuses_a_login_with_spaces(server):
    refused(server, "tcp", login="dave smith")


def run_bin(tmp_path, *args, env=None):
    import os
    full = {k: v for k, v in os.environ.items() if not k.startswith("STAMPEDE_")}
    full.update(env or {})
    return subprocess.run([str(stampede_bin()), "--data-dir", str(tmp_path / "d"), *args],
                          capture_output=True, text=True, timeout=30, env=full)


def test_none_on_a_public_listener_refuses_to_start(tmp_path):
    r = run_bin(tmp_path, "--listen", "0.0.0.0:0", "--stomp-listen", "off")
    assert r.returncode != 0
    assert "--auth none" in r.stderr and "--allow-insecure-auth" in r.stderr, r.stderr
    r = run_bin(tmp_path, "--listen", "127.0.0.1:0", "--stomp-listen", "0.0.0.0:0")
    assert r.returncode != 0 and "0.0.0.0:0" in r.stderr, r.stderr


def test_allow_insecure_auth_lets_it_start(server_factory):
    srv = server_factory("--allow-insecure-auth", "true", listen="0.0.0.0:0", stomp_listen="off")
    c = srv.client("ws")
    c.connect(login="erin")
    assert c.connected_frame["user-name"] == "erin"


@pytest.mark.parametrize("secret", [None, "too-short"])
def test_jwt_needs_a_long_enough_secret(tmp_path, secret):
    env = {"STAMPEDE_JWT_SECRET": secret} if secret else {}
    r = run_bin(tmp_path, "--auth", "jwt", "--listen", "127.0.0.1:0", env=env)
    assert r.returncode != 0 and "at least 32 bytes" in r.stderr, r.stderr
    assert (secret or "\0") not in r.stderr
