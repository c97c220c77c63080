#!/usr/bin/env bash
# The comparison run (issue 3): the seed's JMeter experiment (`storm`),
# memory per idle session (`hold`) and fan-out throughput (`fanout`),
# against stampede (one core, then all cores), the Spring SimpleBroker
# baseline and RabbitMQ Web-STOMP, on this machine, in one run.
#
#   scripts/bench-compare.sh                 # the full run (~40 min here)
#   scripts/bench-compare.sh --quick         # a smoke run (~5 min)
#   scripts/bench-compare.sh --targets "stampede-1core spring"
#   scripts/bench-compare.sh --targets spring --scenarios fanout   # re-run a part
#   scripts/bench-compare.sh --report-only   # tables, plots and .md again
#
# Writes bench/results/<date>/ (JSON per run, PNG plots, logs) and
# bench/results/<date>-compare.md (machine, versions, commands, tables).
#
# Single-core targets run on core 0 and the generator on the other cores;
# "stampede" (all cores) shares every core with the generator.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUICK=0
TARGETS="stampede-1core stampede spring rabbitmq"
SCENARIOS="storm hold fanout send"
DATE="$(date -u +%F)"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --targets) TARGETS="$2"; shift ;;
    --scenarios) SCENARIOS="$2"; shift ;;
    --report-only) TARGETS="" ;;
    --date) DATE="$2"; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

# Fan-out runs: ROOMSxMEMBERS@RATE (msg/s over all publishers; 0 = as fast
# as members take). 10 x 100 is a shape every target can hold (Spring at
# -Xmx256m holds ~1,600 sessions); 100 x 100 at 5,000 msg/s is 500,000
# deliveries/s, half the throughput target.
if [ "$QUICK" = 1 ]; then
  STORM_USERS="100 1000"
  HOLD_SESSIONS=2000
  FANOUTS="10x20@200 10x20@0 1x200@0"
  FANOUT_SECS=2
  DATE="$DATE-quick"
else
  STORM_USERS="100 1000 3000 5000 10000 19000"
  HOLD_SESSIONS=19000
  FANOUTS="10x100@500 10x100@0 100x100@5000 100x100@0 1x5000@0"
  FANOUT_SECS=5
fi
has() { [[ " $SCENARIOS " == *" $1 "* ]]; }

OUT="bench/results/$DATE"
JSON="$OUT/json"
mkdir -p "$JSON" "$OUT/targets"
# Runs of the targets named now replace their earlier results; other
# targets' results of the same date stay (so one target can be re-run).
LOG="$OUT/run.log"
echo "=== $(date -u +%FT%TZ) scripts/bench-compare.sh, targets: $TARGETS" >>"$LOG"
say() { echo "[$(date -u +%T)] $*" | tee -a "$LOG" >&2; }

# --- prerequisites -----------------------------------------------------------
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q fonts-dejavu-core >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q fonts-dejavu-core >/dev/null; }
fi
say "building stampede and stampede-bench"
cargo build --release --workspace -q
# Capacity runs: no per-connection publish rate. The generator's few
# publishers stand for many users each; the default --max-publish-rate
# (1,000/s per connection) would measure the limit, not the server. An env
# var rather than a flag, so binaries from before the setting run too.
export STAMPEDE_MAX_PUBLISH_RATE=0
BENCH="$ROOT/target/release/stampede-bench"
STAMPEDE="$ROOT/target/release/stampede"
CORES="$(nproc)"
GEN_CPUS="1-$((CORES - 1))"
[ "$CORES" -lt 2 ] && GEN_CPUS=0

