#!/usr/bin/env bash
# Persistence benchmarks (issue 4), side by side in one run:
#   1. sustained persisted messages/s (SEND -> RECEIPT after commit, 100-byte
#      bodies) with persistence off and --durability full|normal|off, with the
#      writer's CPU and batch sizes;
#   2. RECEIPT latency at a fixed 10,000 messages/s, persistence off vs full;
#   3. fan-out latency with persistence off vs full, alternated (off, full,
#      off, full) so drift on a shared machine shows.
# Every run gets a fresh server (--shards 1) and data dir.
#
#   scripts/bench-persist.sh [--quick] [--date YYYY-MM-DD]
#
# Writes bench/results/<date>-persist/ (json/, run.log, server logs) and
# bench/results/<date>-persist.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DATE="$(date -u +%F)"
DUR=10
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) DUR=3 ;;
    --date) DATE="$2"; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

cargo build --release --workspace -q
# Capacity runs: no per-connection publish rate. The generator's few
# publishers stand for many users each; the default --max-publish-rate
# (1,000/s per connection) would measure the limit, not the server. An env
# var rather than a flag, so binaries from before the setting run too.
export STAMPEDE_MAX_PUBLISH_RATE=0
STAMPEDE=target/release/stampede
BENCH=target/release/stampede-bench
OUT="bench/results/$DATE-persist"
JSON="$OUT/json"
LOG="$OUT/run.log"
mkdir -p "$JSON"
: >"$LOG"
say() { echo "[$(date -u +%T)] $*" | tee -a "$LOG" >&2; }

# start NAME FLAGS...: a fresh stampede; sets PID, URL, DATA.
start() {
  local name="$1"; shift
  DATA="$(mktemp -d /tmp/stampede-persist.XXXXXX)"
  "$STAMPEDE" --listen 127.0.0.1:0 --stomp-listen off --shards 1 --data-dir "$DATA" "$@" \
    >"$DATA/ready" 2>"$OUT/$name.server.log" &
  PID=$!
  for _ in $(seq 100); do grep -q "^stampede ready" "$DATA/ready" && break; sleep 0.1; done
  URL="ws://$(sed -n 's/^stampede ready http=\([^ ]*\).*/\1/p' "$DATA/ready")/ws"
  [ "$URL" != "ws:///ws" ] || { say "stampede did not start"; exit 1; }
}

# stop: SIGTERM (the server logs what its writer stored), wait, clean up.
stop() {
  kill "$PID"; wait "$PID" || true
  rm -rf "$DATA"
}

# run NAME SERVER-FLAGS -- BENCH-ARGS...
run() {
  local name="$1"; shift
  local flags=()
  while [ "$1" != "--" ]; do flags+=("$1"); shift; done
  shift
  start "$name" "${flags[@]}"
  say "$name: stampede ${flags[*]} | stampede-bench $*"
  echo "\$ $BENCH $* --label $name --server-pid $PID --json $JSON/$name.json" >>"$LOG"
  "$BENCH" "$@" --url "$URL" --label "$name" --server-pid "$PID" --json "$JSON/$name.json" >>"$LOG" 2>&1 \
    || say "$name: stampede-bench exited $?"
  stop
  grep -h "stored" "$OUT/$name.server.log" | sed 's/\x1b\[[0-9;]*m//g' >>"$LOG" || true
  sleep 1
}

OFF=(--persist false)
SEND_MAX=(send --publishers 4 --window 8192 --rooms 100 --body-size 100 --duration "$DUR" --drain 20)
for d in off-persist full normal off; do
  if [ "$d" = off-persist ]; then flags=("${OFF[@]}"); else flags=(--durability "$d"); fi
  run "send-max-$d" "${flags[@]}" -- "${SEND_MAX[@]}"
done

SEND_10K=(send --publishers 4 --window 1024 --rooms 100 --body-size 100 --rate 10000 --duration "$DUR")
run "send-10k-off-persist" "${OFF[@]}" -- "${SEND_10K[@]}"
run "send-10k-full" --durability full -- "${SEND_10K[@]}"

FAN=(fanout --rooms 10 --members 100 --publishers 4 --rate 2000 --body-size 100 --duration "$DUR")
for i in 1 2; do
  run "fanout-off-persist-$i" "${OFF[@]}" -- "${FAN[@]}"
  run "fanout-full-$i" --durability full -- "${FAN[@]}"
