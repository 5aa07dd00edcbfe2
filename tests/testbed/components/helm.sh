#!/usr/bin/env bash
# The Helm CLI for the chart tests: a binary, no service.
#
#   helm.sh up | down | status
#
# Built from its Go module (pinned in ../helm/go.mod and go.sum) into
# $MIGRATE_CACHE/bin/helm-VERSION, once per version: a cold build (empty Go build cache, modules
# already downloaded, which takes ~10 s more) took 148-176 s on two busy cores; later `up`s
# return at once. `up` writes HELM_BIN to env.d/helm.env; `down` only removes that file (the
# cached binary stays). Go >= 1.26 is needed (helm v3.22's go.mod).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

MOD_DIR=$TESTBED_LIB_DIR/helm
BIN_DIR=$MIGRATE_CACHE/bin
HELM_MODULE=helm.sh/helm/v3

mkdir -p "$BIN_DIR"

# mod_version MODULE: the version helm/go.mod requires for MODULE.
mod_version() { go_mod_version "$MOD_DIR/go.mod" "$1"; }

HELM_VERSION=$(mod_version "$HELM_MODULE")
HELM_BIN=$BIN_DIR/helm-$HELM_VERSION

build_helm() {
  local gobin lf start out=$HELM_BIN ldflags
  gobin=$(find_go "Go >= 1.26 is needed to build helm $HELM_VERSION")
  lf=$(log_file helm-build)
  # What `helm version` reports (otherwise the bare minor version "v3.22+unreleased").
  ldflags="-s -w -X $HELM_MODULE/internal/version.version=$HELM_VERSION"
  ldflags+=" -X $HELM_MODULE/internal/version.metadata= -X $HELM_MODULE/internal/version.gitTreeState=clean"
  # The Kubernetes version `helm template` and `helm lint` assume without a cluster, derived
  # from client-go as helm's Makefile does (v0.37.x -> 1.37); otherwise it is 1.20.
  local client_go major minor
  client_go=$(mod_version k8s.io/client-go)
  major=${client_go#v}
  major=$((${major%%.*} + 1))
  minor=${client_go#v*.}
  minor=${minor%%.*}
  local pkg
  for pkg in pkg/chartutil pkg/lint/rules; do
    ldflags+=" -X $HELM_MODULE/$pkg.k8sVersionMajor=$major -X $HELM_MODULE/$pkg.k8sVersionMinor=$minor"
  done
  log "building helm $HELM_VERSION from $HELM_MODULE/cmd/helm (cold: minutes), log $lf"
  start=$SECONDS
  if ! (cd "$MOD_DIR" &&
    GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 \
      "$gobin" build -trimpath -ldflags="$ldflags" -o "$out.tmp.$$" "$HELM_MODULE/cmd/helm") \
    >>"$lf" 2>&1; then
    rm -f "$out.tmp.$$"
    tail -n 30 "$lf" >&2
    die "building helm failed; see $lf"
  fi
  mv -f "$out.tmp.$$" "$out"
  log "built $out in $((SECONDS - start))s"
}

ensure_binary() {
  [[ -x $HELM_BIN ]] && return 0
  # One build at a time (another checkout or k8s.sh may be building into the same cache); the
  # lock fd is open only in this subshell and the go processes.
  (
    flock -w 3600 9 || die "could not lock $BIN_DIR/.build.lock"
    [[ -x $HELM_BIN ]] || build_helm
  ) 9>"$BIN_DIR/.build.lock"
}

helm_works() { "$HELM_BIN" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; }

cmd_up() {
  ensure_binary
  helm_works || die "$HELM_BIN does not report version $HELM_VERSION (delete it to rebuild)"
  write_env helm "HELM_BIN=$HELM_BIN"
  log "helm up: $HELM_BIN ($("$HELM_BIN" version --short))"
}

cmd_down() {
  rm -f "$ENV_DIR/helm.env"
  log "helm down (the binary stays in $BIN_DIR)"
}

cmd_status() {
  if [[ -x $HELM_BIN ]] && helm_works; then
    echo "helm $HELM_VERSION: built at $HELM_BIN"
  else
    echo "helm $HELM_VERSION: not built"
    return 3
  fi
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
*)
  echo "usage: $0 up|down|status" >&2
  exit 2
  ;;
esac
