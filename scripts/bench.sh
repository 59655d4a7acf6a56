#!/usr/bin/env bash
# Benchmark: workspace-start-operator (release build) against a real kube-apiserver + etcd and
# an in-process coder-sim. Prints one table per run and a summary (also written to $BENCH_OUT,
# default target/bench/summary.md).
#
#   BENCH_N="100 1000"        sizes (default "100 1000 5000")
#   BENCH_SHAPES="shared"     shared (10 requests per workspace) and/or unique (default both)
#   BENCH_MODES="floor watch" floor (minimal writer: the API server's best), watch
#                             (--coder-watch=true), poll (default all three)
#   BENCH_RESTART=false       skip the restart with N finished requests after each watch run
#   BENCH_RESUME_N=1000       requests in flight when the operator is killed (0 = skip)
#   BENCH_SHARDS=2            also each watch run split over 2 operator processes (the default
#                             deployment and shard s1): wall time, CPU and RSS per process
#   BENCH_CHAOS=1             also N=1000 under faults (operator SIGKILLed every 5 s, API
#                             server restarted once)
#   BENCH_MCP_WAITS=200       MCP server: tool calls waiting at once (RSS per waiting call,
#                             connections to the API server) and a junk-token flood (0 = skip)
#   BENCH_MCP_ONLY=1          only the MCP run
#   BENCH_NOISY=1             also the noisy neighbour: namespace A creates BENCH_NOISY_N (1000)
#                             requests while namespace B creates BENCH_QUIET_N (10); B's create →
#                             Ready lag p50/p99 with A's burst and alone, and their ratio
#   BENCH_NOISY_ONLY=1        only the noisy-neighbour run
#   BENCH_OPERATOR_ARGS=...   extra operator flags, e.g. "--concurrency=32"
#   BENCH_ARGS=...            extra wso-bench flags, e.g. "--running-ms 2000" (see --help)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

n=${BENCH_N:-100 1000 5000}
shapes=${BENCH_SHAPES:-shared unique}
modes=${BENCH_MODES:-floor watch poll}
export BENCH_N=${n// /,} BENCH_SHAPES=${shapes// /,} BENCH_MODES=${modes// /,}
export BENCH_OUT=${BENCH_OUT:-$here/target/bench/summary.md}
mkdir -p "$(dirname "$BENCH_OUT")"

# The control-plane binaries (kube-apiserver, etcd) come from the cache `make tools` fills.
scripts/control-plane-bins.sh >/dev/null

cargo build --release --bin workspace-start-operator -p workspace-start-operator
cargo build --release --bin wso-bench -p wso-bench
target=${CARGO_TARGET_DIR:-$here/target}
# Many watch streams and connections at N=5000.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# shellcheck disable=SC2086
exec "$target/release/wso-bench" --operator-bin "$target/release/workspace-start-operator" ${BENCH_ARGS:-}
