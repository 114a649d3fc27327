#!/usr/bin/env bash
# Private PostgreSQL cluster for dev and tests: 127.0.0.1:${PG_PORT:-15432}, role/db omni, trust auth.
# Usage: postgres.sh start|stop|restart|status
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=${PG_PORT:-15432}

# cd /: the postgres tools complain when they cannot access the caller's working directory
as_pg() { (cd / && runuser -u postgres -- "$@"); }

pg_bin() {
  local v
  v=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n 1)
  [[ -n $v && -x /usr/lib/postgresql/$v/bin/pg_ctl ]] && echo "/usr/lib/postgresql/$v/bin"
}

# PostgreSQL refuses to run as root, so the cluster belongs to the postgres OS user, which must be
# able to traverse every parent of its data dir. A repo under e.g. /root is not traversable: then the
# cluster lives under /tmp, in a folder named after the run dir so that each checkout gets its own.
base_dir() {
  local dir=$RUN_BASE/postgres
  mkdir -p "$dir"
  if as_pg test -x "$dir" 2>/dev/null; then
    echo "$dir"
  else
    echo "/tmp/omni-pg-$(echo -n "$RUN_BASE" | sha1sum | cut -c1-12)"
  fi
}

BIN=$(pg_bin || true)
if [[ -z $BIN && ${1:-} == start ]]; then
  apt_install postgresql
  BIN=$(pg_bin) || die "PostgreSQL installed but no pg_ctl under /usr/lib/postgresql/*/bin"
fi
BASE=$(base_dir)
DATA=$BASE/data
LOG=$BASE/postgres.log

running() { [[ -n $BIN && -f $DATA/PG_VERSION ]] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

start() {
  mkdir -p "$BASE" && chown postgres: "$BASE" && chmod 755 "$BASE"
  if [[ ! -f $DATA/PG_VERSION ]]; then
    rm -rf "$DATA"
    as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-locale >"$BASE/initdb.log" 2>&1 \
      || { tail -n 20 "$BASE/initdb.log" >&2; die "initdb failed"; }
    echo "include 'omni.conf'" >>"$DATA/postgresql.conf"
  fi
  # rewritten on every start so a different PG_PORT takes effect
  as_pg tee "$DATA/omni.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$BASE'
max_connections = 200
# tests check durability: never trade it for speed here
fsync = on
synchronous_commit = on
full_page_writes = on
CONF
  if ! running; then
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null \
      || { tail -n 20 "$LOG" >&2; die "PostgreSQL did not start on 127.0.0.1:$PORT (log: $LOG)"; }
  fi
  wait_for 30 "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" || die "pg_isready fails on 127.0.0.1:$PORT (log: $LOG)"
  as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$BASE" -p "$PORT" -d postgres >/dev/null <<'SQL'
SELECT 'CREATE ROLE omni LOGIN SUPERUSER PASSWORD ''omni''' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'omni')\gexec
SELECT 'CREATE DATABASE omni OWNER omni' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'omni')\gexec
SQL
}

stop() {
  running || return 0
  as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null || die "pg_ctl stop failed (log: $LOG)"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  restart) stop && start ;;
  status) [[ -n $BIN ]] && "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" ;;
  *) die "usage: $0 start|stop|restart|status" ;;
esac
