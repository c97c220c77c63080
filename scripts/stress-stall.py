#!/usr/bin/env python3
"""Stall hunt (issue 11, item 3, "lost wake-ups").

Once in ~30 runs `stampede-bench fanout --rooms 4 --members 50 --publishers 3
--rate 0 --window 64 --body-size 300` against a `--shards 1` server stalled:
deliveries stopped, server and generator went idle, the last 64 messages of
every publisher never arrived. This script runs that shape and variations
of it many times, each against a fresh server, and catches a stall within
seconds while the evidence is still there.

Each run: a fresh `stampede` (`--listen 127.0.0.1:0 --stomp-listen off`, a
fresh `--data-dir` in a temp dir, publish rate limit off), its port parsed
from the stderr line `listening: http+ws on 127.0.0.1:PORT`, then one
`stampede-bench fanout ... --rate 0` for `--duration` seconds of publishing.
A watcher samples the server's sockets (`ss -tni`, byte counters of every
connection on the server's port) every 0.2 s; when no connection's counters
move for `--stall-s` seconds while the generator still runs, the run is a
stall. It then keeps, in OUT/stall-NNN-<shape>/:

  ss.txt          `ss -tanpi` for the port (both ends), twice, 0.5 s apart:
                  Recv-Q on the server's side = client bytes the server does
                  not read (a paused/throttled reader); Send-Q on the
                  server's side with Recv-Q on the client's = a client that
                  does not read; nothing queued anywhere = bytes held in a
                  user-space buffer (a lost flush in the server, or frames
                  the client never sent)
  unix.txt        the server's unix sockets (`ss -xanp`): its shards'
                  doorbells are socketpairs, so Recv-Q > 0 there is a ring
                  no shard has read
  io_uring.txt    /proc/PID/fdinfo of the server's io_uring fds (CQ head and
                  tail, polls armed, overflowed completions)
  threads.txt     /proc/PID/task/*/{stat,wchan} of the server and of the
                  generator's processes
  gdb.txt         `thread apply all bt` of the server (unless --no-gdb),
                  taken last: attaching interrupts the shards' io_uring
                  waits, which can end a stall (the generator's report
                  then shows it resumed)
  verdict.txt     where the bytes are, per connection kind (the script's
                  reading of ss.txt)
  server.stderr, bench.stdout, bench.stderr, fanout.json (the generator's
                  report once the server is killed)

then kills the server (and the generator, if it does not end by itself).

A run that ends on its own but lost or reordered messages (or whose
generator or server failed) is kept the same way, as fail-NNN-<shape>.

Shapes: the original one (rooms 4 x members 50, 3 publishers, window 64,
300-byte bodies, 1 shard) a quarter of the time, and in turn every
combination of shards {1, 2} x window {1, 8, 64, 256} x body {16, 300,
4000}, with rooms/members/publishers from a few small groupings (each
publisher of `fanout` feeds its own rooms; with more rooms than publishers
some publishers feed several rooms). The variations run with
--max-outbound-bytes 256 MiB: members live in a worker process two cores may
starve, and a member dropped as a slow consumer is loss by design, not a
stall. The original shape runs with the server's defaults (except in
--quick, which must not fail on a loaded machine). A run whose members were
dropped is counted as a failure ("dropped"), not as a stall.

    scripts/stress-stall.py --quick                 # < 60 s smoke run
    scripts/stress-stall.py --runs 400 --seconds 1500
    scripts/stress-stall.py --shape orig --runs 100 --jobs 2

Writes OUT (default bench/results/<date>-stress-stall/): runs.jsonl (one
line per run), summary.md (runs, stalls, failures per shape), and a
directory per stall or failure. Exits 1 if any run stalled or lost
messages, 2 on a set-up error. Loopback only; every process it starts is
killed on exit (also on Ctrl-C / SIGTERM). Stdlib only.

Binaries: $STAMPEDE_BIN and $STAMPEDE_BENCH_BIN, default
target/release/stampede and target/release/stampede-bench.
"""
import argparse
import datetime
import glob
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_BIN = os.environ.get("STAMPEDE_BIN", os.path.join(ROOT, "target/release/stampede"))
BENCH_BIN = os.environ.get("STAMPEDE_BENCH_BIN", os.path.join(ROOT, "target/release/stampede-bench"))

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LISTENING = re.compile(r"listening: http\+ws on 127\.0\.0\.1:(\d+)")

