#!/usr/bin/env python3
"""Fan-out max rate with a 1/s `/metrics` scrape against without, in one
run (issue 13): does scraping cost measurable throughput?

    scripts/bench-scrape.py                   # 5 rounds x 2 runs + calibration (~1.5 min)
    scripts/bench-scrape.py --quick           # smoke run: 1 round, 2 s
    scripts/bench-scrape.py --shards 2 --out bench/results/<date>-scrape-2shards

Per round, the fanout scenario of scripts/bench-ab.sh runs twice against
the same binary, each time on a fresh server:

    stampede-bench fanout --rooms 10 --members 100 --publishers 4 --rate 0 --duration S

  plain    nothing else
  scraped  a thread of this script GETs http://<server>/metrics every
           --interval s (fixed schedule) from the generator's start until it
           exits; it records each scrape's status, latency (connect to last
           byte; the server answers `Connection: close`, so every scrape is a
           new connection, as for Prometheus) and body size. A scrape that
           is not 200 (or fails) fails the run: it is left out of the ratios
           and the script exits 1.

Before the rounds, a calibration (--calibrate N, default 500; 0 skips):
N back-to-back scrapes on a fresh server holding --calibrate-sessions
idle STOMP sessions (default 1,000, `stampede-bench hold`), whose CPU time
(from /proc, less its CPU over the same wall time without scrapes) gives
the server CPU one scrape costs: the most throughput a scrape every
--interval s can take. After each run, the server's threads' CPU and
context switches go to threads/<run>.json (the `stampede-scrape` thread's
CPU under load, preemption of the shards).

Plain runs first in odd rounds, scraped first in even ones, so drift over
the session cancels out. The figure: scraped / plain deliveries/s per
round, and their median over the rounds.

Server: `stampede --shards N --listen 127.0.0.1:0 --stomp-listen off
--data-dir <fresh>` (publish rate limit off: STAMPEDE_MAX_PUBLISH_RATE=0)
pinned to core 0 with `taskset -c 0` (with --shards 2 both shards share
core 0, and the scrape gathers from both); the generator pinned to core 1,
and this script (the scraper) too. Writes OUT (default
bench/results/<date>-scrape): json/<plain|scraped>-r<round>.json from the
generator, scrapes/scraped-r<round>.json and calibrate.json,
threads/<run>.json, server/<run>.log, run.log (every
command and its output) and summary.md. Loopback only; every process is
stopped on exit (SIGTERM, then SIGKILL), on error too.

    STAMPEDE_BIN, STAMPEDE_BENCH_BIN   the binaries (default target/release/
                                       of this repository); or --bin, --bench.
                                       Both are copied at the start, so a
                                       rebuild meanwhile does not change them.
"""
import argparse
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_CPU = "0"
GEN_CPU = "1"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Everything started, so that any exit path can stop it: [(kind, Popen)].
LIVE = []


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


class Log:
    def __init__(self, path):
        self.fh = open(path, "a")

    def say(self, msg):
        line = f"[{datetime.datetime.now():%H:%M:%S}] {msg}"
        print(line, flush=True)
        self.write(line + "\n")

    def write(self, text):
        self.fh.write(text)
        self.fh.flush()


def alive(p):
    return p is not None and p.poll() is None


def stop_generator(p):
    """The generator leads its own process group (its workers are in it)."""
    if p is None:
        return
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            break
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; any worker left behind in the group?
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
    try:
        p.wait(1)
    except subprocess.TimeoutExpired:
        pass
    LIVE[:] = [x for x in LIVE if x[1] is not p]


def stop_server(p, logf=None):
    """SIGTERM, up to 20 s to shut down, then SIGKILL."""
    if p is None:
        return
    if alive(p):
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            if logf:
                logf.say(f"server {p.pid} ignored SIGTERM for 20 s; killing it")
            p.kill()
            p.wait(5)
    LIVE[:] = [x for x in LIVE if x[1] is not p]


def stop_all():
    for kind, p in list(LIVE):
        try:
            if kind == "generator":
                stop_generator(p)
            else:
                stop_server(p)
        except Exception:  # noqa: BLE001 - best effort on the way out
            if alive(p):
                p.kill()


