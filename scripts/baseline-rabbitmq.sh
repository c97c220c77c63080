#!/usr/bin/env bash
# RabbitMQ Web-STOMP baseline for the stampede benchmarks: Debian's
# rabbitmq-server (3.10.x in bookworm) run as a private node, isolated from
# any system service (own node name, own data/log dirs under
# target/baselines/rabbitmq/, own config from bench/baselines/rabbitmq/).
#
#   scripts/baseline-rabbitmq.sh install
#   scripts/baseline-rabbitmq.sh start [--port 15674] [--cpu C|all]
#       -> prints exactly one line on stdout:
#          ready pid=<beam.smp pid> url=ws://127.0.0.1:<port>/ws
#   scripts/baseline-rabbitmq.sh stop
#   scripts/baseline-rabbitmq.sh ctl status     # rabbitmqctl -n <our node> ...
#
# Login guest/guest, STOMP host header "/". See
# bench/baselines/rabbitmq/README.md for the settings and why.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
conf_dir="$root/bench/baselines/rabbitmq"
state="$root/target/baselines/rabbitmq"
rmq_bin=/usr/lib/rabbitmq/bin # the real scripts; /usr/sbin/* would `su rabbitmq`
node="${STAMPEDE_RABBITMQ_NODE:-stampede-bench@localhost}"
nofile=20000
ready_timeout=90

log() { printf 'baseline-rabbitmq: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# --- install ---------------------------------------------------------------

installed() { [ -x "$rmq_bin/rabbitmq-server" ] && [ -x "$rmq_bin/rabbitmqctl" ]; }

cmd_install() {
  if installed; then
    [ "${1:-}" = --quiet ] ||
      log "rabbitmq-server already installed ($(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?'))"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "installing rabbitmq-server needs root (apt-get)"
  local t0=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package's postinst from starting the system service (no systemd
  # here, and the baseline never uses it): a policy-rc.d that denies every
  # start, only for the duration of the install and only if none exists.
  local policy=/usr/sbin/policy-rc.d made_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  # shellcheck disable=SC2064
  [ -z "$made_policy" ] || trap "rm -f '$policy'" EXIT
  if ! apt-cache show rabbitmq-server >/dev/null 2>&1 ||
    [ "$(apt-cache policy rabbitmq-server | awk '/Candidate:/ {print $2}')" = "(none)" ]; then
    log "apt-get update"
    apt-get update -q >&2
  fi
  log "apt-get install rabbitmq-server"
  apt-get install -y -q --no-install-recommends rabbitmq-server >&2
  if [ -n "$made_policy" ]; then rm -f "$policy"; fi
  trap - EXIT
  installed || die "rabbitmq-server installed but $rmq_bin/rabbitmq-server is missing"
  log "installed rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server) in $((SECONDS - t0)) s"
}

# --- environment of our node -----------------------------------------------

# Everything the server and rabbitmqctl read, pointed at our own files so
# that nothing from /etc/rabbitmq or /var/lib/rabbitmq is used.
node_env() {
  export HOME="$state" # $HOME/.erlang.cookie: same cookie for server and CLI
  export RABBITMQ_NODENAME="$node"
  export RABBITMQ_BASE="$state"
  export RABBITMQ_MNESIA_BASE="$state/mnesia"
  export RABBITMQ_LOG_BASE="$state/log"
  export RABBITMQ_PID_FILE="$state/beam.pid"
  export RABBITMQ_CONF_ENV_FILE="$state/rabbitmq-env.conf" # empty: no /etc/rabbitmq/rabbitmq-env.conf
  export RABBITMQ_CONFIG_FILE="$state/rabbitmq.conf"       # bench template + --port
  export RABBITMQ_CONFIG_FILES="$state/conf.d/*.conf"      # none: no /etc/rabbitmq/conf.d
  export RABBITMQ_ADVANCED_CONFIG_FILE="$conf_dir/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$conf_dir/enabled_plugins"
  export RABBITMQ_MOTD_FILE="$state/motd"
  export ERL_CRASH_DUMP="$state/log/erl_crash.dump"
  export ERL_EPMD_ADDRESS=127.0.0.1 # if our node has to start epmd: loopback only
  unset RABBITMQ_NODE_PORT RABBITMQ_NODE_IP_ADDRESS RABBITMQ_ERLANG_COOKIE \
    RABBITMQ_ENABLED_PLUGINS RABBITMQ_SERVER_ERL_ARGS RABBITMQ_ALLOW_INPUT
}

# rabbitmqctl for our node (in a subshell, so node_env does not leak).
ctl() { (node_env && exec timeout 60 "$rmq_bin/rabbitmqctl" -n "$node" "$@"); }

prepare_state() {
  mkdir -p "$state/log" "$state/mnesia" "$state/conf.d"
  : >"$state/rabbitmq-env.conf"
  if [ ! -s "$state/.erlang.cookie" ]; then
    (umask 077 && head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$state/.erlang.cookie")
    chmod 400 "$state/.erlang.cookie"
  fi
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
read_pid() { if [ -s "$1" ]; then tr -dc '0-9' <"$1" || true; fi; }
is_beam() { [ -r "/proc/$1/comm" ] && [[ "$(cat "/proc/$1/comm")" == beam* ]]; }

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# --- readiness probe: a real STOMP session over WebSocket -------------------

# Python standard library only. Opens ws://127.0.0.1:PORT/ws (v12.stomp),
# CONNECT (guest/guest, host /), SUBSCRIBE /topic/<probe> with a receipt,
# SEND to it, waits for the MESSAGE, DISCONNECT. Exit 0 iff all that works.
probe() {
  python3 - "$1" <<'PY'
import base64, os, socket, struct, sys
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port), timeout=5)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v12.stomp\r\n\r\n"
           % (port, key)).encode())
