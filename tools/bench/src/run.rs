//! One run: a fresh coder-sim and namespace, N requests created concurrently, the operator (or
//! the floor writer) until every request is Ready, then the figures and an empty namespace.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use coder_sim::{
    BuildScript, LifecycleState, Sim, SimConfig, SimServer, Transition, WorkspaceSeed,
};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use uuid::Uuid;
use workspace_start_operator::api::crd::WorkspaceStartRequest;

use crate::Args;
use crate::chaos;
use crate::floor;
use crate::measure::{self, Launch, Operator};
use crate::report::RunResult;
use crate::restart;

/// The `/watch` route: one stream per in-flight workspace, counted apart.
pub const WATCH_ROUTE: &str = "GET /api/v2/workspaces/{id}/watch";

/// What to run.
pub struct Plan {
    /// Requests.
    pub n: usize,
    /// `shared` or `unique`.
    pub shape: String,
    /// `floor`, `watch` or `poll`.
    pub mode: String,
    /// Under faults (see [`chaos`]).
    pub chaos: bool,
    /// Operator processes the requests are split over (the default deployment and shards
    /// `s1`, `s2`, …); 1 = one process, as deployed without shards.
    pub shards: usize,
}

impl Plan {
    /// A plan.
    pub fn new(n: usize, shape: &str, mode: &str, chaos: bool) -> Plan {
        Plan {
            n,
            shape: shape.to_owned(),
            mode: mode.to_owned(),
            chaos,
            shards: 1,
        }
    }

    /// The same plan split over `shards` operator processes.
    pub fn with_shards(mut self, shards: usize) -> Plan {
        self.shards = shards.max(1);
        self
    }

    /// `n=… shape=… mode=…`.
    pub fn label(&self) -> String {
        let chaos = if self.chaos { " chaos" } else { "" };
        let shards = if self.shards > 1 {
            format!(" shards={}", self.shards)
        } else {
            String::new()
        };
        format!(
            "n={} shape={} mode={}{chaos}{shards}",
            self.n, self.shape, self.mode
        )
    }
}

/// What a [`World`] holds: requests, requests per workspace, the build's running time, and
/// whether the operator follows Coder's watch.
#[derive(Clone, Copy)]
pub struct WorldSpec<'a> {
    pub label: &'a str,
    pub n: usize,
    pub per_ws: usize,
    pub running_ms: u64,
    pub watch: bool,
}

/// A run's simulator, namespace and requests.
pub struct World {
    pub sim_server: SimServer,
    pub sim: Sim,
    pub ns: String,
    pub api: Api<WorkspaceStartRequest>,
    pub admin: kube::Client,
    pub workspaces: Vec<Uuid>,
    /// Request name, workspace, spec.
    pub requests: Vec<(String, Uuid, serde_json::Value)>,
    pub launch: Launch,
    /// Operator processes the requests are split over (see [`Plan::shards`]).
    pub shards: usize,
}

/// A coder-sim as every bench run sets it up: the bench's rate limit, one Coder user, and the
/// build script from the bench's flags (with the provisioner job running `running_ms`).
pub struct BenchSim {
    /// The running coder-sim.
    pub server: SimServer,
    /// The Coder user whose token the operator holds and who owns every workspace.
    pub user: coder_sim::SimUser,
    /// The build every workspace runs.
    pub script: BuildScript,
}

impl BenchSim {
    /// Starts it.
    pub async fn start(args: &Args, running_ms: u64) -> anyhow::Result<BenchSim> {
        let server = SimServer::start(SimConfig {
            rate_limit_per_minute: args.sim_rate_limit,
            ..SimConfig::default()
        })
        .await?;
        let user = server.sim().add_user("bench");
        let ms = Duration::from_millis;
        let script = BuildScript::default()
            .with_job(ms(args.pending_ms), ms(running_ms))
            .with_agent(
                ms(args.agent_connect_ms),
                ms(args.agent_ready_ms),
                LifecycleState::Ready,
            );
        Ok(BenchSim {
            server,
            user,
            script,
        })
    }
}

