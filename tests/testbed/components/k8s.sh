#!/usr/bin/env bash
# Kubernetes control plane for the testbed: etcd + kube-apiserver, nothing else.
#
#   k8s.sh up | down | status
#
# Both binaries are built from their Go modules (pinned in ../controlplane/go.mod and go.sum)
# into $MIGRATE_CACHE/bin/{kube-apiserver,etcd}-VERSION, once per version; a cold build takes
# 6-10 minutes on two cores (etcd 1-2, kube-apiserver 5-8), later `up`s start in seconds.
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

MOD_DIR=$TESTBED_LIB_DIR/controlplane
BIN_DIR=$MIGRATE_CACHE/bin
K8S_DIR=$TESTBED_DIR/k8s
PKI_DIR=$K8S_DIR/pki
ETCD_DATA=$DATA_DIR/k8s-etcd
KUBECONFIG_FILE=$K8S_DIR/admin.kubeconfig
TOKEN_FILE=$K8S_DIR/admin.token
TOKENS_CSV=$K8S_DIR/tokens.csv

ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380
APISERVER_PORT=6443
ETCD_URL=http://127.0.0.1:$ETCD_CLIENT_PORT
K8S_SERVER=https://127.0.0.1:$APISERVER_PORT
SERVICE_CIDR=10.0.0.0/24
SA_ISSUER=https://kubernetes.default.svc.cluster.local

ETCD_NAME=k8s-etcd
APISERVER_NAME=k8s-apiserver

mkdir -p "$K8S_DIR" "$BIN_DIR"

# --- versions and binaries --------------------------------------------------------------

