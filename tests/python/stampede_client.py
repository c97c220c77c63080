"""Raw STOMP test clients for the stampede black-box tests.

Nothing here knows about the server's internals: it speaks bytes over plain TCP
(``TcpStomp``) or over WebSocket messages (``WsStomp``, built on websocket-client),
parses what comes back strictly, and offers small assertion helpers.

Header values handed to :func:`build_frame` are written *as given* (no escaping);
use :func:`esc` to escape a value for STOMP 1.1/1.2 explicitly.  Frames received
are unescaped according to the version the CONNECTED frame announced (CONNECTED
itself is never unescaped).
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
import uuid
from typing import Callable, Iterable, Optional, Sequence, Union

import websocket
from websocket import ABNF

DEFAULT_TIMEOUT = 5.0

HeaderList = Union[None, dict, Sequence[tuple]]


# --------------------------------------------------------------------------
# escaping
# --------------------------------------------------------------------------

_ESC_12 = {"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"}
_ESC_11 = {"\\": "\\\\", "\n": "\\n", ":": "\\c"}
_UNESC_12 = {"\\": "\\", "r": "\r", "n": "\n", "c": ":"}
_UNESC_11 = {"\\": "\\", "n": "\n", "c": ":"}


def esc(value: str, version: str = "1.2") -> str:
    """Escape a header name/value the way a STOMP ``version`` client must."""
    table = _ESC_12 if version == "1.2" else _ESC_11
    return "".join(table.get(ch, ch) for ch in value)


class StompProtocolError(AssertionError):
    """The server sent bytes that are not a valid STOMP frame."""


def unesc(raw: str, version: Optional[str]) -> str:
    if version not in ("1.1", "1.2"):
        return raw
    table = _UNESC_12 if version == "1.2" else _UNESC_11
    out = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\":
            if i + 1 >= len(raw) or raw[i + 1] not in table:
                raise StompProtocolError(f"server sent invalid escape in header {raw!r} (version {version})")
            out.append(table[raw[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


# --------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------


def _norm_headers(headers: HeaderList) -> list:
    if headers is None:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers)


def _b(x) -> bytes:
    if isinstance(x, bytes):
        return x
    return str(x).encode("utf-8")


def build_frame(command, headers: HeaderList = None, body: Union[bytes, str] = b"", *,
                eol: bytes = b"\n", content_length: Union[str, bool, int] = "auto",
                trailer: bytes = b"") -> bytes:
    """Build raw frame bytes.

    headers: dict or list of (name, value) pairs, written verbatim (no escaping).
    content_length: "auto" (add one when the body is non-empty), True (always),
    False (never) or an int / str to write that literal value.
    trailer: bytes appended after the NUL (e.g. heart-beat EOLs).
    """
    body = _b(body)
    lines = [_b(command)]
    for k, v in _norm_headers(headers):
        lines.append(_b(k) + b":" + _b(v))
    if content_length == "auto":
        if body:
            lines.append(b"content-length:" + str(len(body)).encode())
    elif content_length is True:
        lines.append(b"content-length:" + str(len(body)).encode())
    elif content_length is False:
        pass
    else:
        lines.append(b"content-length:" + _b(content_length))
    return eol.join(lines) + eol + eol + body + b"\x00" + trailer


class Frame:
    def __init__(self, command: str, raw_headers: list, body: bytes, raw: bytes, version: Optional[str]):
        self.command = command
        self.raw_headers = raw_headers  # list of (bytes name, bytes value), as on the wire
        self.body = body
        self.raw = raw
        self.opcode: Optional[int] = None  # websocket opcode when received over WS
        do_unescape = command not in ("CONNECTED", "CONNECT")
        self.header_list = []
        for k, v in raw_headers:
            ks = k.decode("utf-8")
            vs = v.decode("utf-8")
            if do_unescape:
                ks, vs = unesc(ks, version), unesc(vs, version)
            self.header_list.append((ks, vs))
        self.headers = {}
        for k, v in self.header_list:
            self.headers.setdefault(k, v)  # first occurrence wins

    def get(self, name, default=None):
        return self.headers.get(name, default)

    def __getitem__(self, name):
        assert name in self.headers, f"{self.command} frame has no {name!r} header: {self.header_list!r}"
        return self.headers[name]

    def __contains__(self, name):
        return name in self.headers

    def all(self, name) -> list:
        return [v for k, v in self.header_list if k == name]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def __repr__(self):
        body = self.body if len(self.body) < 200 else self.body[:200] + b"..."
        return f"<Frame {self.command} {self.header_list!r} body={body!r}>"


class FrameParser:
    """Incremental STOMP frame parser (client side)."""

    def __init__(self):
        self.buf = bytearray()
        self.heartbeats = 0
        self.version: Optional[str] = None

    def feed(self, data: bytes):
        self.buf += data

    def _skip_eols(self):
        while self.buf:
            if self.buf[:1] == b"\n":
                del self.buf[:1]
                self.heartbeats += 1
            elif self.buf[:2] == b"\r\n":
                del self.buf[:2]
                self.heartbeats += 1
            elif self.buf[:1] == b"\r" and len(self.buf) == 1:
                return  # need more bytes
            else:
                return

    def next(self) -> Optional[Frame]:
        self._skip_eols()
        buf = self.buf
        if not buf or buf == b"\r":
            return None
        pos = 0
        lines = []
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                return None
            line = bytes(buf[pos:nl])
            if line.endswith(b"\r"):
                line = line[:-1]
            pos = nl + 1
            if not line and lines:
                break
            if not line and not lines:
                raise StompProtocolError(f"empty command line in {bytes(buf[:100])!r}")
            lines.append(line)
        command = lines[0].decode("utf-8", "replace")
        raw_headers = []
        for line in lines[1:]:
            if b":" not in line:
                raise StompProtocolError(f"header line without colon: {line!r}")
            k, v = line.split(b":", 1)
            raw_headers.append((k, v))
        clen = None
        for k, v in raw_headers:
            if k == b"content-length":
                clen = int(v)
                break
        if clen is not None:
            if len(buf) < pos + clen + 1:
                return None
            body = bytes(buf[pos:pos + clen])
            if buf[pos + clen] != 0:
                raise StompProtocolError(
                    f"no NUL after content-length body ({clen}) in {bytes(buf[:pos + clen + 10])!r}")
            end = pos + clen + 1
        else:
            nul = buf.find(b"\x00", pos)
            if nul < 0:
                return None
            body = bytes(buf[pos:nul])
            end = nul + 1
        raw = bytes(buf[:end])
        del buf[:end]
        frame = Frame(command, raw_headers, body, raw, self.version)
        if command == "CONNECTED":
            self.version = frame.get("version", "1.0")
        return frame


# --------------------------------------------------------------------------
# clients
# --------------------------------------------------------------------------


class ConnectionClosed(AssertionError):
    def __init__(self, msg="connection closed", code=None):
        super().__init__(msg)
        self.code = code


class Timeout(AssertionError):
    pass


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64, the hash stampede places rooms with (owner = hash % shards)."""
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def owner_shard(room: str, shards: int) -> int:
    return fnv1a64(room.encode("utf-8")) % shards


