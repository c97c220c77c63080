#!/usr/bin/env python3
"""Push notifications against chat latency, and push throughput (issue 12).

    scripts/bench-push.py                 # both parts, 3 rounds (~6 min)
    scripts/bench-push.py --rounds 1 --duration 10

Part 1, "does push slow chat?": a room of 200 members, 100 of them present
(100 WebSocket subscribers, each its own user, `stampede-bench fanout
--distinct-logins`) and 100 away with one device each (set up through the
API). One publisher sends --rate messages/s for --duration s. Each message
is 100 deliveries and, with push on, 100 FCM pushes to the fake FCM
answering after 500 ms: far more than 64 push threads can send (128/s), so
the push queue fills and drops — the worst case for chat. Push off: the
same server without FCM settings. Rounds alternate which goes first; the
figure is the p99 of the server's share of publish-to-delivery latency
(as bench-tail.py), on against off in the same round.

Part 2, "how fast do pushes go?": the fake answers after 100 ms; the same
room; --messages messages published at once (100 pushes each);
--push-threads threads (default 256: each sends one request at a time, so
the ceiling is threads / 100 ms). Pushes/s = pushes the fake accepted
divided by the time from the first to the last.

Server: `stampede --shards 1` pinned to core 0 (its push threads too);
generator and fake FCM pinned to core 1. Writes bench/results/<date>-push/
(or --out): run.log, json/, summary.md. Loopback only; every process is
stopped on exit.
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def host_probe():
    """bench-tail.py's probe: how late a real-time thread on core 0 wakes
    (the host taking the vCPU); a run in a noisy window says so."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_tail", os.path.join(ROOT, "scripts", "bench-tail.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.host_probe()
ADMIN = "bench-admin-token-0123456789"
PROJECT = "bench-project"
PROCS = []


def log(msg, fh=None):
    line = f"[{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {msg}"
    print(line, flush=True)
    if fh:
        fh.write(line + "\n")
        fh.flush()


def cleanup(*_):
    for p in PROCS:
        if p.poll() is None:
            p.kill()
    sys.exit(130)


def http_call(port, method, path, body=None, headers=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data
    finally:
        conn.close()


def start_fake(fake_bin, work, pub_pem, latency_ms):
    port_file = os.path.join(work, "fake.port")
    if os.path.exists(port_file):
        os.remove(port_file)
    err = open(os.path.join(work, "fake.log"), "w")
    p = subprocess.Popen(["taskset", "-c", "1", fake_bin, "--listen", "127.0.0.1:0", "--public-key", pub_pem,
                          "--latency-ms", str(latency_ms), "--port-file", port_file,
                          "--max-records", "200000"],
                         stdout=subprocess.DEVNULL, stderr=err)
    PROCS.append(p)
    deadline = time.time() + 10
    while time.time() < deadline:
        if os.path.exists(port_file):
            return p, int(open(port_file).read().strip())
        time.sleep(0.05)
    p.kill()
    raise RuntimeError("fake-fcm did not start")


def start_server(binary, work, name, extra):
    data = os.path.join(work, name)
    os.makedirs(data)
    env = dict(os.environ, STAMPEDE_MAX_PUBLISH_RATE="0", STAMPEDE_ADMIN_TOKEN=ADMIN)
    logpath = os.path.join(data, "server.log")
    err = open(logpath, "w")
    p = subprocess.Popen(["taskset", "-c", "0", binary, "--shards", "1", "--listen", "127.0.0.1:0",
                          "--stomp-listen", "127.0.0.1:0", "--data-dir", os.path.join(data, "db"), *extra],
                         stdout=subprocess.DEVNULL, stderr=err, env=env)
    PROCS.append(p)
    deadline = time.time() + 15
    while time.time() < deadline:
        text = open(logpath).read()
        m = re.search(r"http\+ws on 127\.0\.0\.1:(\d+).*stomp on 127\.0\.0\.1:(\d+)", text)
        if m:
            return p, int(m.group(1)), int(m.group(2))
        if p.poll() is not None:
            break
        time.sleep(0.1)
    p.kill()
    raise RuntimeError(f"server did not start: {open(logpath).read()[-2000:]}")


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def away_members(port, room, n, run_id):
    auth = {"Authorization": f"Bearer {ADMIN}"}
    for i in range(n):
        user = f"away-{i}"
        for path in (f"/api/rooms/{room}/members/{user}", f"/api/users/{user}/devices/tok-{run_id}-{i}"):
            status, body = http_call(port, "PUT", path, headers=auth)
            if status != 200:
                raise RuntimeError(f"PUT {path}: {status} {body!r}")


def push_stats(port):
    status, body = http_call(port, "GET", "/api/push", headers={"Authorization": f"Bearer {ADMIN}"})
    return json.loads(body) if status == 200 else None


def keypair(work):
    key = os.path.join(work, "key.pem")
    pub = os.path.join(work, "pub.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", pub], check=True, capture_output=True)
    return key, pub


def service_account(work, key, fake_port):
    path = os.path.join(work, "sa.json")
    with open(path, "w") as f:
        json.dump({"type": "service_account", "project_id": PROJECT, "private_key_id": "bench",
                   "private_key": open(key).read(), "client_email": "push@bench.iam.gserviceaccount.com",
                   "token_uri": f"http://127.0.0.1:{fake_port}/token"}, f)
    return path


def push_flags(sa, fake_port, threads):
    return ["--fcm-credentials", sa, "--fcm-endpoint", f"http://127.0.0.1:{fake_port}",
            "--push-threads", str(threads)]


def latency_round(args, mode, r, work, sa, fake_port, out, logf):
    run_id = random.randrange(10**9, 10**10)
    room = f"fo{run_id}-0"
    extra = push_flags(sa, fake_port, args.latency_push_threads) + args.on_flag if mode == "on" else []
    probe = host_probe()
    srv, http_port, _ = start_server(args.bin, work, f"lat-{mode}-r{r}", extra)
    try:
        away_members(http_port, room, 100, run_id)
        js = os.path.join(out, "json", f"latency-{mode}-r{r}.json")
        cmd = ["taskset", "-c", "1", args.bench, "fanout", "--rooms", "1", "--members", "100",
               "--publishers", "1", "--rate", str(args.rate), "--duration", str(args.duration),
               "--drain", "10", "--step-timeout", "30", "--run-id", str(run_id), "--distinct-logins",
               "--url", f"ws://127.0.0.1:{http_port}/ws", "--server-pid", str(srv.pid),
               "--label", f"push-{mode}", "--json", js]
        log(f"latency push {mode} r{r}: {' '.join(cmd[3:])}", logf)
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 120)
        logf.write(res.stdout + res.stderr)
        stats = push_stats(http_port) if mode == "on" else None
        with open(js) as f:
            d = json.load(f)
        row = {
            "mode": mode, "round": r,
            "server_p50": d["server_latency_ms"]["p50"], "server_p99": d["server_latency_ms"]["p99"],
            "server_max": d["server_latency_ms"]["max"], "total_p99": d["latency_ms"]["p99"],
            "lost": d.get("lost"), "deliveries_per_s": d.get("deliveries_per_s"),
            "push": stats, "probe_late_pct": (probe or {}).get("late_over_1ms_pct"),
        }
        log(f"  server p50 {row['server_p50']:.2f} p99 {row['server_p99']:.2f} max {row['server_max']:.1f} ms;"
            f" lost {row['lost']}; push {stats}", logf)
        return row
    finally:
        stop(srv)


