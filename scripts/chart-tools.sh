# Sourced by the chart scripts: sets HELM to a helm that runs Helm's own code (v4.2.3) and
# HELM_PY to the Python holding helm-python-sdk (Helm's lint action). No real helm binary is
# installable from the registries CI can reach, so this is the test cluster's helm
# (../shared/rig, set up in .tools/rig when missing; it needs no running cluster for template and
# lint). HELM_BIN overrides the helm used for `template`.
root=${root:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
rig=${HELMQ_RIG:-$root/.tools/rig}
if ! [ -x "$rig/helm" ] || ! [ -x "$rig/venv/bin/python" ]; then
  src=${HELMQ_RIG_SRC:-$root/../shared/rig}
  [ -x "$src/setup.sh" ] || { echo "no helm: neither $rig/helm nor $src/setup.sh exists" >&2; exit 1; }
  echo "setting up the rig's helm in $rig (from $src)"
  "$src/setup.sh" "$rig" >/dev/null
fi
HELM=${HELM_BIN:-$rig/helm}
HELM_PY=$rig/venv/bin/python
chart=$root/deploy/chart/helmq
