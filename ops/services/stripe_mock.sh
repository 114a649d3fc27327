#!/usr/bin/env bash
# stripe-mock (Stripe's own API mock: validates each request against Stripe's OpenAPI spec, keeps no
# state) for tests: http://127.0.0.1:${STRIPE_MOCK_PORT:-12111}. Installed with `go install` when missing.
# Usage: stripe_mock.sh start|stop|status
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=${STRIPE_MOCK_PORT:-12111}
RUN=$RUN_BASE/stripe-mock
PIDFILE=$RUN/stripe-mock.pid
OUT=$RUN/stripe-mock.out

# Readiness = an authenticated API request answers 200 (stripe-mock serves its fixtures).
answers() {
  python3 - "$PORT" <<'PY'
import sys, urllib.request
request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/customers?limit=1", headers={"Authorization": "Bearer sk_test_omni"})
try:
    sys.exit(0 if urllib.request.urlopen(request, timeout=2).status == 200 else 1)
except OSError:
    sys.exit(1)
PY
}

# The binary: on PATH, in GOBIN or GOPATH/bin, or installed there now.
binary() {
  local found gobin
  found=$(command -v stripe-mock || true)
  [[ -n $found ]] && { echo "$found"; return 0; }
  if ! command -v go >/dev/null; then
    apt_install golang-go
  fi
  gobin=$(go env GOBIN); gobin=${gobin:-$(go env GOPATH)/bin}
  if [[ ! -x $gobin/stripe-mock ]]; then
    local log; log=$(mktemp)
    go install github.com/stripe/stripe-mock@latest >"$log" 2>&1 \
      || { tail -n 20 "$log" >&2; rm -f "$log"; die "go install github.com/stripe/stripe-mock@latest failed"; }
    rm -f "$log"
  fi
  echo "$gobin/stripe-mock"
}

start() {
  answers && return 0
  local bin; bin=$(binary)
  mkdir -p "$RUN"
  rm -f "$PIDFILE"
  # setsid: survive the caller's session/Ctrl-C; the child writes its own pid, then execs stripe-mock.
  # Given an HTTP address alone it also takes HTTPS on :12112; that goes to any free port instead.
  nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" \
    "$bin" -http-addr "127.0.0.1:$PORT" -https-addr "127.0.0.1:" >>"$OUT" 2>&1 </dev/null &
  wait_for 30 answers || { tail -n 20 "$OUT" >&2; die "stripe-mock does not answer on 127.0.0.1:$PORT (log: $OUT)"; }
}

case ${1:-} in
  start) start ;;
  stop) stop_pid "$PIDFILE" stripe-mock ;;
  status) answers ;;
  *) die "usage: $0 start|stop|status" ;;
esac
