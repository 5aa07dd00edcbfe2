#!/usr/bin/env bash
# Runs every test of the project on a fresh machine:
#   1. brings up the testbed (Redis, MariaDB, OpenSearch, osmem-server, noida-db, the NLP
#      service, etcd + kube-apiserver), installing what is missing;
#   2. checks formatting and lints (cargo fmt, cargo clippy -D warnings, shellcheck);
#   3. runs `cargo test --workspace` against those real services;
#   4. prints one summary line: "summary: N passed, N failed, N skipped" (skipped = ignored).
#
#   scripts/test.sh [extra cargo test args...]     e.g. scripts/test.sh -p migrate-crds
#
# Environment: TESTBED_COMPONENTS limits the services started; SKIP_LINT=1 skips step 2.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
started=$SECONDS

step() { printf '\n==> %s (%ds)\n' "$*" $((SECONDS - started)); }
disk() { df -h --output=avail,target "$root" | tail -n 1 | awk '{ printf "disk: %s free on %s\n", $1, $2 }'; }

# A one-off build gains nothing from incremental artefacts, which would double the target
# folder (a clean build with them off: ~2.5 GB). Set CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
disk

step "testbed"
tests/testbed/up.sh
set -a
# shellcheck disable=SC1091
source "$root/.testbed/env"
set +a

if [[ ${SKIP_LINT:-0} != 1 ]]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
  step "shellcheck"
  shellcheck -x scripts/*.sh tests/testbed/*.sh tests/testbed/components/*.sh .ci/run
fi

step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast "$@" -- --color never 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
disk

# One line for the whole run, summed over every test binary and doc-test run.
awk '/^test result:/ {
       for (i = 1; i <= NF; i++) {
         if ($(i) ~ /^passed;?$/) p += $(i-1);
         if ($(i) ~ /^failed;?$/) f += $(i-1);
         if ($(i) ~ /^ignored;?$/) g += $(i-1);
       }
       n++
     }
     END { printf "test binaries: %d, time: %ds\n", n, t
           printf "summary: %d passed, %d failed, %d skipped\n", p, f, g
           if (n == 0) exit 1 }' t=$((SECONDS - started)) "$log" || rc=1
exit "$rc"
