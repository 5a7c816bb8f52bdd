#!/usr/bin/env bash
# Installs promtool (Prometheus' rule checker) into .tools/promtool/ from Debian's `prometheus`
# package: `apt-get download` + `dpkg-deb -x`, nothing installed system-wide, no service started.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/.tools/promtool
[ -x "$dir/promtool" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) \
  || { apt-get update -qq >/dev/null 2>&1 && (cd "$tmp" && apt-get download prometheus >/dev/null); } \
  || { echo "cannot download Debian's prometheus package (apt-get download prometheus)" >&2; exit 1; }
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
mkdir -p "$dir"
cp "$tmp/x/usr/bin/promtool" "$dir/promtool"
"$dir/promtool" --version | head -1