# --- targets -------------------------------------------------------------------
# start_target NAME: sets URL, PID, PIN (taskset prefix for the generator),
# EXTRA (scenario flags the target needs) and FANOUT_EXTRA.
STAMPEDE_DATA=""
start_target() {
  EXTRA=""
  FANOUT_EXTRA=""
  PIN="taskset -c $GEN_CPUS"
  case "$1" in
    stampede-1core|stampede)
      local shards=0 pin=""
      if [ "$1" = stampede-1core ]; then shards=1; pin="taskset -c 0"; else PIN=""; fi
      STAMPEDE_DATA="$(mktemp -d /tmp/stampede-compare.XXXXXX)"
      local ready="$STAMPEDE_DATA/ready"
      $pin "$STAMPEDE" --listen 127.0.0.1:0 --stomp-listen off --shards "$shards" \
        --data-dir "$STAMPEDE_DATA" >"$ready" 2>>"$OUT/$1.log" &
      PID=$!
      for _ in $(seq 100); do grep -q "^stampede ready" "$ready" && break; sleep 0.1; done
      local http
      http="$(sed -n 's/^stampede ready http=\([^ ]*\).*/\1/p' "$ready")"
      [ -n "$http" ] || { say "stampede did not start"; return 1; }
      URL="ws://$http/ws"
      ;;
    spring)
      local line
      line="$(scripts/baseline-spring.sh start --port 18080 --cpu 0)"
      PID="$(sed -n 's/.*pid=\([0-9]*\).*/\1/p' <<<"$line")"
      URL="$(sed -n 's/.*url=\([^ ]*\).*/\1/p' <<<"$line")"
      # No RECEIPT for SUBSCRIBE; no per-subscriber order by default.
      FANOUT_EXTRA="--no-subscribe-receipt --allow-reorder"
      ;;
    rabbitmq)
      local line
      line="$(scripts/baseline-rabbitmq.sh start --port 15674 --cpu 0)"
      PID="$(sed -n 's/.*pid=\([0-9]*\).*/\1/p' <<<"$line")"
      URL="$(sed -n 's/.*url=\([^ ]*\).*/\1/p' <<<"$line")"
      # Closes the socket instead of answering DISCONNECT with a RECEIPT.
      EXTRA="--login guest --passcode guest --vhost /"
      STORM_EXTRA="--close-is-receipt"
      ;;
    *) say "unknown target $1"; return 1 ;;
  esac
  say "$1 up: pid $PID, $URL"
}

stop_target() {
  case "$1" in
    stampede-1core|stampede)
      kill "$PID" 2>/dev/null || true
      wait "$PID" 2>/dev/null || true
      rm -rf "$STAMPEDE_DATA"
      ;;
    spring) scripts/baseline-spring.sh stop >/dev/null || true ;;
    rabbitmq) scripts/baseline-rabbitmq.sh stop >/dev/null || true ;;
  esac
}

# A target that died (Spring out of heap, say) is restarted for the next
# run; the death is logged and shows in that run's errors.
ensure_alive() {
  if ! kill -0 "$PID" 2>/dev/null; then
    say "$1 died; restarting it for the next run"
    stop_target "$1"
    start_target "$1"
  fi
}

# bench NAME JSONFILE SCENARIO ARGS...: one run, logged; a failing run is
# recorded, not fatal (its JSON says what failed).
bench() {
  local name="$1" file="$2"; shift 2
  # shellcheck disable=SC2206 # $PIN is a command prefix ("taskset -c 1"), split on purpose
  local cmd=($PIN "$BENCH" "$@" --label "$name" --server-pid "$PID" --json "$JSON/$file")
  echo "\$ ${cmd[*]}" >>"$LOG"
  "${cmd[@]}" >>"$LOG" 2>&1 || say "$name: $1 exited $? (see run.log)"
  sleep 2
}

# The baselines get a fresh server for every run, so that one run's
# aftermath does not count against the next: RabbitMQ deletes a finished
# run's queues (one per SUBSCRIBE) for up to a minute of a core and its RSS
# does not shrink; Spring, once a storm has filled its 256 MiB heap, stays
# alive but spends its core in garbage collection and answers nothing.
# stampede keeps running (it recovers at once; see the JSON of each run).
fresh() {
  if [ "$1" = rabbitmq ] || [ "$1" = spring ]; then
    stop_target "$1"
    start_target "$1"
    warm_up "$1"
  fi
}

# 300 unrecorded user flows after every start (the JVM's JIT, Erlang's
# code loading), so no target is measured cold.
warm_up() {
  # shellcheck disable=SC2086
  $PIN "$BENCH" storm --url "$URL" --users 300 --ramp-up 1 $EXTRA $STORM_EXTRA >/dev/null 2>&1 || true
  sleep 2
}

