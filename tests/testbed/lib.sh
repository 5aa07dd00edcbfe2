# shellcheck shell=bash
# Shared helpers for tests/testbed/components/*.sh (see README.md beside this file).
# Source it from a script that runs under `set -euo pipefail`; it changes no shell option.

TESTBED_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$TESTBED_LIB_DIR/../.." && pwd)
TESTBED_DIR=${TESTBED_DIR:-$REPO_ROOT/.testbed}
MIGRATE_CACHE=${MIGRATE_CACHE:-$HOME/.cache/migrate-operator}
PID_DIR=$TESTBED_DIR/pids
LOG_DIR=$TESTBED_DIR/logs
DATA_DIR=$TESTBED_DIR/data
ENV_DIR=$TESTBED_DIR/env.d
export TESTBED_DIR MIGRATE_CACHE
# Debian's Python (venvs for the Python-based search servers and the Python peer).
PYTHON_DEBIAN_VERSION=3.11
mkdir -p "$PID_DIR" "$LOG_DIR" "$DATA_DIR" "$ENV_DIR" "$MIGRATE_CACHE"

# Name and log of the last process start_bg started; wait_until uses them to fail fast and to
# name the log file (override per call with WAIT_NAME=... / WAIT_LOG=...).
TESTBED_LAST_NAME=
TESTBED_LAST_LOG=

log() { printf '[testbed %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pid_file() { printf '%s/%s.pid\n' "$PID_DIR" "$1"; }
log_file() { printf '%s/%s.log\n' "$LOG_DIR" "$1"; }

# read_pid NAME: print the pid recorded for NAME; fails when there is none.
read_pid() {
  local f pid
  f=$(pid_file "$1")
  [[ -r $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  printf '%s\n' "$pid"
}

# _proc_alive PID: the process exists and is not a zombie.
_proc_alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 0
  [[ $state != Z && $state != X ]]
}

# pid_alive NAME: the process recorded in pids/NAME.pid is running.
pid_alive() {
  local pid
  pid=$(read_pid "$1") || return 1
  _proc_alive "$pid"
}

# start_bg NAME cmd...: start cmd detached (own session, nohup, stdin closed), output appended
# to logs/NAME.log, pid written to pids/NAME.pid.
start_bg() {
  local name=$1 lf pid
  shift
  lf=$(log_file "$name")
  printf '==== %s starting: %s\n' "$(date '+%F %T')" "$*" >>"$lf"
  # Without job control the background child is no process-group leader, so setsid
  # does not fork and $! is the pid of the command itself.
  if command -v setsid >/dev/null 2>&1; then
    nohup setsid "$@" >>"$lf" 2>&1 </dev/null &
  else
    nohup "$@" >>"$lf" 2>&1 </dev/null &
  fi
  pid=$!
  disown "$pid" 2>/dev/null || true
  printf '%s\n' "$pid" >"$(pid_file "$name")"
  TESTBED_LAST_NAME=$name
  TESTBED_LAST_LOG=$lf
  log "started $name (pid $pid), log $lf"
}

# stop_pid NAME: SIGTERM the recorded pid (that pid only), wait up to 30 s, then SIGKILL;
# remove the pid file. Does nothing when there is no pid file.
stop_pid() {
  local name=$1 pid f i deadline
  f=$(pid_file "$name")
  if ! pid=$(read_pid "$name"); then
    rm -f "$f"
    return 0
  fi
  if _proc_alive "$pid"; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 30))
    while _proc_alive "$pid" && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if _proc_alive "$pid"; then
      log "$name (pid $pid) still running after 30 s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        _proc_alive "$pid" || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$f"
}

# wait_until DESC TIMEOUT cmd...: run cmd every second until it succeeds. Dies on the
# deadline, or as soon as the process last started by start_bg (or WAIT_NAME) has exited,
# naming its log file (or WAIT_LOG).
wait_until() {
  local desc=$1 timeout=$2 name lf deadline
  shift 2
  name=${WAIT_NAME:-$TESTBED_LAST_NAME}
  lf=${WAIT_LOG:-${TESTBED_LAST_LOG:-${name:+$(log_file "$name")}}}
  deadline=$((SECONDS + timeout))
  while ! "$@" >/dev/null 2>&1; do
    if [[ -n $name && -e $(pid_file "$name") ]] && ! pid_alive "$name"; then
      [[ -n $lf && -r $lf ]] && tail -n 20 "$lf" >&2
      die "$name exited while waiting for $desc; see ${lf:-$LOG_DIR}"
    fi
    if ((SECONDS >= deadline)); then
      [[ -n $lf && -r $lf ]] && tail -n 20 "$lf" >&2
      die "timed out after ${timeout}s waiting for $desc; see ${lf:-$LOG_DIR}"
    fi
    sleep 1
  done
}

