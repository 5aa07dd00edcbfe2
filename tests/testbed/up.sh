#!/usr/bin/env bash
# Start the testbed (see README.md beside this file).
#
#   tests/testbed/up.sh [COMPONENT...]     # or TESTBED_COMPONENTS="redis mariadb" up.sh
#
# No argument: every component (tools redis mariadb opensearch osmem noida nlp k8s helm node).
# `tools` (the pinned packages every other component and the scripts use) always runs first,
# alone, whether named or not; then each other one's `components/NAME.sh up` runs in parallel
# (install steps take a shared lock), with its output prefixed by [NAME]; TESTBED_PARALLEL=0
# runs them one after the other.
# Then env.d/*.env is concatenated into $TESTBED_DIR/env and printed. Exits non-zero when any
# component failed (the others are left running, and their variables are still in env).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

COMP_DIR=$TESTBED_LIB_DIR/components

if (($#)); then
  requested=("$@")
elif [[ -n ${TESTBED_COMPONENTS:-} ]]; then
  read -r -a requested <<<"${TESTBED_COMPONENTS//,/ }"
else
  requested=("${TESTBED_ALL_COMPONENTS[@]}")
fi

# Keep the canonical order for known names; append unknown ones that have a script.
requested=(tools "${requested[@]}")
ordered=()
for c in "${TESTBED_ALL_COMPONENTS[@]}"; do
  for r in "${requested[@]}"; do
    [[ $r == "$c" ]] && { ordered+=("$c"); break; }
  done
done
for r in "${requested[@]}"; do
  known=0
  for c in "${TESTBED_ALL_COMPONENTS[@]}"; do [[ $r == "$c" ]] && known=1; done
  ((known)) && continue
  [[ -f $COMP_DIR/$r.sh ]] || die "unknown component '$r' (no $COMP_DIR/$r.sh)"
  ordered+=("$r")
done

runnable=()
missing=()
for c in "${ordered[@]}"; do
  if [[ -f $COMP_DIR/$c.sh ]]; then
    runnable+=("$c")
  else
    missing+=("$c")
  fi
done

warn_missing() {
  local c
  for c in "${missing[@]}"; do
    log "########################################################################"
    log "WARNING: component '$c' NOT STARTED: $COMP_DIR/$c.sh does not exist"
    log "########################################################################"
  done
}
warn_missing

prefix() {
  local line
  while IFS= read -r line; do
    printf '[%s] %s\n' "$1" "$line"
  done
}

# run_one NAME: run NAME.sh up with its output prefixed by [NAME]; returns its status.
run_one() {
  local c=$1 start=$SECONDS rc=0
  if bash "$COMP_DIR/$c.sh" up 2>&1 | prefix "$c"; then
    rc=0
  else
    rc=${PIPESTATUS[0]}
    ((rc)) || rc=1
  fi
  if ((rc == 0)); then
    printf '[%s] up in %ds\n' "$c" $((SECONDS - start))
  else
    printf '[%s] FAILED (exit %d) after %ds\n' "$c" "$rc" $((SECONDS - start))
  fi
  return "$rc"
}

log "starting: ${runnable[*]:-nothing}"
failed=()
# Everything else needs what `tools` installs; it is first in the canonical order.
if [[ ${runnable[0]:-} == tools ]]; then
  run_one tools || die "failed: tools (the packages every component needs; see above)"
  runnable=("${runnable[@]:1}")
fi
if [[ ${TESTBED_PARALLEL:-1} == 0 ]]; then
  for c in "${runnable[@]}"; do
    run_one "$c" || failed+=("$c")
  done
else
  declare -A jobs=()
  for c in "${runnable[@]}"; do
    run_one "$c" &
    jobs[$c]=$!
  done
  for c in "${runnable[@]}"; do
    wait "${jobs[$c]}" || failed+=("$c")
  done
fi

collect_env
log "environment ($TESTBED_DIR/env):"
cat "$TESTBED_DIR/env"
warn_missing
if ((${#failed[@]})); then
  die "failed: ${failed[*]} (logs in $LOG_DIR)"
fi
log "testbed up: ${runnable[*]:-nothing}"
