//! Reliability and security scenarios against a real kube-apiserver + etcd, coder-sim with fault
//! injection and the operator binary: crashes around the start build POST, Coder faults for a
//! while, an API server restart, two replicas with leader election, and a Secret in another
//! namespace. Each test prints one `reliability:` summary line (faults injected, requests,
//! Ready, duplicate builds) that the figures in tools/bench/RESULTS.md are computed from.

mod support;

use std::time::{Duration, Instant};

use coder_sim::{BuildScript, Fault, LifecycleState, SimConfig, WorkspaceSeed};
use envtest::ControlPlane;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::{Env, RELEASE, ready, render_chart};
use workspace_start_operator::api::crd::{Outcome, Phase, WorkspaceStartRequest};

const T: Duration = Duration::from_secs(60);
const POST_BUILDS: &str = "POST /api/v2/workspaces/{id}/builds";
const GET_WS: &str = "GET /api/v2/workspaces/{id}";

fn summary(test: &str, faults: u64, requests: usize, ready: usize, duplicates: usize) {
    eprintln!(
        "reliability: {test}: faults_injected={faults} requests={requests} ready={ready} duplicate_builds={duplicates}"
    );
}

/// A build slow enough to act in the middle of it.
fn slow_build() -> BuildScript {
    BuildScript::default()
        .with_job(Duration::from_secs(2), Duration::from_secs(3))
        .with_agent(
            Duration::from_millis(1500),
            Duration::from_secs(3),
            LifecycleState::Ready,
        )
}

fn phase(w: &WorkspaceStartRequest) -> Option<Phase> {
    w.status.as_ref().and_then(|s| s.phase)
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts the request is Ready with exactly one start build on `ws`.
async fn assert_ready_once(env: &Env, name: &str, ws: uuid::Uuid) -> WorkspaceStartRequest {
    let w = env.wait_terminal(name, T).await;
    assert_eq!(
        ready(&w),
        ("True".into(), "Ready".into()),
        "{name}: {:?}",
        w.status
    );
    assert_eq!(
        env.sim.sim().builds_created(ws),
        1,
        "{name}: exactly one start build"
    );
    w
}

/// SIGKILL while the POST is in flight, after Coder committed the build: the restarted operator
/// re-reads Coder and adopts the build instead of POSTing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_post_does_not_double_build() {
    let mut env = Env::new("rel-crash-post").await;
    // A long client timeout: the POST is still in flight when the process dies.
    env.start_operator(&["--coder-timeout-ms=60000"]).await;
    let sim = env.sim.sim();
    let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "crash").script(slow_build()));
    // Fault::Slow sleeps BEFORE the handler runs (nothing committed); CommitThenHang commits,
    // then never answers.
    sim.set_fault(POST_BUILDS, Fault::times(1, Fault::CommitThenHang));
    env.create_for_workspace("r", ws).await;
    wait_until("the POST to commit", T, || sim.builds_posted(ws) == 1).await;
    env.operator().kill().await;

    // The status was written before the POST; the result never was.
    let w = env.wsrs().get("r").await.expect("get");
    let st = w.status.clone().expect("status");
    assert!(
        st.build_requested_at.is_some(),
        "buildRequestedAt written before the POST: {st:?}"
    );
    assert_eq!(
        st.outcome, None,
        "the POST's result was never recorded: {st:?}"
    );

    env.start_operator(&[]).await;
    let w = assert_ready_once(&env, "r", ws).await;
    assert_eq!(w.status.and_then(|s| s.outcome), Some(Outcome::Queued));
    assert_eq!(sim.builds_posted(ws), 1);
    summary(
        "crash_after_post_does_not_double_build",
        2,
        1,
        1,
        sim.builds_created(ws) - 1,
    );
}

/// Kill the operator at several points of a slow build; each restart picks up where the status
/// left off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_status_writes_recovers() {
    let mut env = Env::new("rel-crash-steps").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let script = BuildScript::default()
        .with_job(Duration::from_secs(4), Duration::from_secs(5))
        .with_agent(
            Duration::from_secs(2),
            Duration::from_secs(5),
            LifecycleState::Ready,
        );
    let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "steps").script(script));
    env.create_for_workspace("s", ws).await;
    // Progress rank: 1 build pending, 2 build running, 3 waiting for the agent, 4 finished.
    let rank = |w: &WorkspaceStartRequest| -> u8 {
        let Some(st) = w.status.as_ref() else {
            return 0;
        };
        match st.phase {
            Some(p) if p.is_terminal() => 4,
            Some(Phase::WaitingForAgent) => 3,
            _ => match st
                .build
                .as_ref()
                .filter(|_| st.outcome.is_some())
                .map(|b| b.job_status.as_str())
            {
                Some("pending") => 1,
                Some("running") => 2,
                _ => 0,
            },
        }
    };
    let mut kills = 0;
    for point in 1..=3u8 {
        let w = env.wait_for("s", T, |w| rank(w) >= point).await;
        env.operator().kill().await;
        kills += 1;
        eprintln!("killed the operator at rank {} (wanted {point})", rank(&w));
        env.start_operator(&[]).await;
    }
    let w = assert_ready_once(&env, "s", ws).await;
    assert_eq!(w.status.and_then(|s| s.outcome), Some(Outcome::Queued));
    summary(
        "crash_between_status_writes_recovers",
        kills,
        1,
        1,
        sim.builds_created(ws) - 1,
    );
}

