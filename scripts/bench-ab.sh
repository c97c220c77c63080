#!/usr/bin/env bash
# A/B comparison of two stampede server binaries in one run (a refactor that
# must show no regression):
#
#   scripts/bench-ab.sh [--quick] [--rounds N] [--out DIR] BIN_A BIN_B
#
#   --quick       smoke run: storm 300 users, hold 1,000 sessions, fanout and
#                 send 2 s, 1 round (unless --rounds is given)
#   --rounds N    rounds (default 2); A runs first in odd rounds, B first in
#                 even ones, so drift over the session cancels out
#   --out DIR     results directory (default bench/results/<date>-ab): the
#                 JSON of every run in DIR/json/<A|B>-<scenario>-r<round>.json,
#                 every command and its output appended to DIR/run.log, the
#                 servers' logs in DIR/server/, the tables in DIR/summary.md
#
#   STAMPEDE_BENCH_BIN   the generator (default target/release/stampede-bench
#                        of this repository)
#
# Every run gets a fresh server: `--shards 1 --listen 127.0.0.1:0
# --stomp-listen off` with a fresh --data-dir, pinned to core 0
# (`taskset -c 0`), the generator pinned to core 1. Per round, each
# scenario runs on A and B back to back (storm, hold, fanout, send):
#   storm   --users 3000 --ramp-up 1
#   hold    --sessions 10000 --hold 2
#   fanout  --rooms 10 --members 100 --publishers 4 --rate 0 --duration 5
#   send    --publishers 4 --window 64 --rate 0 --duration 5
# A generator that exits non-zero (fanout with loss, say) is logged, not
# fatal; its JSON still goes into the tables.
set -euo pipefail

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLER_PWD="$PWD"
ORIG_ARGS="$*"

QUICK=0
ROUNDS=""
OUT=""
POS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --rounds) [ $# -ge 2 ] || { echo "--rounds needs a value" >&2; exit 2; }; ROUNDS="$2"; shift ;;
    --rounds=*) ROUNDS="${1#*=}" ;;
    --out) [ $# -ge 2 ] || { echo "--out needs a value" >&2; exit 2; }; OUT="$2"; shift ;;
    --out=*) OUT="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    --) shift; POS+=("$@"); break ;;
    -*) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    *) POS+=("$1") ;;
  esac
  shift
done
[ "${#POS[@]}" -eq 2 ] || { echo "need exactly two binaries, BIN_A and BIN_B" >&2; usage >&2; exit 2; }
if [ -z "$ROUNDS" ]; then
  if [ "$QUICK" = 1 ]; then ROUNDS=1; else ROUNDS=2; fi
fi
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds must be a positive integer (got $ROUNDS)" >&2; exit 2; }

# Paths given by the caller are relative to where it stands; defaults to the repo.
abspath() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$CALLER_PWD/$1" ;;
  esac
}
BIN_A="$(abspath "${POS[0]}")"
BIN_B="$(abspath "${POS[1]}")"
if [ -n "${STAMPEDE_BENCH_BIN:-}" ]; then BENCH="$(abspath "$STAMPEDE_BENCH_BIN")"; else BENCH="$ROOT/target/release/stampede-bench"; fi
# Capacity runs: no per-connection publish rate. The generator's few
# publishers stand for many users each; the default --max-publish-rate
# (1,000/s per connection) would measure the limit, not the server. An env
# var rather than a flag, so binaries from before the setting run too.
export STAMPEDE_MAX_PUBLISH_RATE=0
DATE="$(date +%F)"
if [ -n "$OUT" ]; then OUT="$(abspath "$OUT")"; else OUT="$ROOT/bench/results/$DATE-ab"; fi
for b in "$BIN_A" "$BIN_B" "$BENCH"; do
  if ! { [ -x "$b" ] && [ -f "$b" ]; }; then echo "not an executable file: $b" >&2; exit 2; fi
done
command -v taskset >/dev/null || { echo "taskset not found (util-linux)" >&2; exit 2; }
command -v setsid >/dev/null || { echo "setsid not found (util-linux)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 not found" >&2; exit 2; }

CORES="$(nproc)"
SERVER_CPU=0
GEN_CPU=1
if [ "$CORES" -lt 2 ]; then
  echo "warning: one core only; server and generator share core 0" >&2
  GEN_CPU=0
fi

# As many open files as the hard limit allows (servers and the generator's
# parent inherit it; the generator spreads connections over workers).
HARD_NOFILE="$(ulimit -Hn)"
if [ "$HARD_NOFILE" = unlimited ]; then
  ulimit -n 1048576 2>/dev/null || true
