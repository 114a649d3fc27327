#!/usr/bin/env bash
# Private Redis for dev and tests: 127.0.0.1:${REDIS_PORT:-16379}, AOF on, state in $OMNI_RUN_DIR/redis.
# The AOF is its only persistence: RDB snapshots on top of it (Redis's default `save` points) forked
# the server about once a minute under a benchmark's load, a child that took a core for ~0.3 s.
# Usage: redis.sh start|stop|status
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=${REDIS_PORT:-16379}
RUN=$RUN_BASE/redis

answers() { command -v redis-cli >/dev/null && [[ $(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null) == PONG ]]; }

start() {
  answers && return 0
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p "$RUN"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$PORT" --dir "$RUN" \
    --pidfile "$RUN/redis.pid" --logfile "$RUN/redis.log" --appendonly yes --save "" >/dev/null \
    || die "redis-server failed to launch (log: $RUN/redis.log)"
  wait_for 20 answers || { tail -n 20 "$RUN/redis.log" >&2; die "Redis does not answer PING on 127.0.0.1:$PORT"; }
}

stop() {
  # NOSAVE skips the RDB snapshot; the AOF (appendonly) is still flushed on shutdown.
  if answers; then redis-cli -h 127.0.0.1 -p "$PORT" shutdown nosave >/dev/null 2>&1 || true; fi
  stop_pid "$RUN/redis.pid" redis
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) answers ;;
  *) die "usage: $0 start|stop|status" ;;
esac
