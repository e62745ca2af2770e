#!/usr/bin/env bash
# Run a command with the local stack up; stop the stack afterwards only if this script started it.
#
#   scripts/with-stack.sh CMD…             the plaintext stack (.keel/, the default ports)
#   scripts/with-stack.sh --secure CMD…    the secure stack (`keel stack up --secure`: SASL_SSL/SCRAM + ACLs,
#                                          PostgreSQL passwords) in its own runtime folder and on its own
#                                          ports, so it never meets a plaintext stack already running.
#                                          KEEL_TEST_SECURE=1 tells the tests (tests/support/services.py).
# Secure-mode folder and ports (override through the environment):
#   KEEL_SECURE_HOME (.keel-secure)  KEEL_SECURE_KAFKA_PORT (9792, takes 9792-9795)
#   KEEL_SECURE_REGISTRY_PORT (8781)  KEEL_SECURE_REGISTRY_MANAGEMENT_PORT (9701)
#   KEEL_SECURE_POSTGRES_PORT (56032)  KEEL_SECURE_TOXIPROXY_PORT (9074)
set -uo pipefail
KEEL=.venv/bin/keel
up_args=(--with-toxiproxy)
if [ "${1:-}" = "--secure" ]; then
  shift
  export KEEL_HOME="${KEEL_SECURE_HOME:-$PWD/.keel-secure}"
  export KEEL_KAFKA_PORT="${KEEL_SECURE_KAFKA_PORT:-9792}"
  export KEEL_REGISTRY_PORT="${KEEL_SECURE_REGISTRY_PORT:-8781}"
  export KEEL_REGISTRY_MANAGEMENT_PORT="${KEEL_SECURE_REGISTRY_MANAGEMENT_PORT:-9701}"
  export KEEL_POSTGRES_PORT="${KEEL_SECURE_POSTGRES_PORT:-56032}"
  export KEEL_TOXIPROXY_PORT="${KEEL_SECURE_TOXIPROXY_PORT:-9074}"
  export KEEL_TEST_SECURE=1
  # Endpoints in the environment would bypass the stack in tests/support/services.py: never inherit them.
  unset KEEL_KAFKA_BOOTSTRAP KEEL_REGISTRY_URL KEEL_DATABASE_URL
  up_args+=(--secure)
fi
started=0
if ! "$KEEL" stack status >/dev/null 2>&1; then
  started=1
fi
if ! "$KEEL" stack up "${up_args[@]}"; then
  echo "the local stack did not start; see the service log named above" >&2
  [ "$started" = 1 ] && "$KEEL" stack down
  exit 1
fi
"$@"
rc=$?
if [ "$started" = 1 ]; then
  "$KEEL" stack down || true
fi
exit $rc
