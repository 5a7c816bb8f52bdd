#!/usr/bin/env bash
# Checks the Helm chart (deploy/chart/helmq) the way `helm lint` + `helm template` would in CI:
#   1. Helm's own lint action (v4.2.3 through helm-python-sdk; strict) with each values file of
#      deploy/chart/helmq/ci/ and the chart's defaults plus those, and a typo'd key and a wrong
#      type refused by values.schema.json;
#   2. `helm template` of each profile, every built-in kind validated against the Kubernetes 1.32
#      OpenAPI schemas (kubernetes-validate --strict; it has no schemas for the KEDA ScaledObject,
#      which tests/tests/deploy.rs checks, nor for the ServiceMonitor), and a typo'd value refused
#      by `helm template` too;
#   3. the default values without allowlists, the namespaced profile without watched namespaces
#      and the tenants profile without a ServiceAccount to impersonate refused with the message
#      naming the missing value;
#   4. deploy/kubernetes and deploy/rbac equal to the chart's rendering (scripts/render-deploy.sh).
# The helm is the test cluster's (scripts/chart-tools.sh says why): no real helm binary is
# installable from the registries CI reaches.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/chart-tools.sh"
venv=$root/.tools/venv
[ -x "$venv/bin/kubernetes-validate" ] || "$root/scripts/validate-deploy.sh" >/dev/null

mapfile -t profiles < <(ls "$chart"/ci/*-values.yaml)
echo "== helm lint (Helm $("$HELM" version --short), lint action through helm-python-sdk)"
"$HELM_PY" "$root/scripts/helm-lint.py" "$chart" "${profiles[@]}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "== helm template + kubernetes-validate --strict -k 1.32.0"
for values in "${profiles[@]}"; do
  name=$(basename "$values" -values.yaml)
  "$HELM" template helmq "$chart" --namespace helmq-system -f "$values" >"$tmp/$name.yaml"
  python3 "$root/scripts/split-manifests.py" "$tmp/$name" >/dev/null <"$tmp/$name.yaml"
  mapfile -t builtin < <(ls "$tmp/$name"/*.yaml | grep -v -e worker-scaledobject.yaml -e servicemonitor.yaml)
  "$venv/bin/kubernetes-validate" --strict --quiet -k 1.32.0 "${builtin[@]}"
  echo "helm template -f ci/$(basename "$values"): $(grep -c '^kind:' "$tmp/$name.yaml") objects, valid"
done

expect_failure() { # WHAT PATTERN ARGS...
  local what=$1 pattern=$2; shift 2
  if "$HELM" template helmq "$chart" --namespace helmq-system "$@" >"$tmp/out" 2>&1; then
    echo "helm template accepted $what" >&2; exit 1
  fi
  grep -q -- "$pattern" "$tmp/out" || { echo "helm template refused $what, but not with '$pattern':" >&2; cat "$tmp/out" >&2; exit 1; }
  echo "helm template refuses $what"
}
expect_failure "a typo'd key (producer.replica)" "additional properties 'replica' not allowed" \
  -f "${profiles[0]}" --set producer.replica=3
expect_failure "an unknown RBAC profile" "profile" -f "${profiles[0]}" --set rbac.profile=everything
expect_failure "workers without allowlists" "worker.allowedSources is empty"
expect_failure "the namespaced profile without watched namespaces" "needs producer.watchNamespaces" \
  -f "${profiles[0]}" --set rbac.profile=namespaced
expect_failure "the tenants profile without a ServiceAccount to impersonate" \
  "rbac.profile=tenants needs worker.defaultServiceAccount" -f "${profiles[0]}" --set rbac.profile=tenants

echo "== the loose manifests"
"$root/scripts/render-deploy.sh" --check
echo "the chart is valid"
