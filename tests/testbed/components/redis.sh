#!/usr/bin/env bash
# Redis for the testbed: Debian's redis-server on 127.0.0.1:6390, no persistence.
#
#   redis.sh up | down | status
#
# Installs redis-server (apt) when missing and runs it with its own config in the state dir.
# Nothing is saved to disk, so data is gone after `down`; `down` + `up` takes well under a
# second, which tests use to exercise reconnects.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

NAME=redis
PORT=6390
URL=redis://127.0.0.1:$PORT
STATE=$DATA_DIR/$NAME
CONF=$STATE/redis.conf

redis_ping() {
  [[ $(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null) == PONG ]]
}

write_conf() {
  mkdir -p "$STATE"
  cat >"$CONF.tmp" <<EOF
# Written by tests/testbed/components/redis.sh; rewritten on every up.
bind 127.0.0.1
port $PORT
protected-mode yes
daemonize no
supervised no
logfile ""
loglevel notice
dir $STATE
save ""
appendonly no
databases 16
maxclients 1000
EOF
  mv -f "$CONF.tmp" "$CONF"
}

cmd_up() {
  if pid_alive "$NAME"; then
    WAIT_NAME=$NAME wait_until "redis PING on 127.0.0.1:$PORT" 20 redis_ping
    write_env "$NAME" "REDIS_URL=$URL"
    log "redis already running (pid $(read_pid "$NAME")): $URL"
    return 0
  fi
  stop_pid "$NAME" # drops a stale pid file
  apt_ensure redis-server=7.0 redis-tools=7.0
  port_free_or_die "$NAME" "$PORT"
  write_conf
  start_bg "$NAME" redis-server "$CONF"
  poll_briefly 5 redis_ping || wait_until "redis PING on 127.0.0.1:$PORT" 30 redis_ping
  write_env "$NAME" "REDIS_URL=$URL"
  log "redis up: $URL ($(redis-server --version | awk '{print $3}'))"
}

cmd_down() {
  stop_pid "$NAME"
  rm -f "$ENV_DIR/$NAME.env"
  log "redis down"
}

cmd_status() {
  local pid
  if pid=$(read_pid "$NAME") && pid_alive "$NAME" && redis_ping; then
    echo "redis: running (pid $pid), answers PING on $URL"
  else
    echo "redis: not running"
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