# write_env NAME 'K=V'...: replace env.d/NAME.env with the given lines.
write_env() {
  local name=$1 f kv
  shift
  f=$ENV_DIR/$name.env
  for kv in "$@"; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "write_env $name: not KEY=VALUE: $kv"
  done
  printf '%s\n' "$@" >"$f.tmp.$$"
  mv -f "$f.tmp.$$" "$f"
}

# go_mod_version GO_MOD MODULE: the version the go.mod file GO_MOD requires for MODULE.
go_mod_version() {
  local v
  v=$(awk -v m="$2" '$1 == "require" && $2 == m { print $3; exit }
                     $1 == m && $2 ~ /^v/ { print $2; exit }' "$1")
  [[ -n $v ]] || die "no version for $2 in $1"
  printf '%s\n' "$v"
}

# find_go WHY: print the Go toolchain's path (`go` on PATH, else the machine's /usr/local/go);
# dies naming WHY when there is none.
find_go() {
  if command -v go >/dev/null 2>&1; then
    command -v go
  elif [[ -x /usr/local/go/bin/go ]]; then
    printf '%s\n' /usr/local/go/bin/go
  else
    die "no Go toolchain (go on PATH or /usr/local/go/bin/go): $1"
  fi
}

# --- installers and probes used by the data-service components ------------------------------

# port_open PORT: something on 127.0.0.1 accepts TCP connections on PORT.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# port_free_or_die NAME PORT: fail when PORT is taken by a process the testbed did not start.
port_free_or_die() {
  if port_open "$2"; then
    die "$1: 127.0.0.1:$2 is already in use by a process not started by the testbed (no live pids/$1.pid); stop it or free the port"
  fi
}

# _with_lock FILE cmd...: run cmd holding an exclusive flock on FILE (serialises installs
# between components started in parallel and between checkouts sharing the cache).
_with_lock() {
  local lock=$1 fd rc=0
  shift
  exec {fd}>"$lock"
  flock "$fd"
  "$@" || rc=$?
  exec {fd}>&-
  return "$rc"
}

# Debian packages are named NAME or NAME=UPSTREAM: UPSTREAM is the upstream version the project
# was tested with (epoch and Debian revision aside, matched as a prefix: `redis-server=7.0`
# accepts 5:7.0.15-1~deb12u10). A package that is installed at another version fails the
# install with both versions named, instead of running the tests against something untested.

_apt_name() { printf '%s\n' "${1%%=*}"; }

# _apt_upstream VERSION: VERSION without its epoch and Debian revision.
_apt_upstream() {
  local v=${1#*:}
  printf '%s\n' "${v%-*}"
}

_apt_missing() {
  local p
  for p; do
    dpkg-query -W -f='${Status}\n' "$(_apt_name "$p")" 2>/dev/null | grep -q '^install ok installed$' ||
      _apt_name "$p"
  done
}

# _apt_check_pins SPEC...: every NAME=UPSTREAM spec is installed at that upstream version.
_apt_check_pins() {
  local p name want got rc=0
  for p; do
    [[ $p == *=* ]] || continue
    name=${p%%=*}
    want=${p#*=}
    got=$(dpkg-query -W -f='${Version}' "$name" 2>/dev/null) || got=
    if [[ $(_apt_upstream "$got") != "$want"* ]]; then
      log "Debian package $name is at '${got:-not installed}', the testbed pins upstream $want"
      rc=1
    fi
  done
  return "$rc"
}

_apt_install_locked() {
  local missing stamp=$MIGRATE_CACHE/.apt-updated
  mapfile -t missing < <(_apt_missing "$@")
  ((${#missing[@]})) || return 0
  log "apt-get install ${missing[*]}"
  # Refresh the package lists once (again only when the last refresh is over an hour old),
  # and once more when an install fails on stale lists.
  if [[ -z $(find "$stamp" -mmin -60 2>/dev/null) ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || return 1
    touch "$stamp"
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >&2; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || return 1
    touch "$stamp"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}" >&2 || return 1
  fi
}

# apt_ensure SPEC...: install the Debian packages that are missing (needs root); SPEC is NAME
# or NAME=UPSTREAM (see above). Dies naming the package when one is at an unpinned version.
apt_ensure() {
  local missing
  mapfile -t missing < <(_apt_missing "$@")
  if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing Debian packages: ${missing[*]} (run as root, or apt-get install them)"
    _with_lock "$MIGRATE_CACHE/.apt.lock" _apt_install_locked "$@" ||
      die "apt-get install ${missing[*]} failed"
  fi
  _apt_check_pins "$@" || die "Debian packages at versions the testbed does not pin (see above)"
}

_venv_install_locked() {
  local dir=$1
  shift
  [[ -e $dir/.complete ]] && return 0
  rm -rf "$dir"
  log "creating venv $dir: pip install $*"
  python3 -m venv "$dir" >&2 || return 1
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@" >&2 || return 1
  touch "$dir/.complete"
}

# venv_ensure DIR PIP_ARG...: a Python venv at DIR with the packages installed (created once;
# a half-made venv is rebuilt).
venv_ensure() {
  local dir=$1
  shift
  [[ -e $dir/.complete ]] && return 0
  apt_ensure "python3=$PYTHON_DEBIAN_VERSION" "python3-venv=$PYTHON_DEBIAN_VERSION"
  mkdir -p "$(dirname "$dir")"
  _with_lock "$dir.lock" _venv_install_locked "$dir" "$@" || die "pip install $* into $dir failed"
}

# es_smoke URL: a real round trip through the Elasticsearch/OpenSearch REST API: _bulk of two
# documents into a scratch index, GET by id, _count and _search, then delete the index.
# Prints what failed and returns 1 on the first failure.
es_smoke() {
  local url=$1 idx out
  idx=testbed-smoke-$$-$RANDOM
  _es_step() {
    local what=$1 expect=$2
    shift 2
    if ! out=$(curl -sS -m 30 "$@" 2>&1) || ! grep -q -- "$expect" <<<"$out"; then
      log "smoke test on $url failed at $what (expected $expect): ${out:0:500}"
      curl -sS -m 10 -o /dev/null -X DELETE "$url/$idx" 2>/dev/null || true
      return 1
    fi
  }
  _es_step _bulk '"errors":false' -X POST "$url/_bulk?refresh=true" \
    -H 'Content-Type: application/x-ndjson' --data-binary @- <<EOT || return 1
{"index":{"_index":"$idx","_id":"1"}}
{"title":"hello testbed","n":1}
{"index":{"_index":"$idx","_id":"2"}}
{"title":"second document","n":2}
EOT
  _es_step "GET _doc/1" '"found":true' "$url/$idx/_doc/1" || return 1
  _es_step _count '"count":2' "$url/$idx/_count" || return 1
  _es_step _search '"_id":"1"' -X POST "$url/$idx/_search" -H 'Content-Type: application/json' \
    -d '{"query":{"match":{"title":"hello"}}}' || return 1
  _es_step "DELETE index" '"acknowledged":true' -X DELETE "$url/$idx" || return 1
}

# Every component, in start order (down.sh stops them in reverse); used by up.sh and down.sh.
# shellcheck disable=SC2034
TESTBED_ALL_COMPONENTS=(tools redis mariadb opensearch osmem noida nlp k8s helm node)

# collect_env: concatenate env.d/*.env into $TESTBED_DIR/env (what `source .testbed/env` reads).
collect_env() {
  local f out=$TESTBED_DIR/env
  {
    printf '# Written by tests/testbed/up.sh and down.sh from env.d/*.env\n'
    for f in "$ENV_DIR"/*.env; do
      [[ -e $f ]] || continue
      cat "$f"
    done
  } >"$out.tmp.$$"
  mv -f "$out.tmp.$$" "$out"
}

# poll_briefly SECONDS cmd...: retry cmd every 0.1 s for up to SECONDS; succeeds as soon as cmd
# does. Put before wait_until so a fast service (a restart mid-test) is seen ready in tenths of a
# second instead of whole ones; wait_until still owns the deadline and the error.
poll_briefly() {
  local n=$(($1 * 10)) i
  shift
  for ((i = 0; i < n; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}