def start_server(args, data, name, out, logf):
    """A fresh server; returns (Popen, "host:port" of its HTTP listener)."""
    os.makedirs(os.path.join(data, "db"))
    ready = os.path.join(data, "ready")
    cmd = ["taskset", "-c", SERVER_CPU, args.bin, "--shards", str(args.shards), "--listen", "127.0.0.1:0",
           "--stomp-listen", "off", "--data-dir", os.path.join(data, "db")]
    logf.write(f"$ STAMPEDE_MAX_PUBLISH_RATE=0 {shlex.join(cmd)}\n")
    env = dict(os.environ, STAMPEDE_MAX_PUBLISH_RATE="0")
    with open(ready, "w") as so, open(os.path.join(out, "server", f"{name}.log"), "w") as se:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=so, stderr=se, env=env)
    LIVE.append(("server", p))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with open(ready) as f:
            m = re.search(r"^stampede ready http=(\S+)", f.read(), re.M)
        if m:
            logf.write(f"stampede ready http={m.group(1)} (pid {p.pid})\n")
            return p, m.group(1)
        if not alive(p):
            break
        time.sleep(0.05)
    stop_server(p, logf)
    with open(os.path.join(out, "server", f"{name}.log")) as f:
        tail = ANSI.sub("", f.read())[-2000:]
    raise RuntimeError(f"{name}: the server did not start (see server/{name}.log):\n{tail}")


def scrape_once(hostport, timeout):
    host, port = hostport.rsplit(":", 1)
    t = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        ms = (time.perf_counter() - t) * 1000
        m = re.search(rb"^stampede_shards (\d+)", body, re.M)
        sessions = sum(int(float(x)) for x in re.findall(rb"^stampede_sessions(?:\{[^}]*\})? (\S+)", body, re.M))
        return {"status": resp.status, "ms": round(ms, 3), "bytes": len(body),
                "shards": int(m.group(1)) if m else None, "sessions": sessions}
    finally:
        conn.close()


class Scraper(threading.Thread):
    """GET /metrics every `interval` s on a fixed schedule until stopped."""

    def __init__(self, hostport, interval, t0):
        super().__init__(daemon=True)
        self.hostport, self.interval, self.t0 = hostport, interval, t0
        self.stop_ev = threading.Event()
        self.records = []

    def run(self):
        k = 0
        while not self.stop_ev.is_set():
            start = time.monotonic()
            rec = {"t_s": round(start - self.t0, 3)}
            try:
                rec.update(scrape_once(self.hostport, timeout=min(5.0, max(self.interval, 1.0))))
            except Exception as e:  # noqa: BLE001 - any failure is a failed scrape
                rec.update({"status": None, "ms": round((time.monotonic() - start) * 1000, 3),
                            "bytes": 0, "error": f"{type(e).__name__}: {e}"})
            self.records.append(rec)
            k += 1
            # fixed schedule: t0 + k * interval (a slow scrape does not shift it)
            delay = self.t0 + k * self.interval - time.monotonic()
            if delay > 0:
                self.stop_ev.wait(delay)

    def stop(self):
        self.stop_ev.set()
        self.join(10)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return None