def uid(prefix="r") -> str:
    return prefix + uuid.uuid4().hex[:12]


class StompClient:
    """Transport-independent part; subclasses implement _send_bytes/_fill."""

    transport = "?"

    def __init__(self):
        self.parser = FrameParser()
        self.backlog: list = []
        self.closed = False
        self.close_code = None  # websocket close code, when known
        self.heartbeat_times: list = []
        self.connected_frame: Optional[Frame] = None
        self._receipt_n = 0
        self._pending: list = []  # parsed frames not yet handed out

    # ---- to implement
    def _send_bytes(self, data: bytes):
        raise NotImplementedError

    def _fill(self, timeout: float):
        """Read more input into the parser/backlog. Raise ConnectionClosed/Timeout."""
        raise NotImplementedError

    def close(self):
        raise NotImplementedError

    # ---- common
    @property
    def version(self):
        return self.parser.version

    @property
    def heartbeats(self) -> int:
        return len(self.heartbeat_times)

    def send_raw(self, data: bytes):
        self._send_bytes(data)

    def send_frame(self, command, headers: HeaderList = None, body=b"", **kw):
        self._send_bytes(build_frame(command, headers, body, **kw))

    def next_receipt_id(self) -> str:
        self._receipt_n += 1
        return f"rcpt-{self._receipt_n}"

    def recv_frame(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        if self.backlog:
            return self.backlog.pop(0)
        return self._recv_new(timeout)

    def _recv_new(self, timeout: float) -> Frame:
        deadline = time.monotonic() + timeout
        while True:
            f = self._pop_parsed()
            if f is not None:
                return f
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"no frame within {timeout}s on {self.transport} client")
            self._fill(left)

    def _pop_parsed(self) -> Optional[Frame]:
        if self._pending:
            return self._pending.pop(0)
        return None

    def wait_for(self, pred: Callable[[Frame], bool], timeout: float = DEFAULT_TIMEOUT,
                 what: str = "frame") -> Frame:
        """Return the first frame matching pred (looking at the backlog first);
        non-matching frames are kept in the backlog in order.  ERROR frames that do
        not match fail immediately."""
        for i, f in enumerate(self.backlog):
            if pred(f):
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"timed out after {timeout}s waiting for {what}; backlog={self.backlog!r}")
            try:
                f = self._recv_new(left)
            except ConnectionClosed as e:
                raise ConnectionClosed(f"connection closed while waiting for {what}; backlog={self.backlog!r}",
                                       e.code) from None
            except Timeout:
                continue
            if pred(f):
                return f
            if f.command == "ERROR":
                raise AssertionError(f"unexpected ERROR while waiting for {what}: {f!r}")
            self.backlog.append(f)

    def expect(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        f = self.recv_frame(timeout)
        assert f.command == command, f"expected {command}, got {f!r}"
        return f

    def expect_receipt(self, receipt_id: str, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        f = self.wait_for(lambda f: f.command == "RECEIPT", timeout, what=f"RECEIPT {receipt_id}")
        assert f.get("receipt-id") == receipt_id, f"expected receipt-id {receipt_id!r}, got {f!r}"
        assert f.body == b"", f"RECEIPT must not have a body: {f!r}"
        return f

    def expect_message(self, timeout: float = DEFAULT_TIMEOUT, subscription: Optional[str] = None) -> Frame:
        if subscription is None:
            pred = lambda f: f.command == "MESSAGE"  # noqa: E731
        else:
            pred = lambda f: f.command == "MESSAGE" and f.get("subscription") == subscription  # noqa: E731
        return self.wait_for(pred, timeout, what="MESSAGE")

    def messages(self, n: int, timeout: float = DEFAULT_TIMEOUT, subscription: Optional[str] = None) -> list:
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"got only {len(out)} of {n} messages within {timeout}s: {out!r}")
            out.append(self.expect_message(left, subscription))
        return out

    def assert_silent(self, duration: float, what: str = "frame"):
        """No frame (heart-beats aside) arrives within duration and the connection stays open."""
        if self.backlog:
            raise AssertionError(f"unexpected {what}: {self.backlog!r}")
        try:
            f = self._recv_new(duration)
        except Timeout:
            return
        raise AssertionError(f"unexpected {what} within {duration}s: {f!r}")

    def expect_closed(self, timeout: float = DEFAULT_TIMEOUT):
        """Read until the server closes; any frame arriving meanwhile fails."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"server did not close the {self.transport} connection within {timeout}s")
            try:
                f = self.recv_frame(left)
            except ConnectionClosed:
                return
            except Timeout:
                continue
            raise AssertionError(f"expected the connection to close, got {f!r}")

    def expect_error(self, keyword: Optional[str] = None, receipt_id: Optional[str] = None,
                     timeout: float = DEFAULT_TIMEOUT, closed: bool = True, skip_messages: bool = False,
                     ws_codes: Iterable[int] = (1002, 1008, 1009)) -> Frame:
        """Expect an ERROR frame (message header containing keyword, case-insensitive),
        with receipt-id when given, content-type text/plain, then the connection closed."""
        if skip_messages:
            f = self.wait_for(lambda f: f.command != "MESSAGE", timeout, what="ERROR")
        else:
            f = self.recv_frame(timeout)
        assert f.command == "ERROR", f"expected ERROR{' (' + keyword + ')' if keyword else ''}, got {f!r}"
        assert "message" in f, f"ERROR without message header: {f!r}"
        if keyword is not None:
            assert keyword.lower() in f["message"].lower(), f"ERROR message should contain {keyword!r}: {f!r}"
        if receipt_id is not None:
            assert f.get("receipt-id") == receipt_id, f"ERROR should carry receipt-id:{receipt_id}: {f!r}"
        ct = f.get("content-type")
        assert ct is not None and ct.split(";")[0].strip() == "text/plain", \
            f"ERROR must have content-type text/plain: {f!r}"
        assert f.body.strip(), f"ERROR must have a body with detail: {f!r}"
        if closed:
            self.expect_closed(timeout)
            if self.transport == "ws":
                codes = tuple(ws_codes)
                assert self.close_code in codes, \
                    f"after ERROR the server must send a WS close frame with code in {codes}, got {self.close_code}"
        return f

    # ---- convenience protocol operations
    def connect(self, version: Optional[str] = "1.2", login: Optional[str] = None, passcode: Optional[str] = None,
                heart_beat: Optional[str] = "0,0", host: Optional[str] = "localhost", headers: HeaderList = None,
                command: str = "CONNECT", expect: bool = True, timeout: float = DEFAULT_TIMEOUT):
        hdrs = []
        if version is not None:
            hdrs.append(("accept-version", version))
        if host is not None:
            hdrs.append(("host", host))
        if login is not None:
            hdrs.append(("login", login))
        if passcode is not None:
            hdrs.append(("passcode", passcode))
        if heart_beat is not None:
            hdrs.append(("heart-beat", heart_beat))
        hdrs += _norm_headers(headers)
        self.send_frame(command, hdrs)
        if not expect:
            return None
        f = self.recv_frame(timeout)
        assert f.command == "CONNECTED", f"expected CONNECTED, got {f!r}"
        self.connected_frame = f
        return f

    @property
    def session(self) -> str:
        return self.connected_frame["session"]

    @property
    def shard(self) -> int:
        return int(self.session.split("-", 1)[0])

    def subscribe(self, destination: str, id: str = "s1", ack: Optional[str] = None, receipt: bool = True,
                  headers: HeaderList = None):
        hdrs = [("destination", destination), ("id", id)]
        if ack is not None:
            hdrs.append(("ack", ack))
        hdrs += _norm_headers(headers)
        rid = None
        if receipt:
            rid = self.next_receipt_id()
            hdrs.append(("receipt", rid))
        self.send_frame("SUBSCRIBE", hdrs)
        if receipt:
            self.expect_receipt(rid)

    def unsubscribe(self, id: str = "s1", receipt: bool = True):
        hdrs = [("id", id)]
        rid = None
        if receipt:
            rid = self.next_receipt_id()
            hdrs.append(("receipt", rid))
        self.send_frame("UNSUBSCRIBE", hdrs)
        if receipt:
            self.expect_receipt(rid)

    def send(self, destination: str, body: Union[bytes, str] = b"", headers: HeaderList = None,
             receipt: bool = False, **kw):
        hdrs = [("destination", destination)] + _norm_headers(headers)
        rid = None
        if receipt:
            rid = self.next_receipt_id()
            hdrs.append(("receipt", rid))
        self.send_frame("SEND", hdrs, body, **kw)
        if receipt:
            self.expect_receipt(rid)

    def simple(self, command: str, headers: HeaderList = None, receipt: bool = True):
        """Send a body-less frame, optionally waiting for its receipt."""
        hdrs = _norm_headers(headers)
        rid = None
        if receipt:
            rid = self.next_receipt_id()
            hdrs.append(("receipt", rid))
        self.send_frame(command, hdrs)
        if receipt:
            self.expect_receipt(rid)

    def disconnect(self, receipt: bool = True):
        rid = self.next_receipt_id() if receipt else None
        self.send_frame("DISCONNECT", [("receipt", rid)] if receipt else [])
        if receipt:
            self.expect_receipt(rid)
            self.expect_closed()

    def ping_roundtrip(self, destination: str, timeout: float = DEFAULT_TIMEOUT):
        """Prove the connection works: SEND with receipt to a destination."""
        rid = self.next_receipt_id()
        self.send_frame("SEND", [("destination", destination), ("receipt", rid)], b"alive")
        self.expect_receipt(rid, timeout)


class TcpStomp(StompClient):
    transport = "tcp"

    def __init__(self, host: str, port: int, timeout: float = DEFAULT_TIMEOUT, rcvbuf: Optional[int] = None,
                 ssl_context=None, server_hostname: Optional[str] = None):
        super().__init__()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        if ssl_context is not None:  # STOMP over TLS
            self.sock = ssl_context.wrap_socket(self.sock, server_hostname=server_hostname or host)

    def _send_bytes(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self, timeout: float):
        if self.closed:
            raise ConnectionClosed("connection already closed")
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise Timeout("recv timed out") from None
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError) as e:
            self.closed = True
            raise ConnectionClosed(f"connection reset: {e}") from None
        if not data:
            self.closed = True
            raise ConnectionClosed("EOF")
        before = self.parser.heartbeats
        self.parser.feed(data)
        while True:
            f = self.parser.next()
            if f is None:
                break
            self._pending.append(f)
        now = time.monotonic()
        # heart-beats are timestamped when they arrive
        for _ in range(self.parser.heartbeats - before):
            self.heartbeat_times.append(now)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


WS_ALL_SUBPROTOCOLS = ("v10.stomp", "v11.stomp", "v12.stomp")


class WsStomp(StompClient):
    """STOMP over WebSocket.  Every inbound WS message must hold exactly one frame
    (or be a lone "\\n" heart-beat)."""

    transport = "ws"

    def __init__(self, url: str, subprotocols: Optional[Iterable[str]] = WS_ALL_SUBPROTOCOLS,
                 timeout: float = DEFAULT_TIMEOUT, **kw):
        super().__init__()
        opts = dict(timeout=timeout, **kw)
        if subprotocols:
            opts["subprotocols"] = list(subprotocols)
        self.ws = websocket.create_connection(url, **opts)
        self.messages_log: list = []  # (opcode, payload) of every data message received
        self.control_log: list = []   # (opcode, payload) of pings/pongs received
        self.close_frame_received = False

    @property
    def subprotocol(self):
        return self.ws.getsubprotocol()

    def _send_bytes(self, data: bytes, opcode=ABNF.OPCODE_TEXT):
        self.ws.send(data, opcode)

    def send_raw(self, data: bytes, binary: bool = False):
        self._send_bytes(data, ABNF.OPCODE_BINARY if binary else ABNF.OPCODE_TEXT)

    def send_fragments(self, chunks: Sequence[bytes], binary: bool = False):
        """Send one WS message split into continuation fragments."""
        assert len(chunks) >= 2
        first = ABNF.OPCODE_BINARY if binary else ABNF.OPCODE_TEXT
        for i, c in enumerate(chunks):
            opcode = first if i == 0 else ABNF.OPCODE_CONT
            fin = 1 if i == len(chunks) - 1 else 0
            self.ws.send_frame(ABNF.create_frame(c, opcode, fin))

    def recv_ws(self, timeout: float = DEFAULT_TIMEOUT):
        """Receive one raw WS frame/message: returns (opcode, payload bytes).
        Fragmented data messages are reassembled; pings are answered."""
        self.ws.settimeout(max(timeout, 0.001))
        parts = []
        first_opcode = None
        while True:
            try:
                fr = self.ws.recv_frame()
            except websocket.WebSocketTimeoutException:
                raise Timeout("ws recv timed out") from None
            except socket.timeout:
                raise Timeout("ws recv timed out") from None
            except (websocket.WebSocketConnectionClosedException, ConnectionResetError, BrokenPipeError) as e:
                self.closed = True
                raise ConnectionClosed(f"ws connection closed: {e!r}", self.close_code) from None
            if fr.opcode == ABNF.OPCODE_PING:
                self.control_log.append((fr.opcode, fr.data))
                try:
                    self.ws.pong(fr.data)
                except Exception:
                    pass
                continue
            if fr.opcode in (ABNF.OPCODE_PONG, ABNF.OPCODE_CLOSE):
                return fr.opcode, fr.data
            if fr.opcode in (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY):
                first_opcode = fr.opcode
                parts = [fr.data]
            elif fr.opcode == ABNF.OPCODE_CONT:
                assert first_opcode is not None, "continuation without start"
                parts.append(fr.data)
            if fr.fin:
                data = b"".join(p if isinstance(p, bytes) else p.encode() for p in parts)
                return first_opcode, data

    def _fill(self, timeout: float):
        if self.closed:
            raise ConnectionClosed("connection already closed", self.close_code)
        opcode, data = self.recv_ws(timeout)
        if opcode == ABNF.OPCODE_PONG:
            self.control_log.append((opcode, data))
            return
        if opcode == ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
            self.close_code = code
            self.close_frame_received = True
            try:
                self.ws.send_close(1000 if code is None else code)
            except Exception:
                pass
            self.closed = True
            raise ConnectionClosed(f"ws close frame, code {code}", code)
        self.messages_log.append((opcode, data))
        if data == b"\n":
            assert opcode == ABNF.OPCODE_TEXT, "heart-beat must be a text message"
            self.heartbeat_times.append(time.monotonic())
            return
        p = FrameParser()
        p.version = self.parser.version
        p.feed(data)
        f = p.next()
        assert f is not None, f"WS message is not a complete STOMP frame: {data[:300]!r}"
        assert not p.buf and p.heartbeats == 0, \
            f"WS message must carry exactly one STOMP frame, got extra bytes {bytes(p.buf)[:100]!r} in {data[:300]!r}"
        f.opcode = opcode
        if f.command == "CONNECTED":
            self.parser.version = p.version
        self._pending.append(f)

    def expect_closed(self, timeout: float = DEFAULT_TIMEOUT):
        """Wait for the server to end the connection (close frame or TCP EOF; any
        STOMP frame arriving first fails).  After a close frame, also require the
        server to close TCP."""
        super().expect_closed(timeout)
        if self.close_frame_received:
            self._wait_tcp_eof(timeout)

    def expect_ws_close(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Like expect_closed, but a WebSocket close frame is required; returns its code."""
        self.expect_closed(timeout)
        assert self.close_frame_received, "server closed TCP without sending a WebSocket close frame"
        return self.close_code

    def _wait_tcp_eof(self, timeout: float):
        sock = self.ws.sock
        if sock is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("server did not close TCP after the WebSocket close handshake")
            sock.settimeout(max(left, 0.001))
            try:
                d = sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            if not d:
                return

    def close(self):
        try:
            self.ws.shutdown()
        except Exception:
            pass
