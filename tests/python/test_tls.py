"""Native TLS (`--tls-cert`/`--tls-key`): `wss://` with the `websockets`
library, STOMP over TLS (our raw client and stomp.py), a certificate swap on
SIGHUP that new connections see while open sessions go on, modern protocol
only, clear refusals of unusable files."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
import stomp
import trustme
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.sync.client import connect as ws_connect

from conftest import start_server, stampede_bin
from stampede_client import ConnectionClosed, FrameParser, StompClient, TcpStomp, Timeout, uid

TIMEOUT = 10.0


class Certs:
    """A CA of the test's own and a server certificate it issued, written
    to `cert.pem`/`key.pem` in `dir` (the paths the server is given)."""

    def __init__(self, dir: Path):
        self.dir = dir
        self.cert = dir / "cert.pem"
        self.key = dir / "key.pem"
        self.issue()

    def issue(self):
        """A new CA and a new leaf for 127.0.0.1/localhost, written over the
        files; returns the leaf's DER."""
        self.ca = trustme.CA()
        leaf = self.ca.issue_cert("127.0.0.1", "localhost")
        # Write beside and rename: the server never reads a half-written file.
        for blob, path in ((leaf.cert_chain_pems, self.cert), ([leaf.private_key_pem], self.key)):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(b"".join(b.bytes() for b in blob))
            tmp.replace(path)
        self.leaf_der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
        return self.leaf_der

    def context(self, ca=None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        (ca or self.ca).configure_trust(ctx)
        return ctx


@pytest.fixture
def certs(tmp_path) -> Certs:
    d = tmp_path / "tls"
    d.mkdir()
    return Certs(d)


def tls_server(server_factory, certs: Certs, *extra):
    return server_factory("--tls-cert", certs.cert, "--tls-key", certs.key, *extra)


class WssStomp(StompClient):
    """STOMP over `wss://` with the `websockets` library (sync client): one
    frame per WebSocket message, as the server sends them."""

    transport = "wss"

    def __init__(self, url: str, ctx: ssl.SSLContext):
        super().__init__()
        self._open = ExitStack()
        self.ws = self._open.enter_context(
            ws_connect(url, ssl=ctx, subprotocols=["v12.stomp"], open_timeout=TIMEOUT, max_size=None))

    def peer_cert(self) -> bytes:
        return self.ws.socket.getpeercert(binary_form=True)

    def _send_bytes(self, data: bytes):
        self.ws.send(data.decode("utf-8"))

    def _fill(self, timeout: float):
        if self.closed:
            raise ConnectionClosed("connection already closed")
        try:
            msg = self.ws.recv(timeout=max(timeout, 0.001))
        except TimeoutError:
            raise Timeout("wss recv timed out") from None
        except WsClosed as e:
            self.closed = True
            raise ConnectionClosed(f"wss closed: {e}") from None
        data = msg.encode("utf-8") if isinstance(msg, str) else msg
        if data == b"\n":
            self.heartbeat_times.append(time.monotonic())
            return
        p = FrameParser()
        p.version = self.parser.version
        p.feed(data)
        f = p.next()
        assert f is not None and not p.buf, f"not one frame per message: {data[:200]!r}"
        if f.command == "CONNECTED":
            self.parser.version = f.get("version")
        self._pending.append(f)

    def close(self):
        try:
            self._open.close()
        except Exception:
            pass


def wss(srv, certs: Certs, path: str = "/ws", ctx=None) -> WssStomp:
    c = WssStomp(f"wss://127.0.0.1:{srv.http_port}{path}", ctx or certs.context())
    srv.clients.append(c)
    return c


def stomps(srv, certs: Certs, ctx=None) -> TcpStomp:
    c = TcpStomp(srv.host, srv.stomp_port, ssl_context=ctx or certs.context())
    srv.clients.append(c)
    return c


def peer_cert(port: int, ctx: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return s.getpeercert(binary_form=True)


def wait_log(srv, text: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in srv.stderr_text(200000):
            return
        time.sleep(0.05)
    pytest.fail(f"{text!r} not in the server's log:\n{srv.stderr_text()}")


class Collector(stomp.ConnectionListener):
    def __init__(self):
        self.bodies: list = []
        self.receipts: list = []
        self.got = threading.Condition()

    def on_message(self, frame):
        with self.got:
            self.bodies.append(frame.body)
            self.got.notify_all()

    def on_receipt(self, frame):
        with self.got:
            self.receipts.append(frame.headers.get("receipt-id"))
            self.got.notify_all()

    def wait_receipt(self, receipt: str, timeout: float = TIMEOUT):
        with self.got:
            assert self.got.wait_for(lambda: receipt in self.receipts, timeout), self.receipts

    def wait(self, n: int, timeout: float = TIMEOUT) -> list:
        with self.got:
            assert self.got.wait_for(lambda: len(self.bodies) >= n, timeout), self.bodies
            return list(self.bodies)


def stomppy(srv, certs: Certs, login: str) -> tuple:
    conn = stomp.Connection12([(srv.host, srv.stomp_port)], heartbeats=(0, 0), timeout=TIMEOUT)
    conn.set_ssl(for_hosts=[(srv.host, srv.stomp_port)], ca_certs=str(certs.dir / "ca-at-start.pem"))
    got = Collector()
    conn.set_listener("c", got)
    conn.connect(login, "x", wait=True)
    return conn, got


def test_chat_over_wss_and_stomp_tls_then_swap_the_certificate(server_factory, certs, room):
    certs.ca.cert_pem.write_to_path(str(certs.dir / "ca-at-start.pem"))
    old_ca, old_leaf = certs.ca, certs.leaf_der
    srv = tls_server(server_factory, certs, "--shards", "2")

    web = wss(srv, certs)
    assert web.peer_cert() == old_leaf
    assert web.ws.socket.version() == "TLSv1.3"
    web.connect(login="alice")
    web.subscribe(f"/topic/{room}")
    raw = stomps(srv, certs)
    raw.connect(login="bob")
    raw.subscribe(f"/topic/{room}")
    lib, lib_got = stomppy(srv, certs, "carol")
    # stomp.py sends SUBSCRIBE without waiting: its receipt says it is in
    # place (else a SEND on another connection and shard can get there first).
    lib.subscribe(f"/topic/{room}", id="s1", headers={"receipt": "sub-s1"})
    lib_got.wait_receipt("sub-s1")
    web.send(f"/topic/{room}", "hello from wss", receipt=True)
    assert raw.expect_message().body == b"hello from wss"
    assert web.expect_message().body == b"hello from wss"
    lib.send(f"/topic/{room}", "hello from stomp.py")
    assert raw.expect_message().body == b"hello from stomp.py"
    assert web.expect_message().body == b"hello from stomp.py"
    assert lib_got.wait(2) == ["hello from wss", "hello from stomp.py"]

    # A new certificate from another CA, then SIGHUP.
    new_leaf = certs.issue()
    assert new_leaf != old_leaf
    srv.proc.send_signal(signal.SIGHUP)
    wait_log(srv, "TLS certificate reloaded")
    # Every shard takes it from its inbox: a few tries reach both.
    for _ in range(8):
        assert peer_cert(srv.http_port, certs.context()) == new_leaf
        assert peer_cert(srv.stomp_port, certs.context()) == new_leaf
    with pytest.raises(ssl.SSLCertVerificationError):
        peer_cert(srv.http_port, certs.context(old_ca))
    fresh = wss(srv, certs)
    assert fresh.peer_cert() == new_leaf
    fresh.connect(login="dave")
    fresh.subscribe(f"/topic/{room}")

    # The sessions opened with the old certificate go on.
    raw.send(f"/topic/{room}", "after the swap", receipt=True)
    for c in (web, raw, fresh):
        assert c.expect_message().body == b"after the swap"
    assert lib_got.wait(3)[-1] == "after the swap"
    lib.send(f"/topic/{room}", "stomp.py after the swap")
    for c in (web, raw, fresh):
        assert c.expect_message().body == b"stomp.py after the swap"
    lib.disconnect()
    srv.assert_running()


def test_no_session_ticket_follows_the_handshake(server_factory, certs):
    """No TLS 1.3 session ticket follows the handshake (`tls::TLS13_TICKETS`).
    stomp.py reads in a thread of its own while the caller writes, on one
    OpenSSL socket; a ticket arriving just as it sent CONNECT made about
    1 connect in 30 fail (`scripts/tls-connects.py`,
    `bench/results/2026-12-04-tls-tickets/`). That loop is not run here:
    the same two threads race again at stomp.py's `disconnect()`, and now
    and then that crashes the Python process itself (CPython issue 151508)."""
    srv = tls_server(server_factory, certs, "--shards", "2")
    raw = stomps(srv, certs)
    raw.connect(login="alice")
    assert raw.sock.version() == "TLSv1.3"
    # A ticket is sent before the server's first application data.
    assert raw.sock.session is not None and not raw.sock.session.has_ticket
    srv.assert_running()


def test_a_bad_reload_keeps_the_current_certificate(server_factory, certs):
    srv = tls_server(server_factory, certs)
    before = certs.leaf_der
    ctx = certs.context()
    certs.cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
    srv.proc.send_signal(signal.SIGHUP)
    wait_log(srv, "TLS reload failed, keeping the current certificate")
    assert peer_cert(srv.http_port, ctx) == before
    # SIGHUP never stops the server, TLS or not.
    plain = server_factory()
    plain.proc.send_signal(signal.SIGHUP)
    wait_log(plain, "nothing to reload")
    plain.connected("tcp")
    srv.assert_running()
    plain.assert_running()


def test_rooms_owned_by_another_shard_move_with_their_tls_session(server_factory, certs):
    """`/ws?room=R` hands the upgraded connection to R's owner shard: the TLS
    session moves with it (and with bytes sent right behind the upgrade)."""
    srv = tls_server(server_factory, certs, "--shards", "2")
    shards = set()
    for i in range(12):
        r = uid("moved")
        c = wss(srv, certs, f"/ws?room={r}")
        c.connect(login=f"u{i}")
        shards.add(c.shard)
        c.subscribe(f"/topic/{r}")
        c.send(f"/topic/{r}", f"m{i}", receipt=True)
        assert c.expect_message().body == f"m{i}".encode()
    assert shards == {0, 1}, "rooms on both shards: some connections moved"


def test_large_frames_and_a_reader_that_falls_behind(server_factory, certs, room):
    """Frames bigger than a TLS record both ways, and a subscriber that stops
    reading while thousands of messages queue: what rustls has encrypted but
    the socket has not taken goes out once it reads again, in order."""
    # 6 MB to a reader with a 4 KiB receive buffer: more than the kernel's
    # largest send buffer here (tcp_wmem max 4 MiB) can hold, so the
    # server's writes block and its task drains the TLS backlog later.
    srv = tls_server(server_factory, certs, "--max-publish-rate", "0",
                     "--max-outbound-bytes", str(16 << 20))
    sub = TcpStomp(srv.host, srv.stomp_port, ssl_context=certs.context(), rcvbuf=4096)
    srv.clients.append(sub)
    sub.connect(login="slow")
    sub.subscribe(f"/topic/{room}")
    pub = wss(srv, certs)
    pub.connect(login="pub")
    big = "x" * 60_000
    pub.send(f"/topic/{room}", big, receipt=True)
    assert sub.expect_message().body == big.encode()
    sub.send(f"/topic/{room}", big, receipt=True)  # the subscriber's own, 60 KB inbound
    assert sub.expect_message().body == big.encode()
    n = 6000
    body = "y" * 1000
    for i in range(n):
        pub.send(f"/topic/{room}", f"{i:05d}{body}", receipt=(i == n - 1))
    time.sleep(1.0)  # sub has not read: its socket, rustls and the output buffer hold the rest
    got = sub.messages(n, timeout=30)
    assert [int(m.body[:5]) for m in got] == list(range(n))
    srv.assert_running()


def test_modern_protocol_only(server_factory, certs):
    srv = tls_server(server_factory, certs)
    # TLS 1.2 is offered, with an AEAD suite and forward secrecy.
    ctx = certs.context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(srv.http_addr, timeout=TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            name, version, _ = s.cipher()
            assert version == "TLSv1.2"
            assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name), name
    # A client offering only CBC with RSA key exchange finds nothing.
    weak = certs.context()
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("AES128-SHA:AES256-SHA")
    with socket.create_connection(srv.http_addr, timeout=TIMEOUT) as raw:
        with pytest.raises(ssl.SSLError):
            weak.wrap_socket(raw, server_hostname="127.0.0.1")
    # Plain text on a TLS port is not STOMP: closed, and the server goes on.
    with socket.create_connection(("127.0.0.1", srv.stomp_port), timeout=TIMEOUT) as plain:
        plain.sendall(b"CONNECT\naccept-version:1.2\n\n\x00")
        try:
            data = plain.recv(4096)
        except ConnectionResetError:
            data = b""
        assert b"CONNECTED" not in data
    c = stomps(srv, certs)
    c.connect()
    # Both failed handshakes are counted, by listener.
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"https://127.0.0.1:{srv.http_port}/metrics",
                                    context=certs.context(), timeout=TIMEOUT) as r:
            text = r.read().decode()
        got = {t: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("stampede_connections_refused_total{")
                      and 'reason="tls"' in line and f'transport="{t}"' in line)
               for t in ("http", "stomp")}
        if got["http"] >= 1 and got["stomp"] >= 1:
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.1)
    srv.assert_running()


def run_refused(tmp_path, *args) -> str:
    p = subprocess.run([str(stampede_bin()), "--listen", "127.0.0.1:0", "--stomp-listen", "off",
                        "--data-dir", str(tmp_path / "data"), *map(str, args)],
                       capture_output=True, timeout=30, text=True)
    assert p.returncode == 1, (p.returncode, p.stderr)
    return p.stderr


def test_unusable_files_refuse_to_start_with_the_reason(tmp_path, certs):
    assert "--tls-cert and --tls-key go together" in run_refused(tmp_path, "--tls-cert", certs.cert)
    err = run_refused(tmp_path, "--tls-cert", tmp_path / "missing.pem", "--tls-key", certs.key)
    assert "cannot read the certificate chain" in err and "missing.pem" in err
    other = trustme.CA().issue_cert("127.0.0.1")
    other_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(str(other_key))
    err = run_refused(tmp_path, "--tls-cert", certs.cert, "--tls-key", other_key)
    assert "cannot be used together" in err, err
    err = run_refused(tmp_path, "--tls-cert", certs.cert, "--tls-key", certs.cert)
    assert "cannot read the private key" in err, err