def stomp_publish(port, dest, n):
    """Publish n messages over plain STOMP, the last with a receipt; wait for it."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\nlogin:publisher\n\n\0")
    buf = b""
    while b"\0" not in buf:
        buf += s.recv(4096)
    frames = []
    for i in range(n):
        rcpt = "receipt:last\n" if i == n - 1 else ""
        frames.append(f"SEND\ndestination:{dest}\n{rcpt}\nmessage {i}\0".encode())
    s.sendall(b"".join(frames))
    buf = b""
    while b"receipt-id:last" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError(f"connection closed: {buf[-500:]!r}")
        buf += chunk
    s.close()


def throughput(args, work, sa, fake_port, out, logf):
    http_call(fake_port, "POST", "/fake/reset", b"")
    http_call(fake_port, "POST", "/fake/config", {"latency_ms": 100})
    run_id = random.randrange(10**9, 10**10)
    room = f"tp{run_id}"
    srv, http_port, stomp_port = start_server(args.bin, work, "throughput",
                                              push_flags(sa, fake_port, args.push_threads))
    try:
        away_members(http_port, room, 100, run_id)
        want = args.messages * 100
        log(f"throughput: {args.messages} messages x 100 away members, fake at 100 ms,"
            f" {args.push_threads} push threads", logf)
        t0 = time.time()
        stomp_publish(stomp_port, f"/topic/{room}", args.messages)
        deadline = time.time() + 120
        while time.time() < deadline:
            _, body = http_call(fake_port, "GET", "/fake/stats")
            accepted = json.loads(body)["accepted"]
            if accepted >= want:
                break
            time.sleep(0.2)
        _, body = http_call(fake_port, "GET", "/fake/received")
        rec = json.loads(body)
        times = sorted(m["at_ms"] for m in rec["messages"])
        stats = push_stats(http_port)
        span = (times[-1] - times[0]) / 1000 if len(times) > 1 else float("nan")
        rate = len(times) / span if span and span > 0 else float("nan")
        result = {"pushes": len(times), "wanted": want, "span_s": round(span, 3),
                  "pushes_per_s": round(rate, 1), "publish_to_last_s": round(times[-1] / 1000 - t0, 3),
                  "push_threads": args.push_threads, "fake_latency_ms": 100, "server_push_stats": stats,
                  "fake_attempts": rec.get("attempts"), "fake_statuses": rec.get("statuses")}
        with open(os.path.join(out, "json", "throughput.json"), "w") as f:
            json.dump(result, f, indent=1)
        log(f"  {len(times)} pushes of {want} in {span:.2f} s = {rate:.0f} pushes/s; server {stats}", logf)
        return result
    finally:
        stop(srv)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/stampede"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "target/release/stampede-bench"))
    ap.add_argument("--fake", default=os.path.join(ROOT, "target/release/fake-fcm"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=100, help="messages/s into the room (x100 deliveries)")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--latency-push-threads", type=int, default=64)
    ap.add_argument("--messages", type=int, default=100, help="part 2: messages (x100 pushes)")
    ap.add_argument("--push-threads", type=int, default=256, help="part 2: push threads")
    ap.add_argument("--on-flag", action="append", default=[],
                    help="part 1: one more server argument with push on (repeat: --on-flag=--push-queue --on-flag=16)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    signal.signal(signal.SIGINT, cleanup)
    signal.signal(signal.SIGTERM, cleanup)
    for b in (args.bin, args.bench, args.fake):
        if not os.path.exists(b):
            sys.exit(f"{b} not found: cargo build --release --workspace")
    out = args.out or os.path.join(ROOT, "bench", "results", f"{datetime.date.today()}-push")
    os.makedirs(os.path.join(out, "json"), exist_ok=True)
    logf = open(os.path.join(out, "run.log"), "a")
    work = tempfile.mkdtemp(prefix="stampede-push.")
    try:
        key, pub = keypair(work)
        fake, fake_port = start_fake(args.fake, work, pub, 500)
        sa = service_account(work, key, fake_port)
        rows = []
        if not args.skip_latency:
            for r in range(args.rounds):
                for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    http_call(fake_port, "POST", "/fake/reset", b"")
                    rows.append(latency_round(args, mode, r, work, sa, fake_port, out, logf))
        tp = None if args.skip_throughput else throughput(args, work, sa, fake_port, out, logf)
        stop(fake)
        write_summary(args, out, rows, tp)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_summary(args, out, rows, tp):
    lines = [f"# Push notifications: chat latency with push on/off, push throughput",
             "",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()},"
             f" {os.cpu_count()} vCPU; `scripts/bench-push.py --rounds {args.rounds} --rate {args.rate:g}"
             f" --duration {args.duration:g}`. Server `--shards 1` on core 0 (push threads too),"
             " generator and fake FCM on core 1.", ""]
    if rows:
        lines += ["## Chat latency (room of 200: 100 present, 100 away with a device; fake FCM at 500 ms)", "",
                  f"{args.rate:g} msg/s x 100 deliveries; with push on, 100 pushes per message offered to"
                  f" {args.latency_push_threads} push threads (they can send ~{args.latency_push_threads * 2}/s:"
                  " the backlog grows in the push queue, dropped once it is full).", "",
                  "| round | push | host probe: late wakes % | server p50 ms | server p99 ms | server max ms | total p99 ms | lost | pushes sent | dropped |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            p = row["push"] or {}
            lines.append(f"| {row['round']} | {row['mode']} | {row['probe_late_pct']} | {row['server_p50']:.2f} | {row['server_p99']:.2f} |"
                         f" {row['server_max']:.1f} | {row['total_p99']:.2f} | {row['lost']} |"
                         f" {p.get('sent', '-')} | {p.get('dropped', '-')} |")
        ratios = []
        for r in range(args.rounds):
            on = [x for x in rows if x["round"] == r and x["mode"] == "on"]
            off = [x for x in rows if x["round"] == r and x["mode"] == "off"]
            if on and off and off[0]["server_p99"] > 0:
                ratios.append(on[0]["server_p99"] / off[0]["server_p99"])
        med_on = median([x["server_p99"] for x in rows if x["mode"] == "on"])
        med_off = median([x["server_p99"] for x in rows if x["mode"] == "off"])
        verdict = "met" if med_on <= 1.1 * med_off else "NOT met"
        lines += ["", f"Server p99, median over rounds: push on {med_on:.2f} ms, off {med_off:.2f} ms:"
                  f" ratio {med_on / med_off:.2f} (target <= 1.1: {verdict}). Per round: "
                  + ", ".join(f"{x:.2f}" for x in ratios) + "."]
    if tp:
        verdict = "met" if tp["pushes_per_s"] >= 2000 else "NOT met"
        lines += ["", "## Push throughput (fake FCM at 100 ms)", "",
                  f"{args.messages} messages x 100 away members = {tp['wanted']} pushes, {tp['push_threads']} push"
                  f" threads: {tp['pushes']} accepted in {tp['span_s']} s = **{tp['pushes_per_s']:.0f} pushes/s**"
                  f" (target >= 2,000: {verdict}); server counters {tp['server_push_stats']}."]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