impl World {
    /// A fresh coder-sim with one workspace per `per_ws` requests (each request with its own
    /// chat, or naming the workspace), and a fresh namespace.
    pub async fn new(
        args: &Args,
        plane: &envtest::ControlPlane,
        bin: &Path,
        spec: &WorldSpec<'_>,
    ) -> anyhow::Result<World> {
        let WorldSpec {
            label,
            n,
            per_ws,
            running_ms,
            watch,
        } = *spec;
        // The operator's own client (HTTP/2): the floor writer's concurrent writes, the creates
        // and the Ready watch share one connection, as the operator's do.
        let admin = workspace_start_operator::process::kube_client::from_config(
            plane.admin_config().clone(),
        )?;
        let ns = plane.create_namespace(&format!("bench-{label}")).await?;
        let BenchSim {
            server: sim_server,
            user,
            script,
        } = BenchSim::start(args, running_ms).await?;
        let sim = sim_server.sim();
        let n_ws = n.div_ceil(per_ws.max(1));
        let workspaces: Vec<Uuid> = (0..n_ws)
            .map(|i| {
                sim.add_workspace(
                    WorkspaceSeed::new(user.id, &format!("ws-{i}")).script(script.clone()),
                )
            })
            .collect();
        let requests = (0..n)
            .map(|i| {
                let ws = workspaces[i / per_ws.max(1)];
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
        let launch = Launch {
            bin: bin.to_path_buf(),
            kubeconfig: plane.admin_kubeconfig().to_path_buf(),
            ns: ns.clone(),
            coder_url: sim_server.url(),
            token_file,
            log: dir.join(format!("{ns}.log")),
            watch,
            extra: args
                .operator_args
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        };
        Ok(World {
            api: Api::namespaced(admin.clone(), &ns),
            sim_server,
            sim,
            ns,
            admin,
            workspaces,
            requests,
            launch,
            shards: 1,
        })
    }

    /// Creates every request, `concurrency` at a time, as fast as the API server accepts them.
    pub async fn create_all(&self, concurrency: usize) -> anyhow::Result<()> {
        let index: HashMap<Uuid, usize> = self
            .workspaces
            .iter()
            .enumerate()
            .map(|(i, w)| (*w, i))
            .collect();
        futures::stream::iter(self.requests.iter())
            .map(|(name, ws, spec)| {
                // By workspace, so one workspace's requests stay in one shard.
                let shard = index.get(ws).map_or(0, |i| i % self.shards);
                create(&self.api, name, spec, shard)
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// The floor run, where no operator starts builds: starts workspace `i`'s build at `t0 +
    /// starts[i]` (when the operator's run of the same size and shape started it, so agents
    /// become ready at the same pace), at once without such a run.
    pub async fn start_builds(&self, t0: Instant, starts: &[Duration]) {
        let mut order: Vec<(Duration, Uuid)> = self
            .workspaces
            .iter()
            .enumerate()
            .map(|(i, ws)| (starts.get(i).copied().unwrap_or_default(), *ws))
            .collect();
        order.sort();
        for (at, ws) in order {
            tokio::time::sleep_until((t0 + at).into()).await;
            self.sim.start_build(ws, Transition::Start);
        }
    }

    /// When each workspace's latest build was created, after `t0` (wall clock).
    pub fn build_starts(&self, t0: Timestamp) -> Vec<Duration> {
        self.workspaces
            .iter()
            .map(|ws| {
                self.sim.workspace_json(*ws)["latest_build"]["created_at"]
                    .as_str()
                    .and_then(|t| t.parse::<Timestamp>().ok())
                    .and_then(|t| Duration::try_from(t.duration_since(t0)).ok())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Empties the namespace (there is no namespace controller), so later runs do not pay for
    /// this run's objects, and stops the simulator.
    pub async fn clean_up(self) -> anyhow::Result<()> {
        self.sim_server.shutdown().await;
        let _ = std::fs::remove_file(&self.launch.token_file);
        let (dp, lp) = (DeleteParams::default(), ListParams::default());
        self.api.delete_collection(&dp, &lp).await?;
        Api::<Event>::namespaced(self.admin.clone(), &self.ns)
            .delete_collection(&dp, &lp)
            .await?;
        Ok(())
    }

    /// Per workspace, start builds beyond the first (duplicates) and workspaces never started.
    pub fn duplicate_builds(&self) -> (usize, usize) {
        self.workspaces.iter().fold((0, 0), |(dup, none), ws| {
            let c = self.sim.builds_created(*ws);
            (dup + c.saturating_sub(1), none + usize::from(c == 0))
        })
    }

    /// Ready lags (ms) of the requests `seen` Ready, sorted.
    pub fn lags(&self, seen: &HashMap<String, Timestamp>) -> Vec<f64> {
        let mut agent_ready: HashMap<Uuid, Option<Timestamp>> = HashMap::new();
        let mut rows: Vec<(f64, &String)> = Vec::with_capacity(self.requests.len());
        for (name, ws, _) in &self.requests {
            let at = *agent_ready
                .entry(*ws)
                .or_insert_with(|| self.sim.agent_ready_at(*ws));
            if let (Some(ready_at), Some(seen_at)) = (at, seen.get(name)) {
                rows.push((
                    seen_at.duration_since(ready_at).as_secs_f64() * 1000.0,
                    name,
                ));
            }
        }
        if let Some(f) = std::env::var_os("BENCH_LAGS_FILE") {
            let mut sorted = rows.clone();
            sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
            let text: String = sorted
                .iter()
                .map(|(l, n)| format!("{n} {l:.0}\n"))
                .collect();
            let _ = std::fs::write(f, text);
        }
        let mut lags: Vec<f64> = rows.into_iter().map(|(l, _)| l).collect();
        lags.sort_by(|a, b| a.total_cmp(b));
        lags
    }
}

/// The shard label of shard `k`: none for the default deployment (0), `s<k>` otherwise.
pub fn shard_name(k: usize) -> Option<String> {
    (k > 0).then(|| format!("s{k}"))
}

async fn create(
    api: &Api<WorkspaceStartRequest>,
    name: &str,
    spec: &serde_json::Value,
    shard: usize,
) -> anyhow::Result<()> {
    let mut metadata = serde_json::json!({"name": name});
    if let Some(s) = shard_name(shard) {
        metadata["labels"] = serde_json::json!({"coder.com/shard": s});
    }
    let obj: WorkspaceStartRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "coder.com/v1alpha1",
        "kind": "WorkspaceStartRequest",
        "metadata": metadata,
        "spec": spec,
    }))?;
    let mut tries = 0;
    loop {
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => return Ok(()),
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

/// What the bench's own watch on the namespace has seen: when each request was first Ready,
/// which failed, which have a build.
#[derive(Default)]
pub struct Seen {
    pub ready: HashMap<String, Timestamp>,
    /// When each request was first seen, and when first seen with a status.
    pub first_seen: HashMap<String, Timestamp>,
    pub first_status: HashMap<String, Timestamp>,
    pub failed: HashMap<String, String>,
    pub started: HashSet<String>,
}

impl Seen {
    /// The longest time (ms) any request was seen without a status: from the bench's watch
    /// first seeing it until it first saw it with one (until now when it never did).
    pub fn longest_without_status_ms(&self) -> f64 {
        let now = Timestamp::now();
        self.first_seen
            .iter()
            .map(|(name, seen)| {
                let until = self.first_status.get(name).copied().unwrap_or(now);
                until.duration_since(*seen).as_secs_f64() * 1000.0
            })
            .fold(0.0, f64::max)
    }
}

/// A watch on the run's requests in this process.
pub struct ReadyWatch {
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReadyWatch {
    /// Starts watching and waits (at most 30 s) for the initial list.
    pub async fn start(api: &Api<WorkspaceStartRequest>) -> ReadyWatch {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel::<()>();
        let task = {
            let seen = Arc::clone(&seen);
            let api = api.clone();
            tokio::spawn(async move {
                let mut synced = Some(synced_tx);
                // Backoff: the chaos runs restart the API server.
                let stream = watcher(api, watcher::Config::default()).default_backoff();
                futures::pin_mut!(stream);
                while let Some(ev) = stream.next().await {
                    let now = Timestamp::now();
                    let o = match ev {
                        Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                        Ok(watcher::Event::InitDone) => {
                            if let Some(tx) = synced.take() {
                                let _ = tx.send(());
                            }
                            continue;
                        }
                        _ => continue,
                    };
                    let name = o.metadata.name.clone().unwrap_or_default();
                    let mut s = seen.lock().expect("lock");
                    s.first_seen.entry(name.clone()).or_insert(now);
                    if o.status.is_some() {
                        s.first_status.entry(name.clone()).or_insert(now);
                    }
                    if o.status.as_ref().is_some_and(|st| st.build.is_some()) {
                        s.started.insert(name.clone());
                    }
                    if is_ready(&o) {
                        s.ready.entry(name).or_insert(now);
                    } else if let Some(r) = is_failed(&o) {
                        s.failed.insert(name, r);
                    }
                }
            })
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), synced_rx).await;
        ReadyWatch { seen, task }
    }

    /// Waits until `n` requests are Ready (Ok(true)), or `deadline` passes (Ok(false)); fails
    /// at once when every request is Ready or Failed and some failed.
    pub async fn wait_ready(&self, n: usize, deadline: Instant) -> anyhow::Result<bool> {
        loop {
            {
                let s = self.seen.lock().expect("lock");
                let (ready, fails) = (s.ready.len(), s.failed.len());
                if ready >= n {
                    return Ok(true);
                }
                if fails > 0 && ready + fails >= n {
                    bail!(
                        "{fails} requests failed: {:?}",
                        s.failed.iter().take(5).collect::<Vec<_>>()
                    );
                }
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` requests have a build (are in flight or done), or `deadline` passes.
    pub async fn wait_started(&self, n: usize, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if self.seen.lock().expect("lock").started.len() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
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

/// Coder requests by route (the watch route excluded) and their total.
pub fn coder_requests(counters: &BTreeMap<String, u64>) -> (BTreeMap<String, u64>, u64) {
    let by: BTreeMap<String, u64> = counters
        .iter()
        .filter(|(r, _)| r.as_str() != WATCH_ROUTE)
        .map(|(r, c)| (r.clone(), *c))
        .collect();
    let total = by.values().sum();
    (by, total)
}

/// The operator, or the floor writer, for one run.
enum Driver {
    Floor(floor::Floor),
    Operator(Box<Operator>),
    /// One operator process per shard ([`Plan::shards`]).
    Shards(Vec<Operator>),
}

/// One operator process per shard: the default deployment and `--shard=s<k>`.
async fn start_shards(launch: &Launch, shards: usize) -> anyhow::Result<Vec<Operator>> {
    let mut ops = Vec::with_capacity(shards);
    for k in 0..shards {
        let mut l = launch.clone();
        if let Some(s) = shard_name(k) {
            l.extra.push(format!("--shard={s}"));
            l.log = l.log.with_extension(format!("{s}.log"));
        }
        ops.push(Operator::start(&l).await?);
    }
    Ok(ops)
}

/// Runs `plan` and returns its figures.
pub async fn run_one(
    args: &Args,
    plane: &envtest::ControlPlane,
    bin: &Path,
    plan: &Plan,
    floor_starts: &[Duration],
) -> anyhow::Result<RunResult> {
    let per_ws = match plan.shape.as_str() {
        "shared" => args.per_workspace.max(1),
        "unique" => 1,
        other => bail!("unknown shape {other}"),
    };
    let watch = match plan.mode.as_str() {
        "watch" | "floor" => true,
        "poll" => false,
        other => bail!("unknown mode {other}"),
    };
    let label = format!(
        "{}-{}-{}{}",
        plan.shape,
        plan.n,
        plan.mode,
        if plan.chaos { "-chaos" } else { "" }
    );
    let spec = WorldSpec {
        label: &label,
        n: plan.n,
        per_ws,
        running_ms: args.running_ms,
        watch,
    };
    let mut world = World::new(args, plane, bin, &spec).await?;
    world.shards = plan.shards;
    let is_floor = plan.mode == "floor";
    let mut driver = if is_floor {
        let names: Vec<(String, Uuid)> = world
            .requests
            .iter()
            .map(|(n, w, _)| (n.clone(), *w))
            .collect();
        Driver::Floor(floor::start(
            &world.sim,
            plane.admin_config(),
            &world.ns,
            &names,
        )?)
    } else if plan.shards > 1 {
        Driver::Shards(start_shards(&world.launch, plan.shards).await?)
    } else {
        Driver::Operator(Box::new(Operator::start(&world.launch).await?))
    };
    let ready_watch = ReadyWatch::start(&world.api).await;
    world.sim.reset_counters();
    let api_before = measure::apiserver_requests(&world.admin).await?;
    let cpu_before: Vec<f64> = match &driver {
        Driver::Operator(op) => vec![measure::proc_usage(op.pid).1],
        Driver::Shards(ops) => ops.iter().map(|op| measure::proc_usage(op.pid).1).collect(),
        Driver::Floor(_) => Vec::new(),
    };

    let t0 = Instant::now();
    let t0_wall = Timestamp::now();
    let deadline = t0 + Duration::from_secs(args.timeout_s);
    let mut faults = chaos::Faults::default();
    let (created, all_ready) = if plan.chaos {
        let Driver::Operator(op) = driver else {
            bail!("chaos runs need the operator");
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let work = async {
            let r = async {
                world.create_all(args.create_concurrency).await?;
                let created = t0.elapsed();
                let ok = ready_watch.wait_ready(plan.n, deadline).await?;
                anyhow::Ok((created, ok))
            }
            .await;
            let _ = stop_tx.send(());
            r
        };
        let (r, (op, f)) = tokio::join!(work, chaos::run(plane, &world.launch, *op, stop_rx));
        driver = Driver::Operator(Box::new(op?));
        faults = f;
        r?
    } else {
        let starts = async {
            if is_floor {
                world.start_builds(t0, floor_starts).await;
            }
        };
        let (created, ()) = tokio::join!(
            async {
                world.create_all(args.create_concurrency).await?;
                anyhow::Ok(t0.elapsed())
            },
            starts
        );
        (created?, ready_watch.wait_ready(plan.n, deadline).await?)
    };
    let wall = t0.elapsed();
    if !all_ready && !plan.chaos {
        bail!(
            "timeout: {}/{} Ready; operator log: {}",
            ready_watch.seen.lock().expect("lock").ready.len(),
            plan.n,
            world.launch.log.display()
        );
    }
    eprintln!(
        "bench:   created {} in {:.1}s, {} after {:.1}s",
        plan.n,
        created.as_secs_f64(),
        if all_ready { "all Ready" } else { "gave up" },
        wall.as_secs_f64()
    );

    // Let in-flight status writes and events of the last reconciles land before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api_after = measure::apiserver_requests(&world.admin).await?;
    let counters = world.sim.counters();
    let mut r = RunResult::new(plan, world.workspaces.len(), wall);
    let ops: Vec<&Operator> = match &driver {
        Driver::Operator(op) => vec![op],
        Driver::Shards(ops) => ops.iter().collect(),
        Driver::Floor(f) => {
            r.floor_status_bytes = Some(f.status_bytes);
            Vec::new()
        }
    };
    for (op, before) in ops.into_iter().zip(cpu_before) {
        let (rss, cpu_after) = measure::proc_usage(op.pid);
        let cpu = cpu_after - before.min(cpu_after);
        r.per_process.push((rss, cpu));
        r.rss_kib = r.rss_kib.max(rss.max(faults.rss_kib));
        r.cpu_s += cpu;
        let text = op.metrics_text().await.unwrap_or_default();
        r.too_many += measure::sum_metric(
            &text,
            "workspace_start_operator_coder_requests",
            "code=\"429\"",
        );
    }
    r.cpu_s += faults.cpu_s;
    let seen = std::mem::take(&mut *ready_watch.seen.lock().expect("lock"));
    drop(ready_watch);
    let lags = world.lags(&seen.ready);
    r.set_lags(&lags);
    r.no_status_max_ms = seen.longest_without_status_ms();
    r.lost = plan.n.saturating_sub(seen.ready.len());
    let (dup, unstarted) = world.duplicate_builds();
    r.duplicate_builds = dup;
    r.unstarted_workspaces = unstarted;
    r.start_builds = world
        .workspaces
        .iter()
        .map(|w| world.sim.builds_created(*w) as u64)
        .sum();
    (r.coder_by_route, r.coder_total) = coder_requests(&counters);
    r.watch_streams = counters.get(WATCH_ROUTE).copied().unwrap_or(0);
    // The API server's counters start again from zero when it restarts (chaos runs).
    if !plan.chaos {
        r.set_api(&api_before, &api_after);
    }
    r.faults = plan.chaos.then_some(faults);
    r.operator_status_bytes = status_bytes(&world.api).await;
    r.build_starts = world.build_starts(t0_wall);

    match driver {
        Driver::Operator(op) if plan.mode == "watch" && args.restart && !plan.chaos => {
            r.restart = Some(restart::finished(&world, *op).await?);
        }
        Driver::Operator(op) => op.stop().await,
        Driver::Shards(ops) => {
            for op in ops {
                op.stop().await;
            }
        }
        Driver::Floor(_) => {}
    }
    world.clean_up().await?;
    Ok(r)
}

/// Mean size (bytes of JSON) of the Ready statuses in the namespace.
async fn status_bytes(api: &Api<WorkspaceStartRequest>) -> Option<usize> {
    let list = api.list(&ListParams::default().limit(200)).await.ok()?;
    let sizes: Vec<usize> = list
        .items
        .iter()
        .filter(|o| is_ready(o))
        .filter_map(|o| serde_json::to_string(o.status.as_ref()?).ok())
        .map(|s| s.len())
        .collect();
    (!sizes.is_empty()).then(|| sizes.iter().sum::<usize>() / sizes.len())
}
