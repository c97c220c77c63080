#!/usr/bin/env python3
"""Abuse soak (issue 10): does well-behaved traffic survive abusive clients?

Starts a release stampede (`target/release/stampede`, or $STAMPEDE_BIN) with
`--shards 2 --room-idle-s 5` on free loopback ports and a fresh data dir, then

1. quiet run: `stampede-bench fanout` 20 rooms x 100 members (2,000 clients)
   at a fixed 200 messages/s (20,000 deliveries/s) for D seconds, alone;
2. abuse run: the same fanout for D seconds while abuser processes hammer the
   server: garbage bytes (STOMP port, and WebSocket after a valid upgrade),
   malformed frames (oversized, NUL/CR in headers, bad escapes, bad
   content-length, too many headers), never-finished handshakes, cross-shard
   SEND floods from clients that never read, subscribe/unsubscribe churn over
   millions of room names, and 10,000 connect/disconnect cycles;
3. after: ~15 s of RSS samples once the abuse has stopped (rooms freed after
   --room-idle-s 5 should show), then /healthz, a STOMP CONNECT and SIGTERM.

The server's RSS is sampled every 0.5 s throughout (rss.csv). Everything is
bounded by deadlines; every process started here is stopped on exit or
Ctrl-C. Loopback only, stdlib only.

    scripts/soak-abuse.py --quick              # ~1.5 min smoke run
    scripts/soak-abuse.py                      # D = 120 s per phase (~5 min)
    scripts/soak-abuse.py --duration 60 --out DIR

Writes DIR (default bench/results/<date>-soak/): summary.md, fanout-quiet.json,
fanout-abuse.json, rss.csv, abusers.json, server-log-tail.txt. Exits 1 if a
pass criterion fails.
"""
import argparse
import base64
import datetime
import json
import multiprocessing as mp
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARDS = 2

# ---------------------------------------------------------------------------
# pass criteria (named, with their reasoning)
# ---------------------------------------------------------------------------

# Server RSS must stay under this during the whole soak. What the server's
# limits let the abusers pin, worst case: every connection's read buffer up to
# --max-frame-size (~2,500 connections x 64 KiB = 160 MB, though only the
# malformed-frame clients get near it), 1 MiB --max-outbound-bytes for each
# non-reading flooder that subscribed (a dozen at most = 12 MB), 4 MiB
# --max-peer-bytes per shard pair, the writer queue (65,536 slots, ~9 MB, plus
# the queued messages ~15 MB), the rooms the churn keeps alive within
# --room-idle-s 5 (tens of thousands x ~200 B = a few MB) and SQLite's page
# cache. That is ~250 MB at the very worst; 1 GiB leaves 4x for allocator
# slack while still catching a leak that is per churned room name (2 million
# x a few hundred bytes) or per connection cycle.
RSS_BOUND_KIB = 1024 * 1024

# After the abuse (and the well-behaved fanout) stops and --room-idle-s has
# passed, RSS must come back near the pre-abuse baseline (measured just before
# the abuse run, after the quiet run, so with the same warmed-up allocator):
# at most max(1.5 x baseline, baseline + 128 MiB). Set after the smoke runs:
# a SEND flood fills the bounded queues (writer queue, peer bytes, outbound
# buffers of non-reading subscribers), and mimalloc keeps much of that
# high-water mark: 7 rounds of 10 s cross-shard flood (~20 M messages) on one
# server left 97-134 MiB anonymous RSS after each round against a 29 MiB
# start, not growing with the rounds. So "returns exactly" is not expected;
# what this must catch is memory that grows with the abuse volume (a leak of
# 100 B per churned room name is 200 MB over 2 M names; 1 KiB per connection
# cycle or malformed connection is 10-60 MB, so watch the figures too).
RSS_AFTER_FACTOR = 1.5
RSS_AFTER_SLACK_KIB = 128 * 1024

# p99 publish-to-delivery latency during abuse must be within this factor of
# the quiet run's p99.
P99_FACTOR = 2.0

