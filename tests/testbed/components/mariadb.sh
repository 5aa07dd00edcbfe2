#!/usr/bin/env bash
# MariaDB for the testbed: Debian's mariadb-server on 127.0.0.1:3390, utf8mb4.
#
#   mariadb.sh up | down | status
#
# Installs mariadb-server (apt) when missing, initialises its own datadir under the state dir
# once (mariadb-install-db), and runs mariadbd as root with its own config and socket.
# root@localhost logs in through the socket only (unix_socket auth, for this script); the
# tests use migrate/migrate over TCP, which owns database `migrate` and may create and drop
# any database named `migrate_...` (parallel tests). Data survives `down` + `up`.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

NAME=mariadb
PORT=3390
DB_USER=migrate
DB_PASS=migrate
DB_NAME=migrate
URL=mysql://$DB_USER:$DB_PASS@127.0.0.1:$PORT/$DB_NAME
STATE=$DATA_DIR/$NAME
DATADIR=$STATE/data
CNF=$STATE/my.cnf
INIT_MARK=$DATADIR/.testbed-initialised
SOCKET=$STATE/mariadb.sock
# A unix socket path must fit in 108 bytes; fall back to /tmp for deep checkouts.
if ((${#SOCKET} > 100)); then
  SOCKET=/tmp/testbed-mariadb-$(printf '%s' "$TESTBED_DIR" | md5sum | cut -c1-12).sock
fi

mariadbd_bin() {
  command -v mariadbd 2>/dev/null || { [[ -x /usr/sbin/mariadbd ]] && echo /usr/sbin/mariadbd; } ||
    die "mariadbd not found after installing mariadb-server"
}

write_cnf() {
  mkdir -p "$STATE/tmp"
  cat >"$CNF.tmp" <<EOF
# Written by tests/testbed/components/mariadb.sh; rewritten on every up.
[mysqld]
user = root
datadir = $DATADIR
socket = $SOCKET
pid-file = $STATE/mariadbd.pid
tmpdir = $STATE/tmp
port = $PORT
bind-address = 127.0.0.1
skip-name-resolve
skip-external-locking
character-set-server = utf8mb4
collation-server = utf8mb4_unicode_ci
max_connections = 500
max_allowed_packet = 64M
performance_schema = OFF
innodb_buffer_pool_size = 128M
innodb_log_file_size = 64M
# A test database: trade durability on power loss for speed.
innodb_flush_log_at_trx_commit = 2
sync_binlog = 0

[client]
socket = $SOCKET
default-character-set = utf8mb4
EOF
  mv -f "$CNF.tmp" "$CNF"
}

# root over the socket (unix_socket authentication).
root_sql() {
  mariadb --defaults-file="$CNF" --protocol=socket -uroot "$@"
}

server_alive() {
  mariadb-admin --defaults-file="$CNF" --protocol=socket --connect-timeout=2 ping >/dev/null 2>&1
}

migrate_can_query() {
  mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P"$PORT" -u"$DB_USER" -p"$DB_PASS" \
    --connect-timeout=2 -N -B -e 'SELECT 1' "$DB_NAME" >/dev/null 2>&1
}

init_datadir() {
  [[ -e $INIT_MARK ]] && return 0
  log "initialising MariaDB datadir $DATADIR"
  rm -rf "$DATADIR"
  mkdir -p "$DATADIR"
  mariadb-install-db --defaults-file="$CNF" --user=root --skip-test-db \
    --auth-root-authentication-method=socket >>"$(log_file "$NAME")" 2>&1 ||
    die "mariadb-install-db failed; see $(log_file "$NAME")"
  touch "$INIT_MARK"
}

# Idempotent: run on every start.
provision() {
  root_sql <<EOF
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS '$DB_USER'@'%' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON \`$DB_NAME\`.* TO '$DB_USER'@'%';
GRANT ALL PRIVILEGES ON \`${DB_NAME}\\_%\`.* TO '$DB_USER'@'%';
GRANT ALL PRIVILEGES ON \`$DB_NAME\`.* TO '$DB_USER'@'localhost';
GRANT ALL PRIVILEGES ON \`${DB_NAME}\\_%\`.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

cmd_up() {
  if pid_alive "$NAME"; then
    WAIT_NAME=$NAME wait_until "migrate user query on 127.0.0.1:$PORT" 60 migrate_can_query
    write_env "$NAME" "MYSQL_URL=$URL"
    log "mariadb already running (pid $(read_pid "$NAME")): $URL"
    return 0
  fi
  stop_pid "$NAME" # drops a stale pid file
  apt_ensure mariadb-server=10.11 mariadb-client=10.11
  port_free_or_die "$NAME" "$PORT"
  write_cnf
  init_datadir
  rm -f "$SOCKET"
  start_bg "$NAME" "$(mariadbd_bin)" --defaults-file="$CNF" --user=root
  poll_briefly 5 server_alive || wait_until "mariadbd socket ping ($SOCKET)" 120 server_alive
  provision || die "creating database/user failed; see $(log_file "$NAME")"
  poll_briefly 2 migrate_can_query ||
    wait_until "migrate user query on 127.0.0.1:$PORT" 30 migrate_can_query
  write_env "$NAME" "MYSQL_URL=$URL"
  log "mariadb up: $URL ($(root_sql -N -B -e 'SELECT VERSION()'))"
}

cmd_down() {
  stop_pid "$NAME"
  rm -f "$ENV_DIR/$NAME.env"
  log "mariadb down"
}

cmd_status() {
  local pid
  if pid=$(read_pid "$NAME") && pid_alive "$NAME" && migrate_can_query; then
    echo "mariadb: running (pid $pid), $URL answers"
  else
    echo "mariadb: not running"
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
