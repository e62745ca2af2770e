#!/usr/bin/env bash
# Run a command with the local stack up; stop the stack afterwards only if this script started it.
set -uo pipefail
KEEL=.venv/bin/keel
started=0
if ! "$KEEL" stack status >/dev/null 2>&1; then
  started=1
fi
if ! "$KEEL" stack up --with-toxiproxy; then
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