buf = b""
while b"\r\n\r\n" not in buf:
    d = s.recv(4096)
    if not d:
        sys.exit("socket closed during the WebSocket handshake")
    buf += d
head, buf = buf.split(b"\r\n\r\n", 1)
if not head.startswith(b"HTTP/1.1 101"):
    sys.exit("handshake refused: %r" % head.split(b"\r\n")[0])

def send(text):
    p = text.encode()
    m = os.urandom(4)
    n = len(p)
    h = b"\x81" + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    s.sendall(h + m + bytes(b ^ m[i % 4] for i, b in enumerate(p)))

def take(n):
    global buf
    while len(buf) < n:
        d = s.recv(65536)
        if not d:
            raise EOFError("socket closed")
        buf += d
    out, buf = buf[:n], buf[n:]
    return out

def frame():
    while True:
        b0, b1 = take(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", take(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", take(8))[0]
        m = take(4) if b1 & 0x80 else None
        data = take(n)
        if m:
            data = bytes(b ^ m[i % 4] for i, b in enumerate(data))
        op = b0 & 0x0F
        if op == 8:
            raise EOFError("WebSocket close frame: %r" % data)
        if op in (1, 2):
            t = data.decode("utf-8", "replace").lstrip("\r\n")
            if t:
                return t

def expect(cmd):
    f = frame()
    if not f.startswith(cmd + "\n"):
        sys.exit("expected %s, got %r" % (cmd, f[:300]))
    return f

dest = "/topic/stampede-probe-%d" % os.getpid()
send("CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n\0")
expect("CONNECTED")
send("SUBSCRIBE\nid:0\ndestination:%s\nreceipt:1\n\n\0" % dest)
expect("RECEIPT")
send("SEND\ndestination:%s\ncontent-type:text/plain\n\nprobe\0" % dest)
f = expect("MESSAGE")
if "\n\nprobe\0" not in f:
    sys.exit("MESSAGE with an unexpected body: %r" % f[:300])
send("DISCONNECT\n\n\0")
s.close()
PY
}

# --- start -----------------------------------------------------------------

