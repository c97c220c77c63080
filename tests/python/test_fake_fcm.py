"""The fake FCM HTTP v1 server (`fake-fcm`, bench/src/fakefcm/): Google's
OAuth2 token endpoint and FCM's messages:send as a real client sees them,
plus the /fake/* control endpoints (fault injection, the record).

The binary sits next to the load generator: `$STAMPEDE_BENCH_BIN`'s
directory, default target/release/. Each test starts its own fake on port 0
with a fresh RSA key pair (the public half given with --public-key).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Optional

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

REPO = Path(__file__).resolve().parents[2]
BENCH = Path(os.environ.get("STAMPEDE_BENCH_BIN", str(REPO / "target" / "release" / "stampede-bench")))
FAKE_FCM = BENCH.parent / "fake-fcm"

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
LISTENING_RE = re.compile(r"^listening on http://127\.0\.0\.1:(\d+)$")
PROJECT = "demo-project"

pytestmark = pytest.mark.skipif(not FAKE_FCM.exists(), reason=f"fake-fcm not built ({FAKE_FCM})")


def new_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def key():
    return new_key()


class FakeFcm:
    def __init__(self, proc: subprocess.Popen, port: int, key, line: str, stderr_path: Path):
        self.proc = proc
        self.port = port
        self.key = key
        self.line = line
        self.stderr_path = stderr_path

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def request(self, method: str, path: str, body=None, headers: Optional[dict] = None):
        """(status, {lower-case header: value}, parsed JSON body or raw bytes)."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        try:
            return resp.status, hdrs, json.loads(data)
        except ValueError:
            return resp.status, hdrs, data

    # ---- the client's side of the flow
    def assertion(self, key=None, **claims) -> str:
        now = int(time.time())
        body = {"iss": "push@demo-project.iam.gserviceaccount.com", "scope": FCM_SCOPE,
                "aud": self.token_url, "iat": now, "exp": now + 3600}
        body.update(claims)
        pem = (key or self.key).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
        return jwt.encode({k: v for k, v in body.items() if v is not None}, pem, algorithm="RS256")

    def post_token(self, assertion: str, grant_type: str = GRANT_TYPE):
        form = urllib.parse.urlencode({"grant_type": grant_type, "assertion": assertion}).encode()
        return self.request("POST", "/token", form, {"Content-Type": "application/x-www-form-urlencoded"})

    def access_token(self) -> str:
        status, _, body = self.post_token(self.assertion())
        assert status == 200, body
        return body["access_token"]

    def send(self, message: dict, token: Optional[str], project: str = PROJECT, raw: Optional[bytes] = None):
        headers = {"Content-Type": "application/json; UTF-8"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        body = raw if raw is not None else json.dumps({"message": message}).encode()
        return self.request("POST", f"/v1/projects/{project}/messages:send", body, headers)

    def control(self, path: str, body: Optional[dict] = None):
        status, _, answer = self.request("POST", path, body if body is not None else b"")
        assert status == 200, answer
        return answer

    def received(self) -> dict:
        status, _, body = self.request("GET", "/fake/received")
        assert status == 200
        return body

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def fake_fcm_factory(tmp_path_factory, key):
    fakes: list = []

    def start(*extra_args: str) -> FakeFcm:
        base = tmp_path_factory.mktemp("fake-fcm")
        pub = base / "public.pem"
        pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
        port_file = base / "port"
        stderr_path = base / "stderr.log"
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen([str(FAKE_FCM), "--listen", "127.0.0.1:0", "--public-key", str(pub),
                                     "--port-file", str(port_file), *extra_args],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        lines: list = []
        reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline().decode().rstrip("\n")),
                                  daemon=True)
        reader.start()
        reader.join(10)
        m = LISTENING_RE.match(lines[0]) if lines else None
        if not m:
            proc.kill()
            pytest.fail(f"fake-fcm printed no ready line (got {lines}); stderr:\n{stderr_path.read_text()}")
        fake = FakeFcm(proc, int(m.group(1)), key, lines[0], stderr_path)
        fakes.append(fake)
        assert port_file.read_text().strip() == str(fake.port)
        return fake

    yield start
    for f in fakes:
        f.stop()


@pytest.fixture
def fake_fcm(fake_fcm_factory) -> FakeFcm:
    return fake_fcm_factory()


def assert_fcm_error(answer, code: int, status: str, error_code: Optional[str] = None):
    assert answer["error"]["code"] == code, answer
    assert answer["error"]["status"] == status, answer
    if error_code is None:
        assert "details" not in answer["error"], answer
    else:
        assert answer["error"]["details"] == [{"@type": FCM_ERROR, "errorCode": error_code}], answer


# ---------------------------------------------------------------------------


