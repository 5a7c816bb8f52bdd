#!/usr/bin/env bash
# Runs one fault scenario N times in a row (not in CI) and prints each run's summary line and
# the count of runs that failed. Usage: scripts/faults-repeat.sh N FILTER (e.g. 20 nats_restart).
# Each run's full output goes to target/faults/repeat/<filter>-<i>.log.
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:?usage: faults-repeat.sh N FILTER}"
filter="${2:?usage: faults-repeat.sh N FILTER}"
server="${HELMQ_NATS_SERVER:-$PWD/.tools/nats-newest/nats-server}"
out=target/faults/repeat
mkdir -p "$out"
cargo build -q --bins
failed=0
for i in $(seq 1 "$runs"); do
  log="$out/$filter-$i.log"
  if HELMQ_NATS_SERVER="$server" cargo nextest run -p helmq-tests --test faults --run-ignored all \
      --no-capture "$filter" >"$log" 2>&1; then
    result=passed
  else
    result=FAILED
    failed=$((failed + 1))
  fi
  echo "run $i/$runs $result: $(grep -o 'faults\[[0-9]*\]: .*' "$log" | tail -1)"
done
echo "faults-repeat: $filter: $failed of $runs runs failed"
[ "$failed" -eq 0 ]
