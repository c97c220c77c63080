#!/usr/bin/env bash
# The seed's experiment, repeated: users connecting straight to stampede
# against the same users through nginx in front (the seed lost ~30 % of
# 3,000 users to nginx's worker_connections before it was raised).
#
#   scripts/bench-nginx.sh [--users N] [--rounds R] [--out DIR]
#
#   --users N    users per storm (default 3000, the seed's plan), 1 s ramp-up
#   --rounds R   rounds (default 3); direct first in odd rounds, nginx first
#                in even ones, so drift over the run cancels
#   --out DIR    results (default bench/results/<date>-nginx): every
#                generator JSON in DIR/json/, every command in DIR/run.log,
#                the table in DIR/summary.md
#
# One stampede (`--shards 1`, taskset core 0) serves both; nginx (Debian's,
# started and stopped by this script, `worker_processes 1`, taskset core 0
# too: it shares the server's core as it would share a host) proxies
# 127.0.0.1:<port> to it with the WebSocket settings of tuning/nginx.conf
# (plain HTTP here: the comparison is the proxy hop, not TLS). The
# generator, `stampede-bench storm`, runs on core 1.
#
#   STAMPEDE_BIN, STAMPEDE_BENCH_BIN   the binaries (default target/release/)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ORIG_ARGS="$*"
USERS=3000
ROUNDS=3
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
[[ "$USERS" =~ ^[1-9][0-9]*$ ]] || { echo "--users must be a positive integer" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds must be a positive integer" >&2; exit 2; }

SERVER="${STAMPEDE_BIN:-$ROOT/target/release/stampede}"
BENCH="${STAMPEDE_BENCH_BIN:-$ROOT/target/release/stampede-bench}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
for b in "$SERVER" "$BENCH" "$NGINX"; do
  if [ ! -x "$b" ]; then echo "not found: $b (nginx: apt-get install nginx)" >&2; exit 2; fi
done
DATE="$(date -u +%F)"
OUT="${OUT:-$ROOT/bench/results/$DATE-nginx}"
mkdir -p "$OUT/json"
LOG="$OUT/run.log"
: >"$LOG"
WORK="$(mktemp -d)"
SERVER_PID=""
NGINX_PIDS=()

cleanup() {
  for pid in "${NGINX_PIDS[@]}" "$SERVER_PID"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
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

# stampede, its port from the ready line.
mkfifo "$WORK/ready"
STAMPEDE_MAX_PUBLISH_RATE=0 taskset -c 0 "$SERVER" --shards 1 --listen 127.0.0.1:0 \
  --stomp-listen off --data-dir "$WORK/db" >"$WORK/ready" 2>"$OUT/stampede.log" &
SERVER_PID=$!
read -r -t 20 line <"$WORK/ready" || { echo "stampede did not start" >&2; exit 1; }
cat "$WORK/ready" >/dev/null &
PORT="${line##*http=127.0.0.1:}"
PORT="${PORT%% *}"
log "stampede pid $SERVER_PID on 127.0.0.1:$PORT"

# nginx on a free port, proxying to it: `nginx` sized as tuning/nginx.conf
# says, `nginx-1024` with nginx's default worker_connections (1024), which
# the seed ran into (it counts the client's and the upstream's socket).
NGINX_PIDS=()
start_nginx() { # name worker_connections -> prints the port
  local dir="$WORK/$1" port
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  mkdir -p "$dir/logs"
  cat >"$dir/nginx.conf" <<NGINXCONF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections $2; multi_accept on; }
http {
  access_log off;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream stampede { server 127.0.0.1:$PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$port backlog=4096;
    location /ws {
      proxy_pass http://stampede;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$host;
      proxy_read_timeout 60s;
      proxy_send_timeout 60s;
      proxy_buffering off;
    }
  }
}
NGINXCONF
  taskset -c 0 "$NGINX" -p "$dir" -c "$dir/nginx.conf" 2>>"$LOG" &
  NGINX_PIDS+=("$!")
  for _ in $(seq 1 50); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; then break; fi
    sleep 0.1
  done
  log "$1 (worker_connections $2) pid $! on 127.0.0.1:$port" >&2
  echo "$port"
}
start_nginx nginx 16384 >"$WORK/nginx.port"
start_nginx nginx-1024 1024 >"$WORK/nginx-1024.port"
NPORT="$(cat "$WORK/nginx.port")"
SEEDPORT="$(cat "$WORK/nginx-1024.port")"

hold() { # label url round: the seed's users stay connected
  local json="$OUT/json/$1-hold-r$3.json"
  local cmd=(taskset -c 1 "$BENCH" hold --url "$2" --sessions "$USERS" --ramp-up 2 --hold 2
    --server-pid "$SERVER_PID" --label "$1" --json "$json")
  log "${cmd[*]}"
  "${cmd[@]}" >>"$LOG" 2>&1 || log "$1 hold round $3: the generator exited non-zero (errors counted in its JSON)"
  sleep 3
}

storm() { # label url round
  local json="$OUT/json/$1-r$3.json"
  local cmd=(taskset -c 1 "$BENCH" storm --url "$2" --users "$USERS" --ramp-up 1
    --server-pid "$SERVER_PID" --label "$1" --json "$json")
  log "${cmd[*]}"
  "${cmd[@]}" >>"$LOG" 2>&1 || log "$1 round $3: the generator exited non-zero (errors counted in its JSON)"
  sleep 2
}

for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="direct nginx nginx-1024"; else order="nginx-1024 nginx direct"; fi
  for who in $order; do
    case $who in
      direct) url="ws://127.0.0.1:$PORT/ws" ;;
      nginx) url="ws://127.0.0.1:$NPORT/ws" ;;
      nginx-1024) url="ws://127.0.0.1:$SEEDPORT/ws" ;;
    esac
    storm "$who" "$url" "$r"
    hold "$who" "$url" "$r"
  done
