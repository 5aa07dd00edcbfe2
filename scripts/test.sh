#!/usr/bin/env bash
# Runs every test of the project on a fresh machine:
#   1. brings up the testbed (Redis, MariaDB, OpenSearch, osmem-server, noida-db, the NLP
#      service, etcd + kube-apiserver), installing what is missing;
#   2. checks formatting and lints (cargo fmt, cargo clippy -D warnings, shellcheck);
#   3. runs `cargo test --workspace` against those real services;
#   4. prints one summary line: "summary: N passed, N failed, N skipped" (skipped = ignored
#      tests plus tests that found a testbed component missing, each listed by name).
#
#   scripts/test.sh [extra cargo test args...]     e.g. scripts/test.sh -p migrate-crds
#
# Environment: TESTBED_COMPONENTS limits the services started; SKIP_LINT=1 skips step 2.
# With CI=true nothing may be left out: SKIP_LINT and TESTBED_COMPONENTS are refused, and a
# test that finds a component missing fails instead of skipping.
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

if [[ ${CI:-} == true || ${CI:-} == 1 ]]; then
  export CI=true
  for v in SKIP_LINT TESTBED_COMPONENTS; do
    if [[ -n ${!v:-} ]]; then
      echo "error: $v=${!v} leaves part of the suite out, and CI=true runs all of it; unset $v" >&2
      exit 2
    fi
  done
fi

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
  shellcheck -x scripts/*.sh tests/testbed/*.sh tests/testbed/components/*.sh tests/testbed/images/*.sh \
    tests/fresh/*.sh .ci/run
else
  step "lint skipped (SKIP_LINT=1)"
fi

step "cargo test"
log=$(mktemp)
ignored_log=$(mktemp)
skips=$(mktemp)
trap 'rm -f "$log" "$ignored_log" "$skips"' EXIT
# Tests that find a testbed component missing record themselves here (outside CI only).
export MIGRATE_TEST_SKIPS=$skips
set +e
cargo test --workspace --locked --no-fail-fast "$@" -- --color never 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# Tests marked #[ignore] restart a shared service (e.g. MariaDB), so they run here, alone,
# after everything else: ignored is not the same as never run.
step "cargo test -- --ignored (tests that restart shared services, run alone)"
cargo test --workspace --locked --no-fail-fast "$@" -- --ignored --color never 2>&1 | tee "$ignored_log"
ignored_rc=${PIPESTATUS[0]}
((ignored_rc == 0)) || rc=$ignored_rc
set -e
disk

if [[ -s $skips ]]; then
  echo "skipped because a testbed component is missing (cargo counted them as passed):"
  sed 's/^/  - /' "$skips"
fi

# One line for the whole run, summed over every test binary and doc-test run: the ignored
# tests count as passed or failed from their own run (skipped only if that run did not reach
# them), and the tests that recorded a skip move from passed to skipped.
# shellcheck disable=SC2016 # an awk program, expanded by awk
count='/^test result:/ {
         for (i = 1; i <= NF; i++) {
           if ($(i) ~ /^passed;?$/) p += $(i-1);
           if ($(i) ~ /^failed;?$/) f += $(i-1);
           if ($(i) ~ /^ignored;?$/) g += $(i-1);
         }
         n++
       }
       END { print p + 0, f + 0, g + 0, n + 0 }'
read -r p f g n < <(awk "$count" "$log")
read -r ip if_ _ _ < <(awk "$count" "$ignored_log")
s=$(wc -l <"$skips")
echo "test binaries: $n, time: $((SECONDS - started))s"
echo "summary: $((p + ip - s)) passed, $((f + if_)) failed, $((g - ip - if_ + s)) skipped"
((n > 0)) || rc=1
exit "$rc"
