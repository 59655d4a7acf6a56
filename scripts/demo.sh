#!/usr/bin/env bash
# `make demo`: a local Kubernetes control plane (etcd + kube-apiserver, no containers), the
# coder-sim Coder simulator with examples/coder-sim/demo.yaml, and the operator; applies
# examples/requests/ and shows the requests progressing to Ready/Failed in a live table.
#
#   scripts/demo.sh          start (stops a previous demo first) and leave it running
#   scripts/demo.sh stop     stop the demo started from this clone
#   DEMO_KEEP=0 scripts/demo.sh   tear everything down after the summary
#
# Environment: WSO_DEMO_DIR (default <repo>/.demo: kubeconfig, logs, pids),
# DEMO_TIMEOUT (seconds to wait for every request to finish, default 180),
# WSO_CACHE (control-plane binaries, default ~/.cache/workspace-start-operator).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
demo=${WSO_DEMO_DIR:-$root/.demo}
ns=demo
keep=${DEMO_KEEP:-1}
timeout=${DEMO_TIMEOUT:-180}
export WSO_CACHE=${WSO_CACHE:-$HOME/.cache/workspace-start-operator}

if [[ -t 1 ]]; then bold=$'\e[1m' dim=$'\e[2m' reset=$'\e[0m'; else bold='' dim='' reset=''; fi
say() { echo "${bold}==> $*${reset}"; }
die() { echo "demo: error: $*" >&2; exit 1; }

# ----------------------------------------------------------------------------------------------
# Process bookkeeping: $demo/pids holds "name pid" lines; we only ever signal those pids, and
# only while /proc/<pid>/cmdline still names the binary we started.

ours() { # pid name -> true if pid is alive and still runs our binary
  local pid=$1 name=$2
  local cmd
  cmd=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline") || return 1
  [[ $cmd == *"$name"* ]]
}

stop_demo() {
  local pidfile=$demo/pids
  [[ -f $pidfile ]] || return 0
  echo "demo: stopping the demo started from $pidfile"
  local -a names=() pids=()
  local name pid
  while read -r name pid; do
    [[ -n ${pid:-} ]] || continue
    names+=("$name") pids+=("$pid")
  done < "$pidfile"
  # Reverse start order: operator, coder-sim, then the control plane (envtest stops etcd and
  # kube-apiserver on SIGTERM; they also die with it through PDEATHSIG).
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]} name=${names[i]}
    ours "$pid" "$name" || continue
    kill -TERM "$pid" 2>/dev/null || continue
    local t=0
    while ours "$pid" "$name" && ((t < 100)); do sleep 0.1; t=$((t + 1)); done
    if ours "$pid" "$name"; then
      echo "demo: $name ($pid) ignored SIGTERM for 10s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -f "$pidfile" "$demo/env" "$demo/kubeconfig"
  echo "demo: stopped"
}

case "${1:-}" in
  stop) stop_demo; exit 0 ;;
  ""|start) ;;
  -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown command ${1} (use: scripts/demo.sh [start|stop])" ;;
esac

command -v python3 >/dev/null || die "python3 is required"

