//! What chat agents learn about a start beyond "ready or not", end to end on the real API
//! server with coder-sim and the operator binary: Coder's guidance for agents managed outside
//! Coder, the template-version update Coder's tool reports, stage timings and build logs.

mod support;

use std::time::Duration;

use coder_sim::{AgentSeed, WorkspaceSeed};
use serde_json::json;
use support::Env;
use workspace_start_operator::api::conditions::reasons;
use workspace_start_operator::api::crd::Phase;
use workspace_start_operator::client::result::StartResult;
use workspace_start_operator::coder::external;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_agent_workspace_fails_fast_with_coders_guidance() {
    let mut env = Env::new("external-agent").await;
    // The agent's connection timeout passes without a watch event (as in Coder): a short
    // backstop poll sees it.
    env.start_operator(&["--backstop-poll-ms=300", "--poll-ms=300"])
        .await;
    let ws = env.sim.sim().add_workspace(
        WorkspaceSeed::new(env.alice.id, "byoh")
            .agents(vec![AgentSeed::external("laptop").connection_timeout(1)]),
    );
    // timeouts.agent is a day: only Coder's answer can end this request within the wait.
    env.create(
        "external",
        json!({"workspace": {"id": ws.to_string()}, "timeouts": {"agent": "24h"}}),
    )
    .await;
    let w = env.wait_terminal("external", T).await;
    let st = w.status.clone().expect("status");
    assert_eq!(st.phase, Some(Phase::Failed), "{st:?}");
    assert_eq!(
        support::ready(&w),
        (
            "False".to_owned(),
            reasons::EXTERNAL_AGENT_UNAVAILABLE.to_owned()
        )
    );
    assert_eq!(st.message.as_deref(), Some(external::NOT_CONNECTED_MESSAGE));
    // Coder's tool: started, agent not ready, with its guidance as the agent error.
    let result = StartResult::of(&w);
    assert!(result.started, "{result:?}");
    assert_eq!(result.agent_status.as_deref(), Some("not_ready"));
    assert_eq!(
        result.agent_error.as_deref(),
        Some(external::NOT_CONNECTED_MESSAGE)
    );
    // The build reported it too.
    let build = env.sim.sim().workspace_json(ws)["latest_build"].clone();
    assert_eq!(build["has_external_agent"], true, "{build}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_onto_the_active_template_version_says_so_as_coders_tool_does() {
    let mut env = Env::new("active-version").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let outdated = sim
        .add_workspace(WorkspaceSeed::new(env.alice.id, "outdated").require_active_version(true));
    let current = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "current"));
    env.create_for_workspace("outdated", outdated).await;
    env.create_for_workspace("current", current).await;

    let w = env.wait_terminal("outdated", T).await;
    let st = w.status.clone().expect("status");
    assert_eq!(st.phase, Some(Phase::Ready), "{st:?}");
    assert_eq!(st.updated_to_active_version, Some(true), "{st:?}");
    let result = StartResult::of(&w);
    assert_eq!(result.updated_to_active_version, Some(true), "{result:?}");
    assert_eq!(
        result.update_reason.as_deref(),
        Some("template requires active versions")
    );

    let w = env.wait_terminal("current", T).await;
    let result = StartResult::of(&w);
    assert_eq!(result.updated_to_active_version, None, "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_timings_add_up_to_the_time_to_ready() {
    let mut env = Env::new("timings").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    // Coder's host clock is an hour ahead of the cluster's.
    sim.set_clock_offset(jiff::SignedDuration::from_hours(1));
    let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "dev"));
    env.create_for_workspace("timed", ws).await;
    let w = env.wait_terminal("timed", T).await;
    let st = w.status.clone().expect("status");
    assert_eq!(st.phase, Some(Phase::Ready), "{st:?}");
    let t = st.timings.clone().expect("timings when Ready");
    let stages = [
        Some(t.queued_ms),
        t.pending_ms,
        t.running_ms,
        t.agent_connecting_ms,
        t.agent_starting_ms,
        Some(t.other_ms),
    ];
    // Every stage of a started build is there, none negative or beyond the total, and they
    // add up to the total: the hour between the clocks shows nowhere.
    assert!(stages.iter().all(Option::is_some), "{t:?}");
    assert!(
        stages
            .iter()
            .flatten()
            .all(|v| (0..=t.total_ms).contains(v)),
        "{t:?}"
    );
    assert_eq!(stages.iter().flatten().sum::<i64>(), t.total_ms, "{t:?}");
    // The total is measured on precise instants; status keeps them to the second.
    let start = st.start_time.expect("startTime").0;
    let done = st.completion_time.expect("completionTime").0;
    let stored = done.duration_since(start).as_millis();
    assert!(
        (0..1000).contains(&(i128::from(t.total_ms) - stored)),
        "{t:?} vs {stored}ms"
    );
    // The same in the result (seconds), and in `kubectl get wsr -o wide`.
    let result = StartResult::of(&w);
    let rt = result.timings.expect("result timings");
    assert_eq!(rt.total_seconds, t.total_ms as f64 / 1000.0);
    let (ok, out) = env.kubectl(&["get", "wsr", "timed", "-o", "wide"], None);
    assert!(ok && out.contains("TOOK"), "{out}");
    assert!(out.contains(t.took.as_deref().expect("took")), "{out}");
    let metrics = env.operator().metrics().await;
    assert!(
        metrics.contains("workspace_start_operator_stage_seconds_count{stage=\"running\"} 1"),
        "{metrics}"
    );
}
