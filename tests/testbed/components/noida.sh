#!/usr/bin/env bash
# noida for the testbed: the Elasticsearch service of the PyPI package noida-db (one binary
# that also speaks Postgres, MySQL, Redis, Kafka, ...), alone, on 127.0.0.1:9252.
#
#   noida.sh up | down | status | check
#
# The wheel bundles the `noida-db` binary (noida_db/noida-db); its console script is a Python
# wrapper that keeps running as the binary's parent, so we run the binary itself, in the
# foreground, with every other service off:
#   noida-db start --only elasticsearch --elasticsearch-port 9252 --host 127.0.0.1 --data-dir D
# It answers as Elasticsearch 8.15.3 and saves its indexes under the state dir (they survive
# `down` + `up`). It also opens a control port on a random loopback port (noida.control.json).
# The binary is linked against glibc 2.39 and Debian 12 has 2.36: it prints
# "weak version `GLIBC_2.39' not found" at start and runs. NOIDA_DB_VERSION pins the package
# (default 0.2.3).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

NAME=noida
VERSION=${NOIDA_DB_VERSION:-0.2.3}
PORT=9252
URL=http://127.0.0.1:$PORT
VENV=$MIGRATE_CACHE/venv/noida-db-$VERSION
STATE=$DATA_DIR/$NAME

healthy() {
  curl -sf -m 5 -o /dev/null "$URL/_cluster/health"
}

server_bin() {
  local bin
  bin=$("$VENV/bin/python" -c \
    'from importlib.resources import files; print(files("noida_db").joinpath("noida-db"))') ||
    die "cannot locate the noida-db binary in $VENV"
  [[ -f $bin ]] || die "noida-db binary missing at $bin"
  [[ -x $bin ]] || chmod +x "$bin"
  printf '%s\n' "$bin"
}

cmd_up() {
  local bin
  if pid_alive "$NAME"; then
    WAIT_NAME=$NAME wait_until "noida health on $URL" 30 healthy
    write_env "$NAME" "NOIDA_URL=$URL"
    log "noida already running (pid $(read_pid "$NAME")): $URL"
    return 0
  fi
  stop_pid "$NAME" # drops a stale pid file
  apt_ensure curl=7.88
  venv_ensure "$VENV" "noida-db==$VERSION"
  bin=$(server_bin)
  port_free_or_die "$NAME" "$PORT"
  mkdir -p "$STATE"
  start_bg "$NAME" "$bin" start --only elasticsearch --elasticsearch-port "$PORT" \
    --host 127.0.0.1 --data-dir "$STATE"
  poll_briefly 5 healthy || wait_until "noida health on $URL" 60 healthy
  es_smoke "$URL" || die "noida on $URL answers health but failed the _bulk/GET/_search smoke test; see $(log_file "$NAME")"
  write_env "$NAME" "NOIDA_URL=$URL"
  log "noida up: $URL ($("$bin" version 2>/dev/null | head -n1))"
}

cmd_down() {
  stop_pid "$NAME"
  rm -f "$ENV_DIR/$NAME.env"
  log "noida down"
}

cmd_status() {
  local pid
  if pid=$(read_pid "$NAME") && pid_alive "$NAME" && healthy; then
    echo "noida: running (pid $pid) on $URL"
  else
    echo "noida: not running"
    return 3
  fi
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
check) es_smoke "$URL" && echo "noida: _bulk/GET/_count/_search OK on $URL" ;;
*)
  echo "usage: $0 up|down|status|check" >&2
  exit 2
  ;;
esac
