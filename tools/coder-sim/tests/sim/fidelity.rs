//! Behaviour taken from Coder's source that the operator depends on: who may act (user
//! status, deleted users), dormant workspaces, agent order, and a deployment upgraded while
//! running.

use coder_sim::{AgentSeed, ChatEra, DormantStart, WorkspaceSeed};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn user_status_and_deletion_as_coder_reports_them() {
    let srv = server().await;
    let sim = srv.sim();
    let admin = sim.add_admin("admin");
    let bob = sim.add_user("bob");
    let api = Api::new(&srv, Some(&admin.token));
    let by_id = format!("/api/v2/users/{}", bob.id);

    // A dormant user's own request activates them (Coder's API key middleware).
    sim.set_user_status(bob.id, "dormant");
    assert_eq!(api.get(&by_id).await.body["status"], "dormant");
    let me = api.with_token(&bob.token).get("/api/v2/users/me").await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(api.get(&by_id).await.body["status"], "active");

    // Suspended: their token is refused; others read the status.
    sim.set_user_status(bob.id, "suspended");
    let r = api.with_token(&bob.token).get("/api/v2/users/me").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("suspended")),
        "{}",
        r.text
    );
    assert_eq!(api.get(&by_id).await.body["status"], "suspended");

    // Deleted: a tombstone by id, gone by username, the token no longer works.
    sim.set_user_status(bob.id, "active");
    sim.delete_user(bob.id);
    let r = api.get(&by_id).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["username"], "bob");
    let r = api.get("/api/v2/users/bob").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body["message"],
        "\"user\" must be an existing uuid or username."
    );
    let r = api.with_token(&bob.token).get("/api/v2/users/me").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn dormant_workspace_is_woken_by_a_start_build_or_refused_by_older_coder() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(
        WorkspaceSeed::new(alice.id, "dev")
            .dormant(true)
            .script(fast()),
    );
    let api = Api::new(&srv, Some(&alice.token));
    let path = format!("/api/v2/workspaces/{ws}");
    assert_time(&api.get(&path).await.body["dormant_at"]);

    sim.set_dormant_start(DormantStart::Refuse);
    let r = api.start(ws).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(
        r.body["message"],
        "You do not have permission to start this workspace."
    );
    assert_eq!(sim.builds_created(ws), 0);

    sim.set_dormant_start(DormantStart::Wake);
    let r = api.start(ws).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(api.get(&path).await.body["dormant_at"].is_null());
}

#[tokio::test]
async fn agents_are_listed_and_chosen_by_display_order_then_name() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(
        WorkspaceSeed::new(alice.id, "dev")
            .state(coder_sim::InitialState::Running)
            .agents(vec![
                AgentSeed::new("alpha").order(2),
                AgentSeed::new("zeta").order(1),
                AgentSeed::new("Beta").order(2),
            ]),
    );
    let chat = sim.add_chat(alice.id, Some(ws));
    let api = Api::new(&srv, Some(&alice.token));
    let w = api.get(&format!("/api/v2/workspaces/{ws}")).await.body;
    let agents = &w["latest_build"]["resources"][0]["agents"];
    let names: Vec<&str> = agents
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    // convertWorkspaceBuild: display order, then name (byte order, so "Beta" < "alpha").
    assert_eq!(names, ["zeta", "Beta", "alpha"]);
    // The chat's agent is the chat tool's pick: the first by display order.
    let c = api.get(&format!("/api/v2/chats/{chat}")).await.body;
    assert_eq!(c["agent_id"], agents[0]["id"]);
}

#[tokio::test]
async fn a_running_deployment_can_be_upgraded() {
    let srv = server_with(coder_sim::SimConfig {
        version: "v2.36.2".into(),
        chat_era: ChatEra::Experimental,
        ..coder_sim::SimConfig::default()
    })
    .await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let chat = sim.add_chat(alice.id, None);
    let api = Api::new(&srv, Some(&alice.token));
    let old = api.get(&format!("/api/experimental/chats/{chat}")).await;
    assert_eq!(old.status, StatusCode::OK);
    assert_eq!(old.header("X-Coder-Build-Version"), Some("v2.36.2"));

    let admin = api.post("/admin/server", json!({})).await;
    assert_eq!(admin.status, StatusCode::METHOD_NOT_ALLOWED, "PUT only");
    let r = api
        .send(
            api.req(reqwest::Method::PUT, "/admin/server")
                .json(&json!({"version": "v2.38.0", "chat_era": "v2"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);

    let gone = api.get(&format!("/api/experimental/chats/{chat}")).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let new = api.get(&format!("/api/v2/chats/{chat}")).await;
    assert_eq!(new.status, StatusCode::OK);
    assert_eq!(new.header("X-Coder-Build-Version"), Some("v2.38.0"));
    assert_eq!(
        api.get("/api/v2/buildinfo").await.body["version"],
        "v2.38.0"
    );
}
