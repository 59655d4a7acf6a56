//! Sharding on a real kube-apiserver + etcd with coder-sim: the default deployment and named
//! shards (`--shard`) on one control plane, each an operator process running as the chart's
//! ServiceAccount with leader election on its own Lease. Requests are split by the
//! `coder.com/shard` label; each is reconciled by exactly one process, a request for a shard
//! that does not run is left alone, and moving a request's label hands it over without a
//! second start build.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use coder_sim::{BuildScript, Fault, LifecycleState, WorkspaceSeed};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::{Env, Operator, ready, render_chart};
use workspace_start_operator::api::crd::{Phase, WorkspaceStartRequest};

const T: Duration = Duration::from_secs(90);
const POST_BUILDS: &str = "POST /api/v2/workspaces/{id}/builds";
const LEASE: &str = "workspace-start-operator";

/// One operator process per shard (`""` = the default shard), all on one namespace.
struct Sharded {
    env: Env,
    ops: BTreeMap<&'static str, Operator>,
}

/// The pod name (Events' reporting instance and Lease identity) of a shard's process.
fn pod(shard: &str) -> String {
    if shard.is_empty() {
        "op-default".to_owned()
    } else {
        format!("op-{shard}")
    }
}

impl Sharded {
    /// A namespace with the chart's RBAC for these shards (leader election on, so the Role
    /// grants each shard's Lease) and one operator process per shard.
    async fn start(prefix: &str, shards: &[&'static str]) -> Sharded {
        Self::start_with(prefix, shards, &[]).await
    }

    /// Like [`Sharded::start`], with extra operator flags.
    async fn start_with(prefix: &str, shards: &[&'static str], extra: &[&str]) -> Sharded {
        let env = Env::new(prefix).await;
        let mut sets = vec!["--set=leaderElection.enabled=true".to_owned()];
        for (i, s) in shards.iter().filter(|s| !s.is_empty()).enumerate() {
            sets.push(format!("--set=shards[{i}].name={s}"));
        }
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let yaml = render_chart(&env.ns, &env.sim.url(), &sets);
        env.plane
            .apply_yaml(&yaml, &env.ns)
            .await
            .expect("apply the chart with shards");
        let mut ops = BTreeMap::new();
        for shard in shards {
            let id = pod(shard);
            let args = [
                format!("--shard={shard}"),
                "--leader-elect".to_owned(),
                "--lease-duration=5".to_owned(),
                format!("--identity={id}"),
            ];
            let args: Vec<&str> = args
                .iter()
                .map(String::as_str)
                .chain(extra.iter().copied())
                .collect();
            let op = env.spawn_operator(&args, &[("POD_NAME", &id)]).await;
            ops.insert(*shard, op);
        }
        let sharded = Sharded { env, ops };
        for shard in shards {
            sharded.wait_leader(shard).await;
        }
        sharded
    }

    /// Waits until the shard's own Lease is held by the shard's process.
    async fn wait_leader(&self, shard: &str) {
        let leases: Api<Lease> = Api::namespaced(self.env.admin.clone(), &self.env.ns);
        let name = if shard.is_empty() {
            LEASE.to_owned()
        } else {
            format!("{LEASE}-shard-{shard}")
        };
        let deadline = Instant::now() + T;
        loop {
            let holder = leases
                .get_opt(&name)
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity);
            if holder.as_deref() == Some(pod(shard).as_str()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Lease {name} never held by {}; holder {holder:?}; log:\n{}",
                pod(shard),
                support::tail(&self.ops[shard].logs(), 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a request for `workspace`, labelled for `shard` (none for `""`).
    async fn create(&self, name: &str, shard: &str, workspace: uuid::Uuid) {
        let mut meta = json!({"name": name, "namespace": self.env.ns});
        if !shard.is_empty() {
            meta["labels"] = json!({"coder.com/shard": shard});
        }
        let obj: WorkspaceStartRequest = serde_json::from_value(json!({
            "apiVersion": "coder.com/v1alpha1",
            "kind": "WorkspaceStartRequest",
            "metadata": meta,
            "spec": {"workspace": {"id": workspace.to_string()}},
        }))
        .expect("valid request");
        self.env
            .wsrs()
            .create(&PostParams::default(), &obj)
            .await
            .expect("create request");
    }

    /// Moves a request to `shard` (`""`: removes the label, i.e. the default shard).
    async fn relabel(&self, name: &str, shard: &str) {
        let value = if shard.is_empty() {
            serde_json::Value::Null
        } else {
            json!(shard)
        };
        self.env
            .wsrs()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"coder.com/shard": value}}})),
            )
            .await
            .expect("relabel request");
    }

    /// The request's Events as (reporting instance, reason).
    async fn events(&self, name: &str) -> BTreeSet<(String, String)> {
        let api: Api<Event> = Api::namespaced(self.env.admin.clone(), &self.env.ns);
        api.list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| {
                (
                    e.reporting_instance.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The reporting instances (pods) of the request's Events.
    async fn reporters(&self, name: &str) -> BTreeSet<String> {
        self.events(name)
            .await
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    }

    /// Waits until the request is Ready.
    async fn wait_ready(&self, name: &str) -> WorkspaceStartRequest {
        let w = self.env.wait_terminal(name, T).await;
        assert_eq!(
            ready(&w),
            ("True".into(), "Ready".into()),
            "{name}: {:?}",
            w.status
        );
        w
    }
}

/// A build long enough to move a request's label in the middle of it.
fn slow_build() -> BuildScript {
    BuildScript::default()
        .with_job(Duration::from_secs(2), Duration::from_secs(3))
        .with_agent(
            Duration::from_millis(500),
            Duration::from_secs(1),
            LifecycleState::Ready,
        )
}

fn quick_build() -> BuildScript {
    BuildScript::default()
        .with_job(Duration::from_millis(300), Duration::from_millis(700))
        .with_agent(
            Duration::from_millis(200),
            Duration::from_millis(300),
            LifecycleState::Ready,
        )
}

/// The value of the first series of `name` whose labels include every `labels` pair.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The default deployment and two shards split twelve requests (and two requests for one
/// workspace in different shards): each request is reconciled by its shard's process only,
/// each workspace gets exactly one start build, and each process counts only its own requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_and_the_default_each_reconcile_only_their_requests() {
    let shards = ["", "a", "b"];
    let s = Sharded::start("shard-split", &shards).await;
    let sim = s.env.sim.sim();
    let mut requests = Vec::new();
    for i in 0..12 {
        let shard = shards[i % 3];
        let ws = sim.add_workspace(
            WorkspaceSeed::new(s.env.alice.id, &format!("ws{i}")).script(quick_build()),
        );
        let name = format!("r{i:02}");
        s.create(&name, shard, ws).await;
        requests.push((name, shard, ws));
    }
    // Two shards, one workspace: their processes do not share a lock, Coder's 409 on an active
    // build makes the later POST join the first build.
    let shared =
        sim.add_workspace(WorkspaceSeed::new(s.env.alice.id, "shared").script(slow_build()));
    s.create("shared-a", "a", shared).await;
    s.create("shared-b", "b", shared).await;
    requests.push(("shared-a".into(), "a", shared));
    requests.push(("shared-b".into(), "b", shared));

    for (name, shard, ws) in &requests {
        s.wait_ready(name).await;
        assert_eq!(
            sim.builds_created(*ws),
            1,
            "{name}: exactly one start build"
        );
        let reporters = s.reporters(name).await;
        assert_eq!(
            reporters,
            BTreeSet::from([pod(shard)]),
            "{name} (shard {shard:?}) must be reconciled by its shard's process only"
        );
    }
    // Each process knows its own five (default: four) requests and no other shard's.
    for shard in shards {
        let text = s.ops[shard].metrics().await;
        let mut labels = vec![("phase", "Ready")];
        if !shard.is_empty() {
            labels.push(("shard", shard));
        }
        let expected = requests.iter().filter(|(_, sh, _)| *sh == shard).count() as f64;
        assert_eq!(
            metric(&text, "workspace_start_operator_requests", &labels),
            Some(expected),
            "shard {shard:?} metrics:\n{text}"
        );
        if shard.is_empty() {
            assert!(
                !text.contains("shard=\""),
                "the default shard adds no label"
            );
        }
    }
}

/// A request labelled for a shard whose process does not run gets no status and no Events at
/// all (also not the first Pending status), stays visible to the query in docs/operations.md
/// ("Scale out: shards"), and is taken up once its label names a running shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_for_a_shard_that_does_not_run_gets_no_status_until_relabelled() {
    let s = Sharded::start("shard-orphan", &["", "a"]).await;
    let sim = s.env.sim.sim();
    let orphan_ws =
        sim.add_workspace(WorkspaceSeed::new(s.env.alice.id, "orphan").script(quick_build()));
    s.create("orphan", "c", orphan_ws).await;
    let created = Instant::now();
    // Controls created after it, one per running shard, become Ready: the shards are working.
    for (name, shard) in [("control-default", ""), ("control-a", "a")] {
        let ws = sim.add_workspace(WorkspaceSeed::new(s.env.alice.id, name).script(quick_build()));
        s.create(name, shard, ws).await;
        s.wait_ready(name).await;
    }
    // A running shard writes a new request's first status (Pending) within 2 s; give it more
    // than that before asserting that none came (an absence can only be waited out).
    tokio::time::sleep_until((created + Duration::from_secs(4)).into()).await;
    let w = s.env.wsrs().get("orphan").await.expect("get orphan");
    assert!(
        w.status.is_none(),
        "no shard may write its status: {:?}",
        w.status
    );
    assert!(s.reporters("orphan").await.is_empty(), "no Events");
    assert_eq!(sim.builds_created(orphan_ws), 0);

    // The query in docs/operations.md for requests of shards that do not run.
    let (ok, out) = s.env.kubectl(
        &[
            "get",
            "wsr",
            "-l",
            "coder.com/shard",
            "-o",
            "custom-columns=NAME:.metadata.name,SHARD:.metadata.labels.coder\\.com/shard,OBSERVED:.status.observedGeneration",
        ],
        None,
    );
    assert!(ok, "{out}");
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("orphan "))
        .unwrap_or_else(|| panic!("orphan listed: {out}"))
        .split_whitespace()
        .collect();
    assert_eq!(row, ["orphan", "c", "<none>"], "{out}");

    s.relabel("orphan", "a").await;
    s.wait_ready("orphan").await;
    assert_eq!(sim.builds_created(orphan_ws), 1);
    assert_eq!(s.reporters("orphan").await, BTreeSet::from([pod("a")]));
}

