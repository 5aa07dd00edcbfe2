#!/usr/bin/env bash
# A real single-node Kubernetes cluster: its own etcd and kube-apiserver, kube-controller-manager,
# kube-scheduler, a kubelet, containerd + runc, and a bridge CNI network. Pods really run, in
# kernel cgroups, so memory limits end in real OOM kills.
#
#   node.sh up | down | status
#
# It is a cluster of its own, separate from the `k8s` component (a bare apiserver that other
# tests share with a fake kubelet; a real scheduler and controller-manager there would fight
# it). The Kubernetes binaries come from ../controlplane/go.mod (same module and version as
# k8s.sh's apiserver), cached in $MIGRATE_CACHE/bin; containerd, runc and the CNI plugins are
# Debian packages. Images are built from local files by ../images/build.sh (no registry):
# pods use `imagePullPolicy: Never`.
#
# Pods reach the testbed's services (Redis, MariaDB, OpenSearch, osmem, noida, the NLP
# service), which listen on 127.0.0.1 only, through one socat forwarder per port listening on
# the bridge's host address ($BRIDGE_ADDR without its prefix) and connecting to 127.0.0.1 on
# the same port. A pod's Secrets and URLs name that address (NODE_SERVICES_HOST). Chosen over
# DNAT to 127.0.0.1 (route_localnet on the bridge plus nat rules): a forwarder changes no
# sysctl or iptables table of the host, it binds only to the testbed-made bridge (never to
# the machine's outside interface), and the services see a loopback client, as their grants
# for the `migrate` user expect. Traffic stays on this machine: pod netns -> tbnode0 -> socat
# -> loopback.
#
# Host state this changes, recorded at the first `up` and restored by `down`:
#  - routes: `unreachable` routes for the service and pod ranges, so no packet to a ClusterIP
#    (there is no kube-proxy) or to a pod address outside the bridge follows the default route
#    off the machine; a bridge `tbnode0` holding the pod subnet;
#  - sysctls the kubelet sets (vm.overcommit_memory, vm.panic_on_oom, kernel.panic,
#    kernel.panic_on_oops, kernel.keys.root_maxkeys/root_maxbytes) and net.ipv4.ip_forward;
#  - /kubepods cgroups; paths the kubelet and containerd use whatever their root dirs
#    (/var/lib/kubelet for device plugins, /var/log/containers, /run/containerd for shim
#    sockets; /var/log/pods, /run/netns and /var/lib/cni are moved under $TESTBED_DIR but
#    checked too) when they did not exist before;
#  - iptables chains KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT (the kubelet is told
#    not to make them; `down` still removes any that appeared).
# Only one kubelet may run on a machine: `up` refuses when another one runs.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"
# shellcheck source-path=SCRIPTDIR source=../kube-lib.sh
source "$TESTBED_LIB_DIR/kube-lib.sh"

NODE_DIR=$TESTBED_DIR/node
PKI_DIR=$NODE_DIR/pki
ETCD_DATA=$DATA_DIR/node-etcd
CONTAINERD_DIR=$NODE_DIR/containerd
CONTAINERD_SOCK=$CONTAINERD_DIR/containerd.sock
KUBELET_DIR=$NODE_DIR/kubelet
CNI_DIR=$NODE_DIR/cni
IMAGES_DIR=$NODE_DIR/images
HOST_STATE=$NODE_DIR/host-state
ADMIN_KUBECONFIG=$NODE_DIR/admin.kubeconfig
ADMIN_TOKEN=$NODE_DIR/admin.token
TOKENS_CSV=$NODE_DIR/tokens.csv

# Ports beside the `k8s` component's (etcd 12379/12380, apiserver 6443) and the defaults of a
# kubelet (10248/10250), scheduler (10259) and controller-manager (10257) another cluster could
# hold. The kubelet, scheduler and controller-manager listen on 127.0.0.1 only.
ETCD_CLIENT_PORT=12479
ETCD_PEER_PORT=12480
APISERVER_PORT=6543
KUBELET_PORT=10550
KUBELET_HEALTHZ_PORT=10548
CONTROLLER_MANAGER_PORT=10557
SCHEDULER_PORT=10559
METRICS_SERVER_PORT=10560
ETCD_URL=http://127.0.0.1:$ETCD_CLIENT_PORT
NODE_SERVER=https://127.0.0.1:$APISERVER_PORT

# Private ranges no network of this machine uses. The bridge holds the node's pod subnet; the
# rest of POD_CIDR and all of SERVICE_CIDR are unreachable.
SERVICE_CIDR=10.96.0.0/24
SERVICE_IP=10.96.0.1
POD_CIDR=10.244.0.0/16
POD_SUBNET=10.244.0.0/24
BRIDGE=tbnode0
BRIDGE_ADDR=10.244.0.1/24