else
  ulimit -n "$HARD_NOFILE" 2>/dev/null || true
fi

if [ "$QUICK" = 1 ]; then
  STORM_USERS=300; HOLD_SESSIONS=1000; SECS=2
else
  STORM_USERS=3000; HOLD_SESSIONS=10000; SECS=5
fi
# AB_SCENARIOS="send fanout" runs only those (a re-check of one figure).
read -r -a SCENARIOS <<<"${AB_SCENARIOS:-storm hold fanout send}"
scenario_args() {
  case "$1" in
    storm) ARGS=(--users "$STORM_USERS" --ramp-up 1) ;;
    hold) ARGS=(--sessions "$HOLD_SESSIONS" --hold 2) ;;
    fanout) ARGS=(--rooms 10 --members 100 --publishers 4 --rate 0 --duration "$SECS") ;;
    send) ARGS=(--publishers 4 --window 64 --rate 0 --duration "$SECS") ;;
  esac
}

JSON="$OUT/json"
SLOG="$OUT/server"
LOG="$OUT/run.log"
mkdir -p "$JSON" "$SLOG"
TMP="$(mktemp -d /tmp/bench-ab.XXXXXX)"
say() { echo "[$(date +%T)] $*" | tee -a "$LOG" >&2; }
quote() { printf '%q ' "$@"; }

# --- processes and clean-up ----------------------------------------------------
SPID=""   # the running server
GPID=""   # the running generator (leader of its own process group)
SDATA=""

# alive PID: running (a zombie, exited but not yet waited for, is not).
alive() {
  local s
  s="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ -n "$s" && "$s" != Z* ]]
}

stop_generator() {
  [ -n "$GPID" ] || return 0
  # The generator and its worker processes share the group GPID.
  kill -TERM -- "-$GPID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 -- "-$GPID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$GPID" 2>/dev/null || true
  wait "$GPID" 2>/dev/null || true
  GPID=""
}

# stop_server: SIGTERM, up to 20 s to shut down, then SIGKILL.
stop_server() {
  [ -n "$SPID" ] || return 0
  kill -TERM "$SPID" 2>/dev/null || true
  for _ in $(seq 200); do alive "$SPID" || break; sleep 0.1; done
  if alive "$SPID"; then
    echo "server $SPID ignored SIGTERM for 20 s; killing it" | tee -a "$LOG" >&2
    kill -KILL "$SPID" 2>/dev/null || true
  fi
  wait "$SPID" 2>/dev/null || true
  SPID=""
  [ -z "$SDATA" ] || rm -rf "$SDATA"
  SDATA=""
}

cleanup() {
  trap - EXIT INT TERM HUP
  stop_generator
  stop_server
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'echo "terminated" >&2; exit 143' TERM HUP

# start_server BIN NAME: a fresh server; sets SPID, URL, SDATA.
start_server() {
  local bin="$1" name="$2" ready http
  SDATA="$TMP/$name"
  mkdir -p "$SDATA/data"
  ready="$SDATA/ready"
  local cmd=(taskset -c "$SERVER_CPU" "$bin" --listen 127.0.0.1:0 --stomp-listen off --shards 1 --data-dir "$SDATA/data")
  echo "\$ $(quote "${cmd[@]}")" >>"$LOG"
  "${cmd[@]}" >"$ready" 2>"$SLOG/$name.log" &
  SPID=$!
  for _ in $(seq 150); do
    grep -q '^stampede ready' "$ready" && break
    alive "$SPID" || break
    sleep 0.1
  done
  http="$(sed -n 's/^stampede ready http=\([^ ]*\).*/\1/p' "$ready")"
  if [ -z "$http" ]; then
    say "$name: the server did not start (see $SLOG/$name.log)"
    tail -20 "$SLOG/$name.log" >&2 || true
    exit 1
  fi
  URL="ws://$http/ws"
  echo "$(head -1 "$ready") (pid $SPID)" >>"$LOG"
}

# run_one A|B BIN SCENARIO ROUND
run_one() {
  local side="$1" bin="$2" sc="$3" round="$4"
  local name="$side-$sc-r$round"
  local out="$JSON/$name.json"
  rm -f "$out"
  scenario_args "$sc"
  echo "=== $(date +%FT%T) $name ($bin)" >>"$LOG"
  start_server "$bin" "$name"
  local cmd=(taskset -c "$GEN_CPU" "$BENCH" "$sc" --url "$URL" "${ARGS[@]}"
    --label "$side" --server-pid "$SPID" --json "$out")
  say "$name: stampede-bench $sc ${ARGS[*]}"
  echo "\$ $(quote "${cmd[@]}")" >>"$LOG"
  local t0 rc=0
  t0="$(date +%s.%N)"
  # Its own process group (setsid), so that it and its workers can be
  # stopped together if this script is interrupted.
  setsid "${cmd[@]}" </dev/null >>"$LOG" 2>&1 &
  GPID=$!
  wait "$GPID" || rc=$?
  stop_generator   # any worker left behind
  [ "$rc" = 0 ] || say "$name: stampede-bench exited $rc (see run.log)"
  echo "(exit $rc, $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)") s)" >>"$LOG"
  stop_server
  {
    echo "--- server log ($SLOG/$name.log, last 20 lines)"
    sed 's/\x1b\[[0-9;]*m//g' "$SLOG/$name.log" | tail -20
  } >>"$LOG"
  [ -f "$out" ] || say "$name: no JSON written"
  sleep "$([ "$QUICK" = 1 ] && echo 1 || echo 2)"
}

