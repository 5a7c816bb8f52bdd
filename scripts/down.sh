#!/usr/bin/env bash
# `just down`: stops exactly the processes `just up` started (by the PIDs it recorded).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
run=${HELMQ_RUN_DIR:-$root/.helmq}
[ -f "$run/pids" ] || { echo "just down: nothing to stop (no $run/pids)"; exit 0; }

# Running and not a zombie (an exited child nobody has reaped yet counts as stopped).
running() {
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || echo "?")
  [ "$state" != Z ]
}

# Workers and producer first (they drain on SIGTERM), NATS last.
mapfile -t entries < <(tac "$run/pids")
for entry in "${entries[@]}"; do
  read -r name pid <<< "$entry"
  if running "$pid"; then
    kill -TERM "$pid"
    for _ in $(seq 1 300); do running "$pid" || break; sleep 0.2; done
    if running "$pid"; then
      echo "just down: $name ($pid) did not stop within 60s; killing it"
      kill -KILL "$pid"
    fi
    echo "stopped $name ($pid)"
  fi
done
rm -f "$run/pids"