done

python3 - "$OUT" "$DATE" "$DUR" >"bench/results/$DATE-persist.md" <<'EOF'
import json, re, sys, pathlib, platform, os
out, date, dur = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
def j(name):
    p = out / "json" / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None
def stored(name):
    log = (out / f"{name}.server.log").read_text(errors="replace")
    log = re.sub(r"\x1b\[[0-9;]*m", "", log)
    m = re.search(r"stored messages=(\d+) batches=(\d+) largest_batch=(\d+)", log)
    return tuple(map(int, m.groups())) if m else None
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"# Persistence benchmarks, {date}\n")
print(f"Machine: {os.cpu_count()} vCPU ({cpu}), Linux {platform.release()}; a shared VM, so compare")
print("rows of this run with each other. Server: `stampede --shards 1` (its shard pinned to core 0;")
print("the SQLite writer and the generator float over both cores), fresh data dir per run.")
print(f"Command: `scripts/bench-persist.sh{' --quick' if dur == '3' else ''}` ({dur} s per run).\n")
print("## Sustained persisted messages/s (SEND with receipt, RECEIPT after commit, 100-byte bodies)\n")
print("`stampede-bench send --publishers 4 --window 8192 --rooms 100 --body-size 100`\n")
print("| persistence | RECEIPTs/s | p50 ms | p99 ms | batches (avg / largest) | writer CPU | server CPU |")
print("|---|---|---|---|---|---|---|")
for d in ["off-persist", "full", "normal", "off"]:
    n = f"send-max-{d}"; r = j(n)
    if not r: continue
    s = stored(n); c = r["cost"]
    b = f"{s[1]:,} ({s[0] / max(s[1], 1):,.0f} / {s[2]:,})" if s and s[1] else "–"
    w = f"{c['writer_cpu_s']:.2f} s ({100 * c['writer_cpu_s'] / c['wall_s']:.0f}%)" if c.get("writer_cpu_s") is not None else "–"
    label = "none (`--persist false`)" if d == "off-persist" else f"`--durability {d}`"
    print(f"| {label} | {r['receipts_per_s']:,.0f} | {r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | {b} | {w} | {c['server_cpu_s']:.2f} s |")
print("\n## RECEIPT latency at 10,000 messages/s\n")
print("`stampede-bench send --publishers 4 --window 1024 --rooms 100 --body-size 100 --rate 10000`\n")
print("| persistence | RECEIPTs/s | p50 ms | p90 ms | p99 ms | max ms |")
print("|---|---|---|---|---|---|")
for d in ["off-persist", "full"]:
    r = j(f"send-10k-{d}")
    if not r: continue
    l = r["latency_ms"]
    label = "none" if d == "off-persist" else "`--durability full`"
    print(f"| {label} | {r['receipts_per_s']:,.0f} | {l['p50']:.2f} | {l['p90']:.2f} | {l['p99']:.2f} | {l['max']:.2f} |")
print("\n## Fan-out latency, persistence off vs on (same run, alternated)\n")
print("`stampede-bench fanout --rooms 10 --members 100 --publishers 4 --rate 2000 --body-size 100` (200,000 deliveries/s)\n")
print("| run | persistence | deliveries/s | p50 ms | p99 ms | lost |")
print("|---|---|---|---|---|---|")
p99 = {"off-persist": [], "full": []}
for i in (1, 2):
    for d in ["off-persist", "full"]:
        r = j(f"fanout-{d}-{i}")
        if not r: continue
        l = r.get("latency_ms", {})
        p99[d].append(l.get("p99", float("nan")))
        label = "none" if d == "off-persist" else "`--durability full`"
        print(f"| {i} | {label} | {r.get('deliveries_per_s', 0):,.0f} | {l.get('p50', float('nan')):.2f} | {l.get('p99', float('nan')):.2f} | {r.get('lost', '?')} |")
if p99["off-persist"] and p99["full"]:
    a = sum(p99["full"]) / len(p99["full"]); b = sum(p99["off-persist"]) / len(p99["off-persist"])
    print(f"\np99 ratio, persistence on / off (mean of the runs): **{a / b:.2f}**")
EOF
say "wrote bench/results/$DATE-persist.md"
