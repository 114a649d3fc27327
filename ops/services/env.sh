#!/usr/bin/env bash
# Print export lines for the local services; values already in the environment win.
# Usage: eval "$(bash ops/services/env.sh)"
set -euo pipefail
printf 'export KAFKA_BOOTSTRAP_SERVERS=%q\n' "${KAFKA_BOOTSTRAP_SERVERS:-localhost:${KAFKA_PORT:-19092}}"
printf 'export DATABASE_URL=%q\n' "${DATABASE_URL:-postgresql://omni:omni@127.0.0.1:${PG_PORT:-15432}/omni}"
printf 'export REDIS_URL=%q\n' "${REDIS_URL:-redis://127.0.0.1:${REDIS_PORT:-16379}/0}"
printf 'export STRIPE_API_BASE=%q\n' "${STRIPE_API_BASE:-http://127.0.0.1:${STRIPE_MOCK_PORT:-12111}}"