for t in $TARGETS; do
  for sc in $SCENARIOS; do rm -f "$JSON/$t-$sc"*.json; done
  STORM_EXTRA=""
  start_target "$t"
  warm_up "$t"
  echo "- $t: $URL, $SCENARIOS run $(date -u +%FT%TZ), stampede $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src bench/src || echo '+local changes')" >>"$OUT/targets/$t.txt"
  has storm && for ramp in 1 0; do
    for n in $STORM_USERS; do
      fresh "$t"
      say "$t storm $n users, ramp-up $ramp s"
      # shellcheck disable=SC2086
      bench "$t" "$t-storm-r$ramp-$(printf %05d "$n").json" storm --url "$URL" \
        --users "$n" --ramp-up "$ramp" $EXTRA $STORM_EXTRA
      ensure_alive "$t"
    done
  done
  if has hold; then
    # A fresh server for hold, so its RSS before is a clean baseline.
    stop_target "$t"
    start_target "$t"
    warm_up "$t"
    say "$t hold $HOLD_SESSIONS"
    # shellcheck disable=SC2086
    bench "$t" "$t-hold.json" hold --url "$URL" --sessions "$HOLD_SESSIONS" --hold 5 $EXTRA
    ensure_alive "$t"
  fi
  has fanout && for f in $FANOUTS; do
    fresh "$t"
    shape="${f%@*}"; rate="${f#*@}"
    rooms="${shape%x*}"; members="${shape#*x}"
    say "$t fanout $rooms x $members at $([ "$rate" = 0 ] && echo 'max' || echo "$rate msg/s")"
    # Members connect over 5 s with 30 s per step, so a slow target is
    # measured on what it delivers, not on how fast it accepts.
    # shellcheck disable=SC2086
    bench "$t" "$t-fanout-$shape-$([ "$rate" = 0 ] && echo max || echo "r$rate").json" fanout \
      --url "$URL" --rooms "$rooms" --members "$members" --publishers "$(( rooms < 4 ? rooms : 4 ))" \
      --rate "$rate" --duration "$FANOUT_SECS" --drain 30 --ramp-up 5 --step-timeout 30 \
      $EXTRA $FANOUT_EXTRA
    ensure_alive "$t"
  done
  # SEND throughput and RECEIPT latency; Spring answers no RECEIPT for a
  # SEND, so it has nothing to measure here.
  if has send && [ "$t" != spring ]; then
    for rate in 0 10000; do
      fresh "$t"
      say "$t send at $([ "$rate" = 0 ] && echo 'max' || echo "$rate msg/s")"
      # shellcheck disable=SC2086
      bench "$t" "$t-send-$([ "$rate" = 0 ] && echo max || echo "r$rate").json" send --url "$URL" \
        --publishers 4 --window 64 --rooms 100 --rate "$rate" --duration "$FANOUT_SECS" $EXTRA
      ensure_alive "$t"
    done
  fi
  stop_target "$t"
done

# --- the results file ------------------------------------------------------------
say "writing tables and plots"
"$BENCH" report --dir "$JSON" --plots "$OUT" >"$OUT/tables.md"
MD="bench/results/$DATE-compare.md"
{
  echo "# stampede vs Spring SimpleBroker vs RabbitMQ Web-STOMP — $DATE"
  echo
  echo "Made by \`scripts/bench-compare.sh$([ "$QUICK" = 1 ] && echo ' --quick')\`."
  echo "Raw results: \`$OUT/json/\`; every command with its output: \`$OUT/run.log\`."
  echo
  echo "## Machine"
  echo
  echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $CORES cores"
  echo "- Memory: $(free -g | awk '/^Mem:/ {print $2}') GiB; kernel $(uname -r)"
  echo "- Single-core targets pinned to core 0 (\`taskset -c 0\`), the generator to cores $GEN_CPUS;"
  echo "  \`stampede\` (all cores, \`--shards 0\`) shares every core with the generator."
  echo
  echo "## Versions"
  echo
  echo "- stampede: the commit of each run is in Targets; rustc $(rustc --version | cut -d' ' -f2)"
  if [ -f "$OUT/targets/spring.txt" ]; then
    echo "- Spring SimpleBroker baseline: Spring 4.3.30 (Debian libspring-java source), Tomcat $(dpkg-query -W -f '${Version}' libtomcat9-java 2>/dev/null), $(java -version 2>&1 | head -1), \`-Xmx256m\`, pinned to core 0"
  fi
  if [ -f "$OUT/targets/rabbitmq.txt" ]; then
    echo "- RabbitMQ: $(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null), Erlang $(dpkg-query -W -f '${Version}' erlang-base 2>/dev/null)"
  fi
  echo
  echo "## Targets"
  echo
  cat "$OUT"/targets/*.txt
  echo
  # Hand-written reading of the run (targets met or missed, profiles).
  if [ -f "$OUT/notes.md" ]; then
    cat "$OUT/notes.md"
    echo
  fi
  echo "## Results"
  echo
  sed "s#](\([a-z0-9-]*\.png\))#]($DATE/\1)#" "$OUT/tables.md"
} >"$MD"
say "wrote $MD"