/// The label moves while the start build runs (after `buildRequestedAt` and the build were
/// recorded): the new shard resumes from the status, as after a restart, and follows the same
/// build to Ready; nobody POSTs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_moved_mid_build_is_resumed_by_the_new_shard_without_a_second_build() {
    let s = Sharded::start("shard-move", &["a", "b"]).await;
    let sim = s.env.sim.sim();
    let ws = sim.add_workspace(WorkspaceSeed::new(s.env.alice.id, "moving").script(slow_build()));
    s.create("moving", "a", ws).await;
    let before = s
        .env
        .wait_for("moving", T, |w| {
            w.status
                .as_ref()
                .is_some_and(|st| st.build_requested_at.is_some() && st.outcome.is_some())
        })
        .await;
    assert_eq!(
        before.status.as_ref().and_then(|st| st.phase),
        Some(Phase::Starting)
    );
    s.relabel("moving", "b").await;
    let w = s.wait_ready("moving").await;
    assert_eq!(sim.builds_created(ws), 1, "one start build");
    assert_eq!(sim.count(POST_BUILDS), 1, "the new shard never POSTs");
    let build = |w: &WorkspaceStartRequest| {
        w.status
            .as_ref()
            .and_then(|st| st.build.clone())
            .map(|b| b.id)
    };
    assert_eq!(build(&w), build(&before), "the same build was followed");
    assert!(
        s.reporters("moving").await.contains(&pod("b")),
        "the new shard reported the rest"
    );
}

