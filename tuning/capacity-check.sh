#!/usr/bin/env bash
# Compare this host's limits with what stampede needs for N connections.
#   tuning/capacity-check.sh 100000
set -u
want=${1:-100000}
ok=1
check() { # name have need
  if [ "$2" -lt "$3" ]; then echo "LOW  $1 = $2 (want >= $3)"; ok=0; else echo "ok   $1 = $2"; fi
}
check "ulimit -n (this shell)" "$(ulimit -n)" "$((want + 64))"
check fs.nr_open "$(cat /proc/sys/fs/nr_open)" "$((want + 64))"
check fs.file-max "$(cat /proc/sys/fs/file-max)" "$((want + 1024))"
check net.core.somaxconn "$(cat /proc/sys/net/core/somaxconn)" 4096
check net.ipv4.tcp_max_syn_backlog "$(cat /proc/sys/net/ipv4/tcp_max_syn_backlog)" 4096
memlock=$(ulimit -l); [ "$memlock" = unlimited ] && memlock=$((1 << 30))
check "ulimit -l KiB (io_uring memory)" "$memlock" "$((512 * $(nproc)))"
# Memory: ~1 KiB of stampede state plus ~10 KB of kernel socket buffers per
# idle connection (measured on loopback); busy sockets need more.
need_mb=$(( want * 11 / 1024 ))
have_mb=$(( $(awk '/MemAvailable/ {print $2}' /proc/meminfo) / 1024 ))
check "MemAvailable MiB" "$have_mb" "$need_mb"
[ $ok = 1 ] && echo "host can hold $want idle connections" || exit 1
