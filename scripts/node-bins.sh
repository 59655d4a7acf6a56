#!/usr/bin/env bash
# Builds (once) what the test node needs (tests/node.rs, `make test-node`), into the same cache
# directory as scripts/control-plane-bins.sh, and prints that directory on stdout.
#
#   kubelet, kube-scheduler, kube-proxy
#                   k8s.io/kubernetes (tools/k8s-node-bins; same version as tools/k8s-bins)
#   containerd, containerd-shim-runc-v2, ctr
#                   github.com/containerd/containerd/v2 (tools/containerd-bins)
#   pause           tools/pause/pause.c, static (the pod sandbox process)
#   wso-pause.oci.tar
#                   the pause image (localhost/wso-pause:1) as an OCI archive for `ctr images import`
#   wso-mcp-probe.oci.tar
#                   localhost/wso-mcp-probe:1: tools/mcp-probe (a minimal MCP client, Go standard
#                   library), the caller pod of the MCP test
#   runc, CNI plugins (bridge, host-local, loopback, portmap), iptables
#                   Debian packages runc, containernetworking-plugins, iptables; installed with
#                   apt-get when missing (needs root, as the node itself does)
#
# Idempotent: a binary is rebuilt only when what it is built from changes.
# Cache: $WSO_CACHE (default $HOME/.cache/workspace-start-operator).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${WSO_CACHE:-$HOME/.cache/workspace-start-operator}
bin="$cache/bin"
mkdir -p "$bin"
log() { echo "node-bins: $*" >&2; }
die() { log "$*"; exit 1; }

# shellcheck source=lib/go-build.sh
. "$here/scripts/lib/go-build.sh"

# The node's Kubernetes must be the control plane's.
k8s_version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3} $1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2}' "$here/tools/k8s-bins/go.mod" | head -1)
node_version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3} $1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2}' "$here/tools/k8s-node-bins/go.mod" | head -1)
[[ -n $k8s_version && $k8s_version == "$node_version" ]] ||
  die "tools/k8s-node-bins pins k8s.io/kubernetes $node_version, tools/k8s-bins $k8s_version: keep them equal"

# Debian packages: the OCI runtime, the CNI plugins and iptables (kube-proxy's backend).
need=()
command -v runc >/dev/null || need+=(runc)
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || need+=(containernetworking-plugins)
command -v iptables-restore >/dev/null || need+=(iptables)
if ((${#need[@]})); then
  [[ $(id -u) == 0 ]] || die "missing ${need[*]}: install them (apt-get install ${need[*]}) as root"
  log "installing ${need[*]} (Debian)"
  apt-get install -y -qq "${need[@]}" >&2 ||
    { apt-get update -qq >&2 && apt-get install -y -qq "${need[@]}" >&2; }
fi

v=${k8s_version#v}; minor=${v#*.}; minor=${minor%%.*}
k8s_ldflags="-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
for cmd in kubelet kube-scheduler kube-proxy; do
  go_build_module "$cmd" "$here/tools/k8s-node-bins" "k8s.io/kubernetes/cmd/$cmd" "$bin/$cmd" "$k8s_ldflags"
done
# `require M v` or, inside a require block, `M v`.
module_version() { awk -v m="$1" '$1 == "require" && $2 == m {print $3} $1 == m && $2 ~ /^v/ {print $2}' "$2" | head -1; }
ctd_version=$(module_version github.com/containerd/containerd/v2 "$here/tools/containerd-bins/go.mod")
[[ -n $ctd_version ]] || die "no containerd version in tools/containerd-bins/go.mod"
for cmd in containerd containerd-shim-runc-v2 ctr; do
  go_build_module "$cmd" "$here/tools/containerd-bins" "github.com/containerd/containerd/v2/cmd/$cmd" "$bin/$cmd" \
    "-X github.com/containerd/containerd/v2/version.Version=${ctd_version#v}"
done

# The pause binary and its image; key: the source and the archive writer.
pause_key=$(cat "$here/tools/pause/pause.c" "$here/scripts/lib/oci-archive.py" | sha256sum | cut -c1-16)
if ! go_fresh "$bin/wso-pause.oci.tar" "$pause_key"; then
  log "building the pause image"
  tmp=$(mktemp -d)
  gcc -Os -static -o "$tmp/pause" "$here/tools/pause/pause.c"
  strip "$tmp/pause"
  python3 "$here/scripts/lib/oci-archive.py" "$tmp/pause.oci.tar" localhost/wso-pause:1 /pause "$tmp/pause=/pause"
  mv "$tmp/pause.oci.tar" "$bin/wso-pause.oci.tar"
  chmod 0755 "$bin/wso-pause.oci.tar"
  echo "$pause_key" > "$bin/wso-pause.oci.tar.key"
  rm -rf "$tmp"
fi
# The MCP caller's image; key: the probe binary's own key and the archive writer.
go_build_module mcp-probe "$here/tools/mcp-probe" . "$bin/mcp-probe" ""
probe_key=$(cat "$bin/mcp-probe.key" "$here/scripts/lib/oci-archive.py" | sha256sum | cut -c1-16)
if ! go_fresh "$bin/wso-mcp-probe.oci.tar" "$probe_key"; then
  log "building the MCP probe image"
  python3 "$here/scripts/lib/oci-archive.py" "$bin/wso-mcp-probe.oci.tar" localhost/wso-mcp-probe:1 \
    /mcp-probe "$bin/mcp-probe=/mcp-probe"
  chmod 0755 "$bin/wso-mcp-probe.oci.tar"
  echo "$probe_key" > "$bin/wso-mcp-probe.oci.tar.key"
fi
echo "$bin"