# well-behaved load
ROOMS, MEMBERS, PUBLISHERS, RATE = 20, 100, 4, 200


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_parts(pid):
    """(RssAnon, RssFile, RssShmem) in KiB: anonymous memory vs mapped files (SQLite's -shm)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out.get("RssAnon"), out.get("RssFile"), out.get("RssShmem")


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def owner_shard(room: str, shards: int = SHARDS) -> int:
    return fnv1a64(room.encode()) % shards


def frame(command, headers=(), body=b""):
    out = command.encode() + b"\n"
    for k, v in headers:
        out += (k if isinstance(k, bytes) else k.encode()) + b":" + (v if isinstance(v, bytes) else v.encode()) + b"\n"
    return out + b"\n" + body + b"\x00"


CONNECT = frame("CONNECT", [("accept-version", "1.2"), ("host", "/"), ("heart-beat", "0,0")])


def ws_frame(payload: bytes, opcode=0x1, mask_key=None) -> bytes:
    """One masked client WebSocket frame (FIN set)."""
    mask = mask_key or os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    # XOR via int arithmetic: fast enough for the sizes used here
    m = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big") if n else b""
    return head + mask + masked


def dial(port, src=None, timeout=5.0, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if src:
        s.bind((src, 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def read_until(s, token: bytes, timeout=5.0, limit=1 << 20):
    """Read until token appears; returns the bytes (b'' on EOF/timeout)."""
    buf = b""
    end = time.time() + timeout
    while token not in buf:
        left = end - time.time()
        if left <= 0 or len(buf) > limit:
            return b""
        s.settimeout(left)
        try:
            d = s.recv(65536)
        except (socket.timeout, OSError):
            return b""
        if not d:
            return b""
        buf += d
    return buf


def ws_upgrade(s, path="/ws"):
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
           f"Sec-WebSocket-Protocol: v12.stomp, v11.stomp, v10.stomp\r\n\r\n")
    s.sendall(req.encode())
    resp = read_until(s, b"\r\n\r\n")
    if not resp.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"upgrade refused: {resp[:40]!r}")
    return resp.split(b"\r\n\r\n", 1)[1]


def wait_closed(s, timeout):
    """Drain until the peer closes (True) or timeout (False)."""
    end = time.time() + timeout
    while True:
        left = end - time.time()
        if left <= 0:
            return False
        s.settimeout(left)
        try:
            d = s.recv(65536)
        except socket.timeout:
            return False
        except OSError:
            return True
        if not d:
            return True


def stomp_session(s, ws):
    """Send CONNECT, return the CONNECTED bytes (raises if none)."""
    s.sendall(ws_frame(CONNECT) if ws else CONNECT)
    got = read_until(s, b"\x00", timeout=10)
    if b"CONNECTED" not in got:
        raise ConnectionError(f"no CONNECTED: {got[:60]!r}")
    return got


def session_shard(connected: bytes) -> int:
    m = re.search(rb"\nsession:(\d+)-", connected)
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------------------
# abusers: each runs in its own process until `stop` is set or its deadline,
# and puts a dict of counters on `results`.
# ---------------------------------------------------------------------------


def _abuser_main(fn, name, idx, cfg, stop, results):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    try:
        os.nice(cfg["nice"])
        if cfg.get("sched_idle"):
            # Run only on CPU the server and the generator leave idle: the
            # soak measures how the *server* isolates its well-behaved
            # clients, not how the kernel shares two vCPUs between the
            # generator and a dozen busy python processes (the counters
            # below show how much abuse they still produced).
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError:
        pass
    random.seed(os.getpid())
    parent = os.getppid()
    stats = {"abuser": name, "proc": idx, "errors": 0}
    deadline = cfg["deadline"]

    def running():
        return not stop.is_set() and time.time() < deadline and os.getppid() == parent

    try:
        fn(idx, cfg, running, stats)
    except Exception as e:  # an abuser's own bug must not hang the soak
        stats["crashed"] = repr(e)
    results.put(stats)


def bump(stats, key, n=1):
    stats[key] = stats.get(key, 0) + n


def abuse_garbage(idx, cfg, running, stats):
    """Random bytes on the STOMP port; random bytes / garbage WS frames after a valid upgrade."""
    src = f"127.0.10.{idx + 1}"
    while running():
        kind = random.choice(["stomp", "stomp-cmd", "ws-raw", "ws-text", "ws-binary"])
        try:
            if kind.startswith("stomp"):
                s = dial(cfg["stomp_port"], src)
                junk = os.urandom(random.randint(1, 8192))
                if kind == "stomp-cmd":
                    s.sendall(CONNECT)
                    junk = b"SEND\n" + junk
                s.sendall(junk)
            else:
                s = dial(cfg["http_port"], src)
                ws_upgrade(s)
                junk = os.urandom(random.randint(1, 8192))
                if kind == "ws-raw":
                    s.sendall(junk)  # not even WebSocket framing (unmasked, bad opcodes...)
                elif kind == "ws-text":
                    s.sendall(ws_frame(junk, 0x1))  # text that is (almost surely) not UTF-8
                else:
                    s.sendall(ws_frame(CONNECT, 0x1) + ws_frame(junk, 0x2))
            bump(stats, kind)
            if wait_closed(s, 0.5):
                bump(stats, "server_closed")
            else:
                bump(stats, "left_open_0.5s")
            s.close()
        except OSError:
            stats["errors"] += 1
            time.sleep(0.01)


def _malformed_frames():
    big = b"x" * 70000
    return {
        "oversized-body": frame("SEND", [("destination", "/topic/mal")], big),
        "oversized-header": b"SEND\ndestination:/topic/mal\nx:" + b"a" * 100000 + b"\n\n\x00",
        "nul-in-header": b"SEND\ndestination:/topic/mal\nfoo:a\x00b\ncontent-length:2\n\nhi\x00",
        "cr-in-header": b"SEND\ndestination:/topic/mal\nfoo:a\rb\n\nhi\x00",
        "bad-escape": b"SEND\ndestination:/topic/mal\nfoo:a\\xb\n\nhi\x00",
        "content-length-alpha": b"SEND\ndestination:/topic/mal\ncontent-length:abc\n\nhi\x00",
        "content-length-negative": b"SEND\ndestination:/topic/mal\ncontent-length:-5\n\nhi\x00",
        "content-length-huge": b"SEND\ndestination:/topic/mal\ncontent-length:99999999999999999999\n\nhi\x00",
        "content-length-short": b"SEND\ndestination:/topic/mal\ncontent-length:2\n\nhello there\x00",
        "too-many-headers": frame("SEND", [("destination", "/topic/mal")] + [(f"h{i}", "v") for i in range(200)], b"hi"),
        "bad-command": b"EXPLODE\nfoo:bar\n\n\x00",
    }


def abuse_malformed(idx, cfg, running, stats):
    """CONNECT properly, then one malformed frame; expect an ERROR and a close."""
    src = f"127.0.11.{idx + 1}"
    frames = _malformed_frames()
    names = sorted(frames)
    while running():
        name = random.choice(names)
        ws = random.random() < 0.5
        try:
            s = dial(cfg["http_port"] if ws else cfg["stomp_port"], src)
            if ws:
                ws_upgrade(s)
            stomp_session(s, ws)
            raw = frames[name]
            s.sendall(ws_frame(raw, 0x2) if ws else raw)
            bump(stats, name)
            got = b""
            end = time.time() + 1.0
            closed = False
            while time.time() < end:
                s.settimeout(max(0.01, end - time.time()))
                try:
                    d = s.recv(65536)
                except socket.timeout:
                    break
                except OSError:
                    closed = True
                    break
                if not d:
                    closed = True
                    break
                got += d
            if b"ERROR" in got:
                bump(stats, "got_error")
            bump(stats, "server_closed" if closed else "left_open_1s")
            s.close()
        except OSError:
            stats["errors"] += 1
            time.sleep(0.01)


def abuse_slowloris(idx, cfg, running, stats):
    """Hold many half-sent handshakes (HTTP request heads, and a few half CONNECTs)."""
    src = f"127.0.12.{idx + 1}"
    target = cfg["slowloris_per_proc"]
    held = []
    while running():
        while len(held) < target and running():
            try:
                if random.random() < 0.8:
                    s = dial(cfg["http_port"], src)
                    s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nSec-WebSocket-")
                    bump(stats, "http_half_heads")
                else:
                    s = dial(cfg["stomp_port"], src)
                    s.sendall(b"CONNECT\naccept-version:1.2\nho")
                    bump(stats, "stomp_half_connects")
                s.setblocking(False)
                held.append(s)
            except OSError:
                stats["errors"] += 1
                time.sleep(0.05)
                break
        stats["max_held"] = max(stats.get("max_held", 0), len(held))
        if not held:
            time.sleep(0.2)
            continue
        r, _, _ = select.select(held, [], [], 0.5)
        for s in r:
            try:
                d = s.recv(4096)
            except OSError:
                d = b""
            if not d:
                bump(stats, "closed_by_server")
                held.remove(s)
                s.close()
    for s in held:
        s.close()


def abuse_flood(idx, cfg, running, stats):
    """SEND as fast as possible to rooms owned by the *other* shard; never read.

    Odd-numbered connections also SUBSCRIBE to their own flood rooms (so the
    server has to queue deliveries to a reader that never reads: a slow
    consumer). Half the connections are WebSocket, half plain STOMP."""
    n_conn = cfg["flood_conns_per_proc"]
    src = f"127.0.13.{idx + 1}"
    socks = []

    def open_one(j):
        ws = (j % 2) == 0
        s = dial(cfg["http_port"] if ws else cfg["stomp_port"], src, rcvbuf=4096)
        if ws:
            ws_upgrade(s)
        shard = session_shard(stomp_session(s, ws))
        rooms = []
        k = 0
        while len(rooms) < 4:
            r = f"flood-{idx}-{j}-{k}"
            k += 1
            if owner_shard(r) != shard:
                rooms.append(r)
        body = b"flood " + b"f" * 58
        batch = b"".join(frame("SEND", [("destination", f"/topic/{rooms[i % 4]}")], body) for i in range(200))
        if j % 2 == 1:
            subs = b"".join(frame("SUBSCRIBE", [("id", f"s{i}"), ("destination", f"/topic/{r}")]) for i, r in enumerate(rooms))
            s.sendall(ws_frame(subs, 0x2) if ws else subs)
            bump(stats, "subscribed_flooders")
        payload = ws_frame(batch, 0x2) if ws else batch
        s.settimeout(0.5)
        bump(stats, "connections")
        return [s, payload, j]

    while running() and len(socks) < n_conn:
        try:
            socks.append(open_one(len(socks)))
        except OSError:
            stats["errors"] += 1
            time.sleep(0.1)
    for ent in socks:
        ent[0].setblocking(False)
        ent.append(memoryview(ent[1]))  # what is left of the current batch (never cut a frame)
    while running() and socks:
        _, w, _ = select.select([], [e[0] for e in socks], [], 0.5)
        if not w:
            bump(stats, "all_blocked_0.5s")  # the server stopped reading every flooder: back-pressure
            continue
        for ent in socks:
            if ent[0] not in w:
                continue
            s, payload, j, left = ent
            try:
                n = s.send(left)
                left = left[n:]
                if not left:
                    bump(stats, "sends", 200)
                    left = memoryview(payload)
                ent[3] = left
            except BlockingIOError:
                pass
            except OSError:
                bump(stats, "closed_by_server")
                s.close()
                try:
                    ent[:] = open_one(j)
                    ent[0].setblocking(False)
                    ent.append(memoryview(ent[1]))
                except OSError:
                    stats["errors"] += 1
                    time.sleep(0.1)
                    ent[3] = memoryview(b"")  # retried below
                    socks.remove(ent)
                    break
        while running() and len(socks) < n_conn:  # replace any that could not be reopened
            try:
                e = open_one(len(socks))
                e[0].setblocking(False)
                e.append(memoryview(e[1]))
                socks.append(e)
            except OSError:
                stats["errors"] += 1
                time.sleep(0.1)
                break
    for ent in socks:
        ent[0].close()


def abuse_churn(idx, cfg, running, stats):
    """SUBSCRIBE + UNSUBSCRIBE over fresh room names, in pipelined batches,
    over cfg['churn_conns_per_proc'] connections at once (one thread each):
    the server holds each connection to --max-subscribe-rate (100/s by
    default), so an attacker after millions of names needs many
    connections, and so do we. Each batch ends with a receipt the thread
    waits for (so it cannot run away from the server). Paced to
    cfg['churn_names_per_proc'] over the run."""
    src = f"127.0.14.{idx + 1}"
    n_conn = cfg["churn_conns_per_proc"]
    per_conn = cfg["churn_names_per_proc"] // n_conn
    t0, span = time.time(), cfg["span"]
    batch_n = cfg.get("churn_batch", 50)
    lock = threading.Lock()
    names = [0]

    def one(k):
        done, batch_no = 0, 0
        s = None
        while running() and done < per_conn:
            try:
                if s is None:
                    ws = random.random() < 0.3
                    s = dial(cfg["http_port"] if ws else cfg["stomp_port"], src, timeout=10)
                    if ws:
                        ws_upgrade(s)
                    stomp_session(s, ws)
                    with lock:
                        bump(stats, "connections")
                parts = []
                for i in range(batch_n):
                    n = done + i
                    parts.append(b"SUBSCRIBE\nid:%d\ndestination:/topic/churn-%d-%d-%d\n\n\x00UNSUBSCRIBE\nid:%d\n\n\x00"
                                 % (n, idx, k, n, n))
                batch_no += 1
                parts[-1] = parts[-1][:-3] + b"\nreceipt:b%d\n\n\x00" % batch_no  # the batch's last UNSUBSCRIBE
                data = b"".join(parts)
                s.sendall(ws_frame(data, 0x2) if ws else data)
                got = read_until(s, b"receipt-id:b%d" % batch_no, timeout=15)
                if not got:
                    with lock:
                        bump(stats, "no_receipt_reconnect")
                    s.close()
                    s = None
                    continue
                if b"ERROR" in got:
                    with lock:
                        bump(stats, "errors_from_server")
                done += batch_n
                with lock:
                    names[0] += batch_n
                    stats["names"] = names[0]
                # pace: stay on a straight line from 0 to `per_conn` over the span
                ahead = done / per_conn * span - (time.time() - t0)
                if ahead > 0:
                    time.sleep(min(ahead, 1.0))
            except OSError:
                with lock:
                    stats["errors"] = stats.get("errors", 0) + 1
                if s:
                    s.close()
                s = None
                time.sleep(0.1)
        if s:
            s.close()

    threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(n_conn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def abuse_cycles(idx, cfg, running, stats):
    """Connect/disconnect cycles: WS upgrade + CONNECT + close, plain STOMP
    CONNECT + close, and bare TCP connect + close, paced over the run."""
    src = f"127.0.15.{idx + 1}"
    total = cfg["cycles_per_proc"]
    t0, span = time.time(), cfg["span"]
    done = 0
    while running() and done < total:
        kind = ("ws", "stomp", "tcp")[done % 3]
        t_cycle = time.time()
        try:
            if kind == "ws":
                s = dial(cfg["http_port"], src)
                ws_upgrade(s)
                stomp_session(s, True)
                if done % 2:
                    s.sendall(ws_frame(b"\x03\xe8", 0x8))  # polite close 1000
            elif kind == "stomp":
                s = dial(cfg["stomp_port"], src)
                stomp_session(s, False)
            else:
                s = dial(cfg["http_port"] if done % 2 else cfg["stomp_port"], src)
            s.close()
            bump(stats, kind)
            ms = int((time.time() - t_cycle) * 1000)
            bump(stats, "sum_cycle_ms", ms)
            stats["max_cycle_ms"] = max(stats.get("max_cycle_ms", 0), ms)
        except OSError:
            stats["errors"] += 1
        done += 1
        stats["cycles"] = done
        ahead = done / total * span - (time.time() - t0)
        if ahead > 0:
            time.sleep(ahead)


def abuse_burn(idx, cfg, running, stats):
    """Control, not an attack (only with --abusers burn): burn CPU at the
    abusers' nice level without touching the server, to show what merely
    sharing the 2 vCPUs with busy processes does to the fanout's p99."""
    n = 0
    while running():
        for _ in range(100_000):
            n += 1
        stats["loops"] = n // 100_000


