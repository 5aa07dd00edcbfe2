#!/usr/bin/env bash
# osmem for the testbed: the in-memory OpenSearch-compatible server from the PyPI package
# osmem-server, on 127.0.0.1:9251.
#
#   osmem.sh up | down | status | check
#
# The wheel bundles a static `osmem-server` binary (osmem_server/bin/); the package has no
# console script, its Python API only wraps that binary. We install it into a venv under the
# cache and run the binary directly:
#   osmem-server --addr 127.0.0.1:9251 --no-stdin-watch
# (without --no-stdin-watch it exits when its stdin closes). It answers the REST API on that
# one port (OpenSearch 3.8.0 flavour, `_bulk`, `_doc`, `_search`, `_count`, ...), keeps
# everything in memory (gone after `down`), and its base is writable (no --freeze, no seed).
# Japanese analysis (kuromoji) is on by default and costs ~170 MB of RSS; OSMEM_JAPANESE=0
# turns it off (--no-ja). OSMEM_SERVER_VERSION pins the package (default 0.1.6).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

NAME=osmem
VERSION=${OSMEM_SERVER_VERSION:-0.1.6}
PORT=9251
URL=http://127.0.0.1:$PORT
VENV=$MIGRATE_CACHE/venv/osmem-server-$VERSION

healthy() {
  curl -sf -m 5 -o /dev/null "$URL/_cluster/health"
}

server_bin() {
  local bin
  bin=$("$VENV/bin/python" -c 'import osmem_server; print(osmem_server.resolve_binary())') ||
    die "cannot locate the osmem-server binary in $VENV"
  [[ -x $bin ]] || chmod +x "$bin"
  printf '%s\n' "$bin"
}

cmd_up() {
  local bin args
  if pid_alive "$NAME"; then
    WAIT_NAME=$NAME wait_until "osmem health on $URL" 30 healthy
    write_env "$NAME" "OSMEM_URL=$URL"
    log "osmem already running (pid $(read_pid "$NAME")): $URL"
    return 0
  fi
  stop_pid "$NAME" # drops a stale pid file
  apt_ensure curl=7.88
  venv_ensure "$VENV" "osmem-server==$VERSION"
  bin=$(server_bin)
  port_free_or_die "$NAME" "$PORT"
  args=(--addr "127.0.0.1:$PORT" --no-stdin-watch)
  if [[ ${OSMEM_JAPANESE:-1} == 0 ]]; then args+=(--no-ja); fi
  start_bg "$NAME" "$bin" "${args[@]}"
  poll_briefly 10 healthy || wait_until "osmem health on $URL" 60 healthy
  es_smoke "$URL" || die "osmem on $URL answers health but failed the _bulk/GET/_search smoke test; see $(log_file "$NAME")"
  write_env "$NAME" "OSMEM_URL=$URL"
  log "osmem up: $URL ($("$bin" -version 2>&1 | head -n1))"
}

cmd_down() {
  stop_pid "$NAME"
  rm -f "$ENV_DIR/$NAME.env"
  log "osmem down"
}

cmd_status() {
  local pid
  if pid=$(read_pid "$NAME") && pid_alive "$NAME" && healthy; then
    echo "osmem: running (pid $pid) on $URL"
  else
    echo "osmem: not running"
    return 3
  fi
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
check) es_smoke "$URL" && echo "osmem: _bulk/GET/_count/_search OK on $URL" ;;
*)
  echo "usage: $0 up|down|status|check" >&2
  exit 2
  ;;
esac