cmd_start() {
  local port=15674 cpu=""
  while [ $# -gt 0 ]; do
    case "$1" in
    --port) port="${2:?--port needs a value}"; shift 2 ;;
    --port=*) port="${1#*=}"; shift ;;
    --cpu) cpu="${2:?--cpu needs a value}"; shift 2 ;;
    --cpu=*) cpu="${1#*=}"; shift ;;
    -h | --help) usage ;;
    *) die "unknown option for start: $1" ;;
    esac
  done
  if ! { [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 55000 ]; }; then
    die "--port must be 1..55000 (the Erlang distribution port is PORT+10000), got '$port'"
  fi
  local dist_port=$((port + 10000))

  cmd_install --quiet
  command -v python3 >/dev/null || die "python3 is needed for the readiness probe"

  local old
  old=$(read_pid "$state/server.pid")
  if alive "$old" && is_beam "$old"; then
    die "already running (pid $old); run '$0 stop' first"
  fi
  port_busy "$port" && die "port $port is already in use (another server?)"
  port_busy "$dist_port" && die "Erlang distribution port $dist_port is already in use"

  local pin=()
  if [ -n "$cpu" ]; then
    command -v taskset >/dev/null || die "taskset not found (util-linux)"
    if [ "$cpu" = all ]; then
      pin=(taskset -c "0-$(($(nproc --all) - 1))")
    else
      pin=(taskset -c "$cpu")
    fi
    "${pin[@]}" true 2>/dev/null || die "invalid --cpu '$cpu'"
  fi

  prepare_state
  rm -f "$state/beam.pid" "$state/server.pid" "$state/wrapper.pid"
  sed -E "s/^[[:space:]]*web_stomp\.tcp\.port[[:space:]]*=.*/web_stomp.tcp.port = $port/" \
    "$conf_dir/rabbitmq.conf" >"$state/rabbitmq.conf"
  grep -q "^web_stomp.tcp.port = $port\$" "$state/rabbitmq.conf" ||
    die "$conf_dir/rabbitmq.conf has no web_stomp.tcp.port line"

  local t0=$SECONDS
  (
    node_env
    export RABBITMQ_DIST_PORT="$dist_port"
    # Erlang distribution only on loopback (rabbitmqctl talks to the node
    # through it); +P/+Q/ETS limits: RabbitMQ's defaults (see README).
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    ulimit -n "$nofile" || { echo "ulimit -n $nofile failed" >&2; exit 1; }
    cd "$state"
    exec setsid "${pin[@]}" "$rmq_bin/rabbitmq-server" </dev/null >>"$state/log/stdout.log" 2>&1
  ) &
  local wrapper=$!
  echo "$wrapper" >"$state/wrapper.pid"
  log "starting node $node (Web-STOMP port $port, dist port $dist_port${cpu:+, cpu $cpu}); logs in $state/log"

  local pid="" err=""
  while :; do
    if ! alive "$wrapper"; then
      tail -n 30 "$state/log/stdout.log" >&2 || true
      die "rabbitmq-server exited during start-up (see $state/log/)"
    fi
    [ -z "$pid" ] && pid=$(read_pid "$state/beam.pid")
    if [ -n "$pid" ] && err=$(probe "$port" 2>&1); then
      break
    fi
    if [ $((SECONDS - t0)) -ge "$ready_timeout" ]; then
      log "no working STOMP session after ${ready_timeout} s; last probe: ${err:-no beam pid yet}"
      tail -n 30 "$state/log/stdout.log" >&2 || true
      cmd_stop || true
      die "start-up timed out"
    fi
    sleep 0.5
  done
  is_beam "$pid" || die "pid $pid from $state/beam.pid is not beam.smp"
  echo "$pid" >"$state/server.pid"
  log "ready after $((SECONDS - t0)) s (nofile $(awk '/Max open files/ {print $4}' "/proc/$pid/limits"), affinity $(taskset -pc "$pid" 2>/dev/null | awk '{print $NF}'))"
  echo "ready pid=$pid url=ws://127.0.0.1:$port/ws"
}

# --- stop ------------------------------------------------------------------

wait_gone() { # pid seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    alive "$1" || return 0
    sleep 0.1
  done
  ! alive "$1"
}

cmd_stop() {
  local pid wrapper
  pid=$(read_pid "$state/server.pid")
  [ -n "$pid" ] || pid=$(read_pid "$state/beam.pid")
  wrapper=$(read_pid "$state/wrapper.pid")
  # Only pids that are still our processes (beam.smp / the rabbitmq-server
  # shell wrapper), in case the files are stale and the pids reused.
  if [ -n "$pid" ] && ! { alive "$pid" && is_beam "$pid"; }; then pid=""; fi
  if [ -n "$wrapper" ] && ! { alive "$wrapper" && grep -qa rabbitmq-server "/proc/$wrapper/cmdline" 2>/dev/null; }; then wrapper=""; fi

  if [ -z "$pid" ] && [ -z "$wrapper" ] && ! ctl ping >/dev/null 2>&1; then
    log "not running"
    rm -f "$state/server.pid" "$state/beam.pid" "$state/wrapper.pid"
    return 0
  fi
  if installed && [ -s "$state/.erlang.cookie" ]; then
    ctl stop >/dev/null 2>&1 ||
      log "rabbitmqctl stop failed; falling back to signals"
  fi
  if [ -n "$pid" ] && ! wait_gone "$pid" 30; then
    log "beam $pid still alive: SIGTERM"
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 15 || { log "SIGKILL $pid"; kill -KILL "$pid" 2>/dev/null || true; wait_gone "$pid" 5 || true; }
  fi
  if [ -n "$wrapper" ] && ! wait_gone "$wrapper" 5; then
    kill -TERM "$wrapper" 2>/dev/null || true
    wait_gone "$wrapper" 5 || kill -KILL "$wrapper" 2>/dev/null || true
  fi
  rm -f "$state/server.pid" "$state/beam.pid" "$state/wrapper.pid"
  log "stopped"
}

case "${1:-}" in
install) shift; cmd_install "$@" ;;
start) shift; cmd_start "$@" ;;
stop) shift; cmd_stop "$@" ;;
probe) shift; probe "${1:-15674}" ;;            # STOMP-over-WS check of a port
ctl) shift; installed || die "not installed"; ctl "$@" ;; # rabbitmqctl for our node
*) usage ;;
esac