/// The label moves while the old shard's start POST is in flight (held 5 s by coder-sim before
/// it commits): the new shard sees the start record but no build, and, as after a restart,
/// requests the start itself; the old shard's late POST meets Coder's 409 for the active build,
/// and it writes nothing more (the request has left its cache). One build; the request is
/// Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_moved_while_the_old_shard_posts_starts_one_build() {
    // The POST's client timeout outlasts the hold, so shard a gets Coder's answer.
    let s = Sharded::start_with("shard-race", &["a", "b"], &["--coder-timeout-ms=20000"]).await;
    let sim = s.env.sim.sim();
    // Active for 8 s: still active when shard a's held POST reaches Coder.
    let build = BuildScript::default()
        .with_job(Duration::from_secs(4), Duration::from_secs(4))
        .with_agent(
            Duration::from_millis(200),
            Duration::from_millis(300),
            LifecycleState::Ready,
        );
    let ws = sim.add_workspace(WorkspaceSeed::new(s.env.alice.id, "race").script(build));
    sim.set_fault(
        POST_BUILDS,
        Fault::times(1, Fault::Slow(Duration::from_secs(5))),
    );
    s.create("race", "a", ws).await;
    s.env
        .wait_for("race", T, |w| {
            w.status
                .as_ref()
                .is_some_and(|st| st.build_requested_at.is_some())
        })
        .await;
    assert_eq!(sim.count(POST_BUILDS), 1, "shard a's POST is in flight");
    assert_eq!(sim.builds_created(ws), 0, "and has not committed");
    s.relabel("race", "b").await;
    wait_until("both POSTs", async || sim.count(POST_BUILDS) >= 2).await;
    s.wait_ready("race").await;
    assert_eq!(
        sim.builds_created(ws),
        1,
        "one start build despite two POSTs"
    );
    assert_eq!(sim.count(POST_BUILDS), 2);
    // Shard a reported its start request, then nothing: after its POST's 409 it would have
    // joined the build (BuildInProgress), but the request had left its shard.
    let from_a: BTreeSet<String> = s
        .events("race")
        .await
        .into_iter()
        .filter(|(r, _)| *r == pod("a"))
        .map(|(_, reason)| reason)
        .collect();
    assert_eq!(from_a, BTreeSet::from(["StartRequested".to_owned()]));
    assert!(
        s.ops["a"].logs().contains("request left this shard"),
        "shard a stopped at the handover:\n{}",
        s.ops["a"].logs()
    );
}

