#!/usr/bin/env bash
# The Spring SimpleBroker baseline: a stock @EnableWebSocketMessageBroker app
# (Spring 4.3.30, embedded Tomcat 9) built from Debian packages only.
# See bench/baselines/spring-simplebroker/README.md.
#
#   scripts/baseline-spring.sh build
#   scripts/baseline-spring.sh start --port P [--cpu C] [--xmx 256m]
#   scripts/baseline-spring.sh stop
#
# Extra JVM options can be passed in BASELINE_JAVA_OPTS (e.g. -Xms16m).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
app_dir="$root/bench/baselines/spring-simplebroker"
out="$root/target/baselines/spring"
pid_file="$out/server.pid"
log_file="$out/server.log"
cp_file="$out/classpath.txt"
stamp_file="$out/build.stamp"
main_class=stampede.baseline.spring.Main
probe_class=stampede.baseline.spring.StompProbe
jdir=/usr/share/java

# Binary packages the build and the server need. The source package
# libspring-java is fetched separately (see fetch_source).
apt_packages=(
  libspring-messaging-java libspring-web-java libspring-web-servlet-java
  libspring-oxm-java libtomcat9-java libjackson2-databind-java
  libcommons-logging-java libaopalliance-java
)

# Debian jars, in classpath order. spring3-messaging.jar is deliberately
# absent: spring-messaging is compiled whole from the source package instead.
compile_jars=(
  spring3-core spring3-beans spring3-context spring3-aop spring3-expression
  spring3-web spring3-web.servlet spring3-oxm
  commons-logging aopalliance
  jackson-core jackson-databind jackson-annotations
  tomcat9-servlet-api tomcat9-websocket-api tomcat9-websocket
  tomcat9-catalina tomcat9-coyote tomcat9-util tomcat9-util-scan tomcat9-juli
  tomcat9-api tomcat9-jaspic-api tomcat9-annotations-api tomcat9-jni
)

die() { echo "baseline-spring: $*" >&2; exit 1; }
note() { echo "baseline-spring: $*" >&2; }

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# --- build -----------------------------------------------------------------

