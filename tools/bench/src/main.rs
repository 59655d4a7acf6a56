//! `wso-bench`: throughput, latency and cost of workspace-start-operator against a real
//! kube-apiserver + etcd (envtest) and an in-process coder-sim.
//!
//! For every (size, shape, mode) it starts a fresh coder-sim, a fresh namespace and a fresh
//! operator process (the release binary, admin kubeconfig), creates N WorkspaceStartRequests
//! concurrently, waits until all are Ready (seen by a kube watch in this process), empties the
//! namespace again (so runs do not slow each other down) and prints:
//! wall time, Ready lag after the simulated agent became ready (p50/p99/max), Coder requests
//! per request by endpoint (the watch route excluded), 429s, API-server requests per request
//! (diff of `apiserver_request_total` for the operator's resources), operator peak RSS and CPU.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use coder_sim::{BuildScript, LifecycleState, SimConfig, SimServer, WorkspaceSeed};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use uuid::Uuid;
use workspace_start_operator::crd::WorkspaceStartRequest;

const WATCH_ROUTE: &str = "GET /api/v2/workspaces/{id}/watch";

#[derive(Parser, Debug, Clone)]
#[command(about = "Benchmark workspace-start-operator against a real API server and coder-sim")]
struct Args {
    /// Request counts, comma-separated.
    #[arg(
        long,
        env = "BENCH_N",
        value_delimiter = ',',
        default_value = "100,1000,5000"
    )]
    n: Vec<usize>,
    /// Shapes: `shared` (10 requests per workspace) and/or `unique` (one per workspace).
    #[arg(
        long,
        env = "BENCH_SHAPES",
        value_delimiter = ',',
        default_value = "shared,unique"
    )]
    shapes: Vec<String>,
    /// Modes: `watch` (--coder-watch=true) and/or `poll` (--coder-watch=false).
    #[arg(
        long,
        env = "BENCH_MODES",
        value_delimiter = ',',
        default_value = "watch,poll"
    )]
    modes: Vec<String>,
    /// Requests per workspace in the `shared` shape.
    #[arg(long, default_value_t = 10)]
    per_workspace: usize,
    /// Scripted provisioner job pending time (ms).
    #[arg(long, default_value_t = 200)]
    pending_ms: u64,
    /// Scripted provisioner job running time (ms).
    #[arg(long, default_value_t = 1000)]
    running_ms: u64,
    /// Scripted time until the agent connects, after the build succeeded (ms).
    #[arg(long, default_value_t = 300)]
    agent_connect_ms: u64,
    /// Scripted time from connect until the agent is `ready` (ms).
    #[arg(long, default_value_t = 300)]
    agent_ready_ms: u64,
    /// Requests name their workspace through `chat` (spec.chatId) or `workspace` (spec.workspace.id).
    #[arg(long, default_value = "chat")]
    target: String,
    /// Concurrent creates.
    #[arg(long, default_value_t = 64)]
    create_concurrency: usize,
    /// Operator binary (default: target/release/workspace-start-operator).
    #[arg(long, env = "BENCH_OPERATOR_BIN")]
    operator_bin: Option<PathBuf>,
    /// Extra operator flags (space-separated), e.g. "--concurrency=32".
    #[arg(long, env = "BENCH_OPERATOR_ARGS", default_value = "")]
    operator_args: String,
    /// coder-sim rate limit per user per key per minute.
    #[arg(long, default_value_t = 512)]
    sim_rate_limit: i64,
    /// Per-run timeout (seconds).
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
    /// Also write the summary (markdown) to this file.
    #[arg(long, env = "BENCH_OUT")]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct RunResult {
    shape: String,
    n: usize,
    workspaces: usize,
    mode: String,
    wall: Duration,
    lag_p50_ms: f64,
    lag_p99_ms: f64,
    lag_max_ms: f64,
    coder_by_route: BTreeMap<String, u64>,
    coder_total: u64,
    watch_streams: u64,
    too_many: u64,
    api_by_kind: BTreeMap<String, f64>,
    api_total: f64,
    rss_kib: u64,
    cpu_s: f64,
    start_builds: u64,
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
    // The bench's own work (creates, the Ready watch, the simulator) gets its own threads; the
    // operator is a separate process.
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
    if !bin.exists() {
        bail!(
            "operator binary {} not found: cargo build --release --bin workspace-start-operator",
            bin.display()
        );
    }
    eprintln!("bench: starting control plane (etcd + kube-apiserver)");
    let plane = envtest::ControlPlane::start().await?;
    plane.install_crds(&repo.join("crds")).await?;
    eprintln!("bench: control plane at {}", plane.server_url());

    let mut results = Vec::new();
    for &n in &args.n {
        for shape in &args.shapes {
            for mode in &args.modes {
                eprintln!("bench: run n={n} shape={shape} mode={mode}");
                let r = run_one(&args, &plane, &bin, n, shape, mode)
                    .await
                    .with_context(|| format!("run n={n} shape={shape} mode={mode}"))?;
                println!("{}", run_detail(&r));
                results.push(r);
            }
        }
    }
    let summary = summary(&args, &results);
    println!("{summary}");
    if let Some(out) = &args.out {
        std::fs::write(out, &summary)?;
    }
    drop(plane);
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

