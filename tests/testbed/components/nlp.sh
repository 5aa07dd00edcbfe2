#!/usr/bin/env bash
# The test NLP service for the testbed: the workspace binary `testbed-nlp` (crate tests/nlp,
# jieba segmentation and a small sentiment lexicon), on 127.0.0.1:8090.
#
#   nlp.sh up | down | status | check
#
# `up` builds the binary with `cargo build --release -p migrate-testbed-nlp` when it is missing
# or older than its sources (release: the benchmarks lean on it), starts it, waits for
# /healthz, and writes NLP_URL. Endpoints: POST /segment and /score with {"text": "..."},
# GET /healthz. Texts containing [nlp:400], [nlp:503-once] or [nlp:slow] fail on purpose (see
# tests/nlp/src/lib.rs). NLP_SLOW_MS sets the [nlp:slow] delay (default 5000); RUST_LOG the log
# level (default info).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

NAME=nlp
PORT=8090
URL=http://127.0.0.1:$PORT
CRATE_DIR=$REPO_ROOT/tests/nlp
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
BIN=$TARGET_DIR/release/testbed-nlp

healthy() {
  curl -sf -m 5 -o /dev/null "$URL/healthz"
}

# segment_smoke: a real /segment round trip returns the expected tokens.
segment_smoke() {
  local out
  out=$(curl -sS -m 10 -X POST "$URL/segment" -H 'Content-Type: application/json' \
    -d '{"text":"我来到北京清华大学"}' 2>&1) || { log "POST $URL/segment failed: $out"; return 1; }
  grep -q '"tokens":\["我","来到","北京","清华大学"\]' <<<"$out" ||
    { log "POST $URL/segment answered unexpectedly: ${out:0:300}"; return 1; }
}

# needs_build: the binary is missing or a source of the crate (or the lock file) is newer.
needs_build() {
  [[ -x $BIN ]] || return 0
  [[ -n $(find "$CRATE_DIR" "$REPO_ROOT/Cargo.lock" -newer "$BIN" -type f \
    \( -name '*.rs' -o -name 'Cargo.toml' -o -name 'Cargo.lock' \) -print -quit 2>/dev/null) ]]
}

build() {
  command -v cargo >/dev/null || die "cargo is not on PATH: cannot build $BIN"
  log "building testbed-nlp (cargo build --release -p migrate-testbed-nlp; minutes when cold)"
  (cd "$REPO_ROOT" && cargo build --release -p migrate-testbed-nlp) >>"$(log_file "$NAME")" 2>&1 ||
    die "cargo build --release -p migrate-testbed-nlp failed; see $(log_file "$NAME")"
  [[ -x $BIN ]] || die "the build succeeded but $BIN is missing (CARGO_TARGET_DIR=$TARGET_DIR?)"
  # Cargo leaves the binary alone when only the lock file changed for other crates; mark it
  # fresh so the next `up` does not wait on the shared target directory again.
  touch "$BIN"
}

cmd_up() {
  if pid_alive "$NAME"; then
    WAIT_NAME=$NAME wait_until "nlp /healthz on $URL" 30 healthy
    write_env "$NAME" "NLP_URL=$URL"
    log "nlp already running (pid $(read_pid "$NAME")): $URL"
    return 0
  fi
  stop_pid "$NAME" # drops a stale pid file
  apt_ensure curl=7.88
  if needs_build; then build; fi
  port_free_or_die "$NAME" "$PORT"
  RUST_LOG=${RUST_LOG:-info} start_bg "$NAME" "$BIN" --listen "127.0.0.1:$PORT" \
    --slow-ms "${NLP_SLOW_MS:-5000}"
  poll_briefly 10 healthy || wait_until "nlp /healthz on $URL" 60 healthy
  segment_smoke || die "nlp on $URL answers /healthz but failed the /segment smoke test; see $(log_file "$NAME")"
  write_env "$NAME" "NLP_URL=$URL"
  log "nlp up: $URL ($BIN)"
}

cmd_down() {
  stop_pid "$NAME"
  rm -f "$ENV_DIR/$NAME.env"
  log "nlp down"
}

cmd_status() {
  local pid
  if pid=$(read_pid "$NAME") && pid_alive "$NAME" && healthy; then
    echo "nlp: running (pid $pid) on $URL"
  else
    echo "nlp: not running"
    return 3
  fi
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
check) segment_smoke && echo "nlp: /segment OK on $URL" ;;
*)
  echo "usage: $0 up|down|status|check" >&2
  exit 2
  ;;
esac