# (rooms, members, publishers): the original grouping and a few others,
# small enough that the generator keeps up on two cores.
GROUPINGS = [(4, 50, 3), (6, 30, 4), (2, 80, 2), (8, 20, 3)]
ORIG = dict(name="orig", shards=1, rooms=4, members=50, publishers=3, window=64, body=300)


def shapes_all():
    out = []
    for i, (shards, window, body) in enumerate(
            itertools.product((1, 2), (1, 8, 64, 256), (16, 300, 4000))):
        rooms, members, pubs = GROUPINGS[i % len(GROUPINGS)]
        out.append(dict(name=f"s{shards}-w{window}-b{body}-r{rooms}x{members}-p{pubs}",
                        shards=shards, rooms=rooms, members=members, publishers=pubs,
                        window=window, body=body))
    return out


def schedule(shapes, orig_share=True):
    """Endless run order: the original shape every 4th run, the others in turn."""
    others = itertools.cycle(shapes)
    for i in itertools.count():
        if orig_share and i % 4 == 0:
            yield dict(ORIG)
        else:
            yield dict(next(others))


# ---------------------------------------------------------------------------
# processes: every one we start is registered and killed on exit
# ---------------------------------------------------------------------------

_procs_lock = threading.Lock()
_procs = set()


def spawn(args, **kw):
    with _procs_lock:
        if _stopping.is_set():
            raise SetupError("stopping")
        p = subprocess.Popen(args, start_new_session=True, **kw)
        _procs.add(p)
    return p


def kill(p, sig=signal.SIGKILL):
    """Signal p's process group (it leads its own session), then reap."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    if sig == signal.SIGKILL:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass
        with _procs_lock:
            _procs.discard(p)


def kill_all():
    with _procs_lock:
        procs = list(_procs)
    for p in procs:
        kill(p)


_stopping = threading.Event()


def on_signal(signum, _frame):
    _stopping.set()
    kill_all()
    sys.exit(128 + signum)


def group_pids(pgid):
    """Pids whose process group is `pgid` (the generator and its workers)."""
    pids = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:  # fields: state ppid pgrp ...
            pids.append(int(d.rsplit("/", 1)[1]))
    return sorted(pids)


def run_cmd(args, timeout):
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        return r.stdout + (r.stderr if r.returncode else "")
    except (subprocess.TimeoutExpired, OSError) as e:
        return f"<{args[0]}: {e}>"


# ---------------------------------------------------------------------------
# sockets on the server's port
# ---------------------------------------------------------------------------

SS_SOCK = re.compile(r"^(\S+)\s+(\d+)\s+(\d+)\s+(\S+):(\d+)\s+(\S+):(\d+)")


class Sock:
    __slots__ = ("state", "recv_q", "send_q", "laddr", "lport", "paddr", "pport",
                 "bytes_sent", "bytes_received")

    def server_side(self, port):
        return self.laddr == "127.0.0.1" and self.lport == port and self.state != "LISTEN"

    def client_side(self, port):
        return self.paddr == "127.0.0.1" and self.pport == port

    def key(self):
        return (self.laddr, self.lport, self.paddr, self.pport)


def ss_sockets(port):
    """TCP sockets with the server's port at either end, with their queues
    and byte counters (`ss -tani`)."""
    out = run_cmd(["ss", "-tanHi", f"( sport = :{port} or dport = :{port} )"], 5)
    socks = []
    cur = None
    for line in out.splitlines():
        m = SS_SOCK.match(line)
        if m:
            cur = Sock()
            cur.state, cur.recv_q, cur.send_q = m.group(1), int(m.group(2)), int(m.group(3))
            cur.laddr, cur.lport = m.group(4), int(m.group(5))
            cur.paddr, cur.pport = m.group(6), int(m.group(7))
            cur.bytes_sent = cur.bytes_received = 0
            socks.append(cur)
            continue
        if cur is not None:
            mm = re.search(r"\bbytes_sent:(\d+)", line)
            if mm:
                cur.bytes_sent = int(mm.group(1))
            mm = re.search(r"\bbytes_received:(\d+)", line)
            if mm:
                cur.bytes_received = int(mm.group(1))
    return socks


def progress_signature(port):
    """What moves while the server's connections carry traffic."""
    server = sorted((s.pport, s.bytes_sent, s.bytes_received)
                    for s in ss_sockets(port) if s.server_side(port))
    return len(server), hash(tuple(server))