/// Coder creates the build, then answers 500: the operator re-reads and adopts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_then_fail_500_does_not_double_build() {
    let mut env = Env::new("rel-ctf").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "ctf"));
    sim.set_fault(POST_BUILDS, Fault::times(1, Fault::CommitThenFail));
    env.create_for_workspace("c", ws).await;
    let w = assert_ready_once(&env, "c", ws).await;
    assert_eq!(w.status.and_then(|s| s.outcome), Some(Outcome::Queued));
    assert_eq!(sim.count(POST_BUILDS), 1, "the operator never POSTed again");
    summary(
        "commit_then_fail_500_does_not_double_build",
        1,
        1,
        1,
        sim.builds_created(ws) - 1,
    );
}

/// 500, 429 with Retry-After, hangs and connection resets on the workspace read for ~5 s: the
/// operator keeps running, says CoderUnavailable, backs off, and recovers when Coder does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coder_faults_for_a_while_then_recover() {
    let mut env = Env::new("rel-faults").await;
    env.start_operator(&["--coder-timeout-ms=1000"]).await;
    let sim = env.sim.sim();
    let window = Duration::from_secs(5);
    // Polling every 300 ms for 5 s would be ~17 reads; backoff (1 s, 2 s, 4 s …) keeps it low.
    let bound = 8;
    let cases = [
        ("status-500", Fault::Status(500)),
        ("status-429", Fault::RateLimited(2)),
        ("hang", Fault::Hang),
        ("reset", Fault::Reset),
    ];
    let mut faults = 0;
    for (name, fault) in cases {
        let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, name));
        let before = sim.count(GET_WS);
        let t0 = Instant::now();
        sim.set_fault(GET_WS, fault);
        env.create_for_workspace(name, ws).await;
        let w = env
            .wait_for(name, T, |w| {
                w.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "Reconciling"
                            && c.status == "True"
                            && c.reason == "CoderUnavailable"
                    })
                })
            })
            .await;
        assert_eq!(
            ready(&w),
            ("False".into(), "CoderUnavailable".into()),
            "{name}"
        );
        assert!(
            !phase(&w).is_some_and(Phase::is_terminal),
            "{name}: not terminal while Coder is down"
        );
        tokio::time::sleep(window.saturating_sub(t0.elapsed())).await;
        let reads = sim.count(GET_WS) - before;
        faults += reads;
        sim.clear_faults();
        assert!(reads >= 1, "{name}: the operator tried at least once");
        assert!(
            reads <= bound,
            "{name}: {reads} reads in {window:?}: no backoff"
        );
        // Still alive and serving.
        let metrics = env.operator().metrics().await;
        assert!(
            metrics.contains("coder"),
            "{name}: operator not serving /metrics after the fault"
        );
        assert!(
            !env.operator().logs().contains("panicked"),
            "{name}: operator panicked"
        );
        assert_ready_once(&env, name, ws).await;
        eprintln!("{name}: {reads} workspace reads during a {window:?} fault");
    }
    summary("coder_faults_for_a_while_then_recover", faults, 4, 4, 0);
}

/// A world on a private control plane (so restarting its API server disturbs no other test).
async fn private_env(prefix: &str) -> (Env, &'static ControlPlane) {
    let plane: &'static ControlPlane = Box::leak(Box::new(
        ControlPlane::start().await.expect("private control plane"),
    ));
    let env = Env::on_plane(plane, prefix, SimConfig::default()).await;
    (env, plane)
}

/// Restart kube-apiserver in the middle of a build: watches break and status writes fail for a
/// while; the request still ends Ready with one build, and a request created after the restart
/// is picked up (the watch resumed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart_resumes() {
    let (mut env, plane) = private_env("rel-apiserver").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "a").script(slow_build()));
    env.create_for_workspace("before", ws).await;
    env.wait_phase("before", Phase::Starting, T).await;
    plane
        .restart_apiserver()
        .await
        .expect("restart kube-apiserver");
    assert_ready_once(&env, "before", ws).await;

    let ws2 = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "b"));
    env.create_for_workspace("after", ws2).await;
    assert_ready_once(&env, "after", ws2).await;
    summary("api_server_restart_resumes", 1, 2, 2, 0);
    // The plane's processes die with the test process (PDEATHSIG); its dir is swept next run.
}

