#!/usr/bin/env python3
"""Server RSS per idle, subscribed WebSocket session.

Starts stampede (STAMPEDE_BIN or target/release/stampede) on free ports,
opens N WebSocket sessions that each CONNECT and SUBSCRIBE to one of R rooms
(frames sent raw, masked, in one write per socket; replies read), then
reports the server's RSS before and after and the bytes per session.

    scripts/idle-memory.py --sessions 10000 --rooms 100
    scripts/idle-memory.py --sessions 10000 --rooms 100 --tls   # wss:// (trustme cert)

Connections are spread over source addresses 127.0.0.2, 127.0.0.3, ... so
no one ephemeral-port range caps them; this process must be allowed
sessions + 100 open files (ulimit -n).
"""
import argparse
import base64
import os
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ws_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81])
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--rooms", type=int, default=100)
    ap.add_argument("--shards", type=int, default=0)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--tls", action="store_true",
                    help="wss:// with a throw-away certificate (needs the trustme package)")
    args = ap.parse_args()

    binary = os.environ.get("STAMPEDE_BIN", os.path.join(ROOT, "target/release/stampede"))
    data = tempfile.mkdtemp(prefix="stampede-mem-")
    cmd = [binary, "--listen", "127.0.0.1:0", "--stomp-listen", "off", "--data-dir", data,
           "--heartbeat-send-ms", "0", "--heartbeat-receive-ms", "0"]
    if args.shards:
        cmd += ["--shards", str(args.shards)]
    client_tls = None
    if args.tls:
        import ssl
        import trustme
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1")
        leaf.cert_chain_pems[0].write_to_path(os.path.join(data, "cert.pem"))
        leaf.private_key_pem.write_to_path(os.path.join(data, "key.pem"))
        cmd += ["--tls-cert", os.path.join(data, "cert.pem"), "--tls-key", os.path.join(data, "key.pem")]
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
    srv = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = srv.stdout.readline()
        port = int(re.search(r"http=[\d.]+:(\d+)", line).group(1))
        time.sleep(0.3)
        before = rss_kib(srv.pid)

        sel = selectors.DefaultSelector()
        socks = []
        pending = 0
        t0 = time.time()
        for i in range(args.sessions):
            s = socket.socket()
            if i >= 20000:
                # Past one port range: another source address. (An explicit
                # bind(port 0) is slow with many sockets, so only here.)
                s.bind((f"127.0.0.{1 + i // 20000}", 0))
            s.connect(("127.0.0.1", port))
            if client_tls is not None:
                s = client_tls.wrap_socket(s, server_hostname="127.0.0.1")
            room = f"r{i % args.rooms}"
            key = base64.b64encode(os.urandom(16)).decode()
            req = (f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   f"Sec-WebSocket-Protocol: v12.stomp\r\n\r\n").encode()
            req += ws_frame(f"CONNECT\naccept-version:1.2\nlogin:u{i}\n\n\0".encode())
            req += ws_frame(f"SUBSCRIBE\nid:0\ndestination:/topic/{room}\nreceipt:ok\n\n\0".encode())
            s.sendall(req)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, bytearray())
            socks.append(s)
            pending += 1
            # Drain replies as we go so neither side's buffers pile up.
            while pending > 512 or (i == args.sessions - 1 and pending):
                for key_, _ in sel.select(timeout=5):
                    buf = key_.data
                    try:
                        chunk = key_.fileobj.recv(65536)
                    except (BlockingIOError, OSError) as e:
                        if isinstance(e, BlockingIOError) or "WANT_READ" in str(e) \
                                or type(e).__name__ == "SSLWantReadError":
                            continue
                        raise
                    if not chunk:
                        raise SystemExit("server closed a session")
                    buf += chunk
                    if b"receipt-id:ok" in buf:
                        sel.unregister(key_.fileobj)
                        pending -= 1
        took = time.time() - t0
        time.sleep(args.settle)
        after = rss_kib(srv.pid)
        per = (after - before) * 1024 / args.sessions
        print(f"{'wss' if args.tls else 'ws'} sessions={args.sessions} rooms={args.rooms} opened+subscribed in {took:.1f}s; "
              f"server CPU {cpu_seconds(srv.pid):.2f}s, client CPU {time.process_time():.2f}s")
        print(f"server RSS before={before} KiB after={after} KiB -> {per:.0f} bytes per idle subscribed session")
        for s in socks:
            s.close()
    finally:
        srv.terminate()
        srv.wait(10)


if __name__ == "__main__":
    sys.exit(main())