def verdict(port, socks, shape):
    """Where the bytes sit, by connection kind, and what that means."""
    server = [s for s in socks if s.server_side(port) and s.state == "ESTAB"]
    client = {(s.laddr, s.lport): s for s in socks if s.client_side(port) and s.state == "ESTAB"}
    peer = lambda s: client.get((s.paddr, s.pport))  # noqa: E731
    lines = []
    # Publishers are the connections the server received most from.
    # Publishers are the connections the server received much from
    # (members only sent their CONNECT and SUBSCRIBE).
    pubs = [s for s in server if s.bytes_received > 16 * 1024]
    subs = [s for s in server if s.bytes_received <= 16 * 1024]
    lines.append(f"server-side connections: {len(server)} (members expected: "
                 f"{shape['rooms'] * shape['members']}, plus {min(shape['publishers'], shape['rooms'])} "
                 f"publishers and as many probes while publishing)")
    for kind, group in (("publisher", pubs), ("member/probe", subs)):
        cl = [peer(s) for s in group if peer(s) is not None]
        lines.append(
            f"{kind} connections: {len(group)} (client ends seen: {len(cl)}); "
            f"server Recv-Q>0: {sum(s.recv_q > 0 for s in group)} (sum {sum(s.recv_q for s in group)}), "
            f"server Send-Q>0: {sum(s.send_q > 0 for s in group)} (sum {sum(s.send_q for s in group)}), "
            f"client Recv-Q>0: {sum(c.recv_q > 0 for c in cl)} (sum {sum(c.recv_q for c in cl)}), "
            f"client Send-Q>0: {sum(c.send_q > 0 for c in cl)} (sum {sum(c.send_q for c in cl)})")
    for s in pubs:
        lines.append(f"  publisher conn {s.paddr}:{s.pport}: server received {s.bytes_received} B, "
                     f"sent {s.bytes_sent} B, Recv-Q {s.recv_q}, Send-Q {s.send_q}")
    sent = sorted(s.bytes_sent for s in subs)
    if sent:
        lines.append(f"  member conns: server sent min {sent[0]} / median {sent[len(sent) // 2]} / "
                     f"max {sent[-1]} B")
    srv_rq = sum(s.recv_q for s in server)
    srv_sq = sum(s.send_q for s in server)
    cli_rq = sum(c.recv_q for c in client.values())
    cli_sq = sum(c.send_q for c in client.values())
    if not pubs:
        lines.append("no publisher connection is left: publishing had ended (the generator waits "
                     "for the last deliveries)")
    if srv_rq:
        lines.append("reading: client bytes sit unread in the server's receive queues: the server "
                     "is not reading those connections (paused or throttled reader, or a lost read "
                     "wake-up) -> server")
    elif cli_rq:
        lines.append("reading: server bytes sit unread in the client's receive queues: the client "
                     "is not reading -> client")
    elif srv_sq or cli_sq:
        lines.append("reading: bytes in flight in a send queue with nothing unread: look at ss.txt")
    else:
        lines.append("reading: nothing queued in the kernel at either end: the missing bytes are in "
                     "a user-space buffer, either the server's output (a lost flush) or the "
                     "client's unsent frames; compare the publishers' received bytes with the "
                     "members' sent bytes")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------

