//! End-to-end behaviour against a real kube-apiserver + etcd, coder-sim and the operator binary
//! running as the Helm chart's ServiceAccount. One test per behaviour.

mod support;

use std::time::Duration;

use coder_sim::{AgentSeed, BuildScript, InitialState, LifecycleState, Transition, WorkspaceSeed};
use serde_json::json;
use support::{Env, ready};
use workspace_start_operator::api::crd::{Outcome, Phase};

const T: Duration = Duration::from_secs(30);

fn stopped(env: &Env, name: &str) -> uuid::Uuid {
    env.sim
        .sim()
        .add_workspace(WorkspaceSeed::new(env.alice.id, name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_workspace_is_started_and_becomes_ready() {
    let mut env = Env::new("e2e-start").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let ws = stopped(&env, "dev");
    let chat = sim.add_chat(env.alice.id, Some(ws));
    env.create("start", json!({"chatId": chat.to_string()}))
        .await;

    let w = env.wait_terminal("start", T).await;
    let st = w.status.clone().expect("status");
    assert_eq!(st.phase, Some(Phase::Ready), "{st:?}");
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(st.outcome, Some(Outcome::Queued));
    assert_eq!(st.workspace.as_ref().map(|w| w.name.as_str()), Some("dev"));
    assert_eq!(
        st.build.as_ref().map(|b| b.transition.as_str()),
        Some("start")
    );
    assert_eq!(
        st.build.as_ref().map(|b| b.job_status.as_str()),
        Some("succeeded")
    );
    let agent = st.agent.expect("agent");
    assert_eq!(
        (agent.status.as_str(), agent.lifecycle_state.as_deref()),
        ("connected", Some("ready"))
    );
    assert!(st.build_requested_at.is_some() && st.completion_time.is_some());
    assert_eq!(sim.builds_created(ws), 1, "exactly one start build");

    // Progress is visible as Events, one per transition.
    let reasons: Vec<String> = env.events("start").await.into_iter().map(|e| e.1).collect();
    for r in ["StartRequested", "BuildInProgress", "Ready"] {
        assert!(
            reasons.contains(&r.to_owned()),
            "missing event {r} in {reasons:?}"
        );
    }

    // Printer columns.
    let (ok, out) = env.kubectl(&["get", "wsr", "start"], None);
    assert!(ok, "{out}");
    assert!(
        out.contains("PHASE")
            && out.contains("WORKSPACE")
            && out.contains("Ready")
            && out.contains("dev"),
        "{out}"
    );

    // Terminal requests cost nothing: no further Coder calls.
    let before = sim.counters().values().sum::<u64>();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sim.counters().values().sum::<u64>();
    assert_eq!(before, after, "Coder was called after the request finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_without_workspace_fails() {
    let mut env = Env::new("e2e-nows").await;
    env.start_operator(&[]).await;
    let chat = env.sim.sim().add_chat(env.alice.id, None);
    env.create("c", json!({"chatId": chat.to_string()})).await;
    let w = env.wait_terminal("c", T).await;
    assert_eq!(ready(&w), ("False".into(), "ChatHasNoWorkspace".into()));
    assert_eq!(w.status.and_then(|s| s.phase), Some(Phase::Failed));
    let evs = env.events("c").await;
    assert!(
        evs.iter()
            .any(|e| e.0 == "Warning" && e.1 == "ChatHasNoWorkspace"),
        "{evs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_workspace_fails() {
    let mut env = Env::new("e2e-del").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let by_id = stopped(&env, "gone");
    sim.delete_workspace(by_id);
    let by_name = stopped(&env, "gone2");
    sim.delete_workspace(by_name);
    let chat = sim.add_chat(env.alice.id, Some(by_id));
    env.create("by-chat", json!({"chatId": chat.to_string()}))
        .await;
    env.create(
        "by-name",
        json!({"workspace": {"owner": "alice", "name": "gone2"}}),
    )
    .await;
    for name in ["by-chat", "by-name"] {
        let w = env.wait_terminal(name, T).await;
        assert_eq!(
            ready(&w),
            ("False".into(), "WorkspaceDeleted".into()),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_running_workspace_is_ready_without_a_build() {
    let mut env = Env::new("e2e-running").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let ws =
        sim.add_workspace(WorkspaceSeed::new(env.alice.id, "live").state(InitialState::Running));
    let before = sim.builds_created(ws);
    env.create_for_workspace("r", ws).await;
    let w = env.wait_terminal("r", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(
        w.status.and_then(|s| s.outcome),
        Some(Outcome::AlreadyRunning)
    );
    assert_eq!(
        sim.builds_created(ws),
        before,
        "no build for a running workspace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_a_build_in_progress() {
    let mut env = Env::new("e2e-join").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let ws = stopped(&env, "busy");
    sim.script_next_build(
        ws,
        BuildScript::default().with_job(Duration::from_secs(1), Duration::from_secs(2)),
    );
    sim.start_build(ws, Transition::Start);
    let before = sim.builds_created(ws);
    env.create_for_workspace("j", ws).await;
    let w = env.wait_terminal("j", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(w.status.and_then(|s| s.outcome), Some(Outcome::InProgress));
    assert_eq!(
        sim.builds_created(ws),
        before,
        "joined, did not start another build"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_build_in_progress_is_awaited_then_started() {
    let mut env = Env::new("e2e-stop").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let ws = sim
        .add_workspace(WorkspaceSeed::new(env.alice.id, "stopping").state(InitialState::Running));
    sim.script_next_build(
        ws,
        BuildScript::default().with_job(Duration::from_millis(500), Duration::from_secs(2)),
    );
    sim.start_build(ws, Transition::Stop);
    env.create_for_workspace("s", ws).await;
    let w = env
        .wait_for("s", T, |w| ready(w).1 == "WaitingForStopBuild")
        .await;
    assert_eq!(w.status.and_then(|s| s.phase), Some(Phase::Starting));
    let w = env.wait_terminal("s", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(w.status.and_then(|s| s.outcome), Some(Outcome::Queued));
}

/// Build and agent failures end in a clear reason; exactly one build is attempted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_and_agent_failures_have_clear_reasons() {
    let mut env = Env::new("e2e-fail").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let fast = Duration::from_millis(100);
    let cases: Vec<(&str, BuildScript, Vec<AgentSeed>, &str)> = vec![
        (
            "failed",
            BuildScript::failed(None, "terraform apply: secret-output-xyz"),
            vec![AgentSeed::new("main")],
            "BuildFailed",
        ),
        (
            "quota",
            BuildScript::insufficient_quota(),
            vec![AgentSeed::new("main")],
            "InsufficientQuota",
        ),
        (
            "canceled",
            BuildScript::canceled(),
            vec![AgentSeed::new("main")],
            "BuildCanceled",
        ),
        (
            "agent-error",
            BuildScript::default().with_agent(fast, fast, LifecycleState::StartError),
            vec![AgentSeed::new("main")],
            "AgentStartError",
        ),
        (
            "agent-timeout",
            BuildScript::default().with_agent(fast, fast, LifecycleState::StartTimeout),
            vec![AgentSeed::new("main")],
            "AgentTimeout",
        ),
        ("no-agent", BuildScript::default(), vec![], "NoAgent"),
        (
            "two-chat-agents",
            BuildScript::default(),
            vec![
                AgentSeed::new("a-coderd-chat"),
                AgentSeed::new("b-coderd-chat"),
            ],
            "AgentSelectionError",
        ),
    ];
    let mut ids = Vec::new();
    for (name, script, agents, _) in &cases {
        let ws = sim.add_workspace(
            WorkspaceSeed::new(env.alice.id, name)
                .agents(agents.clone())
                .script(script.clone()),
        );
        env.create_for_workspace(name, ws).await;
        ids.push(ws);
    }
    for ((name, _, _, reason), ws) in cases.iter().zip(ids) {
        let w = env.wait_terminal(name, T).await;
        assert_eq!(ready(&w).1, *reason, "{name}");
        let st = w.status.expect("status");
        assert_eq!(sim.builds_created(ws), 1, "{name}: one attempt only");
        // Job error text (may hold Terraform secrets) never reaches the status.
        let text = serde_json::to_string(&st).expect("json");
        assert!(
            !text.contains("secret-output-xyz"),
            "{name}: job error copied into status"
        );
        if *reason == "NoAgent" {
            assert_eq!(st.phase, Some(Phase::Ready));
            assert_eq!(st.agent.map(|a| a.status), Some("no_agent".into()));
        } else {
            assert_eq!(st.phase, Some(Phase::Failed), "{name}");
        }
        if *reason == "InsufficientQuota" {
            assert_eq!(
                st.build.and_then(|b| b.error_code),
                Some("INSUFFICIENT_QUOTA".into())
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_wait_for_ready_returns_when_ready() {
    let mut env = Env::new("e2e-wait").await;
    env.start_operator(&[]).await;
    let ws = stopped(&env, "waited");
    env.create_for_workspace("w", ws).await;
    let (ok, out) = env.kubectl(
        &["wait", "--for=condition=Ready", "wsr/w", "--timeout=30s"],
        None,
    );
    assert!(ok, "kubectl wait failed: {out}");
    assert!(out.contains("condition met"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_requests_leave_the_phase_gauge() {
    let mut env = Env::new("e2e-gauge").await;
    env.start_operator(&[]).await;
    let ws = stopped(&env, "gauge");
    env.create_for_workspace("g", ws).await;
    env.wait_phase("g", Phase::Ready, T).await;
    let gauge = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("workspace_start_operator_requests{phase=\"Ready\"}"))
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned())
    };
    let deadline = std::time::Instant::now() + T;
    while gauge(&env.operator().metrics().await).as_deref() != Some("1") {
        assert!(
            std::time::Instant::now() < deadline,
            "Ready gauge never reached 1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.delete("g").await;
    while gauge(&env.operator().metrics().await).as_deref() != Some("0") {
        assert!(
            std::time::Instant::now() < deadline,
            "a deleted request still counts in the Ready gauge"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