# A second `make demo` replaces the first.
stop_demo
mkdir -p "$demo"
rm -f "$demo"/*.log "$demo/env" "$demo/kubeconfig"
rm -rf "$demo/requests"

# ----------------------------------------------------------------------------------------------
say "control-plane binaries"
bin=$(scripts/control-plane-bins.sh)
kubectl=$bin/kubectl
[[ -x $kubectl ]] || die "$kubectl missing; run make tools"
echo "    $bin ($("$kubectl" version --client 2>/dev/null | head -1))"

say "building the operator, coder-sim and envtest (debug)"
cargo build --bins -p workspace-start-operator -p coder-sim -p wso-envtest
target=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
for b in workspace-start-operator coder-sim envtest; do
  [[ -x $target/debug/$b ]] || die "$target/debug/$b was not built"
done

# From here on, a failure tears down what was started and shows the logs.
started=0 up=0
on_exit() {
  local rc=$?
  if ((rc != 0 && started && !up)); then
    echo "demo: failed (exit $rc); last log lines:" >&2
    local f
    for f in "$demo"/*.log; do
      [[ -f $f ]] || continue
      echo "--- $f" >&2
      tail -n 15 "$f" >&2
    done
    stop_demo
  fi
}
trap on_exit EXIT

spawn() { # name logfile cmd... -> starts cmd detached (own session), records "name pid"
  local name=$1 log=$2
  shift 2
  setsid "$@" > "$log" 2>&1 < /dev/null &
  local pid=$!
  echo "$name $pid" >> "$demo/pids"
  started=1
  printf '    %-26s pid %-7s log %s\n' "$name" "$pid" "${log#"$root"/}"
}

wait_for() { # seconds name pid cmd... -> polls cmd until it succeeds, fails if pid died
  local secs=$1 name=$2 pid=$3
  shift 3
  local deadline=$((SECONDS + secs))
  until "$@" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "$name exited during startup"
    ((SECONDS < deadline)) || die "$name not ready after ${secs}s"
    sleep 0.2
  done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ----------------------------------------------------------------------------------------------
say "starting the control plane (etcd + kube-apiserver)"
: > "$demo/pids"
spawn envtest "$demo/envtest.log" "$target/debug/envtest" up --dir "$demo" --crds "$root/crds"
envtest_pid=$(awk '$1 == "envtest" {print $2}' "$demo/pids")
wait_for 120 "the control plane" "$envtest_pid" test -s "$demo/env"
export KUBECONFIG=$demo/kubeconfig
grep '^KUBE_SERVER=' "$demo/env" | sed 's/^KUBE_SERVER=/    kube-apiserver /'
"$kubectl" create namespace "$ns" -o name | sed 's/^/    /'

say "starting coder-sim with examples/coder-sim/demo.yaml"
spawn coder-sim "$demo/coder-sim.log" "$target/debug/coder-sim" \
  --listen 127.0.0.1:0 --scenario "$root/examples/coder-sim/demo.yaml"
sim_pid=$(awk '$1 == "coder-sim" {print $2}' "$demo/pids")
wait_for 30 coder-sim "$sim_pid" grep -q 'coder-sim listening on http://' "$demo/coder-sim.log"
sim_url=$(grep -o 'coder-sim listening on http://[^ ]*' "$demo/coder-sim.log" | head -1 | sed 's/^coder-sim listening on //')
echo "    $sim_url (users alice, bob, admin; tokens alice-token, bob-token, admin-token)"

say "starting the operator (Coder token: alice's; watching namespace $ns)"
printf 'alice-token\n' > "$demo/coder-token"
chmod 600 "$demo/coder-token"
metrics_port=$(free_port)
spawn workspace-start-operator "$demo/operator.log" env KUBECONFIG="$KUBECONFIG" POD_NAMESPACE="$ns" \
  "$target/debug/workspace-start-operator" run \
  --coder-url "$sim_url" \
  --coder-token-file "$demo/coder-token" \
  --namespaces "$ns" \
  --tenancy bound \
  --metrics-addr "127.0.0.1:$metrics_port"
op_pid=$(awk '$1 == "workspace-start-operator" {print $2}' "$demo/pids")
wait_for 60 "the operator" "$op_pid" curl -fsS -o /dev/null "http://127.0.0.1:$metrics_port/readyz"
echo "    ready; metrics on http://127.0.0.1:$metrics_port/metrics"
up=1 # everything runs: from here on a failure leaves the demo up for inspection

# ----------------------------------------------------------------------------------------------
say "binding namespace $ns to Coder user alice (examples/policies/demo.yaml; bound tenancy)"
"$kubectl" apply -f "$root/examples/policies/demo.yaml" | sed 's/^/    /'

say "applying examples/requests/ to namespace $ns"
# The coderRef Secret names coder-sim's default address; point it at the port in use.
mkdir -p "$demo/requests"
for f in "$root"/examples/requests/*.yaml; do
  sed "s#http://127.0.0.1:3000#$sim_url#g" "$f" > "$demo/requests/$(basename "$f")"
done
"$kubectl" apply -n "$ns" -f "$demo/requests/" | sed 's/^/    /'

# One line per request: NAME PHASE OUTCOME BUILD WORKSPACE AGENT READY REASON AGE (BUILD: number
# and provisioner job status of the build waited on; AGENT: the agent's lifecycle state). Prints "DONE"
# as the last line once every request is Ready or Failed.
table() {
  "$kubectl" get wsr -n "$ns" -o json | python3 -c '
import datetime, json, sys
items = json.load(sys.stdin)["items"]
now = datetime.datetime.now(datetime.timezone.utc)
def age(ts):
    s = int((now - datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))).total_seconds())
    return f"{s}s" if s < 120 else f"{s // 60}m{s % 60}s"
rows = [("NAME", "PHASE", "OUTCOME", "BUILD", "WORKSPACE", "AGENT", "READY", "REASON", "AGE")]
done = bool(items)
for it in items:
    st = it.get("status") or {}
    ready = next((c for c in st.get("conditions", []) if c.get("type") == "Ready"), {})
    ws = st.get("workspace") or {}
    wsname = (ws.get("ownerName") + "/" if ws.get("ownerName") else "") + ws.get("name", "") if ws else ""
    agent = st.get("agent") or {}
    phase = st.get("phase", "")
    b = st.get("build") or {}
    build = ("#%s %s" % (b.get("number", "?"), b.get("jobStatus", ""))).strip() if b else "-"
    done = done and phase in ("Ready", "Failed")
    rows.append((it["metadata"]["name"], phase or "-", st.get("outcome") or "-", build, wsname or "-",
                 agent.get("lifecycleState") or agent.get("status") or "-",
                 ready.get("status", "-"), ready.get("reason", "-"),
                 age(it["metadata"]["creationTimestamp"])))
w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
for r in rows:
    print("   ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip())
if done:
    print("DONE")
'
}

say "watching the requests (every second, up to ${timeout}s)"
interrupted=0
trap 'interrupted=1' INT
deadline=$((SECONDS + timeout))
last='' finished=0 t0=$SECONDS
while ((!interrupted)); do
  out=$(table 2>&1) || out="(kubectl get wsr failed: $out)"
  if [[ $out == *$'\n'DONE ]]; then finished=1; out=${out%$'\n'DONE}; fi
  if [[ -t 1 ]]; then
    # Redraw in place on a terminal.
    printf '\e[H\e[J%s\n\n%s\n' "${bold}WorkspaceStartRequests in namespace $ns — $((SECONDS - t0))s${reset}" "$out"
  elif [[ $out != "$last" ]]; then
    # Plain log: print only when something but the ages changed.
    stripped=$(sed -E 's/[0-9]+(m[0-9]+)?s$//' <<< "$out")
    if [[ $stripped != "$last" ]]; then
      echo "--- t+$((SECONDS - t0))s"
      echo "$out"
      last=$stripped
    fi
  fi
  ((finished)) && break
  if ((SECONDS >= deadline)); then
    echo "demo: not every request finished within ${timeout}s (see $demo/operator.log)" >&2
    break
  fi
  sleep 1
done
trap - INT

# ----------------------------------------------------------------------------------------------
echo
say "final state"
table | grep -v '^DONE$' || true
echo
phases=$("$kubectl" get wsr -n "$ns" -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}')
n_ready=$(grep -c '^Ready$' <<< "$phases" || true)
n_failed=$(grep -c '^Failed$' <<< "$phases" || true)
n_total=$(grep -c . <<< "$phases" || true)
echo "${bold}$n_total requests: $n_ready Ready, $n_failed Failed, $((n_total - n_ready - n_failed)) still in progress${reset}"
echo
say "events of wsr/chat-fix-flaky-test"
"$kubectl" events -n "$ns" --for workspacestartrequest/chat-fix-flaky-test 2>/dev/null ||
  "$kubectl" get events -n "$ns" --field-selector involvedObject.name=chat-fix-flaky-test
echo

if [[ $keep == 0 ]]; then
  say "DEMO_KEEP=0: tearing down"
  stop_demo
  ((finished)) || exit 1
  exit 0
fi

rel=${demo#"$root"/}
cat <<EOF
${bold}The demo keeps running${reset} (control plane, coder-sim at $sim_url, operator). Try:

  export KUBECONFIG=$demo/kubeconfig      # or: export KUBECONFIG=$rel/kubeconfig
  export PATH=$bin:\$PATH   # kubectl $("$kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p')
  kubectl config set-context --current --namespace=$ns
  kubectl get wsr -o wide
  kubectl describe wsr alice-slow
  kubectl wait --for=condition=Ready wsr/chat-fix-flaky-test --timeout=2m
  kubectl apply -f examples/requests/02-workspace-already-running.yaml   # more requests

  logs:  $rel/operator.log  $rel/coder-sim.log  $rel/envtest.log
  Coder: curl -H 'Coder-Session-Token: alice-token' $sim_url/api/v2/users/me

Stop it:  scripts/demo.sh stop      (or kill the pids listed in $rel/pids)
EOF
if ((!finished)); then exit 1; fi