def test_a_signed_assertion_gets_a_token_and_a_send_is_recorded(fake_fcm):
    status, headers, body = fake_fcm.post_token(fake_fcm.assertion())
    assert status == 200, body
    assert headers["content-type"].startswith("application/json")
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    token = body["access_token"]
    assert token.startswith("fake-") and len(token) > 20

    message = {"token": "device-1", "data": {"room": "lobby", "seq": "42"},
               "notification": {"title": "alice", "body": "hi"},
               "android": {"collapse_key": "lobby", "priority": "HIGH"},
               "apns": {"headers": {"apns-collapse-id": "lobby"}}}
    status, _, body = fake_fcm.send(message, token)
    assert status == 200, body
    assert re.fullmatch(rf"projects/{PROJECT}/messages/\S+", body["name"]), body

    rec = fake_fcm.received()
    assert rec["attempts"] == 1 and rec["token_requests"] == 1
    assert rec["statuses"] == {"200": 1}
    [m] = rec["messages"]
    assert m["message"] == message
    assert m["project"] == PROJECT and m["authorization"] == f"Bearer {token}" and m["name"] == body["name"]
    assert abs(m["at_ms"] / 1000 - time.time()) < 30

    status, _, stats = fake_fcm.request("GET", "/fake/stats")
    assert status == 200
    assert stats == {"accepted": 1, "attempts": 1, "token_requests": 1, "in_flight": 0, "max_in_flight": 1}


def test_the_ready_line_is_the_only_stdout(fake_fcm):
    assert LISTENING_RE.match(fake_fcm.line)


@pytest.mark.parametrize("case", ["other-key", "too-long", "expired", "wrong-aud", "no-scope", "no-iss",
                                  "grant-type", "no-assertion", "garbage"])
def test_bad_token_requests_are_refused_as_google_does(fake_fcm, case):
    now = int(time.time())
    fake = fake_fcm
    requests = {
        "other-key": (lambda: fake.post_token(fake.assertion(key=new_key())), "invalid_grant"),
        "too-long": (lambda: fake.post_token(fake.assertion(iat=now, exp=now + 3601)), "invalid_grant"),
        "expired": (lambda: fake.post_token(fake.assertion(iat=now - 4000, exp=now - 400)), "invalid_grant"),
        "wrong-aud": (lambda: fake.post_token(fake.assertion(aud="https://example.com/")), "invalid_grant"),
        "no-scope": (lambda: fake.post_token(fake.assertion(scope=None)), "invalid_scope"),
        "no-iss": (lambda: fake.post_token(fake.assertion(iss=None)), "invalid_grant"),
        "grant-type": (lambda: fake.post_token(fake.assertion(), grant_type="client_credentials"),
                       "unsupported_grant_type"),
        "no-assertion": (lambda: fake.post_token(""), "invalid_request"),
        "garbage": (lambda: fake.post_token("not.a.jwt"), "invalid_grant"),
    }
    post, error = requests[case]
    status, _, body = post()
    assert status == 400, body
    assert body["error"] == error and body["error_description"], body
    if case == "other-key":
        assert body["error_description"] == "Invalid JWT Signature."
    assert fake.received()["token_requests"] == 1


def test_a_missing_unknown_or_expired_access_token_is_401(fake_fcm):
    msg = {"token": "device-1"}
    for token in [None, "nope"]:
        status, headers, body = fake_fcm.send(msg, token)
        assert status == 401, body
        assert_fcm_error(body, 401, "UNAUTHENTICATED")
        assert body["error"]["message"].startswith("Request had invalid authentication credentials")
        assert headers["www-authenticate"].startswith("Bearer")

    token = fake_fcm.access_token()
    assert fake_fcm.send(msg, token)[0] == 200
    assert fake_fcm.control("/fake/expire-tokens") == {"expired": 1}
    status, _, body = fake_fcm.send(msg, token)
    assert status == 401
    assert_fcm_error(body, 401, "UNAUTHENTICATED")
    # a fresh token works again
    assert fake_fcm.send(msg, fake_fcm.access_token())[0] == 200
    rec = fake_fcm.received()
    assert rec["statuses"] == {"200": 2, "401": 3} and rec["attempts"] == 5
    assert len(rec["messages"]) == 2


def test_an_access_token_expires_after_its_ttl(fake_fcm_factory):
    fake = fake_fcm_factory("--access-token-ttl-s", "1", "--accept-token", "fixed-token")
    status, _, body = fake.post_token(fake.assertion())
    assert body["expires_in"] == 1
    token = body["access_token"]
    assert fake.send({"token": "d"}, token)[0] == 200
    time.sleep(1.2)
    assert fake.send({"token": "d"}, token)[0] == 401
    # a fixed token never expires, nor does expire-tokens touch it
    fake.control("/fake/expire-tokens")
    assert fake.send({"token": "d"}, "fixed-token")[0] == 200


