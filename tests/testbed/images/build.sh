#!/usr/bin/env bash
# Image archives for the node component, made from local files only: no base image, no
# registry. Each image is one layer written by tar, a config naming its entrypoint, command and
# user, and a docker-archive manifest that `ctr images import` reads.
#
#   build.sh tools OUT_DIR                   # OUT_DIR/pause.tar, OUT_DIR/probe.tar (from probe/)
#   build.sh worker OUT_DIR BINARY [NAME]    # OUT_DIR/migrate-worker.tar (BINARY + its ldd
#                                            # libraries), named NAME (default below)
#   build.sh operator OUT_DIR BINARY [NAME]  # OUT_DIR/migrate-operator.tar, the same way
#
# Images (names are constants the tests use too):
#   testbed.local/pause:1            the sandbox image containerd names in sandbox_image
#   testbed.local/probe:1            /probe: pause, a memory eater, a securityContext report
#   testbed.local/migrate-worker:dev target/release/migrate-worker, the shared libraries it
#                                    links, CA certificates, /etc/passwd with uid 65532
#   testbed.local/migrate-operator:dev
#                                    target/release/migrate-operator, built the same way
# The entrypoint, command and user of the two binary images are those of worker/Dockerfile and
# operator/Dockerfile (the path for users with a registry); tests/e2e/tests/images.rs checks
# that both paths agree.
# Layers are reproducible (sorted names, mtime 0, root-owned), so an unchanged input gives the
# same archive and the node component skips the re-import.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

IMAGES_DIR=$TESTBED_LIB_DIR/images
NONROOT_UID=65532

# sha256_of FILE: the hex digest.
sha256_of() { sha256sum "$1" | awk '{print $1}'; }

# json_array ARG...: a JSON array of strings (arguments must not contain `"` or `\`).
json_array() {
  local out="" a
  for a; do
    [[ $a != *[\"\\]* ]] || die "json_array: unsupported character in '$a'"
    out+="${out:+,}\"$a\""
  done
  printf '[%s]' "$out"
}

# write_passwd ROOT: /etc/passwd and /etc/group with root and the non-root user.
write_passwd() {
  mkdir -p "$1/etc"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n' \
    "$NONROOT_UID" "$NONROOT_UID" >"$1/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%d:\n' "$NONROOT_UID" >"$1/etc/group"
}

# make_image ROOT NAME USER OUT CMD ENTRYPOINT...: a docker-archive of ROOT as one layer. CMD is
# the default arguments, one string split on blanks ("" for none).
make_image() {
  local root=$1 name=$2 user=$3 out=$4 cmd=$5 work layer_sha cfg cfg_sha cmd_json=""
  shift 5
  if [[ -n $cmd ]]; then
    local -a cmd_words
    read -r -a cmd_words <<<"$cmd"
    cmd_json=",\"Cmd\":$(json_array "${cmd_words[@]}")"
  fi
  work=$(mktemp -d "${out%/*}/.image.XXXXXX")
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$root" -cf "$work/layer.tar" .
  layer_sha=$(sha256_of "$work/layer.tar")
  mkdir -p "$work/$layer_sha"
  mv "$work/layer.tar" "$work/$layer_sha/layer.tar"
  cfg=$work/config.json
  printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"User":"%s","Env":["PATH=/usr/local/bin:/usr/bin:/bin"],"Entrypoint":%s%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"tests/testbed/images/build.sh"}]}' \
    "$user" "$(json_array "$@")" "$cmd_json" "$layer_sha" >"$cfg"
  cfg_sha=$(sha256_of "$cfg")
  mv "$cfg" "$work/$cfg_sha.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
    "$cfg_sha" "$name" "$layer_sha" >"$work/manifest.json"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work" \
    -cf "$out.tmp.$$" manifest.json "$cfg_sha.json" "$layer_sha"
  mv -f "$out.tmp.$$" "$out"
  rm -rf "$work"
  log "image $name: $out ($(du -h "$out" | cut -f1))"
}

build_tools() {
  local out=$1 root
  root=$(mktemp -d "$out/.root.XXXXXX")
  chmod 755 "$root" # mktemp's 0700 would become the image's / and lock out uid 65532
  (cd "$IMAGES_DIR/probe" &&
    GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 \
      "$(find_go "to build the probe")" build -trimpath -ldflags='-s -w' -o "$root/probe" .) ||
    die "building the probe (tests/testbed/images/probe) failed"
  write_passwd "$root"
  # The pause process needs no privilege; 65535 is the user upstream's pause image uses.
  make_image "$root" testbed.local/pause:1 65535:65535 "$out/pause.tar" "" /probe pause
  make_image "$root" testbed.local/probe:1 "$NONROOT_UID:$NONROOT_UID" "$out/probe.tar" "" /probe
  rm -rf "$root"
}

# build_binary OUT BINARY NAME PROGRAM CMD: an image of one release binary at
# /usr/local/bin/PROGRAM, with CMD as its default arguments (as in PROGRAM's Dockerfile).
build_binary() {
  local out=$1 binary=$2 name=$3 program=$4 cmd=$5 root lib
  [[ -x $binary ]] || die "no $program binary at $binary (cargo build --release -p $program)"
  root=$(mktemp -d "$out/.root.XXXXXX")
  chmod 755 "$root" # mktemp's 0700 would become the image's / and lock out uid 65532
  mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
  chmod 1777 "$root/tmp"
  cp "$binary" "$root/usr/local/bin/$program"
  # The release profile keeps line tables (about 100 MB); the image does without them, and
  # keeps the symbols for backtraces.
  if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$root/usr/local/bin/$program"
  fi
  # The binary is dynamically linked (glibc): copy every library ldd resolves, and the
  # loader, to the same paths inside the image.
  while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done < <(ldd "$binary" | awk '/=> \// {print $3} /^[[:space:]]*\/.*ld-linux/ {print $1}')
  [[ -n $(find "$root" -name 'ld-linux*' -print -quit) ]] ||
    die "ldd $binary named no loader; is it a dynamically linked x86_64 binary?"
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  write_passwd "$root"
  make_image "$root" "$name" "$NONROOT_UID:$NONROOT_UID" "$out/$program.tar" "$cmd" \
    "/usr/local/bin/$program"
  rm -rf "$root"
}

case ${1:-} in
tools)
  [[ $# == 2 ]] || die "usage: $0 tools OUT_DIR"
  mkdir -p "$2"
  build_tools "$2"
  ;;
worker)
  [[ $# == 3 || $# == 4 ]] || die "usage: $0 worker OUT_DIR BINARY [NAME]"
  mkdir -p "$2"
  build_binary "$2" "$3" "${4:-testbed.local/migrate-worker:dev}" migrate-worker \
    "run --pipeline /etc/migrate/pipeline.yaml"
  ;;
operator)
  [[ $# == 3 || $# == 4 ]] || die "usage: $0 operator OUT_DIR BINARY [NAME]"
  mkdir -p "$2"
  build_binary "$2" "$3" "${4:-testbed.local/migrate-operator:dev}" migrate-operator run
  ;;
*)
  echo "usage: $0 tools OUT_DIR | worker|operator OUT_DIR BINARY [NAME]" >&2
  exit 2
  ;;
esac