BRIDGE_IP=${BRIDGE_ADDR%/*}
# The services' loopback ports (see their components) that pods may reach at $BRIDGE_IP.
FORWARD_PORTS=(6390 3390 9250 9251 9252 8090)

PAUSE_IMAGE=testbed.local/pause:1
PROBE_IMAGE=testbed.local/probe:1
WORKER_IMAGE=testbed.local/migrate-worker:dev
OPERATOR_IMAGE=testbed.local/migrate-operator:dev
WORKER_BINARY=${NODE_WORKER_BINARY:-$REPO_ROOT/target/release/migrate-worker}
OPERATOR_BINARY=${NODE_OPERATOR_BINARY:-$REPO_ROOT/target/release/migrate-operator}
# NODE_METRICS_SERVER=0: no metrics-server (saves its first build, ~4 min, and ~40 MiB).
NODE_METRICS_SERVER=${NODE_METRICS_SERVER:-1}

SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward)
FIXED_PATHS=(/var/lib/kubelet /var/log/pods /var/log/containers /run/containerd /run/netns
  /var/lib/cni)
KUBELET_CHAINS=(filter:KUBE-FIREWALL filter:KUBE-KUBELET-CANARY nat:KUBE-KUBELET-CANARY
  mangle:KUBE-KUBELET-CANARY mangle:KUBE-IPTABLES-HINT)
CGROUP_ROOT=/sys/fs/cgroup

ETCD_NAME="node-etcd"
APISERVER_NAME="node-apiserver"
CONTROLLER_MANAGER_NAME="node-controller-manager"
SCHEDULER_NAME="node-scheduler"
CONTAINERD_NAME="node-containerd"
KUBELET_NAME="node-kubelet"
METRICS_SERVER_NAME="node-metrics-server"

METRICS_MOD_DIR=$TESTBED_LIB_DIR/metrics-server
METRICS_SERVER_VERSION=$(go_mod_version "$METRICS_MOD_DIR/go.mod" sigs.k8s.io/metrics-server)
METRICS_SERVER_BIN=$KUBE_BIN_DIR/metrics-server-$METRICS_SERVER_VERSION

# The node's name is the machine's host name (the kubelet's default), so that the apiserver
# reaches the kubelet's 127.0.0.1 listener for logs and exec through /etc/hosts (see
# check_host). Its InternalIP is the address of the default route's interface: the kubelet
# refuses a loopback node IP. Nothing is ever sent to it but from this machine to itself.
NODE_NAME=$(hostname)

mkdir -p "$NODE_DIR"

ctr_() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }
api_get() { kube_api_get "$NODE_SERVER" "$PKI_DIR/ca.crt" "$ADMIN_TOKEN" "$1"; }

node_ip() {
  local dev ip
  dev=$(ip -4 -o route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
  [[ -n $dev ]] || die "no default route: cannot choose the node's InternalIP"
  ip=$(ip -4 -o addr show dev "$dev" scope global | awk '{print $4; exit}')
  [[ -n $ip ]] || die "no IPv4 address on $dev for the node's InternalIP"
  printf '%s\n' "${ip%/*}"
}

# --- checks and host state --------------------------------------------------------------

check_host() {
  [[ $(id -u) == 0 ]] || die "the node needs root (cgroups, mounts, network namespaces, routes)"
  [[ -d $CGROUP_ROOT/memory ]] ||
    die "no cgroup v1 memory controller at $CGROUP_ROOT/memory (this component is written for the cgroup v1 machines the testbed runs on)"
  local pid comm ours=""
  ours=$(read_pid "$KUBELET_NAME" 2>/dev/null) || true
  for pid in /proc/[0-9]*; do
    comm=$(cat "$pid/comm" 2>/dev/null) || continue
    [[ $comm == kubelet* && ${pid#/proc/} != "$ours" ]] || continue
    _proc_alive "${pid#/proc/}" || continue # an exited one not yet reaped
    die "a kubelet not started by this testbed runs (pid ${pid#/proc/}: $(tr '\0' ' ' <"$pid/cmdline")); only one kubelet may run on a machine"
  done
  if ! getent ahostsv4 "$NODE_NAME" | awk '$1 ~ /^127\./ {found = 1} END {exit !found}'; then
    log "warning: host name $NODE_NAME does not resolve to 127.0.0.0/8: logs and exec through the apiserver will not reach the kubelet (pods still run)"
  fi
}

# save_host_state: what `down` restores, written once before the first change.
save_host_state() {
  [[ -s $HOST_STATE ]] && return 0
  local s p c tmp=$HOST_STATE.tmp.$$
  {
    printf '# Written by node.sh up before it changed anything; node.sh down restores it.\n'
    for s in "${SYSCTLS[@]}"; do
      printf 'sysctl %s %s\n' "$s" "$(sysctl -n "$s")"
    done
    for p in "${FIXED_PATHS[@]}"; do
      [[ -e $p ]] && printf 'existed %s\n' "$p"
    done
    for c in "$CGROUP_ROOT"/*/kubepods; do
      [[ -d $c ]] && printf 'existed %s\n' "$c"
    done
    for c in "${KUBELET_CHAINS[@]}"; do
      iptables -w -t "${c%%:*}" -S "${c#*:}" >/dev/null 2>&1 && printf 'chain %s\n' "$c"
    done
    if [[ -d /run/netns ]]; then
      find /run/netns -mindepth 1 -maxdepth 1 -printf 'netns %f\n'
    fi
  } >"$tmp"
  mv -f "$tmp" "$HOST_STATE"
}

