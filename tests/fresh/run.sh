#!/usr/bin/env bash
# Runs a command in a fresh Debian 12 root, so that whatever the project's scripts forget to
# install is missing there, as on a new machine:
#
#   tests/fresh/run.sh COMMAND [ARG...]      e.g. tests/fresh/run.sh scripts/test.sh
#
# The root is built with mmdebstrap (variant minbase: Essential and apt, nothing else) from the
# host's Debian sources, gets the host's extra CA certificates (this machine's registries are
# reached through a TLS-inspecting proxy), a policy-rc.d that stops packages from starting
# services (as in Debian's container images), and the host's resolv.conf and hosts.
# The command runs in it (the root of a private mount namespace, entered with pivot_root), at
# the repository's own path, as root, with HOME=/root.
#
# What comes from the host, and why:
#  - the repository (read-write, at the same path: its target/ and .testbed/ live in it);
#  - the machine's toolchains, which this kind of machine provides and no Debian package
#    does at these versions: Rust (~/.rustup, ~/.cargo), Go (/usr/local/go) and Java 25
#    (/usr/lib/jvm/temurin-25-jdk-amd64, for OpenSearch 3);
#  - download and compile caches that install nothing: cargo's registry (in ~/.cargo), Go's
#    module and build caches, Maven's repository. The project's own cache
#    ($MIGRATE_CACHE: built binaries, venvs, unpacked servers) starts empty.
#  - /proc, /sys (cgroups) and /dev, and the network namespace (loopback services).
# Everything else (Debian packages, venvs, kube-apiserver, helm, OpenSearch) the project's
# scripts must install. The mounts live in a private mount namespace and vanish with it; the
# command's testbed is stopped (tests/testbed/down.sh) when it ends, and the root is removed
# unless FRESH_KEEP=1.
#
# Environment: FRESH_ROOT (default: a new folder under /var/tmp), FRESH_KEEP=1 keeps it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=../testbed/lib.sh
source "$here/../testbed/lib.sh"

(($#)) || die "usage: tests/fresh/run.sh COMMAND [ARG...]"
[[ $(id -u) == 0 ]] || die "tests/fresh/run.sh needs root (mmdebstrap, mounts, chroot)"
apt_ensure mmdebstrap=1.3

started=$SECONDS
root=${FRESH_ROOT:-$(mktemp -d /var/tmp/migrate-fresh.XXXXXX)}
cleanup() {
  if [[ ${FRESH_KEEP:-0} == 1 ]]; then
    log "fresh root kept: $root"
  else
    rm -rf --one-file-system "$root"
  fi
}
trap cleanup EXIT

sources=/etc/apt/sources.list.d/debian.sources
[[ -s $sources ]] || sources=/etc/apt/sources.list
[[ -s $sources ]] || die "no Debian sources on the host ($sources)"

log "building a fresh Debian root in $root (mmdebstrap minbase, sources from $sources)"
# shellcheck disable=SC2016 # the hooks expand $1 in mmdebstrap, not here
mmdebstrap --quiet --variant=minbase --include=ca-certificates \
  --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"' \
  --customize-hook='for c in /usr/local/share/ca-certificates/*.crt; do [ -e "$c" ] && cp "$c" "$1/usr/local/share/ca-certificates/"; done; true' \
  --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
  --customize-hook='printf "#!/bin/sh\nexit 101\n" >"$1/usr/sbin/policy-rc.d" && chmod 755 "$1/usr/sbin/policy-rc.d"' \
  bookworm "$root" "$sources"
cp /etc/resolv.conf /etc/hosts "$root/etc/"
log "fresh root ready in $((SECONDS - started))s"

# Host paths bound into the root: SOURCE, whether read-only.
binds=(
  "$REPO_ROOT" rw
  /root/.rustup ro
  /root/.cargo rw
  /usr/local/go ro
  /usr/lib/jvm/temurin-25-jdk-amd64 ro
  /root/go/pkg/mod rw
  /root/.cache/go-build rw
  /root/.m2 rw
)

# The mount script runs in the new mount namespace, as root; its arguments: root, then the
# binds as pairs, then -- and the command. The root becomes the namespace's root with
# pivot_root, not chroot: runc makes `/` a slave mount (so `/` must be a mount point), and the
# kernel refuses user namespaces (OpenSearch's way to run as non-root) to a chrooted process.
# shellcheck disable=SC2016
inside='
set -euo pipefail
root=$1; shift
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
while [[ $1 != -- ]]; do
  src=$1 mode=$2; shift 2
  if [[ ! -e $src ]]; then
    [[ $mode == ro ]] && { echo "fresh: $src is missing on this machine" >&2; exit 1; }
    mkdir -p "$src"
  fi
  mkdir -p "$root$src"
  mount --bind "$src" "$root$src"
  [[ $mode == ro ]] && mount -o remount,bind,ro "$root$src"
done
shift
cd "$root"
mkdir -p .host
pivot_root . .host
cd /
umount -l /.host
rmdir /.host
exec /usr/bin/env -i \
  HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" CI="${CI:-}" \
  PATH=/root/.cargo/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  RUSTUP_AUTO_INSTALL=0 GOFLAGS=-buildvcs=false \
  SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
  REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt CURL_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
  PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-180}" \
  /bin/bash -c "cd \"\$0\" && rc=0 && { \"\$@\" || rc=\$?; } && { tests/testbed/down.sh >/dev/null 2>&1 || true; } && exit \$rc" "$@"
'
log "running in the fresh root: $*"
unshare --mount --propagation private bash -c "$inside" inside "$root" "${binds[@]}" -- "$REPO_ROOT" "$@"
