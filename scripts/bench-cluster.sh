#!/usr/bin/env bash
# Cluster mode: deliveries/s and p99 latency for 1, 2 and 3 nodes sharing
# rooms through Redis, and what cluster mode costs against a single node,
# in one run.
#
#   scripts/bench-cluster.sh [--rounds R] [--duration S] [--rate M] [--out DIR]
#
#   --rounds R    rounds (default 3); the order of the setups rotates per
#                 round, so drift over the run cancels
#   --duration S  seconds of publishing per run (default 10)
#   --rate M      messages/s of the fixed-rate runs (default 200, i.e.
#                 20,000 deliveries/s), where latency is compared
#   --out DIR     results (default bench/results/<date>-cluster): every
#                 generator JSON in DIR/json/, every command in DIR/run.log,
#                 the table in DIR/summary.md
#
# Setups, every stampede `--shards 1 --max-publish-rate 0` with its own
# data dir, all on core 0 with redis-server (no persistence): `single`
# (no --cluster), `cluster1` (one node with --cluster), `cluster2` and
# `cluster3` (two and three nodes on the same Redis). The generator,
# `stampede-bench fanout`, runs on core 1: 10 rooms x 100 members spread
# round-robin over the setup's nodes, 2 publishers (publisher p on node p,
# its probe on the next node), once at full speed and once at --rate.
# On this machine every node shares one core, so more nodes measure the
# cost of spreading a room over nodes, not scale-out.
#
#   STAMPEDE_BIN, STAMPEDE_BENCH_BIN   the binaries (default target/release/)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ORIG_ARGS="$*"
ROUNDS=3
DURATION=10
RATE=200
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --rate) RATE="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
for v in "$ROUNDS" "$DURATION" "$RATE"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds, --duration and --rate are positive integers" >&2; exit 2; }
done

SERVER="${STAMPEDE_BIN:-$ROOT/target/release/stampede}"
BENCH="${STAMPEDE_BENCH_BIN:-$ROOT/target/release/stampede-bench}"
for b in "$SERVER" "$BENCH"; do
  if [ ! -x "$b" ]; then echo "not found: $b (cargo build --release --workspace)" >&2; exit 2; fi
done
command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server)" >&2; exit 2; }
DATE="$(date -u +%F)"
OUT="${OUT:-$ROOT/bench/results/$DATE-cluster}"
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

REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$WORK" --daemonize no >"$OUT/redis.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 100); do
  if redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then break; fi
  sleep 0.1
done
log "redis-server $(redis-server --version | awk '{print $3}') on 127.0.0.1:$REDIS_PORT"

declare -A URLS
start() { # setup node extra-args... -> appends the node's URL to URLS[setup]
  local setup=$1 name="$1-$2" line port
  shift 2
  mkfifo "$WORK/$name.ready"
  taskset -c 0 "$SERVER" --shards 1 --listen 127.0.0.1:0 --stomp-listen off \
    --max-publish-rate 0 --data-dir "$WORK/$name-db" "$@" \
    >"$WORK/$name.ready" 2>"$OUT/stampede-$name.log" &
  PIDS+=("$!")
  read -r -t 20 line <"$WORK/$name.ready" || { echo "stampede ($name) did not start" >&2; exit 1; }
  cat "$WORK/$name.ready" >/dev/null &
  port="${line##*http=127.0.0.1:}"
  URLS[$setup]="${URLS[$setup]:-} ws://127.0.0.1:${port%% *}/ws"
  log "stampede $name pid $! on 127.0.0.1:${port%% *}"
}
start single 1
for n in 1 2 3; do
  for i in $(seq 1 "$n"); do
    start "cluster$n" "$i" --cluster "redis://127.0.0.1:$REDIS_PORT" --cluster-node "c$n-$i"
  done
done

