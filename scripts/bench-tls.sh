#!/usr/bin/env bash
# What native TLS costs: the same storm (session set-up) and fan-out
# (deliveries/s) against stampede over ws:// and over wss://, in one run.
#
#   scripts/bench-tls.sh [--users N] [--rounds R] [--duration S] [--out DIR]
#
#   --users N     users per storm (default 2000), 1 s ramp-up
#   --rounds R    rounds (default 3); ws first in odd rounds, wss first in
#                 even ones, so drift over the run cancels
#   --duration S  seconds of fan-out publishing per run (default 10)
#   --out DIR     results (default bench/results/<date>-tls): every
#                 generator JSON in DIR/json/, every command in DIR/run.log,
#                 the table in DIR/summary.md
#
# Two stampedes with the same settings (`--shards 1 --persist false
# --max-publish-rate 0`, both on core 0, only one loaded at a time), one
# with `--tls-cert/--tls-key` (an ECDSA P-256 certificate from a CA of the
# run's own, made with openssl); the generator, `stampede-bench`, runs on
# core 1 with TLS session resumption off, so every wss:// session makes a
# full handshake. Fan-out: 10 rooms x 100 members, 2 publishers at full
# speed. The plain and TLS fan-out latencies are not comparable: over TLS
# the generator gets no kernel receive timestamps, and on a saturated box
# latency follows the rate reached.
#
#   STAMPEDE_BIN, STAMPEDE_BENCH_BIN   the binaries (default target/release/)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ORIG_ARGS="$*"
USERS=2000
ROUNDS=3
DURATION=10
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
for v in "$USERS" "$ROUNDS" "$DURATION"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "--users, --rounds and --duration are positive integers" >&2; exit 2; }
done

SERVER="${STAMPEDE_BIN:-$ROOT/target/release/stampede}"
BENCH="${STAMPEDE_BENCH_BIN:-$ROOT/target/release/stampede-bench}"
for b in "$SERVER" "$BENCH"; do
  if [ ! -x "$b" ]; then echo "not found: $b (cargo build --release --workspace)" >&2; exit 2; fi
done
command -v openssl >/dev/null || { echo "openssl not found (apt-get install openssl)" >&2; exit 2; }
DATE="$(date -u +%F)"
OUT="${OUT:-$ROOT/bench/results/$DATE-tls}"
mkdir -p "$OUT/json"
LOG="$OUT/run.log"
: >"$LOG"
WORK="$(mktemp -d)"
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[$(date -u +%T)] $*" | tee -a "$LOG"; }

# A CA and a server certificate for 127.0.0.1 signed by it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=bench CA" -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>>"$LOG"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$WORK/key.pem" -out "$WORK/req.pem" 2>>"$LOG"
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$WORK/ext.cnf"
openssl x509 -req -in "$WORK/req.pem" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 2 -extfile "$WORK/ext.cnf" -out "$WORK/cert.pem" 2>>"$LOG"

declare -A PID PORT
start() { # name extra-args... -> sets PID[name], PORT[name]
  local name=$1 line port
  shift
  mkfifo "$WORK/$name.ready"
  taskset -c 0 "$SERVER" --shards 1 --listen 127.0.0.1:0 --stomp-listen off \
    --persist false --max-publish-rate 0 --data-dir "$WORK/$name-db" "$@" \
    >"$WORK/$name.ready" 2>"$OUT/stampede-$name.log" &
  PIDS+=("$!")
  PID[$name]=$!
  read -r -t 20 line <"$WORK/$name.ready" || { echo "stampede ($name) did not start" >&2; exit 1; }
  cat "$WORK/$name.ready" >/dev/null &
  port="${line##*http=127.0.0.1:}"
  PORT[$name]=${port%% *}
  log "stampede $name pid $! on 127.0.0.1:${port%% *}"
}
start ws
start wss --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem"

run() { # scenario who round
  local json="$OUT/json/$1-$2-r$3.json"
  local cmd=(taskset -c 1 "$BENCH" "$1" --url "$2://127.0.0.1:${PORT[$2]}/ws" --ca-cert "$WORK/ca.pem"
    --server-pid "${PID[$2]}"
    --label "$2" --json "$json")
  case $1 in
    storm) cmd+=(--users "$USERS" --ramp-up 1) ;;
    fanout) cmd+=(--rooms 10 --members 100 --publishers 2 --rate 0 --duration "$DURATION") ;;
  esac
  log "${cmd[*]}"
  "${cmd[@]}" >>"$LOG" 2>&1 || log "$1 $2 round $3: the generator exited non-zero (errors counted in its JSON)"
  sleep 2
}

