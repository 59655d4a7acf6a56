//! Noisy neighbour: one operator watches two namespaces; namespace A creates `--noisy-n`
//! requests (default 1000) while namespace B creates `--quiet-n` (default 10). B's lag from
//! create to Ready (p50/p99) is measured alone first, then while A's burst is created and
//! started, and the ratio says how much A's burst delays B. The lag here starts at B's create,
//! not at agent-ready as in the other runs: waiting for a start slot happens before the build,
//! so a lag after agent-ready would not show it.
//!
//! One coder-sim, one Coder user and one workspace per request (every request needs its own
//! start), the operator with `--tenancy=open` and the operator's default flags plus
//! `--operator-args`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use coder_sim::{BuildScript, Sim, WorkspaceSeed};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::Mutex;
use workspace_start_operator::api::crd::WorkspaceStartRequest;

use crate::Args;
use crate::measure::{self, Launch, Operator};
use crate::run::{BenchSim, ReadyWatch};

/// What the run measured.
pub struct Noisy {
    /// Requests of A.
    pub n_a: usize,
    /// Requests of B in each phase.
    pub n_b: usize,
    /// B's create → Ready lags (ms, sorted), alone.
    pub alone: Vec<f64>,
    /// B's create → Ready lags (ms, sorted), during A's burst.
    pub with_burst: Vec<f64>,
    /// A's requests created before B's were.
    pub a_created_first: usize,
    /// From A's first create until all of A's requests were Ready.
    pub a_wall: Duration,
    /// A's create → Ready lag p50 (ms).
    pub a_p50_ms: f64,
    /// A's create → Ready lag p99 (ms).
    pub a_p99_ms: f64,
    /// The operator's flags beyond the defaults.
    pub operator_args: String,
    /// Where B's lag went, alone.
    pub alone_stages: Stages,
    /// Where B's lag went during A's burst.
    pub burst_stages: Stages,
    /// B's create calls (sent → the API server answered), ms sorted: alone, during A's burst.
    pub create_calls: [Vec<f64>; 2],
    /// B's lags from its create call's answer (the request exists) → Ready, ms sorted: alone,
    /// during A's burst.
    pub from_created: [Vec<f64>; 2],
    /// Start builds coder-sim received from B's first create (during A's burst) until B's last
    /// start build: (A's, B's). Both namespaces had requests waiting for a start all along, so a
    /// fair operator gives B about half.
    pub builds_while_both_wait: (usize, usize),
}

/// Where a set of requests' create → Ready lag went, p50 / p99 of each part (ms), each measured
/// on this machine's clock with millisecond precision: from the create call's answer until
/// coder-sim received the start build (the operator saw the request, waited for a start slot,
/// read Coder and wrote its start record), then Coder's own build until the agent was ready
/// (scripted), then until the bench saw Ready (the operator noticed, wrote the status, the
/// API server delivered it).
#[derive(Debug, Clone, Default)]
pub struct Stages {
    /// Create answered → start build received by coder-sim (ms, sorted).
    pub to_build: Vec<f64>,
    /// Start build received → agent ready (ms, sorted).
    pub build: Vec<f64>,
    /// Agent ready → Ready seen by the bench (ms, sorted).
    pub to_ready: Vec<f64>,
}

/// The `p`-quantile of sorted `lags` (nearest rank), NaN when empty.
fn quantile(lags: &[f64], p: f64) -> f64 {
    if lags.is_empty() {
        return f64::NAN;
    }
    lags[((lags.len() as f64 * p).ceil() as usize).clamp(1, lags.len()) - 1]
}

