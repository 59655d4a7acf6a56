//! `wso-bench`: throughput, latency and cost of workspace-start-operator against a real
//! kube-apiserver + etcd (envtest) and an in-process coder-sim.
//!
//! For every (size, shape, mode) it starts a fresh coder-sim and a fresh namespace, creates N
//! WorkspaceStartRequests concurrently, waits until all are Ready (seen by a kube watch in this
//! process) and empties the namespace again (so runs do not slow each other down). Modes:
//! `watch` and `poll` run the operator (release binary, admin kubeconfig, `--coder-watch`
//! true/false); `floor` runs the minimal writer of [`floor`] instead: the best the API server
//! allows. It prints wall time, Ready lag after the simulated agent became ready (p50/p99/max)
//! and its ratio to the floor, Coder requests per request by endpoint (the watch route
//! excluded), 429s, API-server requests and writes per request by verb and resource, operator
//! peak RSS and CPU, and restart costs ([`restart`]). `BENCH_CHAOS=1` adds the chaos runs of
//! [`chaos`]. `--mcp-waits` (default 200) adds the MCP server's costs of [`mcp`]. `BENCH_NOISY=1`
//! adds the noisy-neighbour run of [`noisy`] (one namespace's burst against another's few).

mod chaos;
mod floor;
mod mcp;
mod measure;
mod noisy;
mod report;
mod restart;
mod run;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Parser;

use crate::report::RunResult;
use crate::run::Plan;

#[derive(Parser, Debug, Clone)]
#[command(about = "Benchmark workspace-start-operator against a real API server and coder-sim")]
pub struct Args {
    /// Request counts, comma-separated.
    #[arg(
        long,
        env = "BENCH_N",
        value_delimiter = ',',
        default_value = "100,1000,5000"
    )]
    pub n: Vec<usize>,
    /// Shapes: `shared` (10 requests per workspace) and/or `unique` (one per workspace).
    #[arg(
        long,
        env = "BENCH_SHAPES",
        value_delimiter = ',',
        default_value = "shared,unique"
    )]
    pub shapes: Vec<String>,
    /// Modes: `floor` (the minimal writer), `watch` (--coder-watch=true), `poll`
    /// (--coder-watch=false).
    #[arg(
        long,
        env = "BENCH_MODES",
        value_delimiter = ',',
        default_value = "floor,watch,poll"
    )]
    pub modes: Vec<String>,
    /// Requests per workspace in the `shared` shape.
    #[arg(long, default_value_t = 10)]
    pub per_workspace: usize,
    /// Scripted provisioner job pending time (ms).
    #[arg(long, default_value_t = 200)]
    pub pending_ms: u64,
    /// Scripted provisioner job running time (ms).
    #[arg(long, default_value_t = 1000)]
    pub running_ms: u64,
    /// Scripted time until the agent connects, after the build succeeded (ms).
    #[arg(long, default_value_t = 300)]
    pub agent_connect_ms: u64,
    /// Scripted time from connect until the agent is `ready` (ms).
    #[arg(long, default_value_t = 300)]
    pub agent_ready_ms: u64,
    /// Requests name their workspace through `chat` (spec.chatId) or `workspace` (spec.workspace.id).
    #[arg(long, default_value = "chat")]
    pub target: String,
    /// Concurrent creates.
    #[arg(long, default_value_t = 64)]
    pub create_concurrency: usize,
    /// Operator binary (default: target/release/workspace-start-operator).
    #[arg(long, env = "BENCH_OPERATOR_BIN")]
    pub operator_bin: Option<PathBuf>,
    /// Extra operator flags (space-separated), e.g. "--concurrency=32".
    #[arg(long, env = "BENCH_OPERATOR_ARGS", default_value = "")]
    pub operator_args: String,
    /// coder-sim rate limit per user per key per minute.
    #[arg(long, default_value_t = 512)]
    pub sim_rate_limit: i64,
    /// Per-run timeout (seconds).
    #[arg(long, default_value_t = 900)]
    pub timeout_s: u64,
    /// After each operator run with the watch: restart the operator with the N finished requests
    /// present and measure the time to /readyz and its Coder calls.
    #[arg(long, env = "BENCH_RESTART", default_value_t = true, action = clap::ArgAction::Set)]
    pub restart: bool,
    /// Requests in flight when the operator is killed and restarted (resume cost); 0 skips it.
    #[arg(long, env = "BENCH_RESUME_N", default_value_t = 1000)]
    pub resume_n: usize,
    /// Also run N=1000 (`--chaos-n`) under faults: the operator SIGKILLed every 5 s and
    /// restarted at once, the API server restarted once mid-run.
    #[arg(long, env = "BENCH_CHAOS", default_value = "0", value_parser = parse_flag)]
    pub chaos: bool,
    /// Size of the chaos runs.
    #[arg(long, env = "BENCH_CHAOS_N", default_value_t = 1000)]
    pub chaos_n: usize,
    /// Also run the `watch` mode with the requests split over this many operator processes (the
    /// default deployment and `--shard=s1`, …); 1 = no sharded runs.
    #[arg(long, env = "BENCH_SHARDS", default_value_t = 1)]
    pub shards: usize,
    /// Tool calls that wait at once in the MCP run (RSS per waiting call, connections to the API
    /// server; plus a junk-token flood); 0 skips the MCP run.
    #[arg(long, env = "BENCH_MCP_WAITS", default_value_t = 200)]
    pub mcp_waits: usize,
    /// Only the MCP run (no operator runs, no resume).
    #[arg(long, env = "BENCH_MCP_ONLY", default_value = "0", value_parser = parse_flag)]
    pub mcp_only: bool,
    /// Also run the noisy neighbour: namespace A creates `--noisy-n` requests while namespace B
    /// creates `--quiet-n`; B's create → Ready lag with A's burst and alone.
    #[arg(long, env = "BENCH_NOISY", default_value = "0", value_parser = parse_flag)]
    pub noisy: bool,
    /// Only the noisy-neighbour run.
    #[arg(long, env = "BENCH_NOISY_ONLY", default_value = "0", value_parser = parse_flag)]
    pub noisy_only: bool,
    /// Requests of the noisy namespace A.
    #[arg(long, env = "BENCH_NOISY_N", default_value_t = 1000)]
    pub noisy_n: usize,
    /// Requests of the quiet namespace B (each phase).
    #[arg(long, env = "BENCH_QUIET_N", default_value_t = 10)]
    pub quiet_n: usize,
    /// Also write the summary (markdown) to this file.
    #[arg(long, env = "BENCH_OUT")]
    pub out: Option<PathBuf>,
}

