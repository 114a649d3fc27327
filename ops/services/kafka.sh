#!/usr/bin/env bash
# Single-node KRaft Kafka (broker+controller) from Maven Central jars, for dev and tests without Docker.
# Usage: kafka.sh start|stop|status|classpath|producer-perf ARGS...|tool CLASS ARGS...
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION=4.1.1
PORT=${KAFKA_PORT:-19092}
CPORT=${KAFKA_CONTROLLER_PORT:-19093}
LIBS=${OMNI_CACHE_DIR:-$HOME/.cache/omni}/kafka-$VERSION/libs
RUN=$RUN_BASE/kafka
PROPS=$RUN/server.properties
PIDFILE=$RUN/kafka.pid
OUT=$RUN/kafka.out
LOG4J=$ROOT/ops/kafka/log4j2.properties

fetch_jars() {
  [[ -f $LIBS/.complete ]] && return 0
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  command -v java >/dev/null || die "java not found (apt-get install openjdk-17-jre-headless)"
  # Download into a temp dir and rename, so an interrupted fetch never looks complete.
  local tmp=$LIBS.tmp.$$ log
  log=$(mktemp)
  rm -rf "$tmp" "$LIBS"; mkdir -p "$tmp"
  if ! mvn -B -q -f "$ROOT/ops/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$tmp" -DincludeScope=runtime >"$log" 2>&1; then
    tail -n 30 "$log" >&2; rm -rf "$tmp" "$log"; die "fetching Kafka jars with Maven failed"
  fi
  rm -f "$log"
  [[ -f $tmp/kafka_2.13-$VERSION.jar && -f $tmp/kafka-tools-$VERSION.jar ]] || die "Maven did not copy the Kafka jars into $tmp"
  touch "$tmp/.complete"
  mv "$tmp" "$LIBS"
}

# java with the cached jars; tools log WARN+ to $RUN/logs/<name>.log instead of the console.
kjava() {
  local name=$1; shift
  mkdir -p "$RUN/logs"
  java -cp "$LIBS/*" -Dlog4j2.configurationFile="$LOG4J" -Dkafka.logs.dir="$RUN/logs" -Dkafka.log.name="$name" "$@"
}

# Readiness = the broker answers a Metadata request listing at least one broker. A bare TCP connect is
# not enough: the socket is bound before the broker has joined the quorum and serves requests.
answers() {
  python3 - "$PORT" <<'PY'
import socket, struct, sys
try:
    s = socket.create_connection(("localhost", int(sys.argv[1])), timeout=2)
    s.settimeout(2)
    client = b"omni-probe"
    # Metadata v4 (oldest version Kafka 4 still accepts): header v1, topics=null (all), no auto-create
    req = struct.pack(">hhih", 3, 4, 1, len(client)) + client + struct.pack(">ib", -1, 0)
    s.sendall(struct.pack(">i", len(req)) + req)
    buf = b""
    while len(buf) < 16:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(1)
        buf += chunk
    _size, corr, _throttle, nbrokers = struct.unpack(">iiii", buf[:16])
    sys.exit(0 if corr == 1 and nbrokers > 0 else 1)
except OSError:
    sys.exit(1)
PY
}

write_props() {
  mkdir -p "$RUN/data"
  cat >"$PROPS" <<PROPS
# Written by ops/services/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=localhost:$CPORT
listeners=PLAINTEXT://localhost:$PORT,CONTROLLER://localhost:$CPORT
advertised.listeners=PLAINTEXT://localhost:$PORT,CONTROLLER://localhost:$CPORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$RUN/data
num.partitions=4
auto.create.topics.enable=false
# an event store: never delete data by age or size
log.retention.ms=-1
log.retention.bytes=-1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# tests create many consumer groups; do not wait 3 s for more members on each
group.initial.rebalance.delay.ms=0
PROPS
}

start() {
  answers && return 0
  if [[ -s $PIDFILE ]] && kill -0 "$(<"$PIDFILE")" 2>/dev/null; then
    wait_for 60 answers && return 0
    die "pid $(<"$PIDFILE") is running but the broker does not answer on localhost:$PORT; see $RUN/logs and $OUT"
  fi
  fetch_jars
  write_props
  if [[ ! -f $RUN/data/meta.properties ]]; then
    local id
    # A cluster id as StorageTool's random-uuid makes it (16 random bytes, base64url, no padding),
    # without starting a JVM for it. Never one starting with "-", which reads as an option (Kafka's own
    # Uuid avoids it too).
    id=$(python3 -c 'import base64, os
while (id := base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")).startswith("-"): pass
print(id)')
    # Formatting runs for a second or two: the quick compiler alone and the serial collector do it on
    # about half the CPU (not for producer-perf, a benchmark's baseline).
    kjava storage -XX:TieredStopAtLevel=1 -XX:+UseSerialGC kafka.tools.StorageTool format --cluster-id="$id" -c "$PROPS" --standalone >/dev/null \
      || die "formatting $RUN/data failed; see $RUN/logs/storage.log"
  fi
  mkdir -p "$RUN/logs"
  rm -f "$PIDFILE"
  # setsid: survive the caller's session/Ctrl-C; the child writes its own pid, then execs java.
  # The JVM's own collector settings (Kafka's kafka-run-class.sh options, G1 aiming at 20 ms pauses
  # and marking from 35 % occupancy, were measured and not kept: see the README's Performance).
  # Collections are logged to $RUN/logs/gc.log. KAFKA_EXTRA_JVM_OPTS: options of the caller's (the
  # tests' own short-lived brokers start on the quick compiler alone: tests/integration/conftest.py).
  local extra=()
  read -ra extra <<<"${KAFKA_EXTRA_JVM_OPTS:-}"
  nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" \
    java -Xms512m -Xmx512m "${extra[@]}" -Xlog:gc:file="$RUN/logs/gc.log":time,uptime:filecount=5,filesize=20M \
    -cp "$LIBS/*" -Dlog4j2.configurationFile="$LOG4J" \
    -Dkafka.logs.dir="$RUN/logs" -Dkafka.log.name=server kafka.Kafka "$PROPS" \
    >>"$OUT" 2>&1 </dev/null &
  local deadline=$((SECONDS + 60))
  until answers; do
    # setsid forks when the caller has job control, so $! is only a fallback until the pid file exists
    local pid=$!; [[ -s $PIDFILE ]] && pid=$(<"$PIDFILE")
    if ((SECONDS >= deadline)) || ! kill -0 "$pid" 2>/dev/null; then
      # stack traces bury the cause: show the stdout tail, then the ERROR / "Caused by" lines
      { tail -n 10 "$OUT"; grep -hE ' (ERROR|FATAL) |^Caused by' "$RUN/logs/server.log" | tail -n 8; } >&2 2>/dev/null || true
      die "Kafka did not come up on localhost:$PORT (logs above, full logs in $RUN)"
    fi
    sleep 0.5
  done
}

case ${1:-} in
  start) start ;;
  stop) stop_pid "$PIDFILE" kafka ;;
  status) answers ;;
  classpath) fetch_jars; echo "$LIBS/*" ;;
  producer-perf) shift; fetch_jars; kjava tools org.apache.kafka.tools.ProducerPerformance "$@" ;;
  tool) shift; fetch_jars; kjava tools "$@" ;;
  *) die "usage: $0 start|stop|status|classpath|producer-perf ARGS...|tool CLASS ARGS..." ;;
esac