def run_one(args, cond, rnd, out, logf):
    """One generator run on a fresh server; returns its row for the summary."""
    name = f"{cond}-r{rnd}"
    js = os.path.join(out, "json", f"{name}.json")
    if os.path.exists(js):
        os.remove(js)
    load = loadavg()
    logf.write(f"=== {datetime.datetime.now():%Y-%m-%dT%H:%M:%S} {name} (load average {load})\n")
    data = tempfile.mkdtemp(prefix="stampede-scrape.")
    srv = gen = scraper = None
    row = {"cond": cond, "round": rnd, "load": load, "failed": []}
    try:
        srv, hostport = start_server(args, data, name, out, logf)
        cmd = ["taskset", "-c", GEN_CPU, args.bench, "fanout", "--url", f"ws://{hostport}/ws",
               "--rooms", "10", "--members", "100", "--publishers", "4", "--rate", "0",
               "--duration", f"{args.duration:g}", "--label", cond, "--server-pid", str(srv.pid), "--json", js]
        logf.say(f"{name}: stampede-bench fanout --rooms 10 --members 100 --publishers 4 --rate 0"
                 f" --duration {args.duration:g}" + (f" + GET /metrics every {args.interval:g} s"
                                                      if cond == "scraped" else ""))
        logf.write(f"$ {shlex.join(cmd)}\n")
        t0 = time.monotonic()
        gen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
        LIVE.append(("generator", gen))
        if cond == "scraped":
            scraper = Scraper(hostport, args.interval, t0)
            scraper.start()
        try:
            # setup (1,000 members, ramp-up 1 s) + publishing + at most 10 s drain
            gen_out, _ = gen.communicate(timeout=args.duration + 90)
            rc = gen.returncode
        except subprocess.TimeoutExpired:
            stop_generator(gen)
            try:
                gen_out = gen.communicate(timeout=10)[0]
            except (subprocess.TimeoutExpired, ValueError):
                gen_out = ""
            rc = None
            row["failed"].append(f"generator did not finish in {args.duration + 90:g} s; killed")
        wall = time.monotonic() - t0
        if scraper:
            scraper.stop()
        row["threads"] = thread_stats(srv.pid)
        stop_generator(gen)  # any worker left behind
        gen = None
        logf.write(gen_out or "")
        logf.write(f"(exit {rc}, {wall:.1f} s)\n")
        if rc not in (0, None):
            logf.say(f"{name}: stampede-bench exited {rc} (see run.log)")
        row["rc"], row["wall_s"] = rc, wall
        try:
            with open(js) as f:
                d = json.load(f)
        except (OSError, ValueError):
            d = None
            row["failed"].append("no JSON written")
        row["json"] = d
        if scraper:
            recs = scraper.records
            # the measured window: the generator's deliver phase, which ends as it exits
            deliver = (d or {}).get("deliver_s")
            for rec in recs:
                if deliver:
                    rec["in_deliver_window"] = wall - deliver - 0.2 <= rec["t_s"] <= wall
                if rec["status"] != 200:
                    logf.write(f"scrape at {rec['t_s']} s: status {rec['status']} {rec.get('error', '')}\n")
            bad = [r for r in recs if r["status"] != 200]
            if bad:
                row["failed"].append(f"{len(bad)} of {len(recs)} scrapes not 200 "
                                     f"(first: {bad[0]['status']} {bad[0].get('error', '')})")
            if not recs:
                row["failed"].append("no scrape made")
            row["scrapes"] = recs
            with open(os.path.join(out, "scrapes", f"{name}.json"), "w") as f:
                json.dump({"interval_s": args.interval, "generator_wall_s": round(wall, 3),
                           "deliver_s": deliver, "scrapes": recs}, f, indent=1)
            ok = [r for r in recs if r["status"] == 200]
            if ok:
                logf.say(f"  {len(recs)} scrapes ({sum(1 for r in recs if r.get('in_deliver_window'))} while"
                         f" delivering): median {statistics.median(r['ms'] for r in ok):.2f} ms,"
                         f" max {max(r['ms'] for r in ok):.2f} ms, {ok[-1]['bytes']:,} bytes,"
                         f" stampede_shards {ok[-1]['shards']}")
        with open(os.path.join(out, "threads", f"{name}.json"), "w") as f:
            json.dump({"note": "server threads at the generator's exit: CPU s (utime + stime, clock ticks) and"
                               " context switches since the server started", "threads": row["threads"]}, f, indent=1)
        if d:
            logf.say(f"  {d.get('deliveries_per_s', 0):,.0f} deliveries/s, lost {d.get('lost')},"
                     f" p99 {d.get('latency_ms', {}).get('p99')} ms, server CPU {d.get('cost', {}).get('server_cpu_s')} s")
            if d.get("failed"):
                row["failed"].append(f"generator: {d['failed']}")
        for msg in row["failed"]:
            logf.say(f"  {name} FAILED: {msg}")
        return row
    finally:
        if scraper and scraper.is_alive():
            scraper.stop()
        stop_generator(gen)
        stop_server(srv, logf)
        shutil.rmtree(data, ignore_errors=True)
        try:
            with open(os.path.join(out, "server", f"{name}.log")) as f:
                tail = ANSI.sub("", f.read()).splitlines()[-20:]
            logf.write(f"--- server log (server/{name}.log, last 20 lines)\n" + "\n".join(tail) + "\n")
        except OSError:
            pass


