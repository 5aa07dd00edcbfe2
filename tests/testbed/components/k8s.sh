#!/usr/bin/env bash
# Kubernetes control plane for the testbed: etcd + kube-apiserver (and kubectl), nothing else.
#
#   k8s.sh up | down | status
#
# Both binaries are built from their Go modules (pinned in ../controlplane/go.mod and go.sum)
# into $MIGRATE_CACHE/bin/{kube-apiserver,etcd}-VERSION, once per version; a cold build takes
# 6-10 minutes on two cores (etcd 1-2, kube-apiserver 5-8), later `up`s start in seconds.
# The building, certificates and start-up are shared with node.sh (../kube-lib.sh).
#
# What this control plane does NOT run: kubelet, scheduler, controller-manager. So
#  - no Pod ever runs; Deployments/Jobs/ReplicaSets are stored but never reconciled;
#  - no `default` ServiceAccount is created in new namespaces, and no token controller runs:
#    tests create the ServiceAccounts they use and get tokens with the TokenRequest API
#    (`kubectl create token SA`), which works here;
#  - no garbage collector (ownerReferences do not cascade) and no namespace controller
#    (a deleted namespace stays Terminating forever): tests delete what they create, or use
#    a fresh namespace name per run (emptying spec.finalizers through the namespace's
#    /finalize subresource removes it at once, but leaves its objects behind in etcd).
#
# The ServiceAccount admission plugin is disabled: with no controller-manager there is no
# `default` ServiceAccount, and the plugin would reject every Pod that names none (and every
# Pod whose ServiceAccount does not exist yet). Disabling it only affects Pod admission;
# ServiceAccounts, TokenRequest and token authentication work as in any cluster.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"
# shellcheck source-path=SCRIPTDIR source=../kube-lib.sh
source "$TESTBED_LIB_DIR/kube-lib.sh"

K8S_DIR=$TESTBED_DIR/k8s
PKI_DIR=$K8S_DIR/pki
ETCD_DATA=$DATA_DIR/k8s-etcd
KUBECONFIG_FILE=$K8S_DIR/admin.kubeconfig
TOKEN_FILE=$K8S_DIR/admin.token
TOKENS_CSV=$K8S_DIR/tokens.csv

# The ports are fixed (tests and the README name them); the variables only let a second
# checkout try this script beside a running testbed.
ETCD_CLIENT_PORT=${K8S_ETCD_CLIENT_PORT:-12379}
ETCD_PEER_PORT=${K8S_ETCD_PEER_PORT:-12380}
APISERVER_PORT=${K8S_APISERVER_PORT:-6443}
ETCD_URL=http://127.0.0.1:$ETCD_CLIENT_PORT
K8S_SERVER=https://127.0.0.1:$APISERVER_PORT
SERVICE_CIDR=10.0.0.0/24
SERVICE_IP=10.0.0.1

ETCD_NAME=k8s-etcd
APISERVER_NAME=k8s-apiserver

mkdir -p "$K8S_DIR"

ensure_token() {
  local token
  token=$(kube_token "$TOKEN_FILE")
  # token,user,uid,"group1,group2"
  (umask 077 && printf '%s,admin,admin,"system:masters"\n' "$token" >"$TOKENS_CSV")
}

apiserver_ready() { kube_apiserver_ready "$K8S_SERVER" "$PKI_DIR/ca.crt" "$TOKEN_FILE"; }

default_ns_exists() {
  kube_api_get "$K8S_SERVER" "$PKI_DIR/ca.crt" "$TOKEN_FILE" /api/v1/namespaces/default >/dev/null 2>&1
}

# --- commands ---------------------------------------------------------------------------

cmd_up() {
  # kubectl is built beside the apiserver, at the same version: tests drive `kubectl scale`
  # and `kubectl get --raw` as a user would, and a fresh machine has no kubectl of its own.
  kube_ensure_binaries k8s-build kube-apiserver kubectl
  kube_ensure_pki "$PKI_DIR" k8s-pki "$SERVICE_IP"
  ensure_token
  kube_start_etcd "$ETCD_NAME" "$ETCD_DATA" "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT"
  # The ServiceAccount admission plugin is off (see the top of this file).
  # --endpoint-reconciler-type=none: nothing could route to the `kubernetes` Service anyway,
  # and an Endpoints object may not hold a loopback address.
  kube_start_apiserver "$APISERVER_NAME" "$APISERVER_PORT" "$ETCD_URL" "$PKI_DIR" \
    "$TOKENS_CSV" "$TOKEN_FILE" "$SERVICE_CIDR" \
    --disable-admission-plugins=ServiceAccount \
    --endpoint-reconciler-type=none
  kube_write_kubeconfig "$KUBECONFIG_FILE" "$K8S_SERVER" "$PKI_DIR/ca.crt" "$(<"$TOKEN_FILE")"
  WAIT_NAME=$APISERVER_NAME WAIT_LOG=$(log_file "$APISERVER_NAME") \
    wait_until "namespace default on $K8S_SERVER" 60 default_ns_exists
  write_env k8s \
    "KUBECONFIG=$KUBECONFIG_FILE" \
    "KUBECTL_BIN=$(kube_bin kubectl)" \
    "K8S_SERVER=$K8S_SERVER" \
    "K8S_CA_FILE=$PKI_DIR/ca.crt"
  log "k8s up: $K8S_SERVER (kube-apiserver $K8S_VERSION, etcd $ETCD_VERSION), KUBECONFIG=$KUBECONFIG_FILE"
}

cmd_down() {
  stop_pid "$APISERVER_NAME"
  stop_pid "$ETCD_NAME"
  rm -f "$ENV_DIR/k8s.env"
  log "k8s down"
}

cmd_status() {
  local rc=0 pid
  if pid=$(read_pid "$ETCD_NAME") && pid_alive "$ETCD_NAME" && kube_etcd_healthy "$ETCD_URL"; then
    echo "etcd $ETCD_VERSION: running (pid $pid), healthy on $ETCD_URL"
  else
    echo "etcd $ETCD_VERSION: not running"
    rc=3
  fi
  if pid=$(read_pid "$APISERVER_NAME") && pid_alive "$APISERVER_NAME" &&
    [[ -s $TOKEN_FILE ]] && apiserver_ready; then
    echo "kube-apiserver $K8S_VERSION: running (pid $pid), ready on $K8S_SERVER"
  else
    echo "kube-apiserver $K8S_VERSION: not running or not ready"
    rc=3
  fi
  return "$rc"
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