# --- the header ----------------------------------------------------------------
describe_bin() {
  local bin="$1" dir top rev dirty sum
  dir="$(dirname "$(readlink -f "$bin")")"
  sum="$(sha256sum "$bin" | cut -c1-12)"
  # shellcheck disable=SC2016 # the backticks are Markdown, not a command
  printf '`%s` (sha256 %s…, built %s)' "$bin" "$sum" "$(date -r "$bin" '+%F %T')"
  if top="$(git -C "$dir" rev-parse --show-toplevel 2>/dev/null)" && rev="$(git -C "$dir" rev-parse HEAD 2>/dev/null)"; then
    dirty=""
    [ -z "$(git --no-optional-locks -C "$top" status --porcelain --untracked-files=no 2>/dev/null | head -1)" ] \
      || dirty=", tracked files modified in the worktree now"
    # shellcheck disable=SC2016 # the backticks are Markdown, not a command
    printf '; worktree `%s` at %s%s' "$top" "$rev" "$dirty"
  else
    printf '; not in a git worktree'
  fi
}
CPU_MODEL="$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -1)"
HEADER="$TMP/header.md"
{
  echo "# stampede A/B — $DATE"
  echo
  echo "Made by \`scripts/bench-ab.sh $ORIG_ARGS\` ($([ "$QUICK" = 1 ] && echo 'quick smoke run' || echo 'full run'), $ROUNDS round(s))."
  echo
  echo "- Date: $(date '+%F %T %Z')"
  echo "- Machine: \`nproc\` $CORES, CPU ${CPU_MODEL:-?}, Linux $(uname -r); open files $(ulimit -n)"
  echo "- A: $(describe_bin "$BIN_A")"
  echo "- B: $(describe_bin "$BIN_B")"
  echo "- Generator: $(describe_bin "$BENCH")"
  echo "- Every run on a fresh \`stampede --shards 1 --listen 127.0.0.1:0 --stomp-listen off --data-dir <fresh>\`"
  echo "  pinned to core $SERVER_CPU, the generator pinned to core $GEN_CPU; per round each scenario runs on"
  echo "  A and B back to back, A first in odd rounds, B first in even ones."
  echo "- Raw results: \`$JSON/\`; commands and output: \`$LOG\`."
} >"$HEADER"

# --- the runs -------------------------------------------------------------------
echo "=== $(date +%FT%T) scripts/bench-ab.sh $ORIG_ARGS" >>"$LOG"
cat "$HEADER" >>"$LOG"
START_S="$(date +%s)"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order=(A B); else order=(B A); fi
  say "round $round of $ROUNDS: ${order[*]}"
  for sc in "${SCENARIOS[@]}"; do
    for side in "${order[@]}"; do
      if [ "$side" = A ]; then bin="$BIN_A"; else bin="$BIN_B"; fi
      run_one "$side" "$bin" "$sc" "$round"
    done
  done
done
ELAPSED=$(( $(date +%s) - START_S ))

