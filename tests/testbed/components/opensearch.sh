#!/usr/bin/env bash
# OpenSearch for the testbed: the integration-test distribution from Maven Central
# (org.opensearch.distribution.integ-test-zip:opensearch:VERSION:zip), one node on
# 127.0.0.1:9250 (transport 9350), no security plugin, disk watermarks off.
#
#   opensearch.sh up | down | status | check
#
# OPENSEARCH_VERSION (default 3.8.0) picks the version; 3.x needs Java 21+ and runs on
# Temurin 25, 2.x runs on Java 17 (OPENSEARCH_JAVA_HOME overrides either). The 2.19 integ-test
# zip ships no modules beyond transport-netty4 (no analysis-common, painless, reindex, ...);
# the 3.x one ships all of them. The zip is fetched once with Maven into ~/.m2 and unpacked
# into $MIGRATE_CACHE/opensearch/; config, data and logs live in the state dir.
#
# OpenSearch refuses to run as root; as root it is started inside a user namespace where it
# is uid 1000 (unshare --user), which keeps root's file access and changes nothing else.
# `check` runs a _bulk/GET/_count/_search round trip on a scratch index.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

NAME=opensearch
VERSION=${OPENSEARCH_VERSION:-3.8.0}
HTTP_PORT=9250
TRANSPORT_PORT=9350
URL=http://127.0.0.1:$HTTP_PORT
ARTIFACT=org.opensearch.distribution.integ-test-zip:opensearch:$VERSION:zip
INSTALL_ROOT=$MIGRATE_CACHE/opensearch
HOME_DIR=$INSTALL_ROOT/opensearch-$VERSION
STATE=$DATA_DIR/$NAME
CONF_DIR=$STATE/config
# Per version: an index written by a newer version cannot be read by an older one.
NODE_DATA=$STATE/data-$VERSION
START_TIMEOUT=${OPENSEARCH_START_TIMEOUT:-240}

java_home() {
  local major=${VERSION%%.*} jh
  if [[ -n ${OPENSEARCH_JAVA_HOME:-} ]]; then
    printf '%s\n' "$OPENSEARCH_JAVA_HOME"
    return
  fi
  if ((major >= 3)); then
    for jh in /usr/lib/jvm/temurin-25-jdk-amd64 /usr/lib/jvm/temurin-21-jdk-amd64 \
      /usr/lib/jvm/java-21-openjdk-amd64; do
      [[ -x $jh/bin/java ]] && { printf '%s\n' "$jh"; return; }
    done
    die "OpenSearch $VERSION needs Java 21+: none found under /usr/lib/jvm (set OPENSEARCH_JAVA_HOME, or OPENSEARCH_VERSION=2.19.6 for Java 17)"
  fi
  for jh in /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-21-openjdk-amd64; do
    [[ -x $jh/bin/java ]] && { printf '%s\n' "$jh"; return; }
  done
  apt_ensure openjdk-17-jre-headless=17.0
  printf '%s\n' /usr/lib/jvm/java-17-openjdk-amd64
}

_install_locked() {
  local tmp zip
  [[ -x $HOME_DIR/bin/opensearch ]] && return 0
  tmp=$(mktemp -d "$INSTALL_ROOT/.unpack.XXXXXX")
  log "fetching $ARTIFACT with Maven"
  if ! mvn -B -q dependency:copy -Dartifact="$ARTIFACT" -DoutputDirectory="$tmp" \
    -Dmdep.overWriteReleases=true >"$tmp/mvn.log" 2>&1; then
    cat "$tmp/mvn.log" >&2
    rm -rf "$tmp"
    return 1
  fi
  zip=$tmp/opensearch-$VERSION.zip
  unzip -q "$zip" -d "$tmp" || { rm -rf "$tmp"; return 1; }
  [[ -x $tmp/opensearch-$VERSION/bin/opensearch ]] || { rm -rf "$tmp"; return 1; }
  rm -rf "$HOME_DIR"
  mv "$tmp/opensearch-$VERSION" "$HOME_DIR"
  rm -rf "$tmp"
  log "unpacked OpenSearch $VERSION into $HOME_DIR"
}

install() {
  [[ -x $HOME_DIR/bin/opensearch ]] && return 0
  apt_ensure maven=3.8 unzip=6.0 curl=7.88
  mkdir -p "$INSTALL_ROOT"
  _with_lock "$INSTALL_ROOT/.install-$VERSION.lock" _install_locked ||
    die "could not fetch/unpack $ARTIFACT"
  if [[ -d $HOME_DIR/plugins/opensearch-security ]]; then
    die "$HOME_DIR has the security plugin; the testbed expects plain HTTP"
  fi
}