ensure_packages() {
  local missing=() p
  for p in "${apt_packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  command -v javac >/dev/null || missing+=(openjdk-17-jdk-headless)
  if [ ${#missing[@]} -gt 0 ]; then
    note "installing ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get -y -qq install "${missing[@]}" >&2
  fi
}

# Fetch the Debian source package matching the installed spring jars through
# a private deb-src list; the system's apt sources and lists are not touched.
fetch_source() {
  local src_ver upstream suite mirror dir o
  src_ver=$(dpkg-query -W -f='${source:Version}' libspring-messaging-java)
  upstream=${src_ver%-*}
  upstream=${upstream#*:}
  dir="$out/src"
  orig="$dir/libspring-java_${upstream}.orig.tar.xz"
  src_dsc="$dir/libspring-java_${src_ver#*:}.dsc"
  if [ -s "$orig" ] && [ -s "$src_dsc" ]; then
    return
  fi
  # shellcheck disable=SC1091
  suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ -n "$suite" ] || die "cannot tell the Debian suite from /etc/os-release"
  mirror=$(grep -hoE '^(URIs:[[:space:]]*|deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
             /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
           | grep -oE 'https?://[^[:space:]]+' | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  mkdir -p "$dir" "$out/apt/lists/partial" "$out/apt/cache/archives/partial"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror%/} $suite main" \
    > "$out/apt/sources.list"
  o=(-o "Dir::Etc::SourceList=$out/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
     -o "Dir::State::Lists=$out/apt/lists" -o "Dir::Cache=$out/apt/cache")
  note "fetching source package libspring-java=$src_ver ($mirror $suite)"
  apt-get "${o[@]}" -qq update >&2
  (cd "$dir" && apt-get "${o[@]}" -qq source --download-only "libspring-java=$src_ver") 2>&1 \
    | { grep -v 'Download is performed unsandboxed' || true; } >&2
  [ -s "$orig" ] || die "apt-get source did not produce $orig"
}

build_stamp() {
  {
    dpkg-query -W -f='${Package} ${Version}\n' "${apt_packages[@]}" 2>/dev/null
    javac -version 2>&1
    sha256sum "${BASH_SOURCE[0]}"
    find "$app_dir" -type f -name '*.java' -print0 | sort -z | xargs -0 sha256sum
    sha256sum "$orig"
  } | sha256sum | cut -d' ' -f1
}

jar_path() { echo "$jdir/$1.jar"; }

debian_classpath() {
  local j cp=""
  for j in "${compile_jars[@]}"; do
    [ -f "$(jar_path "$j")" ] || die "missing $(jar_path "$j")"
    cp="$cp:$(jar_path "$j")"
  done
  echo "${cp#:}"
}

do_build() {
  mkdir -p "$out"
  ensure_packages
  fetch_source
  local stamp
  stamp=$(build_stamp)
  if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] && [ -s "$cp_file" ]; then
    note "up to date ($out)"
    return
  fi
  local t0=$SECONDS work="$out/work" lib="$out/lib" debcp top javac_opts
  rm -rf "$work" "$lib" "$stamp_file"
  mkdir -p "$work" "$lib"
  debcp=$(debian_classpath)
  javac_opts=(--release 8 -nowarn -Xlint:none -XDsuppressNotes -encoding UTF-8 -proc:none)
  top=$(basename "$orig" .orig.tar.xz)   # libspring-java_4.3.30
  top=${top/_/-}                          # libspring-java-4.3.30

  note "unpacking spring-messaging and spring-websocket from $(basename "$orig")"
  tar -xJf "$orig" -C "$work" \
    "$top/spring-messaging/src/main" "$top/spring-websocket/src/main"
  local msg="$work/$top/spring-messaging/src/main/java" ws="$work/$top/spring-websocket/src/main"
  local smsg="$msg/org/springframework/messaging"

  # 1. The cglib/ASM overlay for Debian's spring-core.
  note "compiling the spring-core cglib AsmApi overlay"
  mkdir -p "$work/overlay-classes"
  javac "${javac_opts[@]}" -cp "$debcp" -d "$work/overlay-classes" \
    "$app_dir/overlay/org/springframework/cglib/core/AsmApi.java"
  jar --create --file "$lib/spring-core-cglib-asm6-overlay.jar" -C "$work/overlay-classes" .

  # 2. spring-messaging, the upstream sources in the Debian orig tarball
  # (Debian's own jar has simp/stomp and the broker-relay config stripped and
  # a stompBrokerRelayMessageHandler() @Bean that throws). Left out: the
  # Reactor 2 / Netty TCP client the STOMP broker relay uses, which Debian
  # does not package; the relay handler is kept but throws if started
  # without an explicit TcpOperations.
  note "compiling spring-messaging (upstream source, minus the Reactor2 TCP client)"
  rm -rf "$smsg/tcp/reactor" "$smsg/simp/stomp/Reactor2StompCodec.java" \
         "$smsg/simp/stomp/Reactor2TcpStompClient.java"
  perl -0pi -e '
    s/^import org\.springframework\.messaging\.tcp\.reactor\.Reactor2TcpClient;\n//m or die "import";
    s/\t\t\tReactor2StompCodec codec = new Reactor2StompCodec\(new StompEncoder\(\), decoder\);\n\t\t\tthis\.tcpClient = new StompTcpClientFactory\(\)\.create\(this\.relayHost, this\.relayPort, codec\);\n/\t\t\tthrow new IllegalStateException("No TcpOperations set: the default Reactor2TcpClient is not part of this build (stampede Spring baseline)");\n/ or die "startInternal";
    s/\n\tprivate static class StompTcpClientFactory \{.*?\n\t\}\n//s or die "factory";
  ' "$smsg/simp/stomp/StompBrokerRelayMessageHandler.java"
  perl -0pi -e 's/^import org\.springframework\.messaging\.tcp\.reactor\.Reactor2TcpClient;\n//m or die "import";' \
    "$smsg/simp/config/StompBrokerRelayRegistration.java"
  find "$msg" -name '*.java' > "$work/messaging.txt"
  mkdir -p "$work/messaging-classes"
  javac "${javac_opts[@]}" -cp "$debcp" -d "$work/messaging-classes" "@$work/messaging.txt"
  jar --create --file "$lib/spring-messaging-4.3.30.jar" -C "$work/messaging-classes" .

  # 3. spring-websocket (Debian does not package it), minus the adapters for
  # servers/clients other than Tomcat and the standard javax.websocket API
  # (Jetty, Undertow, GlassFish/Tyrus, WebLogic, WebSphere) and the Jetty and
  # Undertow SockJS client transports: their libraries are not in Debian.
  note "compiling spring-websocket (minus Jetty/Undertow/Tyrus/WebLogic/WebSphere bits)"
  local sws="$ws/java/org/springframework/web/socket"
  rm -rf "$sws/adapter/jetty" "$sws/client/jetty" "$sws/server/jetty" \
    "$sws/server/standard/AbstractTyrusRequestUpgradeStrategy.java" \
    "$sws/server/standard/GlassFishRequestUpgradeStrategy.java" \
    "$sws/server/standard/UndertowRequestUpgradeStrategy.java" \
    "$sws/server/standard/WebLogicRequestUpgradeStrategy.java" \
    "$sws/server/standard/WebSphereRequestUpgradeStrategy.java" \
    "$sws/sockjs/client/JettyXhrTransport.java" \
    "$sws/sockjs/client/UndertowXhrTransport.java"
  find "$ws/java" -name '*.java' > "$work/websocket.txt"
  mkdir -p "$work/websocket-classes"
  javac "${javac_opts[@]}" -cp "$lib/spring-messaging-4.3.30.jar:$debcp" \
    -d "$work/websocket-classes" "@$work/websocket.txt"
  (cd "$ws/resources" && find . -type f ! -name .gitignore -print0 \
     | xargs -0 -I{} cp --parents {} "$work/websocket-classes/")
  jar --create --file "$lib/spring-websocket-4.3.30.jar" -C "$work/websocket-classes" .

  # 4. The baseline app.
  note "compiling the baseline app"
  mkdir -p "$work/app-classes"
  find "$app_dir/src/main/java" -name '*.java' > "$work/app.txt"
  javac "${javac_opts[@]}" \
    -cp "$lib/spring-messaging-4.3.30.jar:$lib/spring-websocket-4.3.30.jar:$debcp" \
    -d "$work/app-classes" "@$work/app.txt"
  jar --create --file "$lib/stampede-spring-baseline.jar" -C "$work/app-classes" .

  # Overlay first so its AsmApi wins over the one in spring3-core.jar.
  echo "$lib/spring-core-cglib-asm6-overlay.jar:$lib/stampede-spring-baseline.jar:$lib/spring-messaging-4.3.30.jar:$lib/spring-websocket-4.3.30.jar:$debcp" \
    > "$cp_file"
  rm -rf "$work"
  echo "$stamp" > "$stamp_file"
  note "built in $((SECONDS - t0)) s: $lib (classpath in $cp_file)"
}

# --- start / stop ------------------------------------------------------------

server_pid() {
  # The pid from the pid file if that process is alive and is our server.
  local pid
  [ -f "$pid_file" ] || return 1
  pid=$(cat "$pid_file" 2>/dev/null || true)
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "$main_class" || return 1
  echo "$pid"
}

do_start() {
  local port="" cpu=0 xmx=256m
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port=${2:?--port needs a value}; shift 2 ;;
      --cpu) cpu=${2:?--cpu needs a value}; shift 2 ;;
      --xmx) xmx=${2:?--xmx needs a value}; shift 2 ;;
      *) usage ;;
    esac
  done
  [[ "$port" =~ ^[0-9]+$ ]] || die "start needs --port P"
  local pid
  if pid=$(server_pid); then
    die "already running (pid $pid, from $pid_file); run '$0 stop' first"
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port on 127.0.0.1 is already in use"
  fi
  do_build
  local cp
  cp=$(cat "$cp_file")
  mkdir -p "$out/tomcat-work"
  : > "$log_file"
  # shellcheck disable=SC2086
  (
    ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    cd "$out"
    exec setsid taskset -c "$cpu" java "-Xmx$xmx" \
      --add-opens java.base/java.lang=ALL-UNNAMED \
      -Dorg.apache.commons.logging.Log=org.apache.commons.logging.impl.Jdk14Logger \
      -Dbaseline.port="$port" -Dbaseline.baseDir="$out/tomcat-work" \
      ${BASELINE_JAVA_OPTS:-} \
      -cp "$cp" "$main_class"
  ) >>"$log_file" 2>&1 < /dev/null &
  pid=$!
  echo "$pid" > "$pid_file"

  local deadline=$((SECONDS + 60)) url="ws://127.0.0.1:$port/ws"
  fail() {
    note "$1"
    note "last lines of $log_file:"
    tail -n 30 "$log_file" >&2 || true
    kill -TERM "$pid" 2>/dev/null || true
    sleep 1
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pid_file"
    exit 1
  }
  until grep -q 'stampede-spring-baseline ready' "$log_file" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || fail "server exited during startup"
    [ $SECONDS -lt $deadline ] || fail "server not started within 60 s"
    sleep 0.2
  done
  local left=$((deadline - SECONDS))
  [ $left -ge 1 ] || left=1
  if ! java -Xmx64m -XX:TieredStopAtLevel=1 -cp "$cp" "$probe_class" "$url" "$left" \
         >>"$out/probe.log" 2>&1; then
    tail -n 1 "$out/probe.log" >&2 || true
    fail "no STOMP session on $url within 60 s"
  fi
  kill -0 "$pid" 2>/dev/null || fail "server exited during startup"
  echo "ready pid=$pid url=$url"
}

do_stop() {
  local pid
  if ! pid=$(server_pid); then
    rm -f "$pid_file"
    note "not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    note "pid $pid still running after 10 s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$pid_file"
  note "stopped pid $pid"
}

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
case "$cmd" in
  build) do_build ;;
  start) do_start "$@" ;;
  stop) do_stop ;;
  *) usage ;;
esac
