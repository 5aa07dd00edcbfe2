#!/usr/bin/env bash
# The tools every other component, scripts/test.sh and scripts/demo.sh use: no service.
#
#   tools.sh up | down | status
#
# `up` installs the pinned Debian packages below when they are missing (and fails when one is
# at another upstream version), then checks the toolchains this kind of machine provides
# (Rust with rustfmt and clippy, Go), naming what is missing; the Java that OpenSearch 3 needs
# (21+, the machine's Temurin 25) is looked up by the opensearch component.
# up.sh runs it first, before the services start in parallel, since they use curl, openssl,
# Python and the C linker. `down` does nothing: installed packages stay.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

# Upstream versions (Debian 12), checked on every `up`:
#  - build-essential (gcc, libc6-dev, make): the linker cargo calls, and ring's C code;
#  - ca-certificates (unpinned: it is a list of trusted roots, not a tool), curl, openssl:
#    registry downloads, readiness probes, the testbed's PKI;
#  - procps, iproute2, util-linux (flock, setsid): process and port handling in lib.sh;
#  - shellcheck: the lint step of scripts/test.sh;
#  - python3, python3-venv: the venvs of osmem-server and noida-db.
PACKAGES=(
  build-essential=12.9
  ca-certificates
  curl=7.88
  openssl=3.0
  procps=4.0
  iproute2=6.1
  util-linux=2.38
  shellcheck=0.9.0
  "python3=$PYTHON_DEBIAN_VERSION"
  "python3-venv=$PYTHON_DEBIAN_VERSION"
)

# The toolchains are the machine's: they come with it and are not installed here.
check_toolchains() {
  local missing=()
  command -v cargo >/dev/null 2>&1 || missing+=("cargo (Rust >= $(rust_version))")
  cargo fmt --version >/dev/null 2>&1 || missing+=("rustfmt (rustup component add rustfmt)")
  cargo clippy --version >/dev/null 2>&1 || missing+=("clippy (rustup component add clippy)")
  command -v go >/dev/null 2>&1 || [[ -x /usr/local/go/bin/go ]] ||
    missing+=("go (>= 1.26, for kube-apiserver, etcd and helm)")
  if ((${#missing[@]})); then
    die "this machine lacks toolchains the project builds with: ${missing[*]}"
  fi
}

rust_version() {
  sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml" | head -n 1
}

cmd_up() {
  apt_ensure "${PACKAGES[@]}"
  check_toolchains
  log "tools: $(shellcheck --version | sed -n 's/^version: /shellcheck /p'), $(cargo --version), $( (command -v go >/dev/null && go version) || /usr/local/go/bin/go version)"
}

cmd_status() {
  local missing
  mapfile -t missing < <(_apt_missing "${PACKAGES[@]}")
  if ((${#missing[@]})); then
    echo "tools: missing ${missing[*]}"
    return 3
  fi
  echo "tools: installed (${PACKAGES[*]})"
}

case ${1:-} in
up) cmd_up ;;
down) log "tools: nothing to stop (installed packages stay)" ;;
status) cmd_status ;;
*)
  echo "usage: $0 up|down|status" >&2
  exit 2
  ;;
esac
