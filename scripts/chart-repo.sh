#!/usr/bin/env bash
# `just chart-repo`: serves the test charts (tests/fixtures/charts/*, each at the version in its
# Chart.yaml) as a Helm chart repository on http://127.0.0.1:$CHART_REPO_PORT (default 8879), for
# trying helmq without charts from the Internet (deploy/examples/webapp.yaml uses it). Runs next
# to `just up`'s processes and is recorded with them, so `just down` stops it too; start `just up`
# first. Environment: HELM_BIN (default helm), CHART_REPO_PORT, HELMQ_RUN_DIR (default .helmq).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
run=${HELMQ_RUN_DIR:-$root/.helmq}
port=${CHART_REPO_PORT:-8879}
helm_bin=${HELM_BIN:-helm}

fail() { printf 'just chart-repo: %s\n' "$*" >&2; exit 1; }

running() { kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
up=0
if [ -f "$run/pids" ]; then
  while read -r name pid; do
    running "$pid" || continue
    [ "$name" = chart-repo ] && fail "already serving (pid $pid): http://127.0.0.1:$port"
    up=1
  done < "$run/pids"
fi
[ "$up" = 1 ] || fail "helmq is not running here: start it with \`just up\` first (\`just down\` then stops both)"
command -v "$helm_bin" >/dev/null || fail "helm not found (HELM_BIN=$helm_bin)"
(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && fail "127.0.0.1:$port is already in use (set CHART_REPO_PORT)"

dir=$run/charts
rm -rf "$dir"
mkdir -p "$dir" "$run/logs"
for chart in "$root"/tests/fixtures/charts/*/; do
  "$helm_bin" package "$chart" -d "$dir" >/dev/null
done
"$helm_bin" repo index "$dir" --url "http://127.0.0.1:$port"
python3 -m http.server --bind 127.0.0.1 --directory "$dir" "$port" \
  </dev/null > "$run/logs/chart-repo.log" 2>&1 &
echo "chart-repo $!" >> "$run/pids"
for _ in $(seq 1 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
echo "chart repository at http://127.0.0.1:$port: $(cd "$dir" && ls -- *.tgz | tr '\n' ' ')(log $run/logs/chart-repo.log; \`just down\` stops it)"