impl Noisy {
    /// The summary table.
    pub fn table(&self) -> String {
        let row = |label: &str, l: &[f64]| {
            format!(
                "| {label} | {} | {:.0} | {:.0} | {:.0} |\n",
                l.len(),
                quantile(l, 0.5),
                quantile(l, 0.99),
                quantile(l, 1.0)
            )
        };
        let ratio = quantile(&self.with_burst, 0.99) / quantile(&self.alone, 0.99);
        let mut s = format!(
            "\n## Noisy neighbour\n\nNamespace A creates {} requests; once {} of them are created, \
             namespace B creates {}. One operator watches both (flags: `{}`). Lag: B's create → \
             Ready seen by the bench.\n\n\
             | B's requests | n | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n",
            self.n_a,
            self.a_created_first,
            self.n_b,
            if self.operator_args.is_empty() {
                "defaults"
            } else {
                &self.operator_args
            }
        );
        s.push_str(&row("alone", &self.alone));
        s.push_str(&row("during A's burst", &self.with_burst));
        s.push_str(
            "\n| B's requests, p50 / p99 ms | create answered → start build at Coder (operator: intake, start slot, Coder reads) | build → agent ready (Coder, scripted) | agent ready → Ready seen (operator + API server) |\n|---|---|---|---|\n",
        );
        for (label, st) in [
            ("alone", &self.alone_stages),
            ("during A's burst", &self.burst_stages),
        ] {
            let pair = |v: &[f64]| format!("{:.0} / {:.0}", quantile(v, 0.5), quantile(v, 0.99));
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} |",
                pair(&st.to_build),
                pair(&st.build),
                pair(&st.to_ready)
            );
        }
        s.push_str(
            "\n| B's requests | create call (API server) p50 / p99 ms | create answered → Ready p50 / p99 ms |\n|---|---|---|\n",
        );
        for (i, label) in ["alone", "during A's burst"].iter().enumerate() {
            let _ = writeln!(
                s,
                "| {label} | {:.0} / {:.0} | {:.0} / {:.0} |",
                quantile(&self.create_calls[i], 0.5),
                quantile(&self.create_calls[i], 0.99),
                quantile(&self.from_created[i], 0.5),
                quantile(&self.from_created[i], 0.99),
            );
        }
        let (a_builds, b_builds) = self.builds_while_both_wait;
        let _ = writeln!(
            s,
            "\nFrom B's first create during A's burst until B's last start build, Coder received \
             {} start builds: {b_builds} of B's and {a_builds} of A's (B's share {:.0} %; fair: \
             about half while both namespaces wait).",
            a_builds + b_builds,
            100.0 * b_builds as f64 / (a_builds + b_builds).max(1) as f64
        );
        let from_created =
            quantile(&self.from_created[1], 0.99) / quantile(&self.from_created[0], 0.99);
        let _ = writeln!(
            s,
            "\nFrom the create's answer (the request exists) the p99 ratio is **{from_created:.2}×**."
        );
        let _ = writeln!(
            s,
            "\nB's p99 during A's burst / alone: **{ratio:.2}×** (goal ≤ 2×). A: all {} Ready \
             {:.1} s after its first create; A's lag p50 {:.0} ms, p99 {:.0} ms.",
            self.n_a,
            self.a_wall.as_secs_f64(),
            self.a_p50_ms,
            self.a_p99_ms
        );
        s
    }
}

/// One namespace's requests: names, specs, when each create was sent, and a watch.
struct Tenant {
    api: Api<WorkspaceStartRequest>,
    specs: Vec<(String, serde_json::Value)>,
    sent: Arc<Mutex<HashMap<String, Timestamp>>>,
    /// When the API server answered each create.
    created: Arc<Mutex<HashMap<String, Timestamp>>>,
    watch: ReadyWatch,
    /// Each request's workspace in coder-sim.
    workspaces: HashMap<String, uuid::Uuid>,
}

impl Tenant {
    async fn new(admin: &kube::Client, ns: &str) -> Tenant {
        let api: Api<WorkspaceStartRequest> = Api::namespaced(admin.clone(), ns);
        let watch = ReadyWatch::start(&api).await;
        Tenant {
            api,
            specs: Vec::new(),
            sent: Arc::default(),
            created: Arc::default(),
            watch,
            workspaces: HashMap::new(),
        }
    }

    /// Adds `n` requests named `{prefix}-{i}`, each for a new workspace of `user`.
    fn add(&mut self, sim: &Sim, user: uuid::Uuid, script: &BuildScript, prefix: &str, n: usize) {
        for i in 0..n {
            let ws = sim.add_workspace(
                WorkspaceSeed::new(user, &format!("{prefix}-{i}")).script(script.clone()),
            );
            self.workspaces.insert(format!("{prefix}-{i}"), ws);
            self.specs.push((
                format!("{prefix}-{i}"),
                serde_json::json!({"workspace": {"id": ws.to_string()}}),
            ));
        }
    }