CONTROLS = [("burn", abuse_burn, 2)]

ABUSERS = [
    # name, function, processes
    ("garbage", abuse_garbage, 1),
    ("malformed", abuse_malformed, 1),
    ("slowloris", abuse_slowloris, 1),
    ("flood", abuse_flood, 2),
    ("churn", abuse_churn, 2),
    ("cycles", abuse_cycles, 4),
]


# ---------------------------------------------------------------------------
# the soak
# ---------------------------------------------------------------------------


class Sampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.phase, self.rows, self.t0 = pid, "start", [], time.time()
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            r = rss_kib(self.pid)
            if r is not None:
                self.rows.append((round(time.time() - self.t0, 2), self.phase, r, fd_count(self.pid))
                                 + rss_parts(self.pid))
            self.halt.wait(0.5)

    def peak(self, phases=None):
        v = [r for _, p, r, *_ in self.rows if phases is None or p in phases]
        return max(v) if v else None


def healthz(port):
    s = dial(port, timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    got = read_until(s, b"ok", timeout=5)
    s.close()
    return got.startswith(b"HTTP/1.1 200") and got.rstrip().endswith(b"ok")


def stomp_check(port):
    s = dial(port, timeout=5)
    try:
        return b"CONNECTED" in stomp_session(s, False)
    finally:
        s.close()


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return os.cpu_count(), model, os.uname().release


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=None, help="seconds per phase (default 120; --quick 20)")
    ap.add_argument("--quick", action="store_true", help="smoke run: D=20, smaller churn and cycles")
    ap.add_argument("--out", default=None, help="results dir (default bench/results/<date>-soak/)")
    ap.add_argument("--after", type=float, default=15.0, help="seconds of RSS samples after the abuse")
    ap.add_argument("--abuser-sched", choices=["idle", "nice"], default="idle",
                    help="abusers at nice 10 under SCHED_IDLE (default: they get only CPU the server and the "
                         "generator leave) or at nice 10 alone (they compete with the generator for the 2 vCPUs)")
    ap.add_argument("--abusers", default=",".join(a[0] for a in ABUSERS),
                    help="comma-separated subset of abusers to run (diagnostics; default all: %(default)s)")
    args = ap.parse_args()
    D = args.duration or (20.0 if args.quick else 120.0)
    churn_names = 100_000 if args.quick else 2_000_000
    cycles = 2_000 if args.quick else 10_000
    slowloris = 100 if args.quick else 300
    date = datetime.datetime.utcnow().strftime("%Y-%m-%d")
    out = args.out or os.path.join(ROOT, "bench/results", f"{date}-soak" + ("-quick" if args.quick else ""))
    os.makedirs(out, exist_ok=True)

    server_bin = os.environ.get("STAMPEDE_BIN", os.path.join(ROOT, "target/release/stampede"))
    bench_bin = os.environ.get("STAMPEDE_BENCH_BIN", os.path.join(ROOT, "target/release/stampede-bench"))
    data = tempfile.mkdtemp(prefix="stampede-soak-")
    server_log = os.path.join(data, "server.log")
    server_cmd = [server_bin, "--shards", str(SHARDS), "--listen", "127.0.0.1:0", "--stomp-listen", "127.0.0.1:0",
                  "--data-dir", os.path.join(data, "db"), "--room-idle-s", "5"]
    chosen = set(args.abusers.split(","))
    procs = []  # abuser processes
    fan = None
    srv = None
    stop = mp.Event()
    results = mp.Queue()
    commands = []
    started = time.time()

    def kill_fanout():
        if fan and fan.poll() is None:
            try:
                os.killpg(fan.pid, signal.SIGKILL)
            except OSError:
                pass
            fan.wait()

    try:
        log(f"server: {' '.join(server_cmd)}")
        env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("STAMPEDE_"))
        commands.append((env + " " if env else "") + " ".join(server_cmd).replace(data, "$TMP").replace(ROOT + "/", ""))
        srv = subprocess.Popen(server_cmd, stdout=subprocess.PIPE, stderr=open(server_log, "wb"), text=True,
                               start_new_session=True)  # stopped by us (SIGTERM), not by the terminal's Ctrl-C
        line = srv.stdout.readline()
        m = re.search(r"http=[\d.]+:(\d+) stomp=[\d.]+:(\d+)", line)
        if not m:
            raise SystemExit(f"server did not start: {line!r}")
        http_port, stomp_port = int(m.group(1)), int(m.group(2))
        url = f"ws://127.0.0.1:{http_port}/ws"
        log(f"server pid {srv.pid} http {http_port} stomp {stomp_port}")
        sampler = Sampler(srv.pid)
        sampler.start()
        time.sleep(1)

        def fanout(tag):
            nonlocal fan
            js = os.path.join(out, f"fanout-{tag}.json")
            cmd = [bench_bin, "fanout", "--url", url, "--rooms", str(ROOMS), "--members", str(MEMBERS),
                   "--publishers", str(PUBLISHERS), "--rate", str(RATE), "--duration", str(int(D)),
                   "--step-timeout", "30", "--server-pid", str(srv.pid), "--label", f"stampede-{tag}", "--json", js]
            commands.append(" ".join(cmd).replace(bench_bin, "stampede-bench").replace(url, "ws://127.0.0.1:PORT/ws")
                            .replace(f"--server-pid {srv.pid}", "--server-pid PID").replace(out, "OUT"))
            log(f"fanout ({tag}): {' '.join(cmd)}")
            fan = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
            return js

        def finish_fanout(tag, js, timeout):
            try:
                text, _ = fan.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_fanout()
                text = "(killed: over its time bound)"
            with open(os.path.join(out, f"fanout-{tag}.log"), "w") as f:
                f.write(text)
            res = None
            if os.path.exists(js):
                with open(js) as f:
                    res = json.load(f)
            log(f"fanout ({tag}) exit {fan.returncode}: " + (
                f"lost {res['lost']} out_of_order {res['out_of_order']} p50 {res['latency_ms']['p50']} "
                f"p99 {res['latency_ms']['p99']} max {res['latency_ms']['max']} ms" if res else "no JSON"))
            return fan.returncode, res

        fan_bound = D + 120  # set-up (30 s steps) + drain (10 s) + slack

        # 1. quiet run
        sampler.phase = "quiet"
        js = fanout("quiet")
        quiet_rc, quiet = finish_fanout("quiet", js, fan_bound)
        load_quiet = os.getloadavg()
        if srv.poll() is not None:
            raise RuntimeError(f"server exited during the quiet run: {srv.returncode}")

        # 2. abuse run
        sampler.phase = "pre-abuse"
        time.sleep(5)  # let the quiet run's sessions go away
        base = [r for _, p, r, *_ in sampler.rows if p == "pre-abuse"][-4:]
        baseline = sorted(base)[len(base) // 2] if base else rss_kib(srv.pid)
        log(f"pre-abuse RSS {baseline / 1024:.1f} MiB")
        sampler.phase = "abuse"
        t_abuse = time.time()
        js = fanout("abuse")
        cfg = {
            "http_port": http_port, "stomp_port": stomp_port, "nice": 10,
            "sched_idle": args.abuser_sched == "idle",
            "deadline": t_abuse + D + 40,  # hard bound; normally stopped when the fanout ends
            "slowloris_per_proc": slowloris,
            "flood_conns_per_proc": 4,
            # 2 processes x 170 connections x 50 names/s (100 SUBSCRIBE +
            # UNSUBSCRIBE per s, the server's default --max-subscribe-rate)
            # = 17,000 names/s: 2 M in 120 s.
            "churn_conns_per_proc": 40 if args.quick else 170,
            "span": D + 3,  # pacing of churn and cycles: the fanout's set-up + publishing
        }
        ctx = mp.get_context("fork")
        for name, fn, n in ABUSERS + CONTROLS:
            if name not in chosen:
                continue
            for i in range(n):
                c = dict(cfg)
                c["churn_names_per_proc"] = churn_names // n
                c["cycles_per_proc"] = cycles // n
                p = ctx.Process(target=_abuser_main, args=(fn, name, i, c, stop, results), daemon=True)
                p.start()
                procs.append(p)
        log(f"{len(procs)} abuser processes started (nice 10: {','.join(sorted(chosen))}), "
            f"hard deadline {D + 40:.0f} s")
        abuse_rc, abuse = finish_fanout("abuse", js, fan_bound)
        load_abuse = os.getloadavg()
        abuse_s = time.time() - t_abuse
        stop.set()
        stats = []
        t_end = time.time() + 30
        while len(stats) < len(procs) and time.time() < t_end:
            try:
                stats.append(results.get(timeout=1))
            except Exception:
                pass
        for p in procs:
            p.join(timeout=5)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        procs = []
        log(f"abuse stopped after {abuse_s:.0f} s")

        # 3. after
        sampler.phase = "after"
        t_after = time.time()
        time.sleep(args.after)
        after_rows = [r for t, p, r, *_ in sampler.rows if p == "after"]
        rss_after = sorted(after_rows[-4:])[len(after_rows[-4:]) // 2] if after_rows else None
        alive = srv.poll() is None
        health = alive and healthz(http_port)
        stomp_ok = alive and stomp_check(stomp_port)
        sampler.halt.set()
        sampler.join()
        t0 = time.time()
        if alive:
            srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(timeout=60)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        stop_s = time.time() - t0
        exit_status = srv.returncode
        log(f"server exit {exit_status} after SIGTERM ({stop_s:.1f} s)")

        # ------------------------------------------------------------------
        # verdict
        # ------------------------------------------------------------------
        peak = sampler.peak()
        peak_abuse = sampler.peak({"abuse"})
        with open(os.path.join(out, "rss.csv"), "w") as f:
            f.write("t_s,phase,rss_kib,fds,rss_anon_kib,rss_file_kib,rss_shmem_kib\n")
            for row in sampler.rows:
                f.write(",".join("" if v is None else str(v) for v in row) + "\n")
        stats.sort(key=lambda d: (d["abuser"], d["proc"]))
        with open(os.path.join(out, "abusers.json"), "w") as f:
            json.dump(stats, f, indent=1, sort_keys=True)
        tail = subprocess.run(["tail", "-n", "200", server_log], capture_output=True, text=True).stdout
        with open(os.path.join(out, "server-log-tail.txt"), "w") as f:
            f.write(tail)
        log_lines = sum(1 for _ in open(server_log, "rb"))
        panics = sum(1 for l in open(server_log, "rb") if b"panic" in l)
        plain_log = re.sub(r"\x1b\[[0-9;]*m", "", open(server_log, errors="replace").read())
        m_stored = re.search(r"stored messages=(\d+)", plain_log)
        stored_txt = f"{int(m_stored.group(1)):,}" if m_stored else "?"

        def clean(res, rc):
            return (res is not None and rc == 0 and res["lost"] == 0 and res["out_of_order"] == 0
                    and res.get("subscribers_short", 0) == 0 and res.get("sessions_dropped", 0) == 0)

        q99 = quiet["latency_ms"]["p99"] if quiet else None
        a99 = abuse["latency_ms"]["p99"] if abuse else None
        ratio = (a99 / q99) if (q99 and a99 is not None) else None
        after_bound = max(baseline * RSS_AFTER_FACTOR, baseline + RSS_AFTER_SLACK_KIB)
        crit = [
            ("quiet fanout: nothing lost, every room in order", clean(quiet, quiet_rc),
             fmt_fan(quiet, quiet_rc)),
            ("abuse fanout: nothing lost, every room in order", clean(abuse, abuse_rc),
             fmt_fan(abuse, abuse_rc)),
            (f"p99 during abuse <= {P99_FACTOR:g} x quiet p99", ratio is not None and ratio <= P99_FACTOR,
             f"{a99} ms / {q99} ms = {ratio:.2f}x" if ratio is not None else "n/a"),
            (f"RSS peak < {RSS_BOUND_KIB // 1024} MiB", peak is not None and peak < RSS_BOUND_KIB,
             f"peak {mib(peak)} (during abuse {mib(peak_abuse)})"),
            (f"RSS after <= max({RSS_AFTER_FACTOR:g} x baseline, baseline + {RSS_AFTER_SLACK_KIB // 1024} MiB)",
             rss_after is not None and rss_after <= after_bound,
             f"baseline {mib(baseline)}, {args.after:.0f} s after: {mib(rss_after)} (bound {mib(after_bound)})"),
            ("server never crashed: alive, /healthz 200, STOMP CONNECTED, exit 0 on SIGTERM",
             alive and health and stomp_ok and exit_status == 0,
             f"alive {alive}, healthz {health}, CONNECTED {stomp_ok}, exit {exit_status} ({stop_s:.1f} s), "
             f"panics in log {panics}"),
        ]
        ok = all(c[1] for c in crit)
        nproc, model, kernel = machine()
        try:
            version = subprocess.run([server_bin, "--version"], capture_output=True, text=True).stdout.strip()
            head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True).stdout.strip()
        except OSError:
            version, head, dirty = "?", "?", ""
        built = datetime.datetime.utcfromtimestamp(os.path.getmtime(server_bin)).strftime("%Y-%m-%d %H:%M UTC")
        now = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC")
        md = [f"# Abuse soak{' (quick)' if args.quick else ''}, {now}", "",
              f"Machine: {nproc} vCPU, {model}, Linux {kernel}; `ulimit -n` {os.sysconf('SC_OPEN_MAX')}. "
              f"Run by `scripts/soak-abuse.py{' --quick' if args.quick else ''}"
              f"{'' if args.duration is None else f' --duration {D:g}'}"
              f"{'' if args.abusers == ap.get_default('abusers') else f' --abusers {args.abusers}'}` (D = {D:g} s per phase); "
              f"server, generator and abusers share the same {nproc} vCPUs (abusers at nice 10). "
              f"Server: `{version}`, binary built {built}, tree at {head}{' with local changes' if dirty else ''}.",
              "",
              "## Verdict: " + ("PASS" if ok else "FAIL"), "",
              "| criterion | result | figures |", "|---|---|---|"]
        for name, good, fig in crit:
            md.append(f"| {name} | {'pass' if good else '**FAIL**'} | {fig} |")
        md += ["", "## Figures", "",
               "| | quiet | abuse |", "|---|---|---|"]
        for label, key in [("deliveries/s", "deliveries_per_s"), ("sent", "sent"), ("delivered", "delivered"),
                           ("lost", "lost"), ("out of order", "out_of_order"),
                           ("sessions dropped", "sessions_dropped")]:
            md.append(f"| {label} | {fmtv(quiet, key)} | {fmtv(abuse, key)} |")
        for p in ("p50", "p90", "p99", "max"):
            md.append(f"| latency {p} ms | {lat(quiet, p)} | {lat(abuse, p)} |")
        md.append(f"| server CPU s | {cost(quiet, 'server_cpu_s')} | {cost(abuse, 'server_cpu_s')} |")
        md.append(f"| generator CPU s | {cost(quiet, 'generator_cpu_s')} | {cost(abuse, 'generator_cpu_s')} |")
        fds = [r[3] for r in sampler.rows if r[1] == "abuse" and r[3] is not None]
        md += ["", f"RSS: start {mib(sampler.rows[0][2])}, quiet peak {mib(sampler.peak({'quiet'}))}, "
               f"pre-abuse baseline {mib(baseline)}, abuse peak {mib(peak_abuse)}, "
               f"after {args.after:.0f} s {mib(rss_after)} (every 0.5 s in `rss.csv`). "
               f"Server fds during abuse: peak {max(fds) if fds else '?'}. "
               f"Server log: {log_lines} lines (last 200 in `server-log-tail.txt`); messages the server "
               f"stored over the whole soak (its shutdown log): {stored_txt}. "
               f"Flooders' `sends` count SENDs written to the socket, including those the server discarded "
               "while closing a flooder it had ERRORed (slow consumer). "
               f"Load average (1/5 min) at the end of the quiet run {load_quiet[0]:.1f}/{load_quiet[1]:.1f}, "
               f"of the abuse run {load_abuse[0]:.1f}/{load_abuse[1]:.1f}.", "",
               "## What the abusers did (all processes summed; per process in `abusers.json`)", "",
               "| abuser | processes | counters |", "|---|---|---|"]
        agg = {}
        for st in stats:
            a = agg.setdefault(st["abuser"], {"_n": 0})
            a["_n"] += 1
            for k, v in st.items():
                if k in ("abuser", "proc"):
                    continue
                if isinstance(v, (int, float)):
                    a[k] = max(a.get(k, 0), v) if k.startswith("max_") else a.get(k, 0) + v
                else:
                    a[k] = v
        for name, a in sorted(agg.items()):
            n = a.pop("_n")
            md.append(f"| {name} | {n} | " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                                       for k, v in sorted(a.items())) + " |")
        md += ["", "## Commands", "", "```"] + commands + ["```", "",
               "Abusers (python processes of `scripts/soak-abuse.py` at nice 10, started with the abuse run's "
               "fanout and stopped when it ends, hard deadline D + 40 s; this run: "
               f"{', '.join(sorted(chosen))}): garbage (1 process, as fast as it can: random bytes on the STOMP "
               "port, random bytes / non-UTF-8 text / garbage binary WebSocket frames after a valid upgrade), "
               "malformed frames (1 process, as fast as it can, STOMP and WebSocket: oversized body and header, "
               "NUL and CR in a header, bad escape, content-length alpha/negative/huge/short, 200 headers, "
               f"unknown command), half-sent handshakes ({slowloris} held at once, re-opened when the server "
               "closes them), cross-shard flooders (2 processes x 4 connections, SEND as fast as they can to "
               "rooms the other shard owns, never reading, half of them also subscribed to those rooms), "
               f"subscribe/unsubscribe churn ({churn_names:,} fresh names targeted over the run, 2 processes x "
               f"{40 if args.quick else 170} connections (each held to the server's --max-subscribe-rate), "
               f"pipelined batches of 50 pairs), connect/disconnect cycles ({cycles:,} targeted, "
               "4 processes, WS upgrade + CONNECT + close / STOMP CONNECT + close / bare TCP in turn).", "",
               "Criteria (constants in the script): RSS bound "
               f"{RSS_BOUND_KIB // 1024} MiB (worst case the limits allow is ~250 MB; see RSS_BOUND_KIB); "
               f"after: max({RSS_AFTER_FACTOR:g} x baseline, baseline + {RSS_AFTER_SLACK_KIB // 1024} MiB), "
               "the baseline being the median of the last samples before the abuse (after the quiet run), "
               "'after' the median of the last 4 samples; p99 factor "
               f"{P99_FACTOR:g}.", ""]
        with open(os.path.join(out, "summary.md"), "w") as f:
            f.write("\n".join(md))
        print("\n".join(md[:8 + len(crit)]))
        log(f"wrote {out} ({time.time() - started:.0f} s in all)")
        return 0 if ok else 1
    finally:
        stop.set()
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        kill_fanout()
        if srv and srv.poll() is None:
            srv.send_signal(signal.SIGTERM)
            try:
                srv.wait(timeout=30)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()
        shutil.rmtree(data, ignore_errors=True)


def mib(kib):
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


def fmtv(res, key):
    if not res:
        return "n/a"
    v = res.get(key)
    return f"{v:,.0f}" if isinstance(v, (int, float)) else str(v)


def lat(res, p):
    return "n/a" if not res else f"{res['latency_ms'][p]:.2f}"


def cost(res, key):
    return "n/a" if not res else f"{res.get('cost', {}).get(key, '?')}"


def fmt_fan(res, rc):
    if not res:
        return f"no result (exit {rc})"
    return (f"exit {rc}; sent {res['sent']:,}, delivered {res['delivered']:,} of {res['expected']:,}, lost {res['lost']}, "
            f"out of order {res['out_of_order']}, members short {res.get('subscribers_short')}, "
            f"sessions dropped {res.get('sessions_dropped')} {res.get('drop_reasons') or ''}")


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _interrupt)  # even if started with SIGINT ignored (a background job)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