write_config() {
  mkdir -p "$CONF_DIR/jvm.options.d" "$NODE_DATA" "$STATE/logs" "$STATE/tmp"
  # Start from the distribution's files (log4j2, jvm.options), with the relative paths the
  # JVM would resolve inside the shared install made absolute and pointed at the state dir.
  local f
  for f in "$HOME_DIR"/config/*; do
    case ${f##*/} in
    opensearch.yml | jvm.options | jvm.options.d) ;;
    *) cp -rf "$f" "$CONF_DIR/" ;;
    esac
  done
  sed -e "s#file=logs/gc.log#file=$STATE/logs/gc.log#" \
    -e "s#HeapDumpPath=data#HeapDumpPath=$STATE/logs#" \
    -e "s#ErrorFile=logs/#ErrorFile=$STATE/logs/#" \
    "$HOME_DIR/config/jvm.options" >"$CONF_DIR/jvm.options"
  # Heap 512m..1g. C1 only: the node boots in about 2/3 of the time on two cores, which
  # matters more here than peak throughput. No pre-touch of the heap.
  cat >"$CONF_DIR/jvm.options.d/testbed.options" <<EOF
-Xms512m
-Xmx1g
-XX:TieredStopAtLevel=1
-XX:-AlwaysPreTouch
EOF
  cat >"$CONF_DIR/opensearch.yml" <<EOF
# Written by tests/testbed/components/opensearch.sh; rewritten on every up.
cluster.name: testbed
node.name: testbed
path.data: $NODE_DATA
path.logs: $STATE/logs
network.host: 127.0.0.1
http.port: $HTTP_PORT
transport.port: $TRANSPORT_PORT
discovery.type: single-node
# A nearly full disk must not turn indexes read-only or unassign shards.
cluster.routing.allocation.disk.threshold_enabled: false
# One node: replicas could never be assigned; with none, health is green.
cluster.default_number_of_replicas: 0
EOF
  # Older versions do not know cluster.default_number_of_replicas.
  if [[ ${VERSION%%.*} -lt 2 ]]; then
    sed -i '/default_number_of_replicas/d' "$CONF_DIR/opensearch.yml"
  fi
}

healthy() {
  curl -sf -m 5 -o /dev/null "$URL/_cluster/health?wait_for_status=yellow&timeout=2s"
}

cmd_up() {
  local jh runner=()
  if pid_alive "$NAME"; then
    WAIT_NAME=$NAME wait_until "OpenSearch health yellow on $URL" "$START_TIMEOUT" healthy
    write_env "$NAME" "ES_URL=$URL"
    log "opensearch already running (pid $(read_pid "$NAME")): $URL"
    return 0
  fi
  stop_pid "$NAME" # drops a stale pid file
  install
  jh=$(java_home)
  port_free_or_die "$NAME" "$HTTP_PORT"
  port_free_or_die "$NAME" "$TRANSPORT_PORT"
  write_config
  if [[ $(id -u) == 0 ]]; then
    unshare --user --map-user=1000 --map-group=1000 true 2>/dev/null ||
      die "OpenSearch refuses to run as root and 'unshare --user' does not work here; run the testbed as a normal user"
    runner=(unshare --user --map-user=1000 --map-group=1000)
  fi
  # env, unshare and bin/opensearch all exec (it ends in `exec java`): the pid is the JVM's.
  start_bg "$NAME" env OPENSEARCH_JAVA_HOME="$jh" OPENSEARCH_PATH_CONF="$CONF_DIR" \
    OPENSEARCH_TMPDIR="$STATE/tmp" "${runner[@]}" "$HOME_DIR/bin/opensearch"
  wait_until "OpenSearch health yellow on $URL" "$START_TIMEOUT" healthy
  es_smoke "$URL" || die "OpenSearch on $URL answers health but failed the _bulk/GET/_search smoke test; see $(log_file "$NAME")"
  write_env "$NAME" "ES_URL=$URL"
  log "opensearch up: $URL (OpenSearch $VERSION on $jh)"
}

cmd_down() {
  stop_pid "$NAME"
  rm -f "$ENV_DIR/$NAME.env"
  log "opensearch down"
}

cmd_status() {
  local pid
  if pid=$(read_pid "$NAME") && pid_alive "$NAME" && healthy; then
    echo "opensearch $VERSION: running (pid $pid), health yellow/green on $URL"
  else
    echo "opensearch: not running"
    return 3
  fi
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
check) es_smoke "$URL" && echo "opensearch: _bulk/GET/_count/_search OK on $URL" ;;
*)
  echo "usage: $0 up|down|status|check" >&2
  exit 2
  ;;
esac