    /// Creates the requests `range`, `concurrency` at a time, noting when each create was sent.
    async fn create(
        &self,
        range: std::ops::Range<usize>,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        futures::stream::iter(self.specs[range].iter())
            .map(|(name, spec)| async move {
                self.sent
                    .lock()
                    .await
                    .insert(name.clone(), Timestamp::now());
                let obj: WorkspaceStartRequest = serde_json::from_value(serde_json::json!({
                    "apiVersion": "coder.com/v1alpha1",
                    "kind": "WorkspaceStartRequest",
                    "metadata": {"name": name},
                    "spec": spec,
                }))?;
                self.api
                    .create(&PostParams::default(), &obj)
                    .await
                    .with_context(|| format!("create {name}"))?;
                self.created
                    .lock()
                    .await
                    .insert(name.clone(), Timestamp::now());
                anyhow::Ok(())
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// The requests named `{prefix}-*` with the latest build coder-sim holds for each one's
    /// workspace (its start build once the operator sent it; read after the request is Ready).
    fn latest_builds<'a>(
        &'a self,
        sim: &'a Sim,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, serde_json::Value)> + 'a {
        self.workspaces
            .iter()
            .filter(move |(n, _)| n.starts_with(&format!("{prefix}-")))
            .map(|(name, ws)| (name, sim.workspace_json(*ws)["latest_build"].take()))
    }

    /// Where the lag of the requests named `{prefix}-*` went (see [`Stages`]), from coder-sim's
    /// record of each workspace's latest build and agent.
    async fn stages(&self, sim: &Sim, prefix: &str) -> Stages {
        let created = self.created.lock().await.clone();
        let ready = self.watch.seen.lock().expect("lock").ready.clone();
        let ms = |from: Timestamp, to: Timestamp| to.duration_since(from).as_secs_f64() * 1000.0;
        let mut st = Stages::default();
        for (name, build) in self.latest_builds(sim, prefix) {
            let (Some(created), Some(ready), Some(requested), Some(agent_ready)) = (
                created.get(name),
                ready.get(name),
                timestamp(&build["created_at"]),
                timestamp(&build["resources"][0]["agents"][0]["ready_at"]),
            ) else {
                continue;
            };
            st.to_build.push(ms(*created, requested));
            st.build.push(ms(requested, agent_ready));
            st.to_ready.push(ms(agent_ready, *ready));
        }
        for v in [&mut st.to_build, &mut st.build, &mut st.to_ready] {
            v.sort_by(|a, b| a.total_cmp(b));
        }
        st
    }

    /// When coder-sim received the start build of each request named `{prefix}-*`.
    fn builds(&self, sim: &Sim, prefix: &str) -> Vec<Timestamp> {
        self.latest_builds(sim, prefix)
            .filter_map(|(_, build)| timestamp(&build["created_at"]))
            .collect()
    }

    /// Create → Ready lags (ms, sorted) of the requests named `{prefix}-*`.
    async fn lags(&self, prefix: &str) -> Vec<f64> {
        let ready = self.watch.seen.lock().expect("lock").ready.clone();
        between(&*self.sent.lock().await, &ready, prefix)
    }

    /// Create answered → Ready lags (ms, sorted) of the requests named `{prefix}-*`.
    async fn lags_from_created(&self, prefix: &str) -> Vec<f64> {
        let ready = self.watch.seen.lock().expect("lock").ready.clone();
        between(&*self.created.lock().await, &ready, prefix)
    }

    /// How long the create calls of the requests named `{prefix}-*` took (ms, sorted).
    async fn create_calls(&self, prefix: &str) -> Vec<f64> {
        let created = self.created.lock().await.clone();
        between(&*self.sent.lock().await, &created, prefix)
    }
}

/// A timestamp in coder-sim's JSON.
fn timestamp(v: &serde_json::Value) -> Option<Timestamp> {
    v.as_str()?.parse().ok()
}

/// `to[name] - from[name]` (ms, sorted) for the names `{prefix}-*` in both.
fn between(
    from: &HashMap<String, Timestamp>,
    to: &HashMap<String, Timestamp>,
    prefix: &str,
) -> Vec<f64> {
    let mut lags: Vec<f64> = from
        .iter()
        .filter(|(name, _)| name.starts_with(&format!("{prefix}-")))
        .filter_map(|(name, at)| {
            let end = to.get(name)?;
            Some(end.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    lags.sort_by(|a, b| a.total_cmp(b));
    lags
}

/// Runs the noisy-neighbour measurement (see the module documentation).
pub async fn run(args: &Args, plane: &envtest::ControlPlane, bin: &Path) -> anyhow::Result<Noisy> {
    let (n_a, n_b) = (args.noisy_n, args.quiet_n);
    let admin =
        workspace_start_operator::process::kube_client::from_config(plane.admin_config().clone())?;
    let ns_a = plane.create_namespace("bench-noisy-a").await?;
    let ns_b = plane.create_namespace("bench-noisy-b").await?;
    let BenchSim {
        server: sim_server,
        user,
        script,
    } = BenchSim::start(args, args.running_ms).await?;
    let sim = sim_server.sim();
    let mut a = Tenant::new(&admin, &ns_a).await;
    let mut b = Tenant::new(&admin, &ns_b).await;
    a.add(&sim, user.id, &script, "a", n_a);
    b.add(&sim, user.id, &script, "warm", 1);
    b.add(&sim, user.id, &script, "alone", n_b);
    b.add(&sim, user.id, &script, "burst", n_b);

    let dir = std::env::temp_dir().join(format!("wso-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("noisy.token");
    std::fs::write(&token_file, format!("{}\n", user.token))?;
    let mut extra: Vec<String> = args
        .operator_args
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    extra.push(format!("--namespaces={ns_b}"));
    let launch = Launch {
        bin: bin.to_path_buf(),
        kubeconfig: plane.admin_kubeconfig().to_path_buf(),
        ns: ns_a.clone(),
        coder_url: sim_server.url(),
        token_file,
        log: dir.join("noisy.log"),
        watch: true,
        extra,
    };
    let op = Operator::start(&launch).await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);

    // One request first, so B alone does not pay for the operator's first connections.
    b.create(0..1, 1).await?;
    if !b.watch.wait_ready(1, deadline).await? {
        bail!(
            "B's first request never Ready; log {}",
            launch.log.display()
        );
    }
    // B alone.
    b.create(1..1 + n_b, args.create_concurrency).await?;
    if !b.watch.wait_ready(1 + n_b, deadline).await? {
        bail!(
            "B's requests alone never all Ready; log {}",
            launch.log.display()
        );
    }
    let alone = b.lags("alone").await;
    let alone_stages = b.stages(&sim, "alone").await;

    // A's burst, and B's requests once half of A's are created.
    let a_created_first = n_a / 2;
    let t0 = Instant::now();
    a.create(0..a_created_first, args.create_concurrency)
        .await?;
    let (rest_of_a, of_b) = tokio::join!(
        a.create(a_created_first..n_a, args.create_concurrency),
        b.create(1 + n_b..1 + 2 * n_b, args.create_concurrency)
    );
    rest_of_a?;
    of_b?;
    if !b.watch.wait_ready(1 + 2 * n_b, deadline).await? {
        bail!(
            "B's requests during A's burst never all Ready; log {}",
            launch.log.display()
        );
    }
    let with_burst = b.lags("burst").await;
    let burst_stages = b.stages(&sim, "burst").await;
    if !a.watch.wait_ready(n_a, deadline).await? {
        bail!("A's requests never all Ready; log {}", launch.log.display());
    }
    let a_wall = t0.elapsed();
    let builds_while_both_wait = {
        let first_b = b
            .created
            .lock()
            .await
            .iter()
            .filter(|(n, _)| n.starts_with("burst-"))
            .map(|(_, t)| *t)
            .min();
        let b_builds = b.builds(&sim, "burst");
        match (first_b, b_builds.iter().max()) {
            (Some(from), Some(to)) => {
                let within = |t: &&Timestamp| from <= **t && *t <= to;
                let a_builds = a.builds(&sim, "a");
                (
                    a_builds.iter().filter(within).count(),
                    b_builds.iter().filter(within).count(),
                )
            }
            _ => (0, 0),
        }
    };
    let a_lags = a.lags("a").await;
    let rss = measure::proc_usage(op.pid).0;
    eprintln!("bench:   noisy neighbour: operator peak RSS {rss} KiB");
    op.stop().await;
    sim_server.shutdown().await;
    Ok(Noisy {
        n_a,
        n_b,
        alone,
        with_burst,
        a_created_first,
        a_wall,
        a_p50_ms: quantile(&a_lags, 0.5),
        a_p99_ms: quantile(&a_lags, 0.99),
        operator_args: args.operator_args.clone(),
        alone_stages,
        burst_stages,
        create_calls: [b.create_calls("alone").await, b.create_calls("burst").await],
        from_created: [
            b.lags_from_created("alone").await,
            b.lags_from_created("burst").await,
        ],
        builds_while_both_wait,
    })
}