class SetupError(Exception):
    pass


def start_server(shape, work):
    data = os.path.join(work, "data")
    os.makedirs(data)
    stderr_path = os.path.join(work, "server.stderr")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAMPEDE_")}
    env["STAMPEDE_MAX_PUBLISH_RATE"] = "0"
    args = [SERVER_BIN, "--shards", str(shape["shards"]), "--listen", "127.0.0.1:0",
            "--stomp-listen", "off", "--data-dir", data, "--max-publish-rate", "0"]
    args += shape.get("server_args", [])
    with open(stderr_path, "wb") as err:
        p = spawn(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env, cwd=work)
    # The ready line (stdout) comes after every shard accepts; the port is
    # the one in the last `listening:` line (a start-up retry re-executes).
    deadline = time.monotonic() + 25
    ready = threading.Event()

    def drain():
        for line in p.stdout:
            if line.startswith(b"stampede ready"):
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    while not ready.wait(0.05):
        if time.monotonic() > deadline:
            break
    port = None
    with open(stderr_path, "rb") as f:
        for m in LISTENING.finditer(ANSI.sub("", f.read().decode("utf-8", "replace"))):
            port = int(m.group(1))
    if p.poll() is not None or port is None or not ready.is_set():
        kill(p)
        raise SetupError(f"server did not start (exit {p.returncode}); see {stderr_path}")
    return p, port, args


def thread_states(pids):
    out = []
    for pid in pids:
        for t in sorted(glob.glob(f"/proc/{pid}/task/*")):
            try:
                with open(f"{t}/stat") as f:
                    stat = f.read().strip()
                with open(f"{t}/wchan") as f:
                    wchan = f.read().strip()
            except OSError:
                continue
            out.append(f"{pid} {t.rsplit('/', 1)[1]} wchan={wchan} {stat}")
    return "\n".join(out) + "\n"


def switches(pid):
    """{tid: (name, voluntary + involuntary context switches)}."""
    out = {}
    for t in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{t}/status") as f:
                st = dict(line.split(":", 1) for line in f if ":" in line)
            out[t.rsplit("/", 1)[1]] = (st["Name"].strip(), int(st["voluntary_ctxt_switches"])
                                        + int(st["nonvoluntary_ctxt_switches"]))
        except (OSError, KeyError, ValueError):
            continue
    return out


