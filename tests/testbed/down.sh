#!/usr/bin/env bash
# Stop the testbed (see README.md beside this file).
#
#   tests/testbed/down.sh [COMPONENT...]     # or TESTBED_COMPONENTS="redis" down.sh
#
# Stops, in reverse start order, each selected component that has a pid file
# (pids/NAME.pid or pids/NAME-*.pid), through `components/NAME.sh down`; a component whose
# script is gone is stopped by its pid files directly. Rewrites $TESTBED_DIR/env afterwards.
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

# Canonical order, then unknown names as given; stopped in reverse.
ordered=()
for c in "${TESTBED_ALL_COMPONENTS[@]}"; do
  for r in "${requested[@]}"; do
    [[ $r == "$c" ]] && { ordered+=("$c"); break; }
  done
done
for r in "${requested[@]}"; do
  known=0
  for c in "${TESTBED_ALL_COMPONENTS[@]}"; do [[ $r == "$c" ]] && known=1; done
  ((known)) || ordered+=("$r")
done

# pid_names NAME: the pid-file names (without .pid) that belong to component NAME.
pid_names() {
  local f
  for f in "$PID_DIR/$1.pid" "$PID_DIR/$1"-*.pid; do
    [[ -e $f ]] || continue
    f=${f##*/}
    printf '%s\n' "${f%.pid}"
  done
}

rc=0
stopped=()
for ((i = ${#ordered[@]} - 1; i >= 0; i--)); do
  c=${ordered[i]}
  mapfile -t names < <(pid_names "$c")
  ((${#names[@]})) || continue
  if [[ -f $COMP_DIR/$c.sh ]]; then
    bash "$COMP_DIR/$c.sh" down || { log "ERROR: $c down failed"; rc=1; }
  else
    log "WARNING: $COMP_DIR/$c.sh does not exist; stopping ${names[*]} by pid file"
    for n in "${names[@]}"; do stop_pid "$n"; done
    rm -f "$ENV_DIR/$c.env"
  fi
  stopped+=("$c")
done

collect_env
log "stopped: ${stopped[*]:-nothing (no pid files)}"
exit "$rc"
