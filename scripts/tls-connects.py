#!/usr/bin/env python3
"""How many TLS connects of threaded Python clients fail, per server binary.

Starts each given stampede binary with `--shards 2` and a trustme
certificate, then connects N times one after the other with stomp.py
(CONNECT with receipt-free `wait=True`, then DISCONNECT) or with the
`websockets` sync client (CONNECT over `wss://`, CONNECTED read), and
prints the failures per binary. Both clients read in a background thread
while the caller writes, on one OpenSSL socket: data the server sends
unasked right after the handshake (TLS 1.3 session tickets) races with
the first write there (CPython issue 77271). Binaries run in turn, twice
each by default, so a drift of the machine shows.

    scripts/tls-connects.py --client stomppy --connects 300 OLD_BIN NEW_BIN
    scripts/tls-connects.py --client websockets --connects 300 NEW_BIN
"""
import argparse
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import stomp
import trustme
from websockets.sync.client import connect as ws_connect

TIMEOUT = 3.0


def start(binary: str, d: Path):
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--stomp-listen", "127.0.0.1:0",
         "--data-dir", str(d / "data"), "--tls-cert", str(d / "cert.pem"),
         "--tls-key", str(d / "key.pem"), "--shards", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    http = stomp_port = None
    deadline = time.monotonic() + 30
    while stomp_port is None:
        line = proc.stderr.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"{binary} did not start")
        m = re.search(r"http\+ws on 127\.0\.0\.1:(\d+).*stomp on 127\.0\.0\.1:(\d+)", line)
        if m:
            http, stomp_port = int(m.group(1)), int(m.group(2))
    # Keep draining the log so the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, http, stomp_port


def stomppy_once(port: int, d: Path, i: int):
    conn = stomp.Connection12([("127.0.0.1", port)], heartbeats=(0, 0), timeout=TIMEOUT)
    conn.set_ssl(for_hosts=[("127.0.0.1", port)], ca_certs=str(d / "ca.pem"))
    conn.connect(f"u{i}", "x", wait=True)
    conn.disconnect()


def websockets_once(port: int, ctx: ssl.SSLContext, i: int):
    with ws_connect(f"wss://127.0.0.1:{port}/ws", ssl=ctx, subprotocols=["v12.stomp"],
                    open_timeout=TIMEOUT) as ws:
        ws.send(f"CONNECT\naccept-version:1.2\nhost:x\nlogin:u{i}\n\n\0")
        assert ws.recv(timeout=TIMEOUT).startswith("CONNECTED")


def run(binary: str, client: str, connects: int, d: Path, ctx: ssl.SSLContext) -> int:
    proc, http, stomp_port = start(binary, d)
    fails = 0
    try:
        for i in range(connects):
            try:
                if client == "stomppy":
                    stomppy_once(stomp_port, d, i)
                else:
                    websockets_once(http, ctx, i)
            except Exception as e:  # noqa: BLE001 - every failure counts
                fails += 1
                print(f"  connect {i}: {type(e).__name__} {e}", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return fails


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--client", choices=["stomppy", "websockets"], default="stomppy")
    ap.add_argument("--connects", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("binaries", nargs="+")
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="tls-connects-"))
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    (d / "cert.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    (d / "key.pem").write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    totals = {b: 0 for b in args.binaries}
    for r in range(args.rounds):
        for b in args.binaries:
            fails = run(b, args.client, args.connects, d, ctx)
            totals[b] += fails
            print(f"round {r + 1} {b}: {fails} of {args.connects} {args.client} connects failed", flush=True)
    for b, fails in totals.items():
        print(f"total {b}: {fails} of {args.connects * args.rounds} failed")


if __name__ == "__main__":
    main()