/// Two replicas with leader election; the leader is SIGKILLed mid-way; the standby takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_leader_election_no_duplicate_builds() {
    let mut env = Env::new("rel-leader").await;
    // The chart's leader-election Role and RoleBinding (Leases in the release namespace).
    let yaml = render_chart(
        &env.ns,
        &env.sim.url(),
        &["--set=leaderElection.enabled=true"],
    );
    env.plane
        .apply_yaml(&yaml, &env.ns)
        .await
        .expect("apply chart with leader election");
    let args = |id: &str| {
        vec![
            "--leader-elect".to_owned(),
            "--lease-duration=4".to_owned(),
            format!("--identity={id}"),
        ]
    };
    let a = args("replica-a");
    env.start_operator(&a.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let first = env.operator.take().expect("replica a");
    let b = args("replica-b");
    env.start_operator(&b.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let second = env.operator.take().expect("replica b");

    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), &env.ns);
    let holder = || async {
        leases
            .get_opt("workspace-start-operator")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    };
    let deadline = Instant::now() + T;
    let leader = loop {
        if let Some(h) = holder().await.filter(|h| h.starts_with("replica-")) {
            break h;
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let sim = env.sim.sim();
    let script = BuildScript::default()
        .with_job(Duration::from_secs(1), Duration::from_secs(2))
        .with_agent(
            Duration::from_millis(500),
            Duration::from_secs(1),
            LifecycleState::Ready,
        );
    let wss: Vec<uuid::Uuid> = (0..5)
        .map(|i| {
            sim.add_workspace(
                WorkspaceSeed::new(env.alice.id, &format!("ws{i}")).script(script.clone()),
            )
        })
        .collect();
    let mut names = Vec::new();
    for i in 0..20 {
        let name = format!("r{i:02}");
        env.create_for_workspace(&name, wss[i % 5]).await;
        names.push((name, wss[i % 5]));
    }
    // Mid-way: some builds requested, not all requests finished.
    wait_until("the leader to start builds", T, || {
        wss.iter().filter(|w| sim.builds_posted(**w) > 0).count() >= 2
    })
    .await;
    let (mut dead, standby) = if leader == "replica-a" {
        (first, second)
    } else {
        (second, first)
    };
    dead.kill().await;
    // The standby goes into `env` so that a failing wait prints its log.
    env.operator = Some(standby);

    let deadline = Instant::now() + T;
    let new_leader = loop {
        if let Some(h) = holder().await.filter(|h| *h != leader) {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "the standby never took over; its log:\n{}",
            env.operator().logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut ready_count = 0;
    for (name, ws) in &names {
        let w = env.wait_terminal(name, T).await;
        assert_eq!(ready(&w), ("True".into(), "Ready".into()), "{name}");
        ready_count += 1;
        assert_eq!(
            sim.builds_created(*ws),
            1,
            "{name}: one build per workspace"
        );
    }
    let dups: usize = wss
        .iter()
        .map(|w| sim.builds_created(*w).saturating_sub(1))
        .sum();
    assert_eq!(dups, 0);
    assert_ne!(new_leader, leader, "the Lease holder changed");
    summary(
        "two_replicas_with_leader_election_no_duplicate_builds",
        1,
        names.len(),
        ready_count,
        dups,
    );
}

/// `spec.coderRef` names a Secret in the request's own namespace only: a Secret of that name in
/// another namespace is never used (the operator's ServiceAccount cannot even read it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_in_another_namespace_cannot_be_referenced() {
    let mut env = Env::new("rel-secret").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "victim"));
    let other = env
        .plane
        .create_namespace("rel-other")
        .await
        .expect("other namespace");
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "coder-creds", "namespace": other},
        "stringData": {"url": env.sim.url(), "token": env.alice.token},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(env.admin.clone(), &other)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret in the other namespace");
    let before = sim.counters().values().sum::<u64>();
    env.create(
        "x",
        json!({"workspace": {"id": ws.to_string()}, "coderRef": {"name": "coder-creds"}}),
    )
    .await;
    let w = env.wait_terminal("x", T).await;
    assert_eq!(ready(&w), ("False".into(), "SecretNotFound".into()));
    assert_eq!(phase(&w), Some(Phase::Failed));
    let msg = w.status.and_then(|s| s.message).unwrap_or_default();
    assert!(msg.contains("this namespace"), "{msg}");
    // Nothing was started, Coder was never called with the other namespace's credentials.
    assert_eq!(sim.builds_created(ws), 0);
    assert_eq!(
        sim.counters().values().sum::<u64>(),
        before,
        "Coder was called"
    );
    // And the operator's identity cannot read the other namespace's Secret at all.
    let (sa, _) = env
        .plane
        .service_account_client(&env.ns, RELEASE)
        .await
        .expect("SA client");
    match Api::<Secret>::namespaced(sa, &other)
        .get("coder-creds")
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => {
            panic!("the operator's ServiceAccount could read another namespace's Secret: {other:?}")
        }
    }
    assert!(
        !env.operator().logs().contains(&other),
        "the operator touched the other namespace"
    );
    summary(
        "secret_in_another_namespace_cannot_be_referenced",
        0,
        1,
        0,
        0,
    );
}
