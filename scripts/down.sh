#!/usr/bin/env bash
# `just down`: stops exactly the processes `just up` started (by the PIDs it recorded).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
run=${HELMQ_RUN_DIR:-$root/.helmq}
[ -f "$run/pids" ] || { echo "just down: nothing to stop (no $run/pids)"; exit 0; }

# Workers and producer first (they drain on SIGTERM), NATS last.
mapfile -t entries < <(tac "$run/pids")
for entry in "${entries[@]}"; do
  read -r name pid <<< "$entry"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "just down: $name ($pid) did not stop within 60s; killing it"
      kill -KILL "$pid"
    fi
    echo "stopped $name ($pid)"
  fi
done
rm -f "$run/pids"