host_state_has() { [[ -s $HOST_STATE ]] && grep -qxF "$*" "$HOST_STATE"; }

# Routes first: from here on a packet to a ClusterIP or a pod address off the bridge fails at
# once (EHOSTUNREACH) instead of leaving through the default route.
setup_network() {
  ip route replace unreachable "$SERVICE_CIDR"
  ip route replace unreachable "$POD_CIDR"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$BRIDGE_ADDR" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

# forwarding PORT: something listens on the bridge's address at PORT.
forwarding() { [[ -n $(ss -Hltn "src $BRIDGE_IP:$1") ]]; }

# start_forwarders: one socat per port of FORWARD_PORTS (see the header), from the bridge's
# address to the same port on 127.0.0.1; `fork` serves each connection in a child.
start_forwarders() {
  local port name
  for port in "${FORWARD_PORTS[@]}"; do
    name=node-forward-$port
    if ! pid_alive "$name"; then
      stop_pid "$name"
      start_bg "$name" socat "TCP-LISTEN:$port,bind=$BRIDGE_IP,reuseaddr,fork,backlog=128" \
        "TCP:127.0.0.1:$port"
    fi
    poll_briefly 5 forwarding "$port" ||
      WAIT_NAME=$name wait_until "socat on $BRIDGE_IP:$port" 30 forwarding "$port"
  done
}

stop_forwarders() {
  local port
  for port in "${FORWARD_PORTS[@]}"; do
    stop_pid "node-forward-$port"
  done
}

# --- certificates, tokens, kubeconfigs ---------------------------------------------------

ensure_credentials() {
  kube_ensure_pki "$PKI_DIR" node-pki "$SERVICE_IP"
  if [[ ! -s $PKI_DIR/apiserver-kubelet-client.crt ]]; then
    # The apiserver's client certificate towards the kubelet (logs, exec).
    kube_issue_cert "$PKI_DIR" apiserver-kubelet-client \
      "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth \
      >>"$(log_file node-pki)" 2>&1 || die "openssl failed; see $(log_file node-pki)"
  fi
  if [[ ! -s $PKI_DIR/front-proxy-client.crt ]]; then
    # The aggregation layer's client certificate (metrics-server and other extension
    # apiservers trust the requestheader CA; the controller-manager and scheduler read it too).
    kube_issue_cert "$PKI_DIR" front-proxy-client "/CN=front-proxy-client" clientAuth \
      >>"$(log_file node-pki)" 2>&1 || die "openssl failed; see $(log_file node-pki)"
  fi
  local admin node scheduler cm metrics
  admin=$(kube_token "$ADMIN_TOKEN")
  node=$(kube_token "$NODE_DIR/kubelet.token")
  scheduler=$(kube_token "$NODE_DIR/scheduler.token")
  cm=$(kube_token "$NODE_DIR/controller-manager.token")
  metrics=$(kube_token "$NODE_DIR/metrics-server.token")
  # token,user,uid,"groups": the users the bootstrap RBAC roles and the Node authorizer know.
  (umask 077 && printf '%s\n' \
    "$admin,admin,admin,\"system:masters\"" \
    "$node,system:node:$NODE_NAME,node,\"system:nodes\"" \
    "$scheduler,system:kube-scheduler,kube-scheduler," \
    "$cm,system:kube-controller-manager,kube-controller-manager," \
    "$metrics,system:metrics-server,metrics-server,\"system:masters\"" >"$TOKENS_CSV")
  kube_write_kubeconfig "$ADMIN_KUBECONFIG" "$NODE_SERVER" "$PKI_DIR/ca.crt" "$admin"
  kube_write_kubeconfig "$NODE_DIR/kubelet.kubeconfig" "$NODE_SERVER" "$PKI_DIR/ca.crt" "$node"
  kube_write_kubeconfig "$NODE_DIR/scheduler.kubeconfig" "$NODE_SERVER" "$PKI_DIR/ca.crt" \
    "$scheduler"
  kube_write_kubeconfig "$NODE_DIR/controller-manager.kubeconfig" "$NODE_SERVER" \
    "$PKI_DIR/ca.crt" "$cm"
  kube_write_kubeconfig "$NODE_DIR/metrics-server.kubeconfig" "$NODE_SERVER" "$PKI_DIR/ca.crt" \
    "$metrics"
  if [[ ! -s $PKI_DIR/metrics-server.crt ]]; then
    # Its serving certificate, for the name the APIService reaches it by.
    kube_issue_cert "$PKI_DIR" metrics-server "/CN=metrics-server" serverAuth \
      "DNS:localhost,IP:127.0.0.1,DNS:metrics-server.kube-system.svc" \
      >>"$(log_file node-pki)" 2>&1 || die "openssl failed; see $(log_file node-pki)"
  fi
}

# --- control plane ----------------------------------------------------------------------

healthz_ok() { [[ $(curl -ksS --max-time 3 "https://127.0.0.1:$1/healthz" 2>/dev/null) == ok ]]; }

# start_component NAME PORT BINARY ARG...: a controller-manager or scheduler, waited for on
# its /healthz.
start_component() {
  local name=$1 port=$2
  shift 2
  if pid_alive "$name"; then
    WAIT_NAME=$name WAIT_LOG=$(log_file "$name") \
      wait_until "$name /healthz on 127.0.0.1:$port" 60 healthz_ok "$port"
    return 0
  fi
  stop_pid "$name"
  port_free_or_die "$name" "$port"
  start_bg "$name" "$@"
  poll_briefly 5 healthz_ok "$port" ||
    wait_until "$name /healthz on 127.0.0.1:$port" 60 healthz_ok "$port"
}

start_control_plane() {
  kube_start_etcd "$ETCD_NAME" "$ETCD_DATA" "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT"
  # --endpoint-reconciler-type=none: an Endpoints object may not hold the loopback address
  # the apiserver advertises, and nothing could route to the `kubernetes` Service anyway.
  # Hostname first: the node's host name resolves to 127.0.0.1, where the kubelet listens.
  kube_start_apiserver "$APISERVER_NAME" "$APISERVER_PORT" "$ETCD_URL" "$PKI_DIR" \
    "$TOKENS_CSV" "$ADMIN_TOKEN" "$SERVICE_CIDR" \
    --enable-admission-plugins=NodeRestriction \
    --endpoint-reconciler-type=none \
    --kubelet-client-certificate="$PKI_DIR/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI_DIR/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=Hostname,InternalIP \
    --requestheader-client-ca-file="$PKI_DIR/ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI_DIR/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI_DIR/front-proxy-client.key"
  # Without the controller-manager there is no `default` ServiceAccount (pods are refused)
  # and nothing removes the node's not-ready taint.
  start_component "$CONTROLLER_MANAGER_NAME" "$CONTROLLER_MANAGER_PORT" \
    "$(kube_bin kube-controller-manager)" \
    --kubeconfig="$NODE_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$NODE_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$NODE_DIR/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$CONTROLLER_MANAGER_PORT" \
    --cert-dir="$NODE_DIR/controller-manager-certs" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI_DIR/sa.key" \
    --root-ca-file="$PKI_DIR/ca.crt" \
    --cluster-signing-cert-file="$PKI_DIR/ca.crt" \
    --cluster-signing-key-file="$PKI_DIR/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --profiling=false
  start_component "$SCHEDULER_NAME" "$SCHEDULER_PORT" "$(kube_bin kube-scheduler)" \
    --kubeconfig="$NODE_DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig="$NODE_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig="$NODE_DIR/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$SCHEDULER_PORT" \
    --cert-dir="$NODE_DIR/scheduler-certs" \
    --leader-elect=false \
    --profiling=false
}

# --- containerd -------------------------------------------------------------------------

write_containerd_config() {
  mkdir -p "$CONTAINERD_DIR" "$CNI_DIR/net.d"
  # restrict_oom_score_adj: root in this VM lacks CAP_SYS_RESOURCE, so no process may lower its
  # oom_score_adj; without it every sandbox fails with "runc create failed: ... can't get final
  # child's PID from pipe: EOF". Side effect: Guaranteed pods get 0 instead of -997.
  # SystemdCgroup = false: no systemd here; the kubelet uses the cgroupfs driver too.
  cat >"$CONTAINERD_DIR/config.toml" <<EOF
version = 2
root = "$CONTAINERD_DIR/root"
state = "$CONTAINERD_DIR/state"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$CONTAINERD_SOCK"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$CONTAINERD_DIR/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Pods' network namespaces under the state dir instead of the fixed /run/netns.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CNI_DIR/net.d"
    max_conf_num = 1
EOF
  # The bridge exists already (setup_network) with the gateway address on it. isGateway false:
  # the plugin would otherwise turn on ip_forward, and pods would get a default route that
  # leads off the machine. Pods reach each other and the host over the bridge, nothing else.
  cat >"$CNI_DIR/net.d/10-testbed.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "testbed",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CNI_DIR/ipam",
        "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "${BRIDGE_ADDR%/*}"}]]
      }
    }
  ]
}
EOF
}

containerd_ready() { ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; }

start_containerd() {
  if pid_alive "$CONTAINERD_NAME"; then
    WAIT_NAME=$CONTAINERD_NAME wait_until "containerd on $CONTAINERD_SOCK" 60 containerd_ready
    return 0
  fi
  stop_pid "$CONTAINERD_NAME"
  write_containerd_config
  start_bg "$CONTAINERD_NAME" containerd --config "$CONTAINERD_DIR/config.toml"
  poll_briefly 5 containerd_ready ||
    wait_until "containerd on $CONTAINERD_SOCK" 60 containerd_ready
}

# --- images -----------------------------------------------------------------------------

# has_image NAME: containerd's k8s.io namespace holds NAME. (The list is read whole first: a
# `grep -q` reading the pipe could exit early and fail the pipeline with SIGPIPE.)
has_image() {
  local images
  images=$(ctr_ images ls -q) || return 1
  grep -qxF "$1" <<<"$images"
}

# import_image TAR NAME: load TAR into containerd's k8s.io namespace unless this very archive
# is there already (the stamp lives in containerd's root, which `down` removes).
import_image() {
  local tar=$1 name=$2 sum stamp
  sum=$(sha256sum "$tar" | awk '{print $1}')
  stamp=$CONTAINERD_DIR/root/testbed-import-${name//[\/:]/_}
  if [[ -r $stamp && $(<"$stamp") == "$sum" ]] && has_image "$name"; then
    return 0
  fi
  ctr_ images import "$tar" >>"$(log_file node-images)" 2>&1 ||
    die "ctr images import $tar failed; see $(log_file node-images)"
  has_image "$name" || die "$tar did not provide the image $name"
  printf '%s\n' "$sum" >"$stamp"
  log "imported $name"
}

ensure_images() {
  mkdir -p "$IMAGES_DIR"
  bash "$TESTBED_LIB_DIR/images/build.sh" tools "$IMAGES_DIR"
  local packages=()
  [[ -n ${NODE_WORKER_BINARY:-} ]] || packages+=(-p migrate-worker)
  [[ -n ${NODE_OPERATOR_BINARY:-} ]] || packages+=(-p migrate-operator)
  if ((${#packages[@]})); then
    # One cargo run for both: they share most of their dependencies. The same package set as
    # scripts/demo.sh's build, so dependency features unify alike and, after the demo, this
    # rebuilds nothing (each release binary ends in a single-threaded whole-program LTO, minutes
    # on 2 cores). Incremental: seconds when the release binaries are current.
    packages+=(-p migrate-e2e --bins)
    log "cargo build --release ${packages[*]} (log $(log_file node-worker-build))"
    (cd "$REPO_ROOT" && cargo build --release "${packages[@]}") \
      >>"$(log_file node-worker-build)" 2>&1 ||
      die "cargo build --release ${packages[*]} failed; see $(log_file node-worker-build)"
  fi
  bash "$TESTBED_LIB_DIR/images/build.sh" worker "$IMAGES_DIR" "$WORKER_BINARY"
  bash "$TESTBED_LIB_DIR/images/build.sh" operator "$IMAGES_DIR" "$OPERATOR_BINARY"
  import_image "$IMAGES_DIR/pause.tar" "$PAUSE_IMAGE"
  import_image "$IMAGES_DIR/probe.tar" "$PROBE_IMAGE"
  import_image "$IMAGES_DIR/migrate-worker.tar" "$WORKER_IMAGE"
  import_image "$IMAGES_DIR/migrate-operator.tar" "$OPERATOR_IMAGE"
}

# --- kubelet ----------------------------------------------------------------------------

write_kubelet_config() {
  mkdir -p "$KUBELET_DIR"
  # cgroupDriver cgroupfs: there is no systemd on these machines to own cgroups.
  # failCgroupV1 false: the machine has cgroup v1 only (memory controller at
  # /sys/fs/cgroup/memory); without it the kubelet refuses to start.
  # makeIPTablesUtilChains false: the kubelet makes its chains for other components (kube-proxy),
  # none of which run here; not making them leaves the host's iptables alone.
  # Eviction and image GC thresholds are low: builds on the same machine share its memory and
  # disk, and an eviction or a collected image (there is no registry to pull it back from)
  # would fail a test for a reason outside it.
  cat >"$KUBELET_DIR/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI_DIR/ca.crt
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
failCgroupV1: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
podLogsDir: $NODE_DIR/pod-logs
makeIPTablesUtilChains: false
failSwapOn: false
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
}

kubelet_healthy() {
  [[ $(curl -sS --max-time 3 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" 2>/dev/null) == ok ]]
}

node_ready() {
  local node
  # The apiserver pretty-prints for curl: squeeze the blanks out before matching.
  node=$(api_get "/api/v1/nodes/$NODE_NAME" 2>/dev/null | tr -d ' \n') || return 1
  grep -q '"type":"Ready","status":"True"' <<<"$node" &&
    ! grep -q 'node.kubernetes.io/not-ready' <<<"$node"
}

default_account_exists() {
  api_get /api/v1/namespaces/default/serviceaccounts/default >/dev/null 2>&1
}

start_kubelet() {
  if pid_alive "$KUBELET_NAME"; then
    WAIT_NAME=$KUBELET_NAME wait_until "kubelet /healthz" 60 kubelet_healthy
    return 0
  fi
  stop_pid "$KUBELET_NAME"
  port_free_or_die "$KUBELET_NAME" "$KUBELET_PORT"
  port_free_or_die "$KUBELET_NAME" "$KUBELET_HEALTHZ_PORT"
  write_kubelet_config
  start_bg "$KUBELET_NAME" "$(kube_bin kubelet)" \
    --config="$KUBELET_DIR/config.yaml" \
    --kubeconfig="$NODE_DIR/kubelet.kubeconfig" \
    --root-dir="$KUBELET_DIR" \
    --cert-dir="$KUBELET_DIR/pki" \
    --node-ip="$(node_ip)" \
    --v=1
  poll_briefly 5 kubelet_healthy || wait_until "kubelet /healthz" 60 kubelet_healthy
}

# --- metrics-server ---------------------------------------------------------------------

ensure_metrics_server_binary() {
  [[ -x $METRICS_SERVER_BIN ]] && return 0
  (
    flock -w 3600 9 || die "could not lock $KUBE_BIN_DIR/.build.lock"
    [[ -x $METRICS_SERVER_BIN ]] ||
      KUBE_MOD_DIR=$METRICS_MOD_DIR kube_go_build sigs.k8s.io/metrics-server/cmd/metrics-server \
        "$METRICS_SERVER_BIN" node-build
  ) 9>"$KUBE_BIN_DIR/.build.lock"
}

# api_apply YAML_PATH BODY: server-side apply of one object (idempotent).
api_apply() {
  curl -fsS --max-time 10 --cacert "$PKI_DIR/ca.crt" -H "Authorization: Bearer $(<"$ADMIN_TOKEN")" \
    -X PATCH -H 'Content-Type: application/apply-patch+yaml' --data-binary "$2" \
    "$NODE_SERVER$1?fieldManager=testbed&force=true" >/dev/null
}

metrics_api_available() {
  local service
  service=$(api_get /apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io \
    2>/dev/null | tr -d ' \n') || return 1
  grep -q '"type":"Available","status":"True"' <<<"$service"
}

# metrics-server runs on the host, like the kubelet it scrapes (there is no image of it). The
# apiserver refuses to proxy to a loopback address, so the APIService names an ExternalName
# Service pointing at `localhost`; the kubelet is reached by the node's host name (127.0.0.1)
# with its self-signed serving certificate (--kubelet-insecure-tls, loopback only).
start_metrics_server() {
  if ! pid_alive "$METRICS_SERVER_NAME"; then
    stop_pid "$METRICS_SERVER_NAME"
    port_free_or_die "$METRICS_SERVER_NAME" "$METRICS_SERVER_PORT"
    start_bg "$METRICS_SERVER_NAME" "$METRICS_SERVER_BIN" \
      --kubeconfig="$NODE_DIR/metrics-server.kubeconfig" \
      --authentication-kubeconfig="$NODE_DIR/metrics-server.kubeconfig" \
      --authorization-kubeconfig="$NODE_DIR/metrics-server.kubeconfig" \
      --bind-address=127.0.0.1 \
      --secure-port="$METRICS_SERVER_PORT" \
      --tls-cert-file="$PKI_DIR/metrics-server.crt" \
      --tls-private-key-file="$PKI_DIR/metrics-server.key" \
      --kubelet-port="$KUBELET_PORT" \
      --kubelet-preferred-address-types=Hostname \
      --kubelet-insecure-tls \
      --kubelet-client-certificate="$PKI_DIR/apiserver-kubelet-client.crt" \
      --kubelet-client-key="$PKI_DIR/apiserver-kubelet-client.key" \
      --metric-resolution=15s \
      --profiling=false
  fi
  poll_briefly 5 healthz_ok "$METRICS_SERVER_PORT" ||
    WAIT_NAME=$METRICS_SERVER_NAME \
      wait_until "metrics-server /healthz" 60 healthz_ok "$METRICS_SERVER_PORT"
  api_apply /api/v1/namespaces/kube-system/services/metrics-server "
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec:
  type: ExternalName
  externalName: localhost
  ports: [{name: https, port: $METRICS_SERVER_PORT}]
" || die "applying the metrics-server Service failed"
  api_apply /apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io "
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  group: metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  service: {namespace: kube-system, name: metrics-server, port: $METRICS_SERVER_PORT}
  caBundle: $(base64 -w0 <"$PKI_DIR/ca.crt")
" || die "applying the metrics.k8s.io APIService failed"
  WAIT_NAME=$METRICS_SERVER_NAME wait_until "the metrics.k8s.io APIService Available" 60 \
    metrics_api_available
}

# --- teardown ---------------------------------------------------------------------------

# remove_containers: every task and container of containerd's k8s.io namespace, killed and
# deleted (the kubelet is stopped first, so nothing restarts them). Their shims exit with them.
remove_containers() {
  containerd_ready || return 0
  local id
  for id in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  for id in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true
  done
  for id in $(ctr_ containers ls -q 2>/dev/null); do
    ctr_ containers delete "$id" >/dev/null 2>&1 || true
  done
}

# stop_leftover_shims: containerd shims started for this containerd that outlived it (they are
# separate processes); found by the socket path on their command line, killed by pid.
stop_leftover_shims() {
  local pid cmd
  for pid in /proc/[0-9]*; do
    cmd=$( { tr '\0' ' ' <"$pid/cmdline"; } 2>/dev/null) || continue
    [[ $cmd == *containerd-shim* && $cmd == *"$CONTAINERD_SOCK"* ]] || continue
    log "killing leftover shim ${pid#/proc/}"
    kill -KILL "${pid#/proc/}" 2>/dev/null || true
  done
}

mounts_under() {
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo
}

# unmount_under DIR: every mount at or below DIR, deepest first. Dies when one stays: a
# recursive delete must never reach into a mounted volume (a hostPath is the host's own files).
unmount_under() {
  local m
  mounts_under "$1" | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  if [[ -n $(mounts_under "$1") ]]; then
    die "mounts remain under $1, not deleting it: $(mounts_under "$1" | tr '\n' ' ')"
  fi
}

# remove_netns: the network namespaces that appeared since `up` (containerd's, one per pod).
remove_netns() {
  [[ -s $HOST_STATE && -d /run/netns ]] || return 0
  local ns
  for ns in /run/netns/*; do
    [[ -e $ns ]] || continue
    host_state_has "netns ${ns##*/}" && continue
    umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null || true
    rm -f "$ns"
  done
}

remove_cgroups() {
  local c
  for c in "$CGROUP_ROOT"/*/kubepods; do
    [[ -d $c ]] || continue
    host_state_has "existed $c" && continue
    find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || log "could not remove all of $c"
  done
}

restore_iptables() {
  command -v iptables >/dev/null 2>&1 || return 0
  local c table chain builtin
  for c in "${KUBELET_CHAINS[@]}"; do
    table=${c%%:*} chain=${c#*:}
    host_state_has "chain $c" && continue
    iptables -w -t "$table" -S "$chain" >/dev/null 2>&1 || continue
    for builtin in INPUT OUTPUT FORWARD PREROUTING POSTROUTING; do
      while iptables -w -t "$table" -D "$builtin" -j "$chain" 2>/dev/null; do :; done
    done
    if ! { iptables -w -t "$table" -F "$chain" && iptables -w -t "$table" -X "$chain"; }; then
      log "could not remove iptables chain $table/$chain"
    fi
  done
}

restore_host() {
  [[ -s $HOST_STATE ]] || return 0
  local kind a b p
  while read -r kind a b; do
    [[ $kind == sysctl ]] || continue
    [[ $(sysctl -n "$a") == "$b" ]] || sysctl -q -w "$a=$b" || log "could not restore $a=$b"
  done <"$HOST_STATE"
  restore_iptables
  remove_netns
  remove_cgroups
  for p in "${FIXED_PATHS[@]}"; do
    host_state_has "existed $p" && continue
    [[ -e $p ]] || continue
    unmount_under "$p"
    rm -rf "$p"
  done
  rm -f "$HOST_STATE"
}

teardown_network() {
  ip link del "$BRIDGE" 2>/dev/null || true
  ip route del unreachable "$SERVICE_CIDR" 2>/dev/null || true
  ip route del unreachable "$POD_CIDR" 2>/dev/null || true
}

# --- commands ---------------------------------------------------------------------------

cmd_up() {
  check_host
  apt_ensure containerd=1.6 runc=1.1 containernetworking-plugins=1.1 iptables=1.8 socat=1.7
  kube_ensure_binaries node-build kube-apiserver kube-controller-manager kube-scheduler kubelet
  if ((NODE_METRICS_SERVER)); then ensure_metrics_server_binary; fi
  ensure_credentials
  # The control plane first: its pid files make down.sh call `node.sh down`, which undoes
  # the host changes below, whatever step fails later.
  start_control_plane
  save_host_state
  setup_network
  start_forwarders
  start_containerd
  ensure_images
  start_kubelet
  WAIT_NAME=$KUBELET_NAME wait_until "node $NODE_NAME Ready and untainted" 120 node_ready
  WAIT_NAME=$CONTROLLER_MANAGER_NAME \
    wait_until "the default ServiceAccount" 60 default_account_exists
  if ((NODE_METRICS_SERVER)); then start_metrics_server; fi
  write_env node \
    "NODE_KUBECONFIG=$ADMIN_KUBECONFIG" \
    "NODE_SERVER=$NODE_SERVER" \
    "NODE_NAME=$NODE_NAME" \
    "NODE_CONTAINERD_ADDRESS=$CONTAINERD_SOCK" \
    "NODE_PROBE_IMAGE=$PROBE_IMAGE" \
    "NODE_WORKER_IMAGE=$WORKER_IMAGE" \
    "NODE_OPERATOR_IMAGE=$OPERATOR_IMAGE" \
    "NODE_SERVICES_HOST=$BRIDGE_IP"
  log "node up: $NODE_NAME Ready on $NODE_SERVER (Kubernetes $K8S_VERSION, $(containerd --version | awk '{print $2, $3}')), NODE_KUBECONFIG=$ADMIN_KUBECONFIG"
}

cmd_down() {
  stop_pid "$METRICS_SERVER_NAME"
  stop_pid "$KUBELET_NAME"
  stop_pid "$SCHEDULER_NAME"
  stop_pid "$CONTROLLER_MANAGER_NAME"
  remove_containers
  stop_pid "$CONTAINERD_NAME"
  stop_leftover_shims
  stop_pid "$APISERVER_NAME"
  stop_pid "$ETCD_NAME"
  stop_forwarders
  remove_netns
  unmount_under "$NODE_DIR"
  # A fresh cluster on every `up`: no pod, container or image outlives `down`. Credentials and
  # image archives are kept (inputs, not state).
  rm -rf "$CONTAINERD_DIR" "$KUBELET_DIR" "$CNI_DIR" "$NODE_DIR/pod-logs" "$ETCD_DATA"
  teardown_network
  restore_host
  rm -f "$ENV_DIR/node.env"
  log "node down (host state restored)"
}

cmd_status() {
  local rc=0 name pid
  for name in "$ETCD_NAME" "$APISERVER_NAME" "$CONTROLLER_MANAGER_NAME" "$SCHEDULER_NAME" \
    "$CONTAINERD_NAME" "$KUBELET_NAME" "$METRICS_SERVER_NAME" \
    "${FORWARD_PORTS[@]/#/node-forward-}"; do
    if pid=$(read_pid "$name") && pid_alive "$name"; then
      echo "$name: running (pid $pid)"
    else
      echo "$name: not running"
      rc=3
    fi
  done
  if [[ -s $ADMIN_TOKEN ]] && node_ready; then
    echo "node $NODE_NAME: Ready on $NODE_SERVER"
  else
    echo "node $NODE_NAME: not Ready"
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
