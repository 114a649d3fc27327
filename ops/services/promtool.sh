#!/usr/bin/env bash
# promtool, to check and unit-test the Prometheus rules in ops/prometheus/ and lint /metrics: taken
# from Debian's `prometheus` package without installing it (no daemon, no root): `apt-get download`
# then `dpkg -x` into the cache. Prints the path of the promtool binary.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CACHE=${OMNI_CACHE_DIR:-$HOME/.cache/omni}/prometheus
PROMTOOL=$CACHE/root/usr/bin/promtool

if [[ ! -x $PROMTOOL ]]; then
  command -v promtool >/dev/null && { command -v promtool; exit 0; }
  mkdir -p "$CACHE"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  log=$work/apt.log
  if ! (cd "$work" && apt-get -q download prometheus >"$log" 2>&1); then
    # An index that does not know the package yet: refresh it (as root, or with sudo) and try again.
    if [[ $(id -u) -eq 0 ]]; then apt-get -q update >>"$log" 2>&1; else sudo apt-get -q update >>"$log" 2>&1; fi
    (cd "$work" && apt-get -q download prometheus >>"$log" 2>&1) || { tail -n 20 "$log" >&2; die "apt-get download prometheus failed"; }
  fi
  rm -rf "$CACHE/root"
  dpkg -x "$work"/prometheus_*.deb "$CACHE/root"
  [[ -x $PROMTOOL ]] || die "no usr/bin/promtool in the prometheus package"
fi
echo "$PROMTOOL"