done

python3 - "$OUT" "$USERS" "$ROUNDS" "$ORIG_ARGS" >"$OUT/summary.md" <<'PY'
import glob, json, os, platform, statistics, subprocess, sys
out, users, rounds, args = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def flow(d):
    return next((r for r in d.get("steps", {}).get("rows", []) if r.get("step") == "flow"), {})
WHO = ("direct", "nginx", "nginx-1024")
rows, per = [], {w: [] for w in WHO}
for r in range(1, rounds + 1):
    line = [str(r)]
    for who in WHO:
        try:
            d = json.load(open(f"{out}/json/{who}-r{r}.json"))
        except (OSError, ValueError):
            line += ["–"] * 3
            continue
        f = flow(d)
        per[who].append(f)
        line += [f"{f.get('avg_ms', 0):,.1f}", f"{f.get('p99_ms', 0):,.1f}", f"{f.get('errors', 0):,}"]
    rows.append(line)
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
print(f"# Direct vs nginx in front: {users} users connecting within 1 s\n")
print(f"Made by `scripts/bench-nginx.sh {args}`: "
      f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, date (UTC) "
      f"{subprocess.run(['date', '-u', '+%F %T'], capture_output=True, text=True).stdout.strip()}.\n")
print("Each user: WebSocket upgrade, CONNECT, SUBSCRIBE, DISCONNECT with receipt, close "
      "(the seed's JMeter plan). stampede `--shards 1` and nginx (`worker_processes 1`) share core 0, "
      "the generator runs on core 1. `nginx`: worker_connections 16384 (sized as tuning/nginx.conf "
      "says: two per proxied WebSocket); `nginx-1024`: nginx's default 1024, the seed's setting.\n")
print("| round | " + " | ".join(f"{w} flow avg ms | {w} flow p99 ms | {w} errors" for w in WHO) + " |")
print("|---|" + "---|" * (3 * len(WHO)))
for line in rows:
    print("| " + " | ".join(line) + " |")
def med(who, k):
    v = [f.get(k) for f in per[who] if f.get(k) is not None]
    return statistics.median(v) if v else float("nan")
print("| median | " + " | ".join(f"{med(w,'avg_ms'):,.1f} | {med(w,'p99_ms'):,.1f} | {med(w,'errors'):,.0f}"
                               for w in WHO) + " |")
print()
print(f"Then the same {users} users stay connected (hold: connect and subscribe over 2 s, hold 2 s):\n")
print("| round | " + " | ".join(f"{w} established | {w} errors" for w in WHO) + " |")
print("|---|" + "---|" * (2 * len(WHO)))
for r in range(1, rounds + 1):
    line = [str(r)]
    for who in WHO:
        try:
            d = json.load(open(f"{out}/json/{who}-hold-r{r}.json"))
        except (OSError, ValueError):
            line += ["–", "–"]
            continue
        errs = d.get("errors")
        n_err = sum(errs.values()) if isinstance(errs, dict) else (len(errs) if isinstance(errs, list) else errs)
        line += [f"{d.get('established', 0):,}", f"{n_err or 0:,}"]
    print("| " + " | ".join(line) + " |")
print()
print("nginx counts both sockets of a proxied WebSocket against worker_connections: with the "
      "default 1024 one worker holds about 500 users and refuses the rest; sized at two per user "
      "it holds them all, at the cost of one more hop (the flow times above).")
PY
cat "$OUT/summary.md"
