#!/usr/bin/env bash
# Fuzz the given targets in parallel, each for SECONDS (see RESULTS.md for
# the commands behind its figures; with 2 cores, two targets at a time is
# the fair split).
# New inputs go to corpus-run/<target> (not committed); the committed seeds
# in corpus/<target> are read only. Logs: logs/<target>.log (not committed).
#   fuzz/run.sh SECONDS TARGET...
set -euo pipefail
cd "$(dirname "$0")"
secs=$1
shift
mkdir -p logs
for t in "$@"; do
  mkdir -p "corpus-run/$t"
  RUSTC_BOOTSTRAP=1 nice -n 10 cargo fuzz run -O -a "$t" "corpus-run/$t" "corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    >"logs/$t.log" 2>&1 &
done
wait