def test_unregistered_and_invalid_registration_tokens(fake_fcm):
    token = fake_fcm.access_token()
    cfg = fake_fcm.control("/fake/config", {"unregistered": ["gone"], "invalid": ["bad"]})
    assert cfg == {"latency_ms": 0, "down": False, "unregistered": ["gone"], "invalid": ["bad"]}

    status, _, body = fake_fcm.send({"token": "gone", "data": {"a": "b"}}, token)
    assert status == 404
    assert_fcm_error(body, 404, "NOT_FOUND", "UNREGISTERED")
    assert body["error"]["message"] == "Requested entity was not found."

    status, _, body = fake_fcm.send({"token": "bad"}, token)
    assert status == 400
    assert_fcm_error(body, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert body["error"]["message"] == "The registration token is not a valid FCM registration token"

    assert fake_fcm.send({"token": "fine"}, token)[0] == 200
    assert [m["message"]["token"] for m in fake_fcm.received()["messages"]] == ["fine"]


def test_an_injected_429_carries_retry_after_then_sends_pass_again(fake_fcm):
    token = fake_fcm.access_token()
    assert fake_fcm.control("/fake/fail", {"status": 429, "count": 2, "retry_after_s": 7}) == {"pending_rules": 1}
    for _ in range(2):
        status, headers, body = fake_fcm.send({"token": "d"}, token)
        assert status == 429, body
        assert headers["retry-after"] == "7"
        assert_fcm_error(body, 429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
    status, headers, _ = fake_fcm.send({"token": "d"}, token)
    assert status == 200 and "retry-after" not in headers
    assert fake_fcm.received()["statuses"] == {"200": 1, "429": 2}


def test_an_injected_failure_can_target_one_token(fake_fcm):
    token = fake_fcm.access_token()
    fake_fcm.control("/fake/fail", {"status": 503, "count": 1, "token": "flaky"})
    fake_fcm.control("/fake/fail", {"status": 500})
    assert fake_fcm.send({"token": "flaky"}, token)[0] == 503
    status, headers, body = fake_fcm.send({"token": "other"}, token)
    assert status == 500 and "retry-after" not in headers
    assert_fcm_error(body, 500, "INTERNAL", "INTERNAL")
    assert fake_fcm.send({"token": "flaky"}, token)[0] == 200
    assert fake_fcm.request("POST", "/fake/fail", {"status": 418})[0] == 400


def test_an_oversized_payload_is_400(fake_fcm):
    token = fake_fcm.access_token()
    status, _, body = fake_fcm.send({"token": "d", "data": {"blob": "x" * 5000}}, token)
    assert status == 400, body
    assert_fcm_error(body, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert body["error"]["message"] == "Message payload too large"
    # just under the limit passes
    status, _, _ = fake_fcm.send({"token": "d", "data": {"blob": "x" * 4000}}, token)
    assert status == 200
    assert len(fake_fcm.received()["messages"]) == 1


@pytest.mark.parametrize("raw", [
    b"not json",
    b'{"message": {"token": "d", "data": {"n": 1}}}',
    b'{"message": {"data": {"a": "b"}}}',
    b'{"message": {"token": "d", "topic": "t"}}',
    b'{"message": {"token": "d", "notification": {"title": 5}}}',
    b'{"message": {"token": "d", "android": {"collapse_key": 5}}}',
    b'{"message": {"token": "d", "apns": {"headers": {"apns-priority": 10}}}}',
    b'{"message": {"token": "d", "surprise": 1}}',
    b'{"msg": {"token": "d"}}',
])
def test_malformed_messages_are_invalid_argument(fake_fcm, raw):
    status, _, body = fake_fcm.send({}, fake_fcm.access_token(), raw=raw)
    assert status == 400, body
    assert_fcm_error(body, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert fake_fcm.received()["messages"] == []


def test_down_answers_503_and_reset_clears_the_record(fake_fcm):
    token = fake_fcm.access_token()
    assert fake_fcm.send({"token": "d"}, token)[0] == 200
    fake_fcm.control("/fake/config", {"down": True})
    status, _, body = fake_fcm.send({"token": "d"}, token)
    assert status == 503
    assert_fcm_error(body, 503, "UNAVAILABLE", "UNAVAILABLE")
    fake_fcm.control("/fake/fail", {"status": 429, "count": 5})
    fake_fcm.control("/fake/reset")
    rec = fake_fcm.received()
    assert rec["messages"] == [] and rec["attempts"] == 0 and rec["statuses"] == {}
    # reset keeps the config (still down) but drops the failure rules
    assert fake_fcm.send({"token": "d"}, token)[0] == 503
    fake_fcm.control("/fake/config", {"down": False})
    assert fake_fcm.send({"token": "d"}, token)[0] == 200


def test_latency_delays_answers_without_serializing_them(fake_fcm):
    token = fake_fcm.access_token()
    fake_fcm.control("/fake/config", {"latency_ms": 300})
    n = 30
    statuses: list = []

    def one():
        statuses.append(fake_fcm.send({"token": "d"}, token)[0])

    t0 = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert statuses == [200] * n
    assert 0.3 <= elapsed < 3.0, elapsed
    _, _, stats = fake_fcm.request("GET", "/fake/stats")
    assert stats["accepted"] == n and stats["in_flight"] == 0
    assert stats["max_in_flight"] >= 5, stats


def test_shutdown_endpoint_and_sigterm_end_the_process(fake_fcm_factory):
    a = fake_fcm_factory()
    status, _, body = a.request("POST", "/fake/shutdown")
    assert status == 200 and body == {"ok": True}
    assert a.proc.wait(5) == 0
    b = fake_fcm_factory()
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(5) == 0