run() { # setup kind round
  local json="$OUT/json/$1-$2-r$3.json" first rest=() u
  read -r -a nodes <<<"${URLS[$1]}"
  first=${nodes[0]}
  for u in "${nodes[@]:1}"; do rest+=(--node-url "$u"); done
  local rate=0
  [ "$2" = fixed ] && rate=$RATE
  local cmd=(taskset -c 1 "$BENCH" fanout --url "$first" "${rest[@]}"
    --rooms 10 --members 100 --publishers 2 --rate "$rate" --duration "$DURATION"
    --label "$1" --json "$json")
  log "${cmd[*]}"
  "${cmd[@]}" >>"$LOG" 2>&1 || log "$1 $2 round $3: the generator exited non-zero (errors counted in its JSON)"
  sleep 2
}

SETUPS=(single cluster1 cluster2 cluster3)
for r in $(seq 1 "$ROUNDS"); do
  order=("${SETUPS[@]:$(((r - 1) % 4))}" "${SETUPS[@]:0:$(((r - 1) % 4))}")
  for who in "${order[@]}"; do run "$who" max "$r"; done
  for who in "${order[@]}"; do run "$who" fixed "$r"; done
done

python3 - "$OUT" "$ROUNDS" "$RATE" "$ORIG_ARGS" >"$OUT/summary.md" <<'PY'
import json, os, platform, statistics, subprocess, sys
out, rounds, rate, args = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
setups = ["single", "cluster1", "cluster2", "cluster3"]
def load(who, kind, r):
    try:
        return json.load(open(f"{out}/json/{who}-{kind}-r{r}.json"))
    except (OSError, ValueError):
        return None
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
print("# Cluster mode: 1, 2 and 3 nodes through Redis, and single node vs cluster\n")
print(f"Made by `scripts/bench-cluster.sh {args}`: {os.cpu_count()} cores ({cpu}), Linux "
      f"{platform.release()}, date (UTC) "
      f"{subprocess.run(['date', '-u', '+%F %T'], capture_output=True, text=True).stdout.strip()}.\n")
print("Every node `--shards 1 --max-publish-rate 0` (persistence on), all nodes and redis-server on "
      "core 0, `stampede-bench fanout` on core 1: 10 rooms x 100 members spread round-robin over "
      "the nodes, 2 publishers (publisher p on node p, its probe on the next node). On this machine "
      "the nodes share one core: more nodes show the cost of spreading rooms, not scale-out.\n")
res = {}
for kind, title in (("max", "full speed"), ("fixed", f"fixed rate, {rate} msg/s = {rate * 100:,} deliveries/s")):
    print(f"## Fan-out at {title}\n")
    print("| round | setup | deliveries/s | published/s | p50 ms | p99 ms | lost | out of order |")
    print("|---|---|---|---|---|---|---|---|")
    for r in range(1, rounds + 1):
        for who in setups:
            d = load(who, kind, r)
            if d is None:
                print(f"| {r} | {who} | – | – | – | – | – | – |")
                continue
            lat = d.get("latency_ms", {})
            res.setdefault((who, kind), []).append((d.get("deliveries_per_s", 0), lat.get("p50", 0), lat.get("p99", 0)))
            print(f"| {r} | {who} | {d.get('deliveries_per_s', 0):,.0f} | {d.get('published_per_s', 0):,.0f} | "
                  f"{lat.get('p50', 0):.2f} | {lat.get('p99', 0):.2f} | {d.get('lost', 0)} | {d.get('out_of_order', 0)} |")
    print()
def med(who, kind, i):
    v = [x[i] for x in res.get((who, kind), [])]
    return statistics.median(v) if v else float("nan")
print("## Medians\n")
print("| setup | full speed deliveries/s | vs single | fixed-rate p50 ms | fixed-rate p99 ms |")
print("|---|---|---|---|---|")
base = med("single", "max", 0)
for who in setups:
    print(f"| {who} | {med(who, 'max', 0):,.0f} | {med(who, 'max', 0) / base:.2f}x | "
          f"{med(who, 'fixed', 1):.2f} | {med(who, 'fixed', 2):.2f} |")
PY
cat "$OUT/summary.md"
