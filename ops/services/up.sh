#!/usr/bin/env bash
# Start the local services Kafka mode needs, except those the environment already points elsewhere:
# Kafka unless KAFKA_BOOTSTRAP_SERVERS is set, PostgreSQL unless DATABASE_URL, Redis unless REDIS_URL,
# stripe-mock (the Stripe sync's tests) unless STRIPE_API_BASE.
# Then: eval "$(bash ops/services/env.sh)"
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
here=$(dirname "${BASH_SOURCE[0]}")

# down.sh stops exactly what is recorded here (by then env.sh may have set the URLs).
started=$RUN_BASE/services.started
[[ -n ${KAFKA_BOOTSTRAP_SERVERS:-} ]] || { bash "$here/kafka.sh" start; echo kafka >>"$started"; }
[[ -n ${DATABASE_URL:-} ]] || { bash "$here/postgres.sh" start; echo postgres >>"$started"; }
[[ -n ${REDIS_URL:-} ]] || { bash "$here/redis.sh" start; echo redis >>"$started"; }
[[ -n ${STRIPE_API_BASE:-} ]] || { bash "$here/stripe_mock.sh" start; echo stripe_mock >>"$started"; }
if [[ -f $started ]]; then sort -u -o "$started" "$started"; fi