struct Operator {
    child: tokio::process::Child,
    pid: u32,
    metrics: String,
}

impl Operator {
    fn stop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
    }
}

fn proc_usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let clk = clock_ticks();
    let cpu = (ticks(11) + ticks(12)) as f64 / clk;
    (hwm, cpu)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `apiserver_request_total` summed by `verb resource[/subresource]`.
async fn apiserver_requests(client: &kube::Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let get = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let resource = get("resource");
        if !matches!(
            resource.as_str(),
            "workspacestartrequests" | "events" | "leases" | "secrets"
        ) {
            continue;
        }
        let sub = get("subresource");
        let key = if sub.is_empty() {
            format!("{} {resource}", get("verb"))
        } else {
            format!("{} {resource}/{sub}", get("verb"))
        };
        *out.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    Ok(out)
}

fn sum_metric(text: &str, name: &str, filter: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

#[allow(clippy::too_many_arguments)]
async fn start_operator(
    args: &Args,
    plane: &envtest::ControlPlane,
    bin: &std::path::Path,
    ns: &str,
    coder_url: &str,
    token_file: &std::path::Path,
    log: &std::path::Path,
    watch: bool,
) -> anyhow::Result<Operator> {
    let port = free_port()?;
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("run")
        .arg(format!("--coder-url={coder_url}"))
        .arg(format!("--coder-token-file={}", token_file.display()))
        .arg(format!("--namespaces={ns}"))
        .arg(format!("--metrics-addr=127.0.0.1:{port}"))
        .arg(format!("--coder-watch={watch}"))
        .arg("--log-level=warn")
        .args(args.operator_args.split_whitespace())
        .env("KUBECONFIG", plane.admin_kubeconfig())
        .env("POD_NAMESPACE", ns)
        .env_remove("CODER_URL")
        .env_remove("WATCH_NAMESPACES")
        .env_remove("WSO_CODER_WATCH")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    let child = cmd.spawn().context("spawn operator")?;
    let pid = child.id().context("operator pid")?;
    let op = Operator {
        child,
        pid,
        metrics: format!("127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = reqwest::get(format!("http://{}/readyz", op.metrics))
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            return Ok(op);
        }
        if Instant::now() > deadline {
            bail!(
                "operator never became ready: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_ready(w: &WorkspaceStartRequest) -> bool {
    w.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn is_failed(w: &WorkspaceStartRequest) -> Option<String> {
    let s = w.status.as_ref()?;
    (s.phase.map(|p| format!("{p:?}")).as_deref() == Some("Failed")).then(|| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.reason.clone())
            .unwrap_or_default()
    })
}

async fn run_one(
    args: &Args,
    plane: &envtest::ControlPlane,
    bin: &std::path::Path,
    n: usize,
    shape: &str,
    mode: &str,
) -> anyhow::Result<RunResult> {
    let per_ws = match shape {
        "shared" => args.per_workspace.max(1),
        "unique" => 1,
        other => bail!("unknown shape {other}"),
    };
    let watch = match mode {
        "watch" => true,
        "poll" => false,
        other => bail!("unknown mode {other}"),
    };
    let admin = plane.admin_client();
    let ns = plane
        .create_namespace(&format!("bench-{shape}-{n}-{mode}"))
        .await?;
    let sim_server = SimServer::start(SimConfig {
        rate_limit_per_minute: args.sim_rate_limit,
        ..SimConfig::default()
    })
    .await?;
    let sim = sim_server.sim();
    let user = sim.add_user("bench");
    let ms = Duration::from_millis;
    let script = BuildScript::default()
        .with_job(ms(args.pending_ms), ms(args.running_ms))
        .with_agent(
            ms(args.agent_connect_ms),
            ms(args.agent_ready_ms),
            LifecycleState::Ready,
        );
    let n_ws = n.div_ceil(per_ws);
    let workspaces: Vec<Uuid> = (0..n_ws)
        .map(|i| {
            sim.add_workspace(
                WorkspaceSeed::new(user.id, &format!("ws-{i}")).script(script.clone()),
            )
        })
        .collect();
    // Request i -> (name, workspace, spec).
    let requests: Vec<(String, Uuid, serde_json::Value)> = (0..n)
        .map(|i| {
            let ws = workspaces[i / per_ws];
            let spec = if args.target == "workspace" {
                serde_json::json!({"workspace": {"id": ws.to_string()}})
            } else {
                let chat = sim.add_chat(user.id, Some(ws));
                serde_json::json!({"chatId": chat.to_string()})
            };
            (format!("r-{i}"), ws, spec)
        })
        .collect();

    let dir = std::env::temp_dir().join(format!("wso-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join(format!("{ns}.token"));
    std::fs::write(&token_file, format!("{}\n", user.token))?;
    let log = dir.join(format!("{ns}.log"));
    let mut op = start_operator(
        args,
        plane,
        bin,
        &ns,
        &sim_server.url(),
        &token_file,
        &log,
        watch,
    )
    .await?;

    // Ready watch in this process: first time each request is seen with Ready=True.
    let api: Api<WorkspaceStartRequest> = Api::namespaced(admin.clone(), &ns);
    let seen: Arc<Mutex<HashMap<String, Timestamp>>> = Arc::default();
    let failed: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel::<()>();
    let watch_task = {
        let seen = Arc::clone(&seen);
        let failed = Arc::clone(&failed);
        let api = api.clone();
        tokio::spawn(async move {
            let mut synced = Some(synced_tx);
            let stream = watcher(api, watcher::Config::default());
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                let now = Timestamp::now();
                let objs = match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => vec![o],
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = synced.take() {
                            let _ = tx.send(());
                        }
                        vec![]
                    }
                    _ => vec![],
                };
                for o in objs {
                    let name = o.metadata.name.clone().unwrap_or_default();
                    if is_ready(&o) {
                        seen.lock().unwrap().entry(name).or_insert(now);
                    } else if let Some(r) = is_failed(&o) {
                        failed.lock().unwrap().insert(name, r);
                    }
                }
            }
        })
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), synced_rx).await;

    sim.reset_counters();
    let api_before = apiserver_requests(&admin).await?;
    let (_, cpu_before) = proc_usage(op.pid);

    // Create all requests as fast as the API server accepts them.
    let t0 = Instant::now();
    futures::stream::iter(requests.iter().cloned())
        .map(|(name, _, spec)| {
            let api = api.clone();
            async move {
                let obj: WorkspaceStartRequest = serde_json::from_value(serde_json::json!({
                    "apiVersion": "coder.com/v1alpha1",
                    "kind": "WorkspaceStartRequest",
                    "metadata": {"name": name},
                    "spec": spec,
                }))?;
                let mut tries = 0;
                loop {
                    match api.create(&PostParams::default(), &obj).await {
                        Ok(_) => return anyhow::Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
                        Err(e) if tries < 20 => {
                            tries += 1;
                            tracing::debug!(error = %e, "create failed; retrying");
                            tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        })
        .buffer_unordered(args.create_concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let created_in = t0.elapsed();

    // Wait until every request is Ready.
    let deadline = t0 + Duration::from_secs(args.timeout_s);
    loop {
        let (ready, fails) = (seen.lock().unwrap().len(), failed.lock().unwrap().len());
        if ready >= n {
            break;
        }
        if fails > 0 && ready + fails >= n {
            bail!(
                "{fails} requests failed: {:?}",
                failed.lock().unwrap().iter().take(5).collect::<Vec<_>>()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "timeout: {ready}/{n} Ready, {fails} failed; operator log: {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = t0.elapsed();
    eprintln!(
        "bench:   created {n} in {:.1}s, all Ready after {:.1}s",
        created_in.as_secs_f64(),
        wall.as_secs_f64()
    );

    // Let in-flight status writes and events of the last reconciles land before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api_after = apiserver_requests(&admin).await?;
    let (rss_kib, cpu_after) = proc_usage(op.pid);
    let op_metrics = reqwest::get(format!("http://{}/metrics", op.metrics))
        .await?
        .text()
        .await?;
    let too_many = sum_metric(
        &op_metrics,
        "workspace_start_operator_coder_requests",
        "code=\"429\"",
    );
    let start_builds = sum_metric(&op_metrics, "workspace_start_operator_start_builds", "");
    let counters = sim.counters();
    op.stop();
    let _ = tokio::time::timeout(Duration::from_secs(10), op.child.wait()).await;
    let _ = op.child.kill().await;
    watch_task.abort();

    // Lag = time this process saw Ready=True − time the simulated agent became ready.
    let seen = seen.lock().unwrap().clone();
    let mut lags: Vec<f64> = Vec::with_capacity(n);
    let mut agent_ready: HashMap<Uuid, Option<Timestamp>> = HashMap::new();
    for (name, ws, _) in &requests {
        let at = *agent_ready
            .entry(*ws)
            .or_insert_with(|| sim.agent_ready_at(*ws));
        if let (Some(ready_at), Some(seen_at)) = (at, seen.get(name)) {
            lags.push(seen_at.duration_since(ready_at).as_secs_f64() * 1000.0);
        }
    }
    if let Some(f) = std::env::var_os("BENCH_LAGS_FILE") {
        let mut rows: Vec<(f64, &String)> = requests
            .iter()
            .filter_map(|(name, ws, _)| {
                let at = agent_ready.get(ws).copied().flatten()?;
                let seen_at = seen.get(name)?;
                Some((seen_at.duration_since(at).as_secs_f64() * 1000.0, name))
            })
            .collect();
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        let text: String = rows.iter().map(|(l, n)| format!("{n} {l:.0}\n")).collect();
        let _ = std::fs::write(f, text);
    }
    lags.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if lags.is_empty() {
            f64::NAN
        } else {
            lags[((lags.len() as f64 * p).ceil() as usize).clamp(1, lags.len()) - 1]
        }
    };

    let mut coder_by_route = BTreeMap::new();
    let mut coder_total = 0;
    for (route, c) in &counters {
        if route == WATCH_ROUTE {
            continue;
        }
        coder_total += c;
        coder_by_route.insert(route.clone(), *c);
    }
    let mut api_by_kind = BTreeMap::new();
    let mut api_total = 0.0;
    for (k, after) in &api_after {
        // The bench's own creates are not the operator's cost.
        if k == "POST workspacestartrequests" {
            continue;
        }
        let d = after - api_before.get(k).copied().unwrap_or(0.0);
        if d > 0.0 {
            api_total += d;
            api_by_kind.insert(k.clone(), d);
        }
    }
    sim_server.shutdown().await;
    let _ = std::fs::remove_file(&token_file);
    // Leave the API server as this run found it (there is no namespace controller to empty the
    // namespace), so later runs do not pay for this run's objects.
    let (dp, lp) = (DeleteParams::default(), ListParams::default());
    api.delete_collection(&dp, &lp).await?;
    Api::<Event>::namespaced(admin.clone(), &ns)
        .delete_collection(&dp, &lp)
        .await?;

    Ok(RunResult {
        shape: shape.to_owned(),
        n,
        workspaces: n_ws,
        mode: mode.to_owned(),
        wall,
        lag_p50_ms: pct(0.50),
        lag_p99_ms: pct(0.99),
        lag_max_ms: pct(1.0),
        coder_by_route,
        coder_total,
        watch_streams: counters.get(WATCH_ROUTE).copied().unwrap_or(0),
        too_many,
        api_by_kind,
        api_total,
        rss_kib,
        cpu_s: cpu_after - cpu_before.min(cpu_after),
        start_builds,
    })
}

fn short_route(r: &str) -> String {
    r.replace("/api/v2/", "/")
        .replace("/api/experimental/", "/x/")
}

fn run_detail(r: &RunResult) -> String {
    let n = r.n as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### N={} {} ({} workspaces), --coder-watch={}",
        r.n,
        r.shape,
        r.workspaces,
        r.mode == "watch"
    );
    let _ = writeln!(s, "| figure | value |\n|---|---|");
    let _ = writeln!(
        s,
        "| wall time until all Ready | {:.2} s |",
        r.wall.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| Ready lag p50 / p99 / max | {:.0} / {:.0} / {:.0} ms |",
        r.lag_p50_ms, r.lag_p99_ms, r.lag_max_ms
    );
    for (route, c) in &r.coder_by_route {
        let _ = writeln!(
            s,
            "| Coder `{}` per request | {:.3} ({c}) |",
            route,
            *c as f64 / n
        );
    }
    let _ = writeln!(
        s,
        "| Coder requests per request (total, excl. watch) | {:.3} ({}) |",
        r.coder_total as f64 / n,
        r.coder_total
    );
    let _ = writeln!(s, "| watch streams opened | {} |", r.watch_streams);
    let _ = writeln!(s, "| start builds | {} |", r.start_builds);
    let _ = writeln!(s, "| Coder 429 responses | {} |", r.too_many);
    for (k, c) in &r.api_by_kind {
        let _ = writeln!(s, "| API server `{k}` per request | {:.3} ({c}) |", c / n);
    }
    let _ = writeln!(
        s,
        "| API-server requests per request (total) | {:.2} ({}) |",
        r.api_total / n,
        r.api_total
    );
    let _ = writeln!(
        s,
        "| operator peak RSS (VmHWM) | {:.1} MiB |",
        r.rss_kib as f64 / 1024.0
    );
    let _ = writeln!(s, "| operator CPU (user+sys) | {:.2} s |", r.cpu_s);
    s
}

fn summary(args: &Args, rs: &[RunResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Summary\n\nScript per build: pending {} ms, running {} ms, agent connect {} ms + ready {} ms; \
         requests name their workspace by `{}`; coder-sim rate limit {}/min per user and URL path.\n",
        args.pending_ms,
        args.running_ms,
        args.agent_connect_ms,
        args.agent_ready_ms,
        args.target,
        args.sim_rate_limit
    );
    let _ = writeln!(
        s,
        "| N | shape | workspaces | watch | wall s | lag p50 ms | lag p99 ms | Coder req/req | by endpoint (per request) | 429s | API req/req | RSS MiB | CPU s |"
    );
    let _ = writeln!(
        s,
        "|---:|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    );
    for r in rs {
        let n = r.n as f64;
        let by: Vec<String> = r
            .coder_by_route
            .iter()
            .map(|(k, c)| format!("{} {:.2}", short_route(k), *c as f64 / n))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.2} | {} | {} | {:.2} | {:.1} | {:.1} |",
            r.n,
            r.shape,
            r.workspaces,
            if r.mode == "watch" { "on" } else { "off" },
            r.wall.as_secs_f64(),
            r.lag_p50_ms,
            r.lag_p99_ms,
            r.coder_total as f64 / n,
            by.join("<br>"),
            r.too_many,
            r.api_total / n,
            r.rss_kib as f64 / 1024.0,
            r.cpu_s
        );
    }
    let pairs: Vec<(&RunResult, &RunResult)> = rs
        .iter()
        .filter(|r| r.mode == "watch")
        .filter_map(|w| {
            rs.iter()
                .find(|p| p.mode == "poll" && p.n == w.n && p.shape == w.shape)
                .map(|p| (w, p))
        })
        .collect();
    if !pairs.is_empty() {
        let _ = writeln!(
            s,
            "\nPoll only (`--coder-watch=false`) relative to the watch:\n\n\
             | N | shape | lag p50 poll/watch | lag p99 poll/watch | Coder req poll/watch | wall poll/watch |\n|---:|---|---:|---:|---:|---:|"
        );
        for (w, p) in pairs {
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.1}×", a / b)
                } else {
                    "–".into()
                }
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                w.n,
                w.shape,
                ratio(p.lag_p50_ms, w.lag_p50_ms),
                ratio(p.lag_p99_ms, w.lag_p99_ms),
                ratio(p.coder_total as f64, w.coder_total as f64),
                ratio(p.wall.as_secs_f64(), w.wall.as_secs_f64())
            );
        }
    }
    s
}
