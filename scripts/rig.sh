#!/usr/bin/env bash
# The test cluster of ../shared/rig (a real kube-apiserver + kube-controller-manager 1.32, etcd,
# a pod-readiness simulator and Helm 4's own code as `helm`, all on 127.0.0.1; see its README),
# set up in .tools/rig (an ignored folder).
#
#   scripts/rig.sh up     set it up and start it with an empty cluster (`just rig-up`); then
#                         `source .tools/rig/env.sh` for KUBECONFIG and the rig's helm
#   scripts/rig.sh down   stop it (`just rig-down`)
#   scripts/rig.sh e2e    what CI runs (`just e2e-rig`): up, the end-to-end suite (in both worker
#                         RBAC profiles, HELMQ_E2E_PROFILE single and tenants), a scale run of
#                         HELMQ_E2E_SCALE Components (default 200, release build, against bare
#                         helm), and down on every exit path
#   scripts/rig.sh bench [N...]
#                         `just bench-rig`: up, the scale run against bare helm for each N
#                         (default 200 1000), release builds, then down; figures in
#                         target/bench/rig-scale-N.json
#
# Its ports are fixed (the API server is https://127.0.0.1:16443), so one rig runs at a time:
# when this checkout's rig is already running it is used as it is (not wiped) and left running;
# when another process holds the port, this stops with a message. HELMQ_RIG naming another
# folder uses the rig running there the same way (e.g. one shared by several checkouts).
# HELMQ_RIG_SRC names the rig's source folder (default ../shared/rig).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
src=${HELMQ_RIG_SRC:-$root/../shared/rig}
own=$root/.tools/rig
export HELMQ_RIG=${HELMQ_RIG:-$own}

say() { printf 'rig: %s\n' "$*"; }

# 0: the rig in $HELMQ_RIG answers; 1: nothing listens on the API server's port; 2: another does.
state() {
  if [ -f "$HELMQ_RIG/run/kube-apiserver.pid" ] && kill -0 "$(cat "$HELMQ_RIG/run/kube-apiserver.pid")" 2>/dev/null \
    && curl -fsS --max-time 3 --cacert "$HELMQ_RIG/pki/ca.crt" -H "Authorization: Bearer rig-admin-token" \
         https://127.0.0.1:16443/readyz >/dev/null 2>&1; then
    return 0
  fi
  if (exec 3<>/dev/tcp/127.0.0.1/16443) 2>/dev/null; then
    return 2
  fi
  return 1
}

# Sets the rig up and starts it unless it runs; STARTED=1 when this call started it.
up() {
  STARTED=0
  local s=0
  if [ "$HELMQ_RIG" != "$own" ]; then
    state || s=$?
    [ "$s" = 0 ] || { say "no rig answers from HELMQ_RIG=$HELMQ_RIG"; exit 1; }
    say "using the rig running in $HELMQ_RIG as it is (not wiped, left running)"
    return
  fi
  [ -x "$src/setup.sh" ] || { say "no test cluster at $src (../shared/rig)"; exit 1; }
  "$src/setup.sh" "$HELMQ_RIG"
  state || s=$?
  case $s in
    0) say "this checkout's rig is already running: using it as it is (not wiped, left running)" ;;
    2) say "127.0.0.1:16443 is taken by another process (a rig of another checkout?): stop it first"; exit 1 ;;
    *) "$HELMQ_RIG/down.sh" >/dev/null  # clears stale pid files of a half-stopped rig
       "$HELMQ_RIG/up.sh" --fresh
       STARTED=1 ;;
  esac
}

# Up (stopped again on exit when this call started it), and the rig's KUBECONFIG and helm.
enter() {
  up
  if [ "$STARTED" = 1 ]; then
    trap 'say "stopping the rig"; "$HELMQ_RIG/down.sh"' EXIT
    trap 'exit 130' INT TERM
  fi
  # shellcheck source=/dev/null
  source "$HELMQ_RIG/env.sh"
  export HELM_BIN=$HELMQ_RIG/helm HELMQ_E2E=1
}

# The scale run of $1 Components against bare helm, with release builds of every binary.
scale() {
  echo "== scale run on the rig: $1 Components, release build, against bare helm"
  (cd "$root" && cargo build --release --bins -q \
    && HELMQ_E2E_SCALE=$1 HELMQ_E2E_SCALE_BARE=1 cargo nextest run --release -p helmq-tests --test e2e \
         --run-ignored all --no-capture scale::)
}

case "${1:-}" in
  up)
    up
    say "up; now: source $HELMQ_RIG/env.sh   (KUBECONFIG, the rig's helm first on PATH)"
    ;;
  down)
    "$HELMQ_RIG/down.sh"
    ;;
  e2e)
    count=${HELMQ_E2E_SCALE:-200}
    enter
    server=$(curl -fsS --cacert "$HELMQ_RIG/pki/ca.crt" -H "Authorization: Bearer rig-admin-token" \
      https://127.0.0.1:16443/version | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p')
    echo "== end-to-end suite on the rig (Kubernetes $server, helm $(helm version --short))"
    (cd "$root" && env -u HELMQ_E2E_SCALE just e2e)
    # The same cases with the workers in the multi-tenant RBAC profile; those that set up
    # their own profile (least privilege, tenancy, the chart) ran above.
    echo "== end-to-end suite on the rig, workers in the multi-tenant profile"
    (cd "$root" && env -u HELMQ_E2E_SCALE HELMQ_E2E_PROFILE=tenants just e2e -- --skip rbac:: --skip tenancy:: --skip chart::)
    scale "$count"
    ;;
  bench)
    shift
    sizes=("$@")
    [ "${#sizes[@]}" -gt 0 ] || sizes=(200 1000)
    enter
    for n in "${sizes[@]}"; do scale "$n"; done
    ;;
  *)
    echo "usage: scripts/rig.sh up|down|e2e|bench [N...]" >&2
    exit 2
    ;;
esac