fn parse_flag(s: &str) -> Result<bool, String> {
    match s.trim() {
        "" | "0" | "false" | "no" => Ok(false),
        "1" | "true" | "yes" => Ok(true),
        other => Err(format!("expected 0 or 1, got {other:?}")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BENCH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // The bench's own work (creates, the Ready watch, the simulator, the floor writer) gets its
    // own threads; the operator is a separate process.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_all(args))
}

async fn run_all(args: Args) -> anyhow::Result<()> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = args
        .operator_bin
        .clone()
        .unwrap_or_else(|| repo.join("target/release/workspace-start-operator"));
    let only = args.mcp_only || args.noisy_only;
    let needs_operator = args.modes.iter().any(|m| m != "floor")
        || args.noisy
        || args.noisy_only
        || args.chaos
        || args.resume_n > 0
        || args.shards > 1
        || args.mcp_waits > 0;
    if needs_operator && !bin.exists() {
        bail!(
            "operator binary {} not found: cargo build --release --bin workspace-start-operator",
            bin.display()
        );
    }
    eprintln!("bench: starting control plane (etcd + kube-apiserver)");
    let plane = envtest::ControlPlane::start().await?;
    plane.install_crds(&repo.join("crds")).await?;
    eprintln!("bench: control plane at {}", plane.server_url());

    let mut results: Vec<RunResult> = Vec::new();
    // The operator runs first: the floor run of the same size and shape starts each build when
    // the operator's watch run did.
    let mut modes: Vec<&String> = args.modes.iter().collect();
    modes.sort_by_key(|m| m.as_str() == "floor");
    let sizes: &[usize] = if only { &[] } else { &args.n };
    for &n in sizes {
        for shape in &args.shapes {
            for mode in &modes {
                let plan = Plan::new(n, shape, mode, false);
                let starts = results
                    .iter()
                    .find(|r| r.n == n && &r.shape == shape && r.mode == "watch")
                    .map(|r| r.build_starts.clone())
                    .unwrap_or_default();
                results.push(run_printed(&args, &plane, &bin, &plan, &starts).await?);
            }
            if args.shards > 1 {
                let plan = Plan::new(n, shape, "watch", false).with_shards(args.shards);
                results.push(run_printed(&args, &plane, &bin, &plan, &[]).await?);
            }
        }
    }
    let resume = if args.resume_n > 0 && !only {
        eprintln!("bench: resume of {} in-flight requests", args.resume_n);
        let r = restart::resume(&args, &plane, &bin)
            .await
            .context("resume run")?;
        println!("{}", report::resume_detail(&r));
        Some(r)
    } else {
        None
    };
    if args.chaos && !only {
        for shape in &args.shapes {
            let plan = Plan::new(args.chaos_n, shape, "watch", true);
            results.push(run_printed(&args, &plane, &bin, &plan, &[]).await?);
        }
    }
    let noisy = if args.noisy || args.noisy_only {
        eprintln!(
            "bench: noisy neighbour, {} requests against {}",
            args.noisy_n, args.quiet_n
        );
        let r = noisy::run(&args, &plane, &bin)
            .await
            .context("noisy-neighbour run")?;
        Some(r.table())
    } else {
        None
    };
    let mcp = if args.mcp_waits > 0 && !args.noisy_only {
        eprintln!("bench: MCP server, {} waiting calls", args.mcp_waits);
        let r = mcp::run(&plane, &bin, args.mcp_waits)
            .await
            .context("MCP run")?;
        Some(r.table())
    } else {
        None
    };
    let mut summary = report::summary(&args, &repo, &results, resume.as_ref());
    match noisy {
        Some(table) if args.noisy_only => summary = table,
        Some(table) => summary.push_str(&table),
        None => {}
    }
    match mcp {
        Some(table) if args.mcp_only => summary = table,
        Some(table) => {
            summary.push('\n');
            summary.push_str(&table);
        }
        None => {}
    }
    println!("{summary}");
    if let Some(out) = &args.out {
        std::fs::write(out, &summary)?;
    }
    drop(plane);
    Ok(())
}

/// Runs `plan` (see [`run::run_one`]) and prints its table.
async fn run_printed(
    args: &Args,
    plane: &envtest::ControlPlane,
    bin: &std::path::Path,
    plan: &Plan,
    floor_starts: &[std::time::Duration],
) -> anyhow::Result<RunResult> {
    eprintln!("bench: run {}", plan.label());
    let r = run::run_one(args, plane, bin, plan, floor_starts)
        .await
        .with_context(|| format!("run {}", plan.label()))?;
    println!("{}", report::run_detail(&r));
    Ok(r)
}