# mod_version MODULE: the version go.mod requires for MODULE.
mod_version() {
  local v
  v=$(awk -v m="$1" '$1 == "require" && $2 == m { print $3; exit }
                     $1 == m && $2 ~ /^v/ { print $2; exit }' "$MOD_DIR/go.mod")
  [[ -n $v ]] || die "no version for $1 in $MOD_DIR/go.mod"
  printf '%s\n' "$v"
}

K8S_VERSION=$(mod_version k8s.io/kubernetes)
ETCD_VERSION=$(mod_version go.etcd.io/etcd/server/v3)
APISERVER_BIN=$BIN_DIR/kube-apiserver-$K8S_VERSION
ETCD_BIN=$BIN_DIR/etcd-$ETCD_VERSION

find_go() {
  if command -v go >/dev/null 2>&1; then
    command -v go
  elif [[ -x /usr/local/go/bin/go ]]; then
    printf '%s\n' /usr/local/go/bin/go
  else
    die "no Go toolchain (go on PATH or /usr/local/go/bin/go); Go >= 1.25 is needed to build the control plane"
  fi
}

# go_build PKG OUT [LDFLAGS]: build PKG (a tool of the controlplane module) into OUT.
go_build() {
  local pkg=$1 out=$2 ldflags="-s -w ${3:-}" gobin lf start
  gobin=$(find_go)
  lf=$(log_file k8s-build)
  log "building $(basename "$out") from $pkg (cold: minutes), log $lf"
  start=$SECONDS
  if ! (cd "$MOD_DIR" &&
    GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 \
      "$gobin" build -trimpath -ldflags="$ldflags" -o "$out.tmp.$$" "$pkg") >>"$lf" 2>&1; then
    rm -f "$out.tmp.$$"
    tail -n 30 "$lf" >&2
    die "building $pkg failed; see $lf"
  fi
  mv -f "$out.tmp.$$" "$out"
  log "built $out in $((SECONDS - start))s"
}

ensure_binaries() {
  [[ -x $APISERVER_BIN && -x $ETCD_BIN ]] && return 0
  # One build at a time (another checkout may share the cache); the lock fd is open only in
  # this subshell and the go processes, never in the services started later.
  (
    flock -w 3600 9 || die "could not lock $BIN_DIR/.build.lock"
    if [[ ! -x $ETCD_BIN ]]; then
      go_build go.etcd.io/etcd/server/v3 "$ETCD_BIN"
    fi
    if [[ ! -x $APISERVER_BIN ]]; then
      local minor=${K8S_VERSION#v*.}
      minor=${minor%%.*}
      local vpkg ldflags=""
      # What /version reports (otherwise v0.0.0-master).
      for vpkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
        ldflags+=" -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
      done
      go_build k8s.io/kubernetes/cmd/kube-apiserver "$APISERVER_BIN" "$ldflags"
    fi
  ) 9>"$BIN_DIR/.build.lock"
}

# --- certificates, keys, token ----------------------------------------------------------

ensure_pki() {
  if [[ -s $PKI_DIR/ca.crt && -s $PKI_DIR/apiserver.crt && -s $PKI_DIR/apiserver.key &&
    -s $PKI_DIR/sa.key && -s $PKI_DIR/sa.pub ]]; then
    return 0
  fi
  apt_ensure openssl=3.0
  log "generating CA, serving certificate and service-account keys in $PKI_DIR"
  local tmp
  tmp=$(mktemp -d "$K8S_DIR/pki.tmp.XXXXXX")
  # One && chain: `set -e` does not apply inside a subshell followed by `||`.
  (
    cd "$tmp" &&
      openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -keyout ca.key -out ca.crt -subj "/CN=testbed-kubernetes-ca" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" &&
      openssl req -newkey rsa:2048 -nodes -sha256 \
        -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" &&
      printf '%s\n' \
        "basicConstraints=CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
        >apiserver.ext &&
      openssl x509 -req -sha256 -days 3650 -in apiserver.csr -CA ca.crt -CAkey ca.key \
        -CAcreateserial -extfile apiserver.ext -out apiserver.crt &&
      openssl genrsa -out sa.key 2048 &&
      openssl rsa -in sa.key -pubout -out sa.pub &&
      rm -f apiserver.csr apiserver.ext ca.srl &&
      chmod 600 ./*.key
  ) >>"$(log_file k8s-pki)" 2>&1 || {
    rm -rf "$tmp"
    die "openssl failed; see $(log_file k8s-pki)"
  }
  rm -rf "$PKI_DIR"
  mv "$tmp" "$PKI_DIR"
}

ensure_token() {
  if [[ ! -s $TOKEN_FILE ]]; then
    (umask 077 && openssl rand -hex 32 >"$TOKEN_FILE")
  fi
  local token
  token=$(<"$TOKEN_FILE")
  # token,user,uid,"group1,group2"
  (umask 077 && printf '%s,admin,admin,"system:masters"\n' "$token" >"$TOKENS_CSV")
}

write_kubeconfig() {
  local token ca tmp
  token=$(<"$TOKEN_FILE")
  ca=$(base64 -w0 <"$PKI_DIR/ca.crt")
  tmp=$KUBECONFIG_FILE.tmp.$$
  (umask 077 && cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: $K8S_SERVER
    certificate-authority-data: $ca
users:
- name: admin
  user:
    token: $token
contexts:
- name: testbed
  context:
    cluster: testbed
    user: admin
    namespace: default
current-context: testbed
EOF
  )
  mv -f "$tmp" "$KUBECONFIG_FILE"
}

# --- probes -----------------------------------------------------------------------------

etcd_healthy() {
  curl -fsS --max-time 3 "$ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"'
}

api_get() {
  curl -fsS --max-time 5 --cacert "$PKI_DIR/ca.crt" \
    -H "Authorization: Bearer $(<"$TOKEN_FILE")" "$K8S_SERVER$1"
}

apiserver_ready() { [[ $(api_get /readyz 2>/dev/null) == ok ]]; }

default_ns_exists() { api_get /api/v1/namespaces/default >/dev/null 2>&1; }

# --- etcd -------------------------------------------------------------------------------

start_etcd() {
  if pid_alive "$ETCD_NAME"; then
    WAIT_NAME=$ETCD_NAME WAIT_LOG=$(log_file "$ETCD_NAME") \
      wait_until "etcd health on $ETCD_URL" 60 etcd_healthy
    return 0
  fi
  stop_pid "$ETCD_NAME" # clears a stale pid file
  port_free_or_die "$ETCD_NAME" "$ETCD_CLIENT_PORT"
  port_free_or_die "$ETCD_NAME" "$ETCD_PEER_PORT"
  mkdir -p "$ETCD_DATA"
  chmod 700 "$ETCD_DATA"
  # --unsafe-no-fsync: throwaway test data; a lost write only matters on power loss.
  start_bg "$ETCD_NAME" "$ETCD_BIN" \
    --name=testbed \
    --data-dir="$ETCD_DATA" \
    --listen-client-urls="$ETCD_URL" \
    --advertise-client-urls="$ETCD_URL" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="testbed=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state=new \
    --unsafe-no-fsync \
    --log-level=warn
  wait_until "etcd health on $ETCD_URL" 60 etcd_healthy
}

# --- kube-apiserver ---------------------------------------------------------------------

start_apiserver() {
  if pid_alive "$APISERVER_NAME"; then
    WAIT_NAME=$APISERVER_NAME WAIT_LOG=$(log_file "$APISERVER_NAME") \
      wait_until "kube-apiserver /readyz on $K8S_SERVER" 180 apiserver_ready
    return 0
  fi
  stop_pid "$APISERVER_NAME"
  port_free_or_die "$APISERVER_NAME" "$APISERVER_PORT"
  # CRDs with CEL validation rules and the /scale subresource are GA and on by default.
  # --endpoint-reconciler-type=none: nothing could route to the `kubernetes` Service anyway,
  # and an Endpoints object may not hold a loopback address.
  start_bg "$APISERVER_NAME" "$APISERVER_BIN" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$APISERVER_PORT" \
    --etcd-servers="$ETCD_URL" \
    --tls-cert-file="$PKI_DIR/apiserver.crt" \
    --tls-private-key-file="$PKI_DIR/apiserver.key" \
    --client-ca-file="$PKI_DIR/ca.crt" \
    --token-auth-file="$TOKENS_CSV" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer="$SA_ISSUER" \
    --service-account-key-file="$PKI_DIR/sa.pub" \
    --service-account-signing-key-file="$PKI_DIR/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --disable-admission-plugins=ServiceAccount \
    --endpoint-reconciler-type=none \
    --allow-privileged=true \
    --profiling=false \
    --cert-dir="$K8S_DIR/apiserver-certs"
  wait_until "kube-apiserver /readyz on $K8S_SERVER" 180 apiserver_ready
}

# --- commands ---------------------------------------------------------------------------

cmd_up() {
  ensure_binaries
  ensure_pki
  ensure_token
  start_etcd
  start_apiserver
  write_kubeconfig
  WAIT_NAME=$APISERVER_NAME WAIT_LOG=$(log_file "$APISERVER_NAME") \
    wait_until "namespace default on $K8S_SERVER" 60 default_ns_exists
  write_env k8s \
    "KUBECONFIG=$KUBECONFIG_FILE" \
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
  if pid=$(read_pid "$ETCD_NAME") && pid_alive "$ETCD_NAME" && etcd_healthy; then
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