def keep_evidence(d, srv, port, gen, shape):
    """While the server (and generator) are still alive."""
    os.makedirs(d, exist_ok=True)
    ss1 = run_cmd(["ss", "-tanpi", f"( sport = :{port} or dport = :{port} )"], 10)
    socks = ss_sockets(port)
    sw1 = switches(srv.pid)
    time.sleep(0.5)
    sw2 = switches(srv.pid)
    ss2 = run_cmd(["ss", "-tanpi", f"( sport = :{port} or dport = :{port} )"], 10)
    # A shard's sweeper ticks every <= 100 ms: a shard thread that did not
    # switch at all in 0.5 s is parked for good (its timers lost too).
    woke = {tid: (name, sw2[tid][1] - n) for tid, (name, n) in sw1.items() if tid in sw2}
    with open(os.path.join(d, "ss.txt"), "w") as f:
        f.write(f"# server port {port}\n# first sample\n{ss1}\n# 0.5 s later\n{ss2}")
    # Each shard's io_uring rings (/proc/PID/fdinfo of anon_inode:[io_uring]):
    # CqTail > CqHead = completions posted that the executor has not taken;
    # PollList = polls armed in the kernel; CqOverflowList = completions
    # the kernel holds back because the CQ ring was full.
    rings = []
    for fd in sorted(glob.glob(f"/proc/{srv.pid}/fd/*"), key=lambda x: int(x.rsplit("/", 1)[1])):
        try:
            if os.readlink(fd) != "anon_inode:[io_uring]":
                continue
            with open(fd.replace("/fd/", "/fdinfo/")) as f:
                rings.append(f"## fd {fd.rsplit('/', 1)[1]}\n{f.read()}")
        except OSError:
            continue
    with open(os.path.join(d, "io_uring.txt"), "w") as f:
        f.write("\n".join(rings))
    # The shards' doorbells are socketpairs: a byte sitting unread in one
    # (Recv-Q > 0 on a stampede unix socket) is a ring the shard never took.
    unix = [line for line in run_cmd(["ss", "-xanp"], 10).splitlines()
            if f"pid={srv.pid}," in line]
    with open(os.path.join(d, "unix.txt"), "w") as f:
        f.write("# the server's unix sockets (doorbells): Netid State Recv-Q Send-Q ...\n")
        f.write("\n".join(unix) + "\n")
    rung = [line for line in unix if len(line.split()) > 2 and line.split()[2] != "0"]
    with open(os.path.join(d, "verdict.txt"), "w") as f:
        f.write(verdict(port, socks, shape))
        f.write("server threads' context switches in 0.5 s (a shard's sweeper wakes it every "
                "<= 100 ms): " + ", ".join(f"{name}/{tid}: {n}" for tid, (name, n)
                                             in sorted(woke.items())) + "\n")
        # The first thread of each name shard-I-C is the executor; the
        # second is glommio's blocking-call thread (idle, 0 is normal).
        executors = {}
        for tid, (name, n) in sorted(woke.items(), key=lambda x: int(x[0])):
            if name.startswith("shard-"):
                executors.setdefault(name, (tid, n))
        parked = [f"{name} (tid {tid})" for name, (tid, n) in sorted(executors.items()) if n == 0]
        if parked:
            f.write(f"parked shard executors (no wake-up in 0.5 s, not even their sweeper timer): "
                    f"{', '.join(parked)} -> server (executor asleep in io_uring with work due)\n")
        f.write(f"server unix sockets with unread bytes (a doorbell rung but not read): {len(rung)}\n")
        for line in rung:
            f.write(f"  {line}\n")
    with open(os.path.join(d, "threads.txt"), "w") as f:
        f.write(f"# server pid {srv.pid}\n{thread_states([srv.pid])}")
        gpids = group_pids(gen.pid) if gen.poll() is None else []
        f.write(f"# generator pids {gpids}\n{thread_states(gpids)}")
        f.write("# fields: pid tid wchan, then /proc stat (3rd field: state; 14/15: utime/stime)\n")


def gdb_backtraces(d, pid):
    out = run_cmd(["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "set pagination off",
                   "-ex", "thread apply all bt 30"], 60)
    with open(os.path.join(d, "gdb.txt"), "w") as f:
        f.write(out)


