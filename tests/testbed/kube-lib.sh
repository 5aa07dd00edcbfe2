# shellcheck shell=bash
# Shared by components/k8s.sh (etcd + kube-apiserver for the API tests) and components/node.sh
# (a whole single-node cluster): building the Kubernetes binaries pinned in controlplane/go.mod,
# certificates, kubeconfigs, and starting etcd and kube-apiserver on given ports. Source it
# after lib.sh; like lib.sh it changes no shell option.

KUBE_MOD_DIR=$TESTBED_LIB_DIR/controlplane
KUBE_BIN_DIR=$MIGRATE_CACHE/bin
mkdir -p "$KUBE_BIN_DIR"

# kube_mod_version MODULE: the version controlplane/go.mod requires for MODULE.
kube_mod_version() { go_mod_version "$KUBE_MOD_DIR/go.mod" "$1"; }

K8S_VERSION=$(kube_mod_version k8s.io/kubernetes)
ETCD_VERSION=$(kube_mod_version go.etcd.io/etcd/server/v3)
ETCD_BIN=$KUBE_BIN_DIR/etcd-$ETCD_VERSION

# kube_bin NAME: where the cache keeps k8s.io/kubernetes/cmd/NAME at the pinned version.
kube_bin() { printf '%s/%s-%s\n' "$KUBE_BIN_DIR" "$1" "$K8S_VERSION"; }

# kube_go_build PKG OUT LOGNAME [LDFLAGS]: build PKG (a tool of the controlplane module) into
# OUT, the compiler's output appended to logs/LOGNAME.log.
kube_go_build() {
  local pkg=$1 out=$2 lf ldflags="-s -w ${4:-}" gobin start
  gobin=$(find_go "Go >= 1.25 is needed to build the control plane")
  lf=$(log_file "$3")
  log "building $(basename "$out") from $pkg (cold: minutes), log $lf"
  start=$SECONDS
  if ! (cd "$KUBE_MOD_DIR" &&
    GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 \
      "$gobin" build -trimpath -ldflags="$ldflags" -o "$out.tmp.$$" "$pkg") >>"$lf" 2>&1; then
    rm -f "$out.tmp.$$"
    tail -n 30 "$lf" >&2
    die "building $pkg failed; see $lf"
  fi
  mv -f "$out.tmp.$$" "$out"
  log "built $out in $((SECONDS - start))s"
}

