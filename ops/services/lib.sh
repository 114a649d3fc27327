# shellcheck shell=bash
# Shared helpers, sourced by the ops/services/*.sh scripts.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUN_BASE=${OMNI_RUN_DIR:-$ROOT/.run}
mkdir -p "$RUN_BASE" && RUN_BASE=$(cd "$RUN_BASE" && pwd)

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

# Quiet apt install. The index is refreshed only if the first try fails (update is slow and usually
# unnecessary); the lock timeout lets us wait for another apt run instead of failing on the dpkg lock.
apt_install() {
  local log; log=$(mktemp)
  local apt=(apt-get -q -y -o DPkg::Lock::Timeout=300)
  export DEBIAN_FRONTEND=noninteractive
  if ! "${apt[@]}" install "$@" >"$log" 2>&1; then
    if ! { "${apt[@]}" update && "${apt[@]}" install "$@"; } >>"$log" 2>&1; then
      tail -n 20 "$log" >&2; rm -f "$log"; die "apt-get install $* failed"
    fi
  fi
  rm -f "$log"
}

# wait_for SECONDS CMD...: poll CMD every 0.5 s until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# stop_pid PIDFILE NAME: TERM, then KILL after 15 s (a broker flushing its logs can take a while).
stop_pid() {
  local pid
  [[ -s $1 ]] && pid=$(<"$1") || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    if ! wait_for 15 bash -c "! kill -0 $pid 2>/dev/null"; then
      echo "$2: did not stop after 15 s, killing pid $pid" >&2
      kill -KILL "$pid" 2>/dev/null || true
      wait_for 5 bash -c "! kill -0 $pid 2>/dev/null" || die "$2: pid $pid survived SIGKILL"
    fi
  fi
  rm -f "$1"
}