def one_run(n, shape, args, out_dir, tmp_root):
    work = tempfile.mkdtemp(prefix=f"run{n:04d}-", dir=tmp_root)
    rec = dict(run=n, shape=shape["name"], shards=shape["shards"], rooms=shape["rooms"],
               members=shape["members"], publishers=shape["publishers"], window=shape["window"],
               body=shape["body"], outcome="ok")
    # Members live in a worker process that two cores may starve; the
    # window only holds publishers to what their probe (in the parent)
    # takes, so a member can fall behind by more than the default 1 MiB
    # outbound limit and be dropped as a slow consumer: loss by design,
    # not a stall. The variations get room for that; the original shape
    # runs with the server's defaults, as when it stalled.
    big = shape["name"] != "orig" or args.quick
    shape = dict(shape, server_args=["--max-outbound-bytes", str(256 << 20)] if big else [])
    t0 = time.monotonic()
    srv, port, srv_args = start_server(shape, work)
    json_path = os.path.join(work, "fanout.json")
    gen_args = [BENCH_BIN, "fanout", "--url", f"ws://127.0.0.1:{port}/ws",
                "--rooms", str(shape["rooms"]), "--members", str(shape["members"]),
                "--publishers", str(shape["publishers"]), "--rate", "0",
                "--window", str(shape["window"]), "--body-size", str(shape["body"]),
                "--duration", str(args.duration), "--drain", "5", "--ramp-up", "0.2",
                "--step-timeout", str(max(8.0, 3 * args.stall_s)), "--json", json_path]
    rec["server_args"] = srv_args[1:]
    rec["bench_args"] = gen_args[1:]
    gout = open(os.path.join(work, "bench.stdout"), "wb")
    gerr = open(os.path.join(work, "bench.stderr"), "wb")
    gen = spawn(gen_args, stdin=subprocess.DEVNULL, stdout=gout, stderr=gerr)
    gout.close()
    gerr.close()
    # Watch: a stall is no movement on any server connection for stall_s
    # while the generator runs (once its first connection is up).
    hard = time.monotonic() + args.duration + 45
    last_sig, last_move, seen = None, time.monotonic(), False
    evidence_dir = None
    while gen.poll() is None:
        time.sleep(0.2)
        now = time.monotonic()
        count, sig = progress_signature(port)
        if count:
            seen = True
        if sig != last_sig:
            last_sig, last_move = sig, now
            continue
        if seen and now - last_move >= args.stall_s and gen.poll() is None:
            socks = [x for x in ss_sockets(port) if x.server_side(port) and x.state == "ESTAB"]
            members = shape["rooms"] * shape["members"]
            pubs = sum(x.bytes_received > 16 * 1024 for x in socks)
            rec["stalled_after_s"] = round(last_move - t0, 2)
            rec["connections"] = len(socks)
            rec["publisher_connections"] = pubs
            # Members the server closed (slow consumer) leave deliveries
            # outstanding that never come: the generator then waits out
            # --drain. That is loss, kept as a failure, not a stall.
            rec["outcome"] = "stall" if len(socks) - min(pubs, 2 * shape["publishers"]) >= members \
                else "dropped"
            rec["phase"] = "publishing" if pubs else "draining (publishers done)"
            break
        if now > hard:
            rec["outcome"] = "timeout"
            break
        if srv.poll() is not None:
            rec["outcome"] = "server-died"
            break
    if rec["outcome"] != "ok":
        tag = "stall" if rec["outcome"] == "stall" else "fail"
        evidence_dir = os.path.join(out_dir, f"{tag}-{n:04d}-{shape['name']}")
        if srv.poll() is None:
            keep_evidence(evidence_dir, srv, port, gen, shape)
            if args.gdb:
                gdb_backtraces(evidence_dir, srv.pid)
        kill(srv)
        # The generator now sees its sessions end and writes its report.
        try:
            gen.wait(20)
        except subprocess.TimeoutExpired:
            rec["generator_killed"] = True
        kill(gen)
    else:
        kill(gen)
        # Stop the server cleanly; one that does not stop is a failure too.
        kill(srv, signal.SIGTERM)
        try:
            srv.wait(8)
        except subprocess.TimeoutExpired:
            rec["outcome"] = "server-stop-timeout"
        kill(srv)
    rec["bench_rc"] = gen.returncode
    rec["server_rc"] = srv.returncode
    try:
        with open(json_path) as f:
            doc = json.load(f)
        for k in ("sent", "expected", "delivered", "lost", "out_of_order", "subscribers_short",
                  "sessions_dropped", "publishers_stopped", "drop_reasons", "deliveries_per_s",
                  "failed"):
            if k in doc:
                rec[k] = doc[k]
    except (OSError, ValueError):
        rec["no_report"] = True
    if rec["outcome"] == "ok":
        bad = (gen.returncode != 0 or rec.get("no_report") or rec.get("lost", 1) != 0
               or rec.get("out_of_order", 1) != 0 or rec.get("subscribers_short", 1) != 0
               or rec.get("sessions_dropped", 1) != 0)
        if bad:
            rec["outcome"] = "lost" if rec.get("lost", 0) else "failed"
        if rec["outcome"] == "ok" and srv.returncode not in (0, None):
            rec["outcome"] = "server-exit"
    rec["wall_s"] = round(time.monotonic() - t0, 2)
    # Stalls the server's watchdog caught and ended (src/shard/watchdog.rs):
    # under 2 s they are no stall here, but they are counted.
    try:
        with open(os.path.join(work, "server.stderr"), "rb") as f:
            text = f.read()
        rec["watchdog_wakes"] = text.count(b"woke its executor")
        rec["busy_500ms"] = text.count(b"without its sweeper running")
        # (ms run, ms waited for a CPU) in the last 100 ms of each busy spell.
        rec["busy_cpu_ms"] = [[int(a), int(b)] for a, b in
                              re.findall(rb"ran_ms=(\d+) waited_for_cpu_ms=(\d+)",
                                         re.sub(rb"\x1b\[[0-9;]*m", b"", text))]
    except OSError:
        pass
    if rec["outcome"] != "ok":
        if evidence_dir is None:
            evidence_dir = os.path.join(out_dir, f"fail-{n:04d}-{shape['name']}")
            os.makedirs(evidence_dir, exist_ok=True)
        for name in ("server.stderr", "bench.stdout", "bench.stderr", "fanout.json"):
            src = os.path.join(work, name)
            if os.path.exists(src):
                shutil.copy(src, evidence_dir)
        with open(os.path.join(evidence_dir, "run.json"), "w") as f:
            json.dump(rec, f, indent=1)
        rec["evidence"] = os.path.relpath(evidence_dir, out_dir)
    shutil.rmtree(work, ignore_errors=True)
    return rec


