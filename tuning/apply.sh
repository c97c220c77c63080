#!/usr/bin/env bash
# Show how this host's kernel settings differ from tuning/sysctl.conf, and
# apply ours only when asked.
#
#   tuning/apply.sh                 # dry run: the differences; writes nothing
#   sudo tuning/apply.sh --apply    # install the files and set the values
#
# Dry run (the default): one line per setting — running value, ours, and
# what --apply would do — then whether the installed files differ. Nothing
# is written. Exit status 0 when nothing differs, 3 when something does.
#
# --apply (root only): installs tuning/sysctl.conf as
# /etc/sysctl.d/60-stampede.conf (net.ipv4.tcp_mem computed from this
# host's memory) and tuning/limits.conf as
# /etc/security/limits.d/60-stampede.conf, then sets each differing value
# with `sysctl -w`. Idempotent: a second run changes nothing. A value the
# kernel refuses (read-only in a container, say) is reported and makes the
# exit status 1; the others are still set.
#
# Capacities (backlogs, file limits) are only ever raised: a host that
# already allows more keeps its value.
#
# --root DIR installs the files under DIR instead of / and sets nothing in
# the kernel (to inspect what --apply writes).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
apply=0
root=/
while [ $# -gt 0 ]; do
  case $1 in
    --apply) apply=1 ;;
    --root)
      [ $# -ge 2 ] || { echo "--root needs a directory" >&2; exit 2; }
      root=$2
      shift
      ;;
    -h | --help)
      sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "unknown argument: $1 (see --help)" >&2
      exit 2
      ;;
  esac
  shift
done

if [ "$apply" = 1 ] && [ "$(id -u)" != 0 ]; then
  echo "--apply changes kernel settings and /etc: run it as root" >&2
  exit 2
fi

# Settings where more is fine: never lowered.
at_least=" net.core.somaxconn net.ipv4.tcp_max_syn_backlog net.core.netdev_max_backlog fs.nr_open fs.file-max "

# net.ipv4.tcp_mem for this host: 1/8, 1/6, 1/4 of its memory in pages
# (see the comment in sysctl.conf).
mem_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
pages=$((mem_kib / 4))
tcp_mem="$((pages / 8)) $((pages / 6)) $((pages / 4))"

# Our settings, one "key value" line each (tcp_mem replaced).
ours() {
  sed -e 's/#.*//' "$here/sysctl.conf" | awk -F= 'NF == 2 {
      gsub(/^[ \t]+|[ \t]+$/, "", $1); gsub(/^[ \t]+|[ \t]+$/, "", $2); gsub(/[ \t]+/, " ", $2)
      print $1 " " $2 }' |
    while read -r key value; do
      if [ "$key" = net.ipv4.tcp_mem ]; then value=$tcp_mem; fi
      echo "$key $value"
    done
}

# The file --apply installs as /etc/sysctl.d/60-stampede.conf.
# shellcheck disable=SC2317 # called through install_file
sysctl_file() {
  sed -e "s/^net\.ipv4\.tcp_mem = .*/net.ipv4.tcp_mem = $tcp_mem/" "$here/sysctl.conf"
}

running() { # key -> the kernel's value, whitespace collapsed, or "-"
  local path=/proc/sys/${1//.//}
  if [ -r "$path" ]; then tr -s ' \t' '  ' <"$path"; else echo -; fi
}

differ=0
failed=0
printf '%-32s %-28s %-28s %s\n' setting running ours action
while read -r key value; do
  now=$(running "$key")
  action=keep
  if [ "$now" = - ]; then
    action="absent here"
  elif [ "$now" != "$value" ]; then
    if [[ $at_least == *" $key "* ]] && [[ $now =~ ^[0-9]+$ ]] && [ "$now" -ge "$value" ]; then
      action="keep (already more)"
    else
      action="set"
    fi
  fi
  printf '%-32s %-28s %-28s %s\n' "$key" "$now" "$value" "$action"
  if [ "$action" = set ]; then
    differ=1
    if [ "$apply" = 1 ] && [ "$root" = / ]; then
      if ! sysctl -q -w "$key=$value" >/dev/null 2>&1; then
        echo "  cannot set $key (read-only here?)" >&2
        failed=1
      fi
    fi
  fi
done < <(ours)

install_file() { # content-producing command, destination
  local dest=${root%/}/$2 tmp
  tmp=$(mktemp)
  $1 >"$tmp"
  if [ -f "$dest" ] && cmp -s "$tmp" "$dest"; then
    echo "$dest: up to date"
  else
    differ=1
    if [ "$apply" = 1 ]; then
      mkdir -p "$(dirname "$dest")"
      install -m 0644 "$tmp" "$dest"
      echo "$dest: installed"
    else
      echo "$dest: would be installed"
    fi
  fi
  rm -f "$tmp"
}

# shellcheck disable=SC2317 # called through install_file
limits_file() { cat "$here/limits.conf"; }

echo
install_file sysctl_file etc/sysctl.d/60-stampede.conf
install_file limits_file etc/security/limits.d/60-stampede.conf

if [ "$failed" = 1 ]; then
  exit 1
fi
if [ "$apply" = 0 ] && [ "$differ" = 1 ]; then
  echo
  echo "dry run: nothing written; run with --apply (as root) to apply"
  exit 3
fi
exit 0
