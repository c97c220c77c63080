#!/usr/bin/env bash
# Read-only report: can this host hold N connections? Changes nothing.
#   tuning/check.sh [N] [stampede flags...]     (N defaults to 100000)
#
# Prints the host facts a deployment needs — open-file limits (this shell's
# soft/hard, fs.nr_open), memlock, somaxconn, the ephemeral port range,
# cores, memory, io_uring availability — then asks the server itself for
# the verdict: `stampede --check-capacity --max-connections N`, the same
# logic (src/capacity.rs) as the server's start-up capacity line, with the
# measured memory per session. Exit status: 0 the host holds N, 1 it does
# not, 2 usage or no binary.
#
# The binary is $STAMPEDE_BIN, else `stampede` on PATH, else
# target/release/stampede in this repository. Other flags (--shards,
# --listen-backlog, --io-memory-kib, --config FILE) go after N and are
# passed on. The limits are this shell's: run it as the user (or under the
# unit) that runs the server.
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

read_proc() { # path -> its value, whitespace collapsed, or "unknown"
  if [ -r "$1" ]; then tr -s ' \t' '  ' <"$1"; else echo unknown; fi
}

case $(read_proc /proc/sys/kernel/io_uring_disabled) in
  0) io_uring="enabled" ;;
  1) io_uring="restricted to the io_uring_group (kernel.io_uring_disabled=1)" ;;
  2) io_uring="DISABLED (kernel.io_uring_disabled=2): stampede cannot run" ;;
  *) io_uring="no kernel.io_uring_disabled (kernel < 6.6: enabled)" ;;
esac

echo "host facts (this shell):"
printf '  %-28s %s\n' \
  "open files soft/hard" "$(ulimit -Sn)/$(ulimit -Hn)" \
  "fs.nr_open" "$(read_proc /proc/sys/fs/nr_open)" \
  "fs.file-max" "$(read_proc /proc/sys/fs/file-max)" \
  "memlock soft (KiB)" "$(ulimit -Sl)" \
  "net.core.somaxconn" "$(read_proc /proc/sys/net/core/somaxconn)" \
  "ip_local_port_range" "$(read_proc /proc/sys/net/ipv4/ip_local_port_range)" \
  "cores" "$(nproc)" \
  "MemTotal" "$(awk '/^MemTotal:/ {print $2, $3}' /proc/meminfo)" \
  "io_uring" "$io_uring"
echo

"$bin" --check-capacity --max-connections "$want" "$@"
status=$?
if [ "$(read_proc /proc/sys/kernel/io_uring_disabled)" = 2 ]; then
  status=1
fi
exit $status