for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="ws wss"; else order="wss ws"; fi
  for who in $order; do run storm "$who" "$r"; done
  for who in $order; do run fanout "$who" "$r"; done
done

python3 - "$OUT" "$USERS" "$ROUNDS" "$ORIG_ARGS" >"$OUT/summary.md" <<'PY'
import json, os, platform, statistics, subprocess, sys
out, users, rounds, args = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def load(kind, who, r):
    try:
        return json.load(open(f"{out}/json/{kind}-{who}-r{r}.json"))
    except (OSError, ValueError):
        return None
def step(d, name):
    return next((x for x in d.get("steps", {}).get("rows", []) if x.get("step") == name), {})
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
print("# What native TLS costs: ws:// vs wss://\n")
print(f"Made by `scripts/bench-tls.sh {args}`: {os.cpu_count()} cores ({cpu}), Linux "
      f"{platform.release()}, date (UTC) "
      f"{subprocess.run(['date', '-u', '+%F %T'], capture_output=True, text=True).stdout.strip()}.\n")
print("Two stampedes (`--shards 1 --persist false --max-publish-rate 0`, core 0), one with "
      "`--tls-cert/--tls-key` (ECDSA P-256, TLS 1.3 negotiated); `stampede-bench` on core 1 with "
      "session resumption off (every wss:// session is a full handshake).\n")
print(f"## Session set-up: storm, {users} users within 1 s\n")
print("Each user: TCP connect (+ TLS handshake) + upgrade (`ws_open`), CONNECT, SUBSCRIBE, "
      "DISCONNECT with receipt, close (`flow`).\n")
print("| round | who | ws_open avg ms | ws_open p99 ms | flow avg ms | flow p99 ms | server CPU per flow µs | errors |")
print("|---|---|---|---|---|---|---|---|")
agg = {"ws": [], "wss": []}
for r in range(1, rounds + 1):
    for who in ("ws", "wss"):
        d = load("storm", who, r)
        if d is None:
            print(f"| {r} | {who} | – | – | – | – | – | – |")
            continue
        o, f = step(d, "ws_open"), step(d, "flow")
        agg[who].append((o.get("avg_ms", 0), f.get("avg_ms", 0), d.get("server_cpu_per_flow_us", 0)))
        print(f"| {r} | {who} | {o.get('avg_ms', 0):.2f} | {o.get('p99_ms', 0):.2f} | {f.get('avg_ms', 0):.2f} | "
              f"{f.get('p99_ms', 0):.2f} | {d.get('server_cpu_per_flow_us', 0):,.0f} | {f.get('errors', 0)} |")
def med(who, i):
    v = [x[i] for x in agg[who]]
    return statistics.median(v) if v else float("nan")
print()
print(f"Medians: ws_open {med('ws', 0):.2f} → {med('wss', 0):.2f} ms; flow {med('ws', 1):.2f} → "
      f"{med('wss', 1):.2f} ms; server CPU per session {med('ws', 2):,.0f} → {med('wss', 2):,.0f} µs "
      f"(+{med('wss', 2) - med('ws', 2):,.0f} µs per TLS session set-up).\n")
print("## Fan-out: 10 rooms x 100 members, 2 publishers at full speed\n")
print("| round | who | deliveries/s | published/s | server CPU s | server CPU per delivery µs | lost | out of order |")
print("|---|---|---|---|---|---|---|---|")
fan = {"ws": [], "wss": []}
for r in range(1, rounds + 1):
    for who in ("ws", "wss"):
        d = load("fanout", who, r)
        if d is None:
            print(f"| {r} | {who} | – | – | – | – | – | – |")
            continue
        cpu_s = d.get("cost", {}).get("server_cpu_s", 0)
        per = cpu_s * 1e6 / max(d.get("delivered", 0), 1)
        fan[who].append((d.get("deliveries_per_s", 0), per))
        print(f"| {r} | {who} | {d.get('deliveries_per_s', 0):,.0f} | {d.get('published_per_s', 0):,.0f} | "
              f"{cpu_s:.2f} | {per:.3f} | {d.get('lost', 0)} | {d.get('out_of_order', 0)} |")
def fmed(who, i):
    v = [x[i] for x in fan[who]]
    return statistics.median(v) if v else float("nan")
print()
print(f"Medians: {fmed('ws', 0):,.0f} → {fmed('wss', 0):,.0f} deliveries/s "
      f"({fmed('wss', 0) / fmed('ws', 0):.2f}x); server CPU per delivery {fmed('ws', 1):.3f} → "
      f"{fmed('wss', 1):.3f} µs.")
PY
cat "$OUT/summary.md"
