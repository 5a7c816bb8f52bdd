#!/usr/bin/env bash
# Renders the manifests for `kubectl apply` from the Helm chart, so that the chart is their one
# source: deploy/kubernetes/{producer,worker,worker-scaledobject,setup-job}.yaml and
# deploy/rbac/{producer,worker}.yaml, with the values of deploy/chart/render-values.yaml
# (release helmq, namespace helmq-system), and deploy/rbac/worker-tenants.yaml, the workers' RBAC
# of the tenants profile (the same values with rbac.profile=tenants and
# worker.defaultServiceAccount=helmq-deployer). deploy/kubernetes/namespace.yaml and
# nats-credentials.yaml are not in the chart (it expects both to exist) and stay hand-written.
#
#   scripts/render-deploy.sh           rewrite them
#   scripts/render-deploy.sh --check   fail when one differs from the chart (`just lint`)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/chart-tools.sh"
check=0
[ "${1:-}" = --check ] && check=1

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
header=$out/.header
cat >"$header" <<'HEADER'
# Rendered from the Helm chart deploy/chart/helmq by scripts/render-deploy.sh with
# deploy/chart/render-values.yaml. Do not edit: change the chart (or the values) and rerun it.
HEADER
"$HELM" template helmq "$chart" --namespace helmq-system -f "$root/deploy/chart/render-values.yaml" \
  | python3 "$root/scripts/split-manifests.py" "$out/split" "$header" >/dev/null
# The tenants profile changes only the workers' RBAC and one variable of their Deployment, so
# only the RBAC gets a file of its own: with it, set HELMQ_DEFAULT_SERVICE_ACCOUNT on the worker.
tenants_header=$out/.tenants-header
cat >"$tenants_header" <<'HEADER'
# Rendered from the Helm chart deploy/chart/helmq by scripts/render-deploy.sh with
# deploy/chart/render-values.yaml, rbac.profile=tenants and worker.defaultServiceAccount=
# helmq-deployer. Do not edit: change the chart (or the values) and rerun it.
# The workers' RBAC of the multi-tenant profile, instead of worker.yaml: apply it with
# deploy/kubernetes/worker.yaml plus the env variable HELMQ_DEFAULT_SERVICE_ACCOUNT=helmq-deployer
# on the worker container, and onboard each tenant as deploy/examples/tenant.yaml does.
HEADER
"$HELM" template helmq "$chart" --namespace helmq-system -f "$root/deploy/chart/render-values.yaml" \
  --set rbac.profile=tenants --set worker.defaultServiceAccount=helmq-deployer -s templates/rbac-worker.yaml \
  | python3 "$root/scripts/split-manifests.py" "$out/tenants" "$tenants_header" >/dev/null

# Rendered file (under $out) -> file in deploy/.
declare -A target=(
  [split/producer.yaml]=deploy/kubernetes/producer.yaml
  [split/worker.yaml]=deploy/kubernetes/worker.yaml
  [split/worker-scaledobject.yaml]=deploy/kubernetes/worker-scaledobject.yaml
  [split/setup-job.yaml]=deploy/kubernetes/setup-job.yaml
  [split/rbac-producer.yaml]=deploy/rbac/producer.yaml
  [split/rbac-worker.yaml]=deploy/rbac/worker.yaml
  [tenants/rbac-worker.yaml]=deploy/rbac/worker-tenants.yaml
)
stale=0
for rendered in "$out"/split/*.yaml "$out"/tenants/*.yaml; do
  name=${rendered#"$out"/}
  dest=${target[$name]:-}
  [ -n "$dest" ] || { echo "render-deploy: the chart renders $name, which has no file in deploy/" >&2; exit 1; }
  if [ $check = 1 ]; then
    if ! cmp -s "$rendered" "$root/$dest"; then
      echo "stale: $dest differs from the chart (run scripts/render-deploy.sh)" >&2
      diff -u "$root/$dest" "$rendered" | head -20 >&2 || true
      stale=1
    fi
  else
    cp "$rendered" "$root/$dest"
    echo "wrote $dest"
  fi
done
for name in "${!target[@]}"; do
  [ -f "$out/$name" ] || { echo "render-deploy: the chart rendered no $name" >&2; exit 1; }
done
[ $stale = 0 ] || exit 1
[ $check = 1 ] && echo "deploy/kubernetes and deploy/rbac match the chart"
exit 0