# --- the tables -----------------------------------------------------------------
SUMMARY="$OUT/summary.md"
{
  cat "$HEADER"
  echo "- Wall time of the runs: $((ELAPSED / 60)) min $((ELAPSED % 60)) s"
  echo
  python3 - "$JSON" "$ROUNDS" "$STORM_USERS" "$HOLD_SESSIONS" "$SECS" <<'EOF'
import json, math, pathlib, sys

jdir, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
users, sessions, secs = sys.argv[3], sys.argv[4], sys.argv[5]

def load(side, sc, r):
    p = jdir / f"{side}-{sc}-r{r}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None

def flow(d):
    rows = (d or {}).get("steps", {}).get("rows", [])
    return next((r for r in rows if r.get("step") == "flow"), {})

def get(d, *path):
    for k in path:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d

def f_ms(v): return f"{v:.3f}" if v < 1 else f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
def f_int(v): return f"{v:,.0f}"

# scenario -> (title, [(column, value(json), format)])
SCENARIOS = {
    "storm": (f"storm — {users} users, 1 s ramp-up", [
        ("flow avg ms", lambda d: get(flow(d), "avg_ms"), f_ms),
        ("flow p99 ms", lambda d: get(flow(d), "p99_ms"), f_ms),
        ("errors", lambda d: get(flow(d), "errors"), f_int),
        ("server CPU µs/flow", lambda d: get(d, "server_cpu_per_flow_us"), f_int),
    ]),
    "hold": (f"hold — {sessions} idle sessions", [
        ("bytes/session", lambda d: get(d, "bytes_per_session"), f_int),
        ("established", lambda d: get(d, "established"), f_int),
    ]),
    "fanout": (f"fanout — 10 rooms x 100 members, 4 publishers, as fast as members take, {secs} s", [
        ("deliveries/s", lambda d: get(d, "deliveries_per_s"), f_int),
        ("p50 ms", lambda d: get(d, "latency_ms", "p50"), f_ms),
        ("p99 ms", lambda d: get(d, "latency_ms", "p99"), f_ms),
        ("lost", lambda d: get(d, "lost"), f_int),
    ]),
    "send": (f"send — 4 publishers, window 64, as fast as receipts come, {secs} s", [
        ("receipts/s", lambda d: get(d, "receipts_per_s"), f_int),
        ("p99 ms", lambda d: get(d, "latency_ms", "p99"), f_ms),
        ("missing receipts", lambda d: get(d, "missing_receipts"), f_int),
    ]),
}

def cell(v, fmt): return "–" if v is None else fmt(v)

def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None

for sc, (title, cols) in SCENARIOS.items():
    print(f"## {title}\n")
    head = ["round", "order"] + [f"{side} {c}" for c, _, _ in cols for side in "AB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    vals = {(side, i): [] for side in "AB" for i in range(len(cols))}
    notes = []
    for r in range(1, rounds + 1):
        order = "A, B" if r % 2 == 1 else "B, A"
        row = [str(r), order]
        docs = {side: load(side, sc, r) for side in "AB"}
        for i, (c, fn, fmt) in enumerate(cols):
            for side in "AB":
                v = fn(docs[side]) if docs[side] else None
                vals[(side, i)].append(v)
                row.append(cell(v, fmt))
        print("| " + " | ".join(row) + " |")
        for side in "AB":
            d = docs[side]
            if d is None:
                notes.append(f"{side} round {r}: no JSON")
                continue
            if d.get("failed"):
                notes.append(f"{side} round {r}: failed: {d['failed']}")
            kinds = {}
            for row_ in get(d, "steps", "rows") or []:
                if row_.get("step") == "flow":
                    kinds = row_.get("error_kinds") or {}
            for k in ("errors", "drop_reasons"):
                if isinstance(d.get(k), dict) and d[k]:
                    kinds = {**kinds, **d[k]}
            if kinds:
                notes.append(f"{side} round {r}: " + ", ".join(f"{k} x{n}" for k, n in kinds.items()))
            for k in ("out_of_order", "subscribers_short", "sessions_dropped"):
                if d.get(k):
                    notes.append(f"{side} round {r}: {k.replace('_', ' ')} {d[k]}")
            if d.get("publishers_stopped"):
                notes.append(f"{side} round {r}: publishers stopped: {d['publishers_stopped']}")
    if rounds > 1:
        row = ["mean", ""]
        for i, (c, fn, fmt) in enumerate(cols):
            a, b = mean(vals[("A", i)]), mean(vals[("B", i)])
            row.append(cell(a, fmt))
            if b is not None and a:
                row.append(f"{fmt(b)} ({100 * (b - a) / a:+.1f} %)")
            else:
                row.append(cell(b, fmt))
        print("| " + " | ".join(row) + " |")
    print()
    for n in notes:
        print(f"- {n}")
    if notes:
        print()
EOF
} >"$SUMMARY"
echo "=== summary ($SUMMARY)" >>"$LOG"
tee -a "$LOG" <"$SUMMARY"
say "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s; wrote $SUMMARY"
