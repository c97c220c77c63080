#!/usr/bin/env bash
# Every test stampede has, from a fresh clone: installs what the tests need
# (Python packages from PyPI, npm packages), builds, lints, runs unit tests,
# then the black-box suites against the release binary.
#   scripts/test.sh            # everything
#   SKIP_LINT=1 scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies (apt, cargo, pip, npm)"
# The load generator's report draws its plots with DejaVu Sans.
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q fonts-dejavu-core >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q fonts-dejavu-core >/dev/null; }
fi
# The stall hunt (scripts/stress-stall.py) watches socket counters with `ss`.
if ! command -v ss >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 >/dev/null; }
fi
# The status page test (tests/node/test/status.test.mjs) drives Debian's chromium
# through playwright-core (which downloads no browser of its own).
if [ ! -x /usr/bin/chromium ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; }
fi
# promtool (from Debian's prometheus) checks the /metrics exposition.
if ! command -v promtool >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
fi
# The tuning scripts must pass shellcheck and tuning/nginx.conf `nginx -t`
# (tests/python/test_tuning.py).
for tool in shellcheck:shellcheck nginx:nginx; do
  if ! command -v "${tool%%:*}" >/dev/null 2>&1 && [ ! -x "/usr/sbin/${tool%%:*}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${tool#*:}" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${tool#*:}" >/dev/null; }
  fi
done
# Cluster mode (tests/python/test_cluster.py) runs its own redis-server on
# loopback ports; the package's own service, if it starts one, is unused.
if ! command -v redis-server >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null; }
fi
export STAMPEDE_REQUIRE_REDIS=1
# The Debian package (tests/python/test_package.py) is built with cargo-deb.
cargo install --quiet --locked cargo-deb --version 3.8.0
python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)

if [ -z "${SKIP_LINT:-}" ]; then
  step "module layers (no module names a higher layer)"
  python3 scripts/check-layers.py
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --release --workspace --all-targets -- -D warnings
fi

step "unit tests"
cargo test --release --workspace

step "building the fault-injection server (for the panic-policy test only)"
# Same profile, one extra feature: only the stampede crate is rebuilt.
cargo build --release --features fault-injection --bin stampede
cp target/release/stampede target/release/stampede-fault
export STAMPEDE_FAULT_BIN="$root/target/release/stampede-fault"

step "building the server and the load generator"
cargo build --release --workspace
export STAMPEDE_BIN="$root/target/release/stampede"
export STAMPEDE_BENCH_BIN="$root/target/release/stampede-bench"

step "building the Debian package (cargo deb)"
rm -f target/debian/stampede_*.deb
cargo deb --no-build
STAMPEDE_DEB=$(ls "$root"/target/debian/stampede_*.deb)
export STAMPEDE_DEB STAMPEDE_REQUIRE_DEB=1

step "black-box tests (Python: raw frames, WebSocket, stomp.py, shards)"
python3 -m pytest -q -n 4 tests/python

step "interop tests (Node: @stomp/stompjs over ws)"
(cd tests/node && npm test)

step "all tests passed"