/// Requests move between the default deployment and two shards at random moments of their
/// start (before, during and after the start record and the POST): every request ends Ready
/// and every workspace has exactly one start build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_moved_at_random_moments_start_one_build_per_workspace() {
    let shards = ["", "a", "b"];
    let s = Sharded::start("shard-chaos", &shards).await;
    let sim = s.env.sim.sim();
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let mut moves = Vec::new();
    let mut requests = Vec::new();
    let t0 = Instant::now();
    for i in 0..24 {
        let ws = sim.add_workspace(
            WorkspaceSeed::new(s.env.alice.id, &format!("ws{i}")).script(quick_build()),
        );
        let name = format!("m{i:02}");
        let from = shards[rng.random_range(0..3)];
        let to = shards
            [(shards.iter().position(|x| *x == from).unwrap_or(0) + rng.random_range(1..3)) % 3];
        let at = t0 + Duration::from_millis(rng.random_range(0..1500) + 20 * i);
        s.create(&name, from, ws).await;
        moves.push((at, name.clone(), to));
        requests.push((name, ws));
    }
    moves.sort();
    for (at, name, to) in &moves {
        tokio::time::sleep_until((*at).into()).await;
        s.relabel(name, to).await;
    }
    for (name, ws) in &requests {
        s.wait_ready(name).await;
        assert_eq!(
            sim.builds_created(*ws),
            1,
            "{name}: exactly one start build"
        );
    }
}
