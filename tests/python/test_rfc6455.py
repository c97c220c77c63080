"""RFC 6455 conformance of the /ws endpoint, over real sockets.

* §5.2: a payload length must be in its shortest form, and a 64-bit length
  must have its most significant bit clear; otherwise close 1002.
* §8.1: a text message (fragmented or not) whose payload is not valid UTF-8
  is closed with 1007. Validation is incremental: a character may be split
  across fragments and TCP reads; a message is only invalid once its bytes are
  definitely invalid, or its final fragment ends inside a character. Binary
  messages are not validated.
* §4.2.1 item 4: `Sec-WebSocket-Key` must be base64 of exactly 16 bytes;
  otherwise the upgrade is refused with HTTP 400.

Frames are built by hand here (`client_frame`) and written straight to the
socket of a `WsStomp` client, so nothing in the client library normalises
or checks them; the server's answers are read with the shared helpers.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import time

import pytest
from websocket import ABNF

from stampede_client import build_frame, uid
from test_websocket import parse_http, raw_http

MASK = b"\x37\xfa\x21\x3d"
TEXT, BINARY, CONT, PING = 0x1, 0x2, 0x0, 0x9


def client_frame(opcode: int, payload: bytes, fin: bool = True, form: int | None = None,
                 length: int | None = None) -> bytes:
    """A masked client frame. `form` forces the length encoding (7, 16 or 64
    bits; default: the shortest); `length` overrides the declared length."""
    n = len(payload) if length is None else length
    if form is None:
        form = 7 if n < 126 else 16 if n < 65536 else 64
    head = bytes([(0x80 if fin else 0) | opcode])
    if form == 7:
        head += bytes([0x80 | n])
    elif form == 16:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def fragments(chunks, opcode: int = TEXT) -> bytes:
    """One message split into continuation frames, one per chunk."""
    out = b""
    for i, c in enumerate(chunks):
        out += client_frame(opcode if i == 0 else CONT, c, fin=i == len(chunks) - 1)
    return out


def send_bytes(c, data: bytes, one_at_a_time: bool = False):
    sock = c.ws.sock
    if not one_at_a_time:
        sock.sendall(data)
        return
    # one byte per write, each its own segment: the server reads them apart
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(data)):
        sock.sendall(data[i:i + 1])
        time.sleep(0.002)


CONNECT = build_frame("CONNECT", [("accept-version", "1.2"), ("host", "x")])


def connected_subscriber(server):
    """A connected WS client subscribed (with receipt) to a fresh room."""
    dest = f"/topic/{uid()}"
    c = server.ws()
    c.connect()
    c.subscribe(dest)
    return c, dest


# ==========================================================================
# §5.2 payload length
# ==========================================================================


@pytest.mark.parametrize("form,declared", [
    (16, None),        # 16-bit length for a payload < 126 bytes
    (16, 0),
    (16, 125),
    (64, None),        # 64-bit length for a payload < 65536 bytes
    (64, 0),
    (64, 125),
    (64, 65535),
])
def test_length_not_in_shortest_form_is_1002(server, form, declared):
    c = server.ws()
    payload = CONNECT if declared is None else b"\n" * declared
    send_bytes(c, client_frame(TEXT, payload, form=form) + client_frame(TEXT, CONNECT))
    # expect_ws_close fails if anything (CONNECTED) arrives before the close
    assert c.expect_ws_close(5) == 1002


@pytest.mark.parametrize("length", [1 << 63, (1 << 64) - 1, (1 << 63) + len(CONNECT)])
def test_64bit_length_with_msb_set_is_1002(server, length):
    c = server.ws()
    send_bytes(c, client_frame(TEXT, CONNECT, form=64, length=length)[:14] + CONNECT)
    assert c.expect_ws_close(5) == 1002


@pytest.mark.parametrize("size,form", [(125, 7), (126, 16), (65535, 16), (65536, 64), (70000, 64)])
def test_lengths_in_shortest_form_are_accepted(server, size, form):
    c = server.ws()
    payload = b"\n" * (size - len(CONNECT)) + CONNECT  # heart-beat EOLs, then CONNECT
    frame = client_frame(TEXT, payload, form=form)
    assert len(frame) == {7: 2, 16: 4, 64: 10}[form] + 4 + size
    send_bytes(c, frame)
    assert c.expect("CONNECTED")["version"] == "1.2"
    c.ping_roundtrip(f"/topic/{uid()}")


def test_length_error_split_over_reads(server):
    # the header arrives a byte at a time: still refused, with 1002
    c = server.ws()
    send_bytes(c, client_frame(TEXT, CONNECT, form=16), one_at_a_time=True)
    assert c.expect_ws_close(5) == 1002


# ==========================================================================
# §8.1 text messages must be UTF-8
# ==========================================================================

INVALID_UTF8 = [
    b"\xff",                      # never valid
    b"\x80",                      # lone continuation byte
    b"\xc0\xaf",                  # overlong '/'
    b"\xe0\x80\xaf",              # overlong, 3 bytes
    b"\xed\xa0\x80",              # UTF-16 surrogate
    b"\xf4\x90\x80\x80",          # above U+10FFFF
    b"\xf5\x80\x80\x80",          # lead byte beyond F4
    b"\xe2\x28\xa1",              # continuation byte missing
    b"\xe2\x98",                  # message ends inside a character
    b"\xf0\x9f\x98",              # message ends inside a 4-byte character
    "\u03ba\u1f79\u03c3\u03bc\u03b5".encode() + b"\xed\xa0\x80edited",
]


@pytest.mark.parametrize("bad", INVALID_UTF8)
def test_invalid_utf8_text_message_is_1007(server, bad):
    c = server.ws()
    c.connect()
    send_bytes(c, client_frame(TEXT, bad))
    assert c.expect_ws_close(5) == 1007


@pytest.mark.parametrize("bad", INVALID_UTF8)
def test_invalid_utf8_split_over_reads_is_1007(server, bad):
    c = server.ws()
    c.connect()
    send_bytes(c, client_frame(TEXT, b"ok " + bad), one_at_a_time=True)
    assert c.expect_ws_close(5) == 1007


@pytest.mark.parametrize("chunks", [
    [b"CONN", b"\xff", b"ECT\n\n\x00"],         # invalid byte in a continuation frame
    [b"ok", b"\xe2", b"\x98", b"\x28"],         # a split sequence that turns out invalid
    [b"a\xe2\x98\x83", b"\xe2"],                # final fragment ends inside a character
    [b"a\xf0\x9f", b"\x98", b""],               # ... and an empty final fragment
    [b"\xed", b"\xa0\x80"],                     # surrogate split across fragments
])
def test_invalid_utf8_in_fragmented_text_message_is_1007(server, chunks):
    c = server.ws()
    c.connect()
    send_bytes(c, fragments(chunks))
    assert c.expect_ws_close(5) == 1007


def test_text_message_after_binary_is_validated_on_its_own(server):
    # The STOMP stream may split a character between a binary and a text
    # message, but the text message itself must still be valid UTF-8.
    c = server.ws()
    c.connect()
    send_bytes(c, client_frame(BINARY, b"\xe2") + client_frame(TEXT, b"\x98\x83"))
    assert c.expect_ws_close(5) == 1007


def test_frames_before_the_invalid_bytes_are_handled(server):
    # Validation streams: a STOMP frame complete before the first invalid byte
    # is handled (published), then the connection closes with 1007 and
    # nothing after the invalid bytes is handled.
    watcher, dest = connected_subscriber(server)
    c = server.connected("ws")
    before = build_frame("SEND", [("destination", dest)], "caf\u00e9")
    after = build_frame("SEND", [("destination", dest)], b"never")
    send_bytes(c, client_frame(TEXT, before + b"\xc3\x28" + after))
    assert c.expect_ws_close(5) == 1007
    assert watcher.expect_message().text == "caf\u00e9"
    watcher.ping_roundtrip(dest)
    assert [m.body for m in watcher.messages(1)] == [b"alive"]


SNOW = "\u2603".encode()        # 3 bytes
EMOJI = "\U0001f600".encode()   # 4 bytes


def test_valid_utf8_split_over_fragments_with_ping_between(server):
    c, dest = connected_subscriber(server)
    body = "a" + "\U0001f600" + "\u00e9\u2603z"
    frame = build_frame("SEND", [("destination", dest), ("receipt", "r")], body.encode())
    at = frame.index(EMOJI)
    # the emoji in three fragments, a ping between two of them, an empty fragment
    data = (client_frame(TEXT, frame[:at + 1], fin=False) +
            client_frame(CONT, frame[at + 1:at + 2], fin=False) +
            client_frame(PING, b"mid") +
            client_frame(CONT, b"", fin=False) +
            client_frame(CONT, frame[at + 2:]))
    send_bytes(c, data)
    op, payload = c.recv_ws(5)
    assert (op, payload) == (ABNF.OPCODE_PONG, b"mid")
    c.expect_receipt("r")
    assert c.expect_message().text == body


def test_valid_utf8_split_over_reads(server):
    c, dest = connected_subscriber(server)
    body = "\u00e9" + "\u2603" + "\U0001f600" + " \u4e2d\u6587"
    frame = build_frame("SEND", [("destination", dest), ("receipt", "r"), ("k", "\u00fc")], body.encode())
    send_bytes(c, client_frame(TEXT, frame), one_at_a_time=True)
    c.expect_receipt("r")
    m = c.expect_message()
    assert m.text == body
    assert m["k"] == "\u00fc"


def test_stomp_frame_over_text_messages_each_valid(server):
    # A STOMP frame may span WebSocket messages, cut between characters.
    c, dest = connected_subscriber(server)
    body = "\u2603" * 10
    frame = build_frame("SEND", [("destination", dest), ("receipt", "r")], body.encode())
    at = frame.index(SNOW) + 3 * 4  # between the 4th and 5th snowman
    send_bytes(c, client_frame(TEXT, frame[:at]) + client_frame(TEXT, frame[at:]))
    c.expect_receipt("r")
    assert c.expect_message().text == body


def test_binary_messages_are_not_validated(server):
    c, dest = connected_subscriber(server)
    body = b"\xff\xfe\xc0\xaf\xed\xa0\x80\xe2"
    frame = build_frame("SEND", [("destination", dest), ("receipt", "r")], body)
    cut = frame.index(b"\xe2")
    # binary message, fragmented, and ending inside a "character"
    send_bytes(c, fragments([frame[:cut + 1], frame[cut + 1:]], opcode=BINARY))
    c.expect_receipt("r")
    assert c.expect_message().body == body
    c.ping_roundtrip(dest)


# ==========================================================================
# §4.2.1 Sec-WebSocket-Key
# ==========================================================================


def upgrade_request(key: str | None) -> bytes:
    head = ("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Version: 13\r\n")
    if key is not None:
        head += f"Sec-WebSocket-Key: {key}\r\n"
    return (head + "\r\n").encode()


def b64(n: int) -> str:
    return base64.b64encode(bytes(range(n))).decode()


@pytest.mark.parametrize("key", [
    "abc",                          # not base64 of anything
    "dGhlIHNhbXBsZSBub25jZQ",       # 16 bytes, but the padding is missing
    b64(15),
    b64(17),
    b64(32),
    b64(1),
    "!!!!!!!!!!!!!!!!!!!!!!==",     # 24 characters outside the alphabet
    "dGhlIHNhbXBs ZSBub25jZQ==",    # a space inside
])
def test_bad_sec_websocket_key_is_400(server, key):
    status_line, _, rest = raw_http(server, upgrade_request(key)).partition(b"\r\n")
    assert status_line == b"HTTP/1.1 400 Bad Request"
    status, headers, body = parse_http(status_line + b"\r\n" + rest)
    assert status == 400
    assert headers["content-type"] == "text/plain"
    assert headers["connection"].lower() == "close"
    assert body == b"Sec-WebSocket-Key must be 16 bytes in base64\n"


def test_missing_sec_websocket_key_is_400(server):
    status_line, _, rest = raw_http(server, upgrade_request(None)).partition(b"\r\n")
    assert status_line == b"HTTP/1.1 400 Bad Request"
    assert rest.endswith(b"\r\n\r\nmissing Sec-WebSocket-Key\n")


@pytest.mark.parametrize("key,accept", [
    ("dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),  # RFC 6455 §1.3
    ("AAAAAAAAAAAAAAAAAAAAAA==", None),
    ("/////////////////////w==", None),
])
def test_good_sec_websocket_key_is_101(server, key, accept):
    s = socket.create_connection(server.http_addr, timeout=5)
    try:
        s.sendall(upgrade_request(key))
        resp = b""
        while b"\r\n\r\n" not in resp:
            d = s.recv(4096)
            assert d, f"server closed before answering: {resp!r}"
            resp += d
        lines = resp.split(b"\r\n\r\n")[0].decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 101 Switching Protocols"
        got = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        want = accept or base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        assert got["sec-websocket-accept"] == want
    finally:
        s.close()