def proc_cpu_s(pid):
    """utime + stime of every thread of pid, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_stats(pid):
    """Per thread of pid: name, CPU seconds (utime + stime, clock ticks),
    voluntary and involuntary context switches."""
    tick = os.sysconf("SC_CLK_TCK")
    res = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return res
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                st = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        res.append({"tid": int(tid), "comm": comm, "cpu_s": (int(fields[11]) + int(fields[12])) / tick,
                    "vcsw": int(st.get("voluntary_ctxt_switches", "0")),
                    "ivcsw": int(st.get("nonvoluntary_ctxt_switches", "0"))})
    return res


def by_comm(threads, name):
    return [t for t in threads or [] if t["comm"] == name or (name == "shard" and t["comm"].startswith("shard-"))]


def calibrate(args, n, out, logf):
    """The server CPU one scrape costs, with --calibrate-sessions idle STOMP
    sessions open (1,000: as many as the fan-out runs hold): the server's
    CPU time over n back-to-back scrapes, less its CPU over the same wall
    time without scrapes."""
    data = tempfile.mkdtemp(prefix="stampede-scrape.")
    srv = hold = None
    try:
        srv, hostport = start_server(args, data, "calibrate", out, logf)
        sessions = args.calibrate_sessions
        if sessions:
            hold_s = 120
            cmd = ["taskset", "-c", GEN_CPU, args.bench, "hold", "--url", f"ws://{hostport}/ws",
                   "--sessions", str(sessions), "--rooms", "10", "--ramp-up", "1", "--hold", str(hold_s),
                   "--label", "calibrate"]
            logf.write(f"$ {shlex.join(cmd)}\n")
            hold = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(os.path.join(data, "hold.out"), "w"),
                                    stderr=subprocess.STDOUT, start_new_session=True)
            LIVE.append(("generator", hold))
            deadline = time.monotonic() + 30
            while True:
                r = scrape_once(hostport, 5)
                if r["sessions"] >= sessions:
                    break
                if time.monotonic() > deadline or not alive(hold):
                    raise RuntimeError(f"calibration: {r['sessions']} of {sessions} sessions open after 30 s")
                time.sleep(0.5)
        logf.say(f"calibration: {n} back-to-back scrapes, {sessions} idle sessions open (--shards {args.shards})")
        for _ in range(20):  # warm-up
            scrape_once(hostport, 5)
        time.sleep(1)
        # idle first, then the scrapes over the same wall time (measured on a first pass)
        c0, t0 = proc_cpu_s(srv.pid), time.monotonic()
        th0 = thread_stats(srv.pid)
        lat = []
        for _ in range(n):
            r = scrape_once(hostport, 5)
            if r["status"] != 200:
                raise RuntimeError(f"calibration: scrape answered {r['status']}")
            lat.append(r["ms"])
        busy_wall, busy_cpu = time.monotonic() - t0, proc_cpu_s(srv.pid) - c0
        th1 = thread_stats(srv.pid)
        c1 = proc_cpu_s(srv.pid)
        time.sleep(busy_wall)
        idle_cpu = proc_cpu_s(srv.pid) - c1
        per = max(busy_cpu - idle_cpu, 0.0) / n
        cpu_by_comm = {}
        for t in th1:
            before = next((x["cpu_s"] for x in th0 if x["tid"] == t["tid"]), 0.0)
            key = "shard" if t["comm"].startswith("shard-") else t["comm"]
            cpu_by_comm[key] = round(cpu_by_comm.get(key, 0.0) + t["cpu_s"] - before, 3)
        res = {"scrapes": n, "sessions": sessions, "wall_s": round(busy_wall, 3), "server_cpu_s": busy_cpu,
               "server_cpu_idle_same_wall_s": idle_cpu, "server_cpu_per_scrape_us": round(per * 1e6, 1),
               "cpu_s_by_thread_during_scrapes": cpu_by_comm,
               "latency_ms_median": statistics.median(lat), "latency_ms_max": max(lat), "bytes": r["bytes"],
               "clock_tick_s": 1 / os.sysconf("SC_CLK_TCK")}
        with open(os.path.join(out, "scrapes", "calibrate.json"), "w") as f:
            json.dump(res, f, indent=1)
        logf.say(f"  {per * 1e6:.0f} µs server CPU per scrape ({busy_cpu:.2f} s over {busy_wall:.2f} s, idle"
                 f" {idle_cpu:.2f} s; by thread {cpu_by_comm}); latency median {statistics.median(lat):.2f} ms,"
                 f" max {max(lat):.2f} ms")
        return res
    finally:
        stop_generator(hold)
        stop_server(srv, logf)
        shutil.rmtree(data, ignore_errors=True)


# --- the summary -------------------------------------------------------------------

def describe_bin(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    built = datetime.datetime.fromtimestamp(os.path.getmtime(path)).strftime("%Y-%m-%d %H:%M:%S")
    s = f"`{path}` (sha256 {h.hexdigest()[:12]}…, built {built})"
    d = os.path.dirname(os.path.realpath(path))
    try:
        top = subprocess.run(["git", "-C", d, "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        rev = subprocess.run(["git", "-C", top, "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "-C", top, "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True, timeout=30).stdout.strip()
        s += f"; worktree `{top}` at {rev}" + (", tracked files modified in the worktree now" if dirty else "")
    except (subprocess.SubprocessError, OSError):
        s += "; not in a git worktree"
    return s


def machine():
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        nproc = str(os.cpu_count())
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
            model = m.group(1).strip() if m else "?"
    except OSError:
        pass
    return f"`nproc` {nproc}, CPU {model}, Linux {platform.release()}"


def fmt_int(v):
    return "–" if v is None else f"{v:,.0f}"


def cpu_ns_per_delivery(d):
    try:
        return d["cost"]["server_cpu_s"] / d["delivered"] * 1e9
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def spread(xs):
    """(min, max, coefficient of variation %) of xs."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    cv = 100 * statistics.stdev(xs) / statistics.mean(xs) if len(xs) > 1 else 0.0
    return min(xs), max(xs), cv