# ---------------------------------------------------------------------------

def summarize(records, out_dir, elapsed):
    by_shape = {}
    for r in records:
        s = by_shape.setdefault(r["shape"], {"runs": 0, "stall": 0, "other": 0, "sent": 0, "wakes": 0})
        s["runs"] += 1
        s["wakes"] += r.get("watchdog_wakes", 0) or 0
        s["sent"] += r.get("sent", 0) or 0
        if r["outcome"] == "stall":
            s["stall"] += 1
        elif r["outcome"] != "ok":
            s["other"] += 1
    lines = [f"# stress-stall: {len(records)} runs in {elapsed:.0f} s", "",
             "| shape | runs | stalls | other failures | messages sent | watchdog wakes |",
             "|---|---|---|---|---|---|"]
    for name in sorted(by_shape):
        s = by_shape[name]
        lines.append(f"| {name} | {s['runs']} | {s['stall']} | {s['other']} | {s['sent']} | {s['wakes']} |")
    bad = [r for r in records if r["outcome"] != "ok"]
    lines += ["", f"stalls: {sum(r['outcome'] == 'stall' for r in records)}, "
              f"other failures: {sum(r['outcome'] not in ('ok', 'stall') for r in records)}, "
              f"stalls the server's watchdog ended (runs with a wake): "
              f"{sum(bool(r.get('watchdog_wakes')) for r in records)}"]
    for r in bad:
        lines.append(f"- run {r['run']} {r['shape']}: {r['outcome']} "
                     f"(lost {r.get('lost')}, sent {r.get('sent')}) -> {r.get('evidence')}")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(text)
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300, help="most runs (default 300)")
    ap.add_argument("--seconds", type=float, default=1500.0,
                    help="time budget: no run starts after it (default 1500)")
    ap.add_argument("--quick", action="store_true",
                    help="short version (< 60 s): 1 s of publishing, runs started within 35 s, "
                         "a spread of shapes")
    ap.add_argument("--out", help="directory for results (default bench/results/<date>-stress-stall)")
    ap.add_argument("--duration", type=float, default=1.5, help="seconds of publishing per run")
    ap.add_argument("--stall-s", type=float, default=2.0,
                    help="no byte moving on any server connection this long = stall (default 2)")
    ap.add_argument("--shape", action="append",
                    help="run only shapes whose name contains this (repeatable; 'orig' = the "
                         "original shape)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    ap.add_argument("--no-gdb", dest="gdb", action="store_false",
                    help="do not take gdb backtraces of a stalled server")
    ap.add_argument("--stop-on-stall", action="store_true", help="stop after the first stall")
    args = ap.parse_args()

    if args.quick:
        # Short, and robust on a loaded machine (the test suite runs it
        # beside other tests): 1 s of publishing, runs started within 35 s,
        # a 3 s stall threshold, and even the original shape with room for
        # a starved member (--max-outbound-bytes 256 MiB).
        args.duration = min(args.duration, 1.0)
        args.seconds = min(args.seconds, 35.0)
        args.stall_s = max(args.stall_s, 3.0)
    for b in (SERVER_BIN, BENCH_BIN):
        if not os.access(b, os.X_OK):
            print(f"stress-stall: {b} not found (build with cargo build --release --workspace, "
                  f"or set STAMPEDE_BIN / STAMPEDE_BENCH_BIN)", file=sys.stderr)
            return 2
    if shutil.which("ss") is None:
        print("stress-stall: needs ss (iproute2)", file=sys.stderr)
        return 2
    if args.gdb and shutil.which("gdb") is None:
        args.gdb = False

    out_dir = args.out or os.path.join(
        ROOT, "bench/results", f"{datetime.date.today().isoformat()}-stress-stall")
    os.makedirs(out_dir, exist_ok=True)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    shapes = shapes_all()
    if args.quick:
        # The original shape, then one of each window x body with shards
        # alternating, so every axis is touched.
        picks = []
        for i, (w, b) in enumerate(itertools.product((1, 8, 64, 256), (16, 300, 4000))):
            sh = 1 + i % 2
            picks += [s for s in shapes if s["shards"] == sh and s["window"] == w and s["body"] == b]
        shapes = picks
    order = schedule(shapes, orig_share=True)
    if args.shape:
        wanted = [s for s in [dict(ORIG)] + shapes if any(k in s["name"] for k in args.shape)]
        if not wanted:
            print(f"stress-stall: no shape matches {args.shape}", file=sys.stderr)
            return 2
        order = itertools.cycle(wanted)

    tmp_root = tempfile.mkdtemp(prefix="stress-stall-")
    records = []
    lock = threading.Lock()
    start = time.monotonic()
    counter = itertools.count(1)
    stop = threading.Event()
    setup_errors = []

    def worker():
        while not stop.is_set():
            with lock:
                n = next(counter)
                if n > args.runs or time.monotonic() - start > args.seconds:
                    return
                shape = next(order)
            try:
                rec = one_run(n, shape, args, out_dir, tmp_root)
            except SetupError as e:
                setup_errors.append(str(e))
                stop.set()
                return
            with lock:
                records.append(rec)
                with open(os.path.join(out_dir, "runs.jsonl"), "a") as f:
                    f.write(json.dumps(rec) + "\n")
                mark = "" if rec["outcome"] == "ok" else f"  <-- {rec['outcome'].upper()} {rec.get('evidence')}"
                print(f"[{time.monotonic() - start:6.0f}s] run {n:4d} {rec['shape']:36s} "
                      f"sent {rec.get('sent', '?'):>7} lost {rec.get('lost', '?')} "
                      f"{rec['wall_s']:5.1f}s{mark}", flush=True)
                if rec["outcome"] == "stall" and args.stop_on_stall:
                    stop.set()

    try:
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, args.jobs))]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    finally:
        kill_all()
        shutil.rmtree(tmp_root, ignore_errors=True)
    elapsed = time.monotonic() - start
    print(summarize(sorted(records, key=lambda r: r["run"]), out_dir, elapsed))
    print(f"results in {out_dir}")
    if setup_errors:
        print("stress-stall: " + "; ".join(setup_errors), file=sys.stderr)
        return 2
    if not records:
        print("stress-stall: no run completed", file=sys.stderr)
        return 2
    return 1 if any(r["outcome"] != "ok" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
