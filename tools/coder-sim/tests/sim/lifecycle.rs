//! Clock-driven build lifecycle: job, workspace status, agents.

use std::time::Duration;

use coder_sim::{AgentSeed, BuildScript, LifecycleState, Transition, WorkspaceSeed};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

/// Samples the workspace every 10 ms until `done(ws)`, recording each
/// distinct (build status, job status, agent status, agent lifecycle).
async fn trace(
    api: &Api,
    ws: uuid::Uuid,
    done: impl Fn(&Value) -> bool,
) -> Vec<(String, String, String, String)> {
    let mut seen: Vec<(String, String, String, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let w = api.get(&format!("/api/v2/workspaces/{ws}")).await.body;
        let b = &w["latest_build"];
        let agent = &b["resources"][0]["agents"][0];
        let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        let row = (
            s(&b["status"]),
            s(&b["job"]["status"]),
            s(&agent["status"]),
            s(&agent["lifecycle_state"]),
        );
        if seen.last() != Some(&row) {
            seen.push(row);
        }
        if done(&w) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out; seen {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn row(a: &str, b: &str, c: &str, d: &str) -> (String, String, String, String) {
    (a.into(), b.into(), c.into(), d.into())
}

#[tokio::test]
async fn stopped_start_pending_running_succeeded_agent_ready() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ms = Duration::from_millis;
    let script = BuildScript::default()
        .with_job(ms(200), ms(250))
        .with_agent(ms(200), ms(200), LifecycleState::Ready);
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev").script(script));
    let api = Api::new(&srv, Some(&alice.token));
    let r = api.start(ws).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["status"], "pending");
    assert_eq!(r.body["job"]["status"], "pending");
    assert_eq!(r.body["transition"], "start");
    assert_eq!(r.body["build_number"], 3);
    assert_eq!(r.body["initiator_id"], json!(alice.id));
    assert!(r.body["job"].get("started_at").is_none());
    let seen = trace(&api, ws, |w| {
        w["latest_build"]["resources"][0]["agents"][0]["lifecycle_state"] == "ready"
    })
    .await;
    assert_eq!(
        seen,
        vec![
            row("pending", "pending", "-", "-"),
            row("starting", "running", "-", "-"),
            row("running", "succeeded", "connecting", "created"),
            row("running", "succeeded", "connected", "starting"),
            row("running", "succeeded", "connected", "ready"),
        ]
    );
    let w = sim.workspace_json(ws);
    let agent = &w["latest_build"]["resources"][0]["agents"][0];
    assert_time(&agent["first_connected_at"]);
    assert_time(&agent["ready_at"]);
    assert_time(&w["latest_build"]["job"]["completed_at"]);
    assert!(sim.agent_ready_at(ws).is_some());
    assert_eq!(sim.builds_created(ws), 1);
    assert_eq!(sim.builds_posted(ws), 1);
    // GET workspacebuilds/{id} follows the same clock.
    let id = r.body["id"].as_str().expect("id");
    assert_eq!(
        api.get(&format!("/api/v2/workspacebuilds/{id}")).await.body["job"]["status"],
        "succeeded"
    );
}

#[tokio::test]
async fn conflict_while_pending_or_running_then_allowed() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let script = fast().with_job(Duration::from_millis(100), Duration::from_millis(600));
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev").script(script));
    let api = Api::new(&srv, Some(&alice.token));
    assert_eq!(api.start(ws).await.status, StatusCode::CREATED);
    let r = api.start(ws).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body["message"], "A workspace build is already active.");
    assert_eq!(r.body["detail"], "A workspace build is already active.");
    let status = |want: &'static str| {
        let sim = sim.clone();
        move || {
            let sim = sim.clone();
            async move { (sim.workspace_json(ws)["latest_build"]["status"] == want).then_some(()) }
        }
    };
    eventually(Duration::from_secs(3), status("starting")).await;
    let r = api
        .post(
            &format!("/api/v2/workspaces/{ws}/builds"),
            json!({"transition": "stop"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(sim.builds_created(ws), 1);
    eventually(Duration::from_secs(3), status("running")).await;
    let r = api
        .post(
            &format!("/api/v2/workspaces/{ws}/builds"),
            json!({"transition": "stop"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(sim.builds_created(ws), 2);
}

#[tokio::test]
async fn insufficient_quota_failure() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev"));
    sim.script_next_build(
        ws,
        BuildScript::insufficient_quota()
            .with_job(Duration::from_millis(50), Duration::from_millis(50)),
    );
    let api = Api::new(&srv, Some(&alice.token));
    let r = api.start(ws).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let w = eventually(Duration::from_secs(3), || async {
        let w = sim.workspace_json(ws);
        (w["latest_build"]["job"]["status"] == "failed").then_some(w)
    })
    .await;
    let b = &w["latest_build"];
    assert_eq!(b["status"], "failed");
    assert_eq!(b["job"]["error_code"], "INSUFFICIENT_QUOTA");
    assert!(b["job"]["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(b["resources"], json!([]));
    assert!(sim.agent_ready_at(ws).is_none());
}

#[tokio::test]
async fn canceled_outcome_passes_through_canceling_and_blocks_builds() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev"));
    sim.script_next_build(
        ws,
        BuildScript::canceled().with_job(Duration::from_millis(50), Duration::from_millis(800)),
    );
    let api = Api::new(&srv, Some(&alice.token));
    api.start(ws).await;
    eventually(Duration::from_secs(3), || async {
        (sim.workspace_json(ws)["latest_build"]["status"] == "canceling").then_some(())
    })
    .await;
    assert_eq!(api.start(ws).await.status, StatusCode::CONFLICT);
    let w = eventually(Duration::from_secs(3), || async {
        let w = sim.workspace_json(ws);
        (w["latest_build"]["status"] == "canceled").then_some(w)
    })
    .await;
    assert_eq!(w["latest_build"]["job"]["status"], "canceled");
    assert_time(&w["latest_build"]["job"]["canceled_at"]);
    assert_eq!(api.start(ws).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn cancel_endpoint() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev").script(fast()));
    let api = Api::new(&srv, Some(&alice.token));
    let id = api.start(ws).await.body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let path = format!("/api/v2/workspacebuilds/{id}/cancel");
    let r = api.send(api.req(reqwest::Method::PATCH, &path)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(sim.workspace_json(ws)["latest_build"]["status"], "canceled");
    let r = api.send(api.req(reqwest::Method::PATCH, &path)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn agent_start_error_and_timeout() {
    for (last, name, healthy) in [
        (LifecycleState::StartError, "start_error", false),
        (LifecycleState::StartTimeout, "start_timeout", true),
    ] {
        let srv = server().await;
        let sim = srv.sim();
        let alice = sim.add_user("alice");
        let script = fast().with_agent(Duration::from_millis(20), Duration::from_millis(20), last);
        let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev").script(script));
        Api::new(&srv, Some(&alice.token)).start(ws).await;
        let w = eventually(Duration::from_secs(3), || async {
            let w = sim.workspace_json(ws);
            (w["latest_build"]["resources"][0]["agents"][0]["lifecycle_state"] == name).then_some(w)
        })
        .await;
        let a = &w["latest_build"]["resources"][0]["agents"][0];
        assert_eq!(a["health"]["healthy"], healthy, "{name}");
        assert_eq!(w["health"]["healthy"], healthy, "{name}");
        if !healthy {
            assert_eq!(
                a["health"]["reason"],
                "agent startup script exited with an error"
            );
            assert_eq!(w["health"]["failing_agents"], json!([a["id"]]));
        }
        assert!(sim.agent_ready_at(ws).is_none());
    }
}

#[tokio::test]
async fn someone_else_starts_and_stops() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(
        WorkspaceSeed::new(alice.id, "dev")
            .agents(vec![AgentSeed::new("main")])
            .script(BuildScript::instant()),
    );
    let b = sim.start_build(ws, Transition::Start);
    assert_eq!(sim.latest_build_id(ws), Some(b));
    let w = sim.workspace_json(ws);
    assert_eq!(w["latest_build"]["status"], "running");
    let old_agent = w["latest_build"]["resources"][0]["agents"][0]["id"].clone();
    sim.start_build(ws, Transition::Stop);
    let w = sim.workspace_json(ws);
    assert_eq!(w["latest_build"]["status"], "stopped");
    assert_eq!(w["latest_build"]["resources"], json!([]));
    // The old start build's agent is now off/disconnected.
    let api = Api::new(&srv, Some(&alice.token));
    let old = api.get(&format!("/api/v2/workspacebuilds/{b}")).await.body;
    let a = &old["resources"][0]["agents"][0];
    assert_eq!(a["id"], old_agent);
    assert_eq!(a["status"], "disconnected");
    assert_eq!(a["lifecycle_state"], "off");
    assert_eq!(sim.builds_created(ws), 2);
    assert_eq!(sim.builds_posted(ws), 0);
}

#[tokio::test]
async fn script_queue_is_fifo_then_default() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev").script(BuildScript::instant()));
    sim.script_next_build(
        ws,
        BuildScript::failed(None, "boom").with_job(Duration::ZERO, Duration::ZERO),
    );
    sim.script_next_build(
        ws,
        BuildScript::canceled().with_job(Duration::ZERO, Duration::ZERO),
    );
    let api = Api::new(&srv, Some(&alice.token));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        assert_eq!(api.start(ws).await.status, StatusCode::CREATED);
        statuses.push(
            sim.workspace_json(ws)["latest_build"]["status"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        );
    }
    assert_eq!(statuses, vec!["failed", "canceled", "running"]);
}