def summary(args, rows, header, elapsed, cal):
    md = list(header)
    md.append(f"- Wall time of the runs: {int(elapsed // 60)} min {int(elapsed % 60)} s")
    md.append("")
    md.append(f"## fanout — 10 rooms x 100 members, 4 publishers, as fast as members take, {args.duration:g} s;"
              f" scraped: GET /metrics every {args.interval:g} s")
    md.append("")
    md.append("| round | order | plain deliveries/s | scraped deliveries/s | ratio scraped/plain |"
              " plain server CPU ns/delivery | scraped server CPU ns/delivery | plain p99 ms | scraped p99 ms |"
              " scrapes (while delivering) | scrape median ms | scrape max ms | body bytes | load avg before (plain; scraped) |")
    md.append("|" + "---|" * 14)
    ratios, cpu_ratios, notes = [], [], []
    by = {(r["cond"], r["round"]): r for r in rows}
    all_ok_scrapes, all_scrapes = [], []
    for rnd in range(1, args.rounds + 1):
        p, s = by.get(("plain", rnd)), by.get(("scraped", rnd))
        order = "plain, scraped" if rnd % 2 == 1 else "scraped, plain"
        pd = (p or {}).get("json") or {}
        sd = (s or {}).get("json") or {}
        pv, sv = pd.get("deliveries_per_s"), sd.get("deliveries_per_s")
        pc, sc = cpu_ns_per_delivery(pd), cpu_ns_per_delivery(sd)
        ok = p and s and not p["failed"] and not s["failed"] and pv and sv
        ratio = sv / pv if ok else None
        if ratio is not None:
            ratios.append(ratio)
            if pc and sc:
                cpu_ratios.append(sc / pc)
        recs = (s or {}).get("scrapes") or []
        all_scrapes += recs
        good = [x for x in recs if x["status"] == 200]
        all_ok_scrapes += good
        in_win = sum(1 for x in recs if x.get("in_deliver_window"))
        md.append("| " + " | ".join([
            str(rnd), order, fmt_int(pv), fmt_int(sv),
            f"{ratio:.3f}" if ratio is not None else "–",
            fmt_int(pc), fmt_int(sc),
            fmt_int(pd.get("latency_ms", {}).get("p99")), fmt_int(sd.get("latency_ms", {}).get("p99")),
            f"{len(recs)} ({in_win})" if s else "–",
            f"{statistics.median(x['ms'] for x in good):.2f}" if good else "–",
            f"{max(x['ms'] for x in good):.2f}" if good else "–",
            fmt_int(good[-1]["bytes"]) if good else "–",
            f"{(p or {}).get('load')}; {(s or {}).get('load')}",
        ]) + " |")
        for r in (p, s):
            if r is None:
                continue
            for msg in r["failed"]:
                notes.append(f"{r['cond']} round {rnd}: FAILED: {msg}")
            d = r.get("json") or {}
            if d.get("lost"):
                notes.append(f"{r['cond']} round {rnd}: lost {d['lost']:,}")
            if r.get("rc") not in (0, None):
                notes.append(f"{r['cond']} round {rnd}: stampede-bench exited {r['rc']}")
            for k in ("out_of_order", "subscribers_short", "sessions_dropped"):
                if d.get(k):
                    notes.append(f"{r['cond']} round {rnd}: {k.replace('_', ' ')} {d[k]}")
            if d.get("drop_reasons"):
                notes.append(f"{r['cond']} round {rnd}: drops {d['drop_reasons']}")
    md.append("")
    notes += [f"calibration: FAILED: {m}" for r in rows if r["cond"] == "calibrate" for m in r["failed"]]
    for n in notes:
        md.append(f"- {n}")
    if notes:
        md.append("")

    md.append("## Result")
    md.append("")
    if ratios:
        med = statistics.median(ratios)
        below = sum(1 for x in ratios if x < 1)
        md.append(f"- **Median ratio scraped/plain deliveries/s over {len(ratios)} round(s): {med:.3f}**"
                  f" ({100 * (med - 1):+.1f} %); per round {', '.join(f'{x:.3f}' for x in ratios)}"
                  f" (range {min(ratios):.3f}–{max(ratios):.3f}); scraped lower in {below} of {len(ratios)}.")
        if cpu_ratios:
            cm = statistics.median(cpu_ratios)
            md.append(f"- Server CPU per delivery, median ratio scraped/plain: {cm:.3f} ({100 * (cm - 1):+.1f} %);"
                      f" per round {', '.join(f'{x:.3f}' for x in cpu_ratios)}.")
    else:
        md.append("- No round with both runs complete: no ratio.")
    for cond in ("plain", "scraped"):
        vals = [((r.get("json") or {}).get("deliveries_per_s")) for r in rows if r["cond"] == cond and not r["failed"]]
        sp = spread(vals)
        if sp:
            md.append(f"- {cond}: median {statistics.median([v for v in vals if v]):,.0f} deliveries/s,"
                      f" range {sp[0]:,.0f}–{sp[1]:,.0f} ({100 * (sp[1] / sp[0] - 1):.0f} % apart),"
                      f" coefficient of variation {sp[2]:.1f} % between rounds.")
    if all_scrapes:
        lat = [x["ms"] for x in all_ok_scrapes]
        sizes = sorted({x["bytes"] for x in all_ok_scrapes})
        shards = sorted({x["shards"] for x in all_ok_scrapes if x.get("shards") is not None})
        in_win = sum(1 for x in all_scrapes if x.get("in_deliver_window"))
        line = (f"- Scrapes: {len(all_scrapes)} in all ({len(all_ok_scrapes)} answered 200; {in_win} while the"
                f" generator was delivering, the rest during its set-up and drain)")
        if lat:
            line += (f"; latency median {statistics.median(lat):.2f} ms, p90 "
                     f"{sorted(lat)[min(len(lat) - 1, int(len(lat) * 0.9))]:.2f} ms, max {max(lat):.2f} ms"
                     f" (connect to last byte, from core {GEN_CPU}, with the server's core busy);"
                     f" body {sizes[0]:,}–{sizes[-1]:,} bytes; `stampede_shards` {', '.join(map(str, shards))}.")
        md.append(line)
        md.append("  The latency under load is mostly waiting: the scrape thread asks every shard, and a"
                  " shard answers between its fan-out work on the busy core.")
    # Server threads at the generator's exit (clock-tick CPU, context switches).
    def med_of(cond, fn):
        vals = [fn(r) for r in rows if r["cond"] == cond and r.get("threads")]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None
    scr_cpu = {c: med_of(c, lambda r: sum(t["cpu_s"] for t in by_comm(r["threads"], "stampede-scrape")))
               for c in ("plain", "scraped")}
    shard_ivcsw = {c: med_of(c, lambda r: sum(t["ivcsw"] for t in by_comm(r["threads"], "shard")))
                   for c in ("plain", "scraped")}
    shard_vcsw = {c: med_of(c, lambda r: sum(t["vcsw"] for t in by_comm(r["threads"], "shard")))
                  for c in ("plain", "scraped")}
    if scr_cpu["scraped"] is not None:
        tot = sum(sum(t["cpu_s"] for t in by_comm(r.get("threads"), "stampede-scrape"))
                  for r in rows if r["cond"] == "scraped")
        n = sum(len(r.get("scrapes") or []) for r in rows if r["cond"] == "scraped")
        md.append(f"- The `stampede-scrape` thread's CPU over a whole run (clock ticks of"
                  f" {1000 / os.sysconf('SC_CLK_TCK'):.0f} ms, so a sampled estimate): median"
                  f" {1000 * scr_cpu['scraped']:.0f} ms per scraped run, {1000 * (scr_cpu['plain'] or 0):.0f} ms per"
                  f" plain one; over all scraped runs {1000 * tot:.0f} ms for {n} scrapes"
                  + (f" = {1e6 * tot / n:,.0f} µs per scrape." if n else "."))
    if shard_ivcsw["plain"] is not None and shard_ivcsw["scraped"] is not None:
        md.append(f"- Shard threads' context switches per run, median: involuntary (preempted)"
                  f" {shard_ivcsw['plain']:,.0f} plain vs {shard_ivcsw['scraped']:,.0f} scraped; voluntary"
                  f" {shard_vcsw['plain']:,.0f} vs {shard_vcsw['scraped']:,.0f} (`threads/`).")
    if cal:
        share = cal["server_cpu_per_scrape_us"] / (args.interval * 1e6) * 100
        md.append(f"- What a scrape costs the server (fresh server, {cal['sessions']:,} idle STOMP sessions open,"
                  f" {cal['scrapes']} back-to-back scrapes, its CPU time less the same wall time without scrapes;"
                  f" `scrapes/calibrate.json`):"
                  f" **{cal['server_cpu_per_scrape_us']:,.0f} µs of CPU per scrape**, latency median"
                  f" {cal['latency_ms_median']:.2f} ms, body {cal['bytes']:,} bytes. At one scrape every"
                  f" {args.interval:g} s that is {share:.3f} % of one core: the most throughput it could take.")
    md.append("")
    md.append("Ratio > 1: the scraped run delivered more. Judge the median ratio against the spread of the same"
              " condition between rounds (the lines above): on this shared machine a difference inside that"
              " spread is not measurable.")
    return md


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 5; 1 with --quick)")
    ap.add_argument("--duration", type=float, default=None, help="seconds of publishing per run (default 5; 2 with --quick)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes (default %(default)s)")
    ap.add_argument("--shards", type=int, default=1, help="server shards (default %(default)s)")
    ap.add_argument("--calibrate", type=int, default=500,
                    help="first, this many back-to-back scrapes on an idle server to measure the server CPU per"
                         " scrape (default %(default)s; 0: skip)")
    ap.add_argument("--calibrate-sessions", type=int, default=1000,
                    help="idle STOMP sessions (stampede-bench hold) open during the calibration (default %(default)s)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 2 s (unless given)")
    ap.add_argument("--out", default=None, help="results directory (default bench/results/<date>-scrape)")
    ap.add_argument("--bin", default=os.environ.get("STAMPEDE_BIN", os.path.join(ROOT, "target/release/stampede")))
    ap.add_argument("--bench", default=os.environ.get("STAMPEDE_BENCH_BIN",
                                                      os.path.join(ROOT, "target/release/stampede-bench")))
    args = ap.parse_args()
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    if args.duration is None:
        args.duration = 2.0 if args.quick else 5.0
    if args.rounds < 1 or args.duration <= 0 or args.interval <= 0 or args.shards < 1:
        ap.error("--rounds, --duration, --interval and --shards must be positive")
    args.bin, args.bench = os.path.abspath(args.bin), os.path.abspath(args.bench)
    for b in (args.bin, args.bench):
        if not (os.path.isfile(b) and os.access(b, os.X_OK)):
            sys.exit(f"not an executable file: {b} (cargo build --release --workspace)")
    if not shutil.which("taskset"):
        sys.exit("taskset not found (util-linux)")
    global GEN_CPU
    if (os.cpu_count() or 1) < 2:
        print("warning: one core only; server, generator and scraper share core 0", file=sys.stderr)
        GEN_CPU = "0"
    date = datetime.date.today().isoformat()
    out = os.path.abspath(args.out or os.path.join(ROOT, "bench", "results", f"{date}-scrape"))
    for sub in ("json", "scrapes", "server", "threads"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    # As many open files as the hard limit allows (the children inherit it).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1048576, hard))
    except (ValueError, OSError):
        pass
    mach = machine()  # before the pinning below (nproc counts our affinity)
    # The same binaries for every run, even if someone rebuilds meanwhile.
    orig_bin, orig_bench = args.bin, args.bench
    bins = tempfile.mkdtemp(prefix="stampede-scrape-bins.")
    args.bin = shutil.copy2(orig_bin, os.path.join(bins, "stampede"))
    args.bench = shutil.copy2(orig_bench, os.path.join(bins, "stampede-bench"))
    # The scraper (this process) beside the generator, off the server's core.
    try:
        os.sched_setaffinity(0, {int(GEN_CPU)})
    except OSError:
        pass
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    rerun = f"cd {shlex.quote(os.getcwd())} && {shlex.join([sys.argv[0]] + sys.argv[1:])}"
    header = [
        f"# stampede: fan-out max rate with a {args.interval:g} s `/metrics` scrape vs without — {date}",
        "",
        f"Made by `{shlex.join(['scripts/bench-scrape.py'] + sys.argv[1:])}`"
        f" ({'quick smoke run' if args.quick else 'full run'}, {args.rounds} round(s)). To re-run:",
        "",
        f"    {rerun}",
        "",
        f"- Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M:%S %Z}",
        f"- Machine: {mach}; open files {resource.getrlimit(resource.RLIMIT_NOFILE)[0]};"
        f" load average at the start {loadavg()}",
        f"- Server: {describe_bin(orig_bin)}",
        f"- Generator: {describe_bin(orig_bench)}",
        "- Both copied at the start; every run uses the copies.",
        f"- Every run on a fresh `stampede --shards {args.shards} --listen 127.0.0.1:0 --stomp-listen off"
        f" --data-dir <fresh>` (STAMPEDE_MAX_PUBLISH_RATE=0) pinned to core {SERVER_CPU}"
        + (" (all its shards on that core)" if args.shards > 1 else "")
        + f", the generator and the scraper pinned to core {GEN_CPU}; per round the same binary runs plain and"
        " scraped back to back, plain first in odd rounds, scraped first in even ones.",
        f"- Raw results: `{out}/json/` (generator), `{out}/scrapes/` (every scrape), `{out}/server/` (server logs);"
        f" commands and output: `{out}/run.log`.",
    ]
    logf = Log(os.path.join(out, "run.log"))
    logf.write(f"=== {datetime.datetime.now():%Y-%m-%dT%H:%M:%S} {rerun}\n" + "\n".join(header) + "\n")
    rows = []
    t_start = time.monotonic()
    status = 0
    cal = None
    try:
        if args.calibrate:
            try:
                cal = calibrate(args, args.calibrate, out, logf)
            except RuntimeError as e:
                logf.say(f"calibration FAILED: {e}")
                rows.append({"cond": "calibrate", "round": 0, "load": None, "failed": [str(e).splitlines()[0]]})
            time.sleep(1 if args.quick else 2)
        for rnd in range(1, args.rounds + 1):
            order = ("plain", "scraped") if rnd % 2 == 1 else ("scraped", "plain")
            logf.say(f"round {rnd} of {args.rounds}: {', '.join(order)}")
            for cond in order:
                try:
                    rows.append(run_one(args, cond, rnd, out, logf))
                except RuntimeError as e:
                    logf.say(str(e))
                    rows.append({"cond": cond, "round": rnd, "load": None, "failed": [str(e).splitlines()[0]]})
                time.sleep(1 if args.quick else 2)
    except Interrupted as e:
        logf.say(f"interrupted ({e}); stopping")
        status = 130
    finally:
        stop_all()
        shutil.rmtree(bins, ignore_errors=True)
    elapsed = time.monotonic() - t_start
    md = summary(args, rows, header, elapsed, cal)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    logf.write(f"=== summary ({out}/summary.md)\n" + "\n".join(md) + "\n")
    print("\n".join(md))
    failed = [r for r in rows if r["failed"]]
    logf.say(f"done in {int(elapsed // 60)} min {int(elapsed % 60)} s; wrote {out}/summary.md"
             + (f"; {len(failed)} run(s) FAILED" if failed else ""))
    if status:
        sys.exit(status)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
