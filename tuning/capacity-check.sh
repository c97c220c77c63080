#!/usr/bin/env bash
# Can this host hold N connections? Asks the server itself, so the check
# and the server's start-up capacity line are the same logic
# (src/capacity.rs): open-file limit, memory at the measured cost per idle
# session, net.core.somaxconn, the memlock limit, cores.
#   tuning/capacity-check.sh [N]        (N defaults to 100000)
# Runs `stampede --check-capacity --max-connections N`; the binary is
# $STAMPEDE_BIN, else `stampede` on PATH, else target/release/stampede in
# this repository. Exit status: 0 the host holds N, 1 it does not, 2 usage.
# Other flags (--shards, --listen-backlog, --io-memory-kib, --config FILE)
# go after N and are passed on. The limits are this shell's: run it as the
# user (or under the unit) that runs the server.
set -u

want=${1:-100000}
case $want in
  '' | *[!0-9]*)
    echo "usage: $0 [connections] [stampede flags...]" >&2
    exit 2
    ;;
esac
[ $# -gt 0 ] && shift

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${STAMPEDE_BIN:-}" ]; then
  bin=$STAMPEDE_BIN
elif command -v stampede >/dev/null 2>&1; then
  bin=$(command -v stampede)
else
  bin=$repo/target/release/stampede
fi
if [ ! -x "$bin" ]; then
  echo "$0: no stampede binary at $bin: set STAMPEDE_BIN, put stampede on PATH, or run cargo build --release" >&2
  exit 2
fi

exec "$bin" --check-capacity --max-connections "$want" "$@"