# What /version (and the kubelet's node status) reports; otherwise v0.0.0-master.
kube_version_ldflags() {
  local minor=${K8S_VERSION#v*.} vpkg ldflags=""
  minor=${minor%%.*}
  for vpkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
    ldflags+=" -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
  done
  printf '%s\n' "$ldflags"
}

# kube_ensure_binaries LOGNAME CMD...: etcd, and each k8s.io/kubernetes/cmd/CMD, built into the
# cache unless already there. One build at a time (another checkout may share the cache); the
# lock fd is open only in this subshell and the go processes, never in the services started
# later.
kube_ensure_binaries() {
  local logname=$1 cmd missing=0
  shift
  [[ -x $ETCD_BIN ]] || missing=1
  for cmd; do [[ -x $(kube_bin "$cmd") ]] || missing=1; done
  ((missing)) || return 0
  (
    flock -w 3600 9 || die "could not lock $KUBE_BIN_DIR/.build.lock"
    if [[ ! -x $ETCD_BIN ]]; then
      kube_go_build go.etcd.io/etcd/server/v3 "$ETCD_BIN" "$logname"
    fi
    for cmd; do
      if [[ ! -x $(kube_bin "$cmd") ]]; then
        kube_go_build "k8s.io/kubernetes/cmd/$cmd" "$(kube_bin "$cmd")" "$logname" \
          "$(kube_version_ldflags)"
      fi
    done
  ) 9>"$KUBE_BIN_DIR/.build.lock"
}

# --- certificates, kubeconfigs ----------------------------------------------------------

# kube_ensure_pki DIR LOGNAME SERVICE_IP: a CA, the apiserver's serving certificate (for
# 127.0.0.1, SERVICE_IP and the kubernetes.default names) and the service-account key pair in
# DIR (ca.crt/key, apiserver.crt/key, sa.key/pub); made once, kept across runs.
kube_ensure_pki() {
  local dir=$1 logname=$2 service_ip=$3 tmp
  if [[ -s $dir/ca.crt && -s $dir/apiserver.crt && -s $dir/apiserver.key &&
    -s $dir/sa.key && -s $dir/sa.pub ]]; then
    return 0
  fi
  apt_ensure openssl=3.0
  log "generating CA, serving certificate and service-account keys in $dir"
  mkdir -p "$(dirname "$dir")"
  tmp=$(mktemp -d "$dir.tmp.XXXXXX")
  # One && chain: `set -e` does not apply inside a subshell followed by `||`.
  (
    cd "$tmp" &&
      openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -keyout ca.key -out ca.crt -subj "/CN=testbed-kubernetes-ca" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" &&
      kube_issue_cert . apiserver "/CN=kube-apiserver" serverAuth \
        "IP:127.0.0.1,IP:$service_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" &&
      openssl genrsa -out sa.key 2048 &&
      openssl rsa -in sa.key -pubout -out sa.pub &&
      chmod 600 ./*.key
  ) >>"$(log_file "$logname")" 2>&1 || {
    rm -rf "$tmp"
    die "openssl failed; see $(log_file "$logname")"
  }
  rm -rf "$dir"
  mv "$tmp" "$dir"
}

# kube_issue_cert DIR NAME SUBJECT EKU [SANS]: DIR/NAME.crt and DIR/NAME.key signed by
# DIR/ca.{crt,key}; EKU is serverAuth or clientAuth, SANS an openssl subjectAltName list.
kube_issue_cert() {
  local dir=$1 name=$2 subject=$3 eku=$4 sans=${5:-}
  (
    cd "$dir" &&
      openssl req -newkey rsa:2048 -nodes -sha256 \
        -keyout "$name.key" -out "$name.csr" -subj "$subject" &&
      {
        printf '%s\n' "basicConstraints=CA:FALSE" \
          "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=$eku"
        [[ -z $sans ]] || printf 'subjectAltName=%s\n' "$sans"
      } >"$name.ext" &&
      openssl x509 -req -sha256 -days 3650 -in "$name.csr" -CA ca.crt -CAkey ca.key \
        -CAcreateserial -extfile "$name.ext" -out "$name.crt" &&
      rm -f "$name.csr" "$name.ext" ca.srl &&
      chmod 600 "$name.key"
  )
}

# kube_write_kubeconfig FILE SERVER CA_FILE TOKEN [NAMESPACE]: a kubeconfig authenticating with
# a bearer token.
kube_write_kubeconfig() {
  local file=$1 server=$2 ca_file=$3 token=$4 ns=${5:-default} ca tmp
  ca=$(base64 -w0 <"$ca_file")
  tmp=$file.tmp.$$
  (umask 077 && cat >"$tmp" <<EOT
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: $server
    certificate-authority-data: $ca
users:
- name: user
  user:
    token: $token
contexts:
- name: testbed
  context:
    cluster: testbed
    user: user
    namespace: $ns
current-context: testbed
EOT
  )
  mv -f "$tmp" "$file"
}

# kube_token FILE: the hex token in FILE, made once.
kube_token() {
  [[ -s $1 ]] || (umask 077 && openssl rand -hex 32 >"$1")
  cat "$1"
}

# --- etcd and kube-apiserver ------------------------------------------------------------

# kube_etcd_healthy URL
kube_etcd_healthy() {
  curl -fsS --max-time 3 "$1/health" 2>/dev/null | grep -q '"health":"true"'
}

# kube_api_get SERVER CA_FILE TOKEN_FILE PATH
kube_api_get() {
  curl -fsS --max-time 5 --cacert "$2" -H "Authorization: Bearer $(<"$3")" "$1$4"
}

# kube_apiserver_ready SERVER CA_FILE TOKEN_FILE
kube_apiserver_ready() { [[ $(kube_api_get "$1" "$2" "$3" /readyz 2>/dev/null) == ok ]]; }

# kube_start_etcd NAME DATA CLIENT_PORT PEER_PORT: etcd on 127.0.0.1, unless NAME's process is
# alive; waits for /health.
kube_start_etcd() {
  local name=$1 data=$2 client_port=$3 peer_port=$4 url
  url=http://127.0.0.1:$client_port
  if pid_alive "$name"; then
    WAIT_NAME=$name WAIT_LOG=$(log_file "$name") \
      wait_until "etcd health on $url" 60 kube_etcd_healthy "$url"
    return 0
  fi
  stop_pid "$name" # clears a stale pid file
  port_free_or_die "$name" "$client_port"
  port_free_or_die "$name" "$peer_port"
  mkdir -p "$data"
  chmod 700 "$data"
  # --unsafe-no-fsync: throwaway test data; a lost write only matters on power loss.
  start_bg "$name" "$ETCD_BIN" \
    --name=testbed \
    --data-dir="$data" \
    --listen-client-urls="$url" \
    --advertise-client-urls="$url" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="testbed=http://127.0.0.1:$peer_port" \
    --initial-cluster-state=new \
    --unsafe-no-fsync \
    --log-level=warn
  poll_briefly 5 kube_etcd_healthy "$url" ||
    wait_until "etcd health on $url" 60 kube_etcd_healthy "$url"
}

# kube_start_apiserver NAME PORT ETCD_URL PKI_DIR TOKENS_CSV TOKEN_FILE SERVICE_CIDR [FLAG...]:
# kube-apiserver on 127.0.0.1:PORT with the certificates of PKI_DIR (kube_ensure_pki) and
# static tokens, plus FLAGs; waits for /readyz (probed with TOKEN_FILE's token).
kube_start_apiserver() {
  local name=$1 port=$2 etcd_url=$3 pki=$4 tokens_csv=$5 token_file=$6 service_cidr=$7 server
  shift 7
  server=https://127.0.0.1:$port
  if pid_alive "$name"; then
    WAIT_NAME=$name WAIT_LOG=$(log_file "$name") \
      wait_until "kube-apiserver /readyz on $server" 180 \
      kube_apiserver_ready "$server" "$pki/ca.crt" "$token_file"
    return 0
  fi
  stop_pid "$name"
  port_free_or_die "$name" "$port"
  start_bg "$name" "$(kube_bin kube-apiserver)" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$port" \
    --etcd-servers="$etcd_url" \
    --tls-cert-file="$pki/apiserver.crt" \
    --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --token-auth-file="$tokens_csv" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range="$service_cidr" \
    --allow-privileged=true \
    --profiling=false \
    --cert-dir="$pki/../apiserver-certs" \
    "$@"
  wait_until "kube-apiserver /readyz on $server" 180 \
    kube_apiserver_ready "$server" "$pki/ca.crt" "$token_file"
}
