#!/usr/bin/env bash
# Install stampede on a host without dpkg (Amazon Linux, RHEL, ...): what
# the Debian package does (cargo deb), by hand.
#
#   sudo scripts/install.sh                  # binary from target/release (built if missing)
#   sudo scripts/install.sh --binary PATH    # a binary copied from elsewhere
#   sudo scripts/install.sh --apply-tuning   # also apply tuning/ (after showing it)
#   scripts/install.sh --root DIR            # stage everything under DIR instead of /
#
# It installs the binary as PREFIX/bin/stampede (--prefix, default
# /usr/local), the systemd unit as /etc/systemd/system/stampede.service
# with ExecStart pointing at that binary, the example config as
# /etc/stampede/stampede.toml (an existing one is kept; the new example goes
# beside it as stampede.toml.new), the tuning files and scripts under
# PREFIX/share/stampede/tuning, a `stampede` system user and
# /var/lib/stampede. It then shows what tuning/apply.sh would change in the
# kernel settings and file limits and changes them only with
# --apply-tuning. The unit is not enabled: the config needs its secrets
# first (the steps are printed at the end). Running it again is harmless.
#
# With --root DIR nothing outside DIR is touched: no user is created, no
# systemctl, no kernel setting (--apply-tuning installs the tuning files
# under DIR only).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
root=/
prefix=/usr/local
binary=
apply_tuning=0
while [ $# -gt 0 ]; do
  case $1 in
    --binary | --prefix | --root)
      [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
      case $1 in
        --binary) binary=$2 ;;
        --prefix) prefix=$2 ;;
        --root) root=$2 ;;
      esac
      shift
      ;;
    --apply-tuning) apply_tuning=1 ;;
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

staged=0
if [ "$root" != / ]; then
  staged=1
  mkdir -p "$root"
  root=$(cd "$root" && pwd)
elif [ "$(id -u)" != 0 ]; then
  echo "installing into / needs root (or stage it with --root DIR)" >&2
  exit 2
fi
at() { echo "${root%/}$1"; }

# 1. The binary.
if [ -z "$binary" ]; then
  binary=$here/target/release/stampede
  if [ ! -x "$binary" ]; then
    command -v cargo >/dev/null 2>&1 || {
      echo "no $binary and no cargo to build it: pass --binary PATH" >&2
      exit 2
    }
    echo "building stampede (cargo build --release)"
    (cd "$here" && cargo build --release --bin stampede)
  fi
fi
[ -x "$binary" ] || { echo "not an executable: $binary" >&2; exit 2; }
"$binary" --version >/dev/null || { echo "$binary does not run on this host" >&2; exit 2; }
install -d "$(at "$prefix/bin")"
install -m 0755 "$binary" "$(at "$prefix/bin/stampede")"
echo "$(at "$prefix/bin/stampede"): installed ($("$binary" --version))"

# 2. The user and the data directory.
# Owners only on the real host (a staged tree may be built without root).
data_owner=()
conf_owner=()
if [ "$staged" = 0 ]; then
  if ! getent group stampede >/dev/null; then
    groupadd --system stampede
  fi
  if ! getent passwd stampede >/dev/null; then
    nologin=/usr/sbin/nologin
    [ -x "$nologin" ] || nologin=/sbin/nologin
    useradd --system --gid stampede --home-dir /var/lib/stampede --no-create-home \
      --shell "$nologin" --comment "stampede chat server" stampede
    echo "user stampede: created"
  fi
  data_owner=(-o stampede -g stampede)
  conf_owner=(-o root -g stampede)
fi
install -d "${data_owner[@]}" -m 0750 "$(at /var/lib/stampede)"
install -d "${conf_owner[@]}" -m 0750 "$(at /etc/stampede)"

# 3. The config: never overwrite the one in use.
conf=$(at /etc/stampede/stampede.toml)
if [ ! -e "$conf" ]; then
  install "${conf_owner[@]}" -m 0640 "$here/tuning/stampede.toml" "$conf"
  echo "$conf: installed (the example; edit it)"
elif cmp -s "$here/tuning/stampede.toml" "$conf"; then
  echo "$conf: up to date"
else
  install "${conf_owner[@]}" -m 0640 "$here/tuning/stampede.toml" "$conf.new"
  echo "$conf: kept yours; this version's example is $conf.new"
fi

# 4. The unit, pointing at the binary installed above.
unit=$(at /etc/systemd/system/stampede.service)
install -d "$(dirname "$unit")"
sed -e "s|^ExecStart=/usr/bin/stampede |ExecStart=$prefix/bin/stampede |" \
  -e "s|^ExecStart=/usr/bin/stampede$|ExecStart=$prefix/bin/stampede|" \
  "$here/tuning/stampede.service" >"$unit.tmp"
chmod 0644 "$unit.tmp"
mv "$unit.tmp" "$unit"
echo "$unit: installed"
if [ "$staged" = 0 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi

# 5. Tuning: shown, applied only when asked.
tuning=$(at "$prefix/share/stampede/tuning")
install -d "$tuning"
for f in sysctl.conf limits.conf nginx.conf README.md; do
  install -m 0644 "$here/tuning/$f" "$tuning/$f"
done
for f in apply.sh check.sh; do
  install -m 0755 "$here/tuning/$f" "$tuning/$f"
done
echo "$tuning: installed"
echo
echo "kernel and file-limit settings stampede wants:"
status=0
"$tuning/apply.sh" --root "$root" || status=$?
if [ "$apply_tuning" = 1 ]; then
  if [ "$staged" = 1 ]; then
    "$tuning/apply.sh" --apply --root "$root"
  else
    "$tuning/apply.sh" --apply
  fi
elif [ "$status" = 3 ]; then
  echo "(not changed: run $prefix/share/stampede/tuning/apply.sh --apply, or this script with --apply-tuning)"
fi

cat <<MSG

stampede is installed. Next:
  1. edit /etc/stampede/stampede.toml; put secrets (STAMPEDE_JWT_SECRET,
     STAMPEDE_ADMIN_TOKEN) in /etc/stampede/secrets.env (mode 0640)
  2. check the host:  $prefix/share/stampede/tuning/check.sh
  3. start:           systemctl enable --now stampede
  Guide: $prefix/share/stampede/tuning/README.md
MSG
