#!/usr/bin/env bash
# Stop the services up.sh started (recorded in $OMNI_RUN_DIR/services.started).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
here=$(dirname "${BASH_SOURCE[0]}")

started=$RUN_BASE/services.started
[[ -f $started ]] || exit 0
while read -r svc; do
  bash "$here/$svc.sh" stop
done <"$started"
rm -f "$started"
