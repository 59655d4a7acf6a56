//! The /admin HTTP API.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn admin_api_round_trip() {
    let srv = server().await;
    let sim = srv.sim();
    let admin = Api::new(&srv, None);
    let r = admin
        .post(
            "/admin/users",
            json!({"username": "alice", "token": "alice-token"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["token"], "alice-token");
    let alice_id = r.body["id"].clone();
    let ws_id = "aaaaaaaa-0000-4000-8000-000000000001";
    let r = admin
        .post(
            "/admin/workspaces",
            json!({"id": ws_id, "owner": "alice", "name": "dev", "state": "stopped",
                   "agents": ["main", {"name": "sub", "parent": "main"}],
                   "script": {"pending": "0ms", "running": 0, "agent_connect": "0s", "agent_ready": "0s"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["id"], ws_id);
    let r = admin.post("/admin/chats", json!({"id": "cccccccc-0000-4000-8000-000000000001", "owner": "alice", "workspace": "dev"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    let alice = admin.with_token("alice-token");
    let chat = alice
        .get("/api/v2/chats/cccccccc-0000-4000-8000-000000000001")
        .await;
    assert_eq!(chat.body["workspace_id"], ws_id);
    assert_eq!(chat.body["owner_id"], alice_id);

    // Script the next build to fail, then have "someone else" start it.
    let r = admin
        .post(
            &format!("/admin/workspaces/{ws_id}/script"),
            json!({"pending": 0, "running": 0, "error_code": "INSUFFICIENT_QUOTA"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = admin
        .post(
            &format!("/admin/workspaces/{ws_id}/builds"),
            json!({"transition": "start"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let w = alice.get(&format!("/api/v2/workspaces/{ws_id}")).await.body;
    assert_eq!(w["latest_build"]["job"]["error_code"], "INSUFFICIENT_QUOTA");
    // Default script afterwards: instant success.
    assert_eq!(
        alice.start(ws_id.parse().expect("uuid")).await.status,
        StatusCode::CREATED
    );
    let w = alice.get(&format!("/api/v2/workspaces/{ws_id}")).await.body;
    assert_eq!(w["latest_build"]["status"], "running");
    assert_eq!(
        w["latest_build"]["resources"][0]["agents"][1]["parent_id"],
        w["latest_build"]["resources"][0]["agents"][0]["id"]
    );

    // Faults over HTTP.
    let r = admin
        .send(admin.req(reqwest::Method::PUT, "/admin/faults").json(&json!({"route": "GET /api/v2/users/me", "fault": {"times": {"n": 1, "fault": {"status": 500}}}})))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(
        alice.get("/api/v2/users/me").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(alice.get("/api/v2/users/me").await.status, StatusCode::OK);
    admin
        .send(
            admin
                .req(reqwest::Method::PUT, "/admin/faults")
                .json(&json!({"route": "GET /api/v2/users/me", "fault": "hang"})),
        )
        .await;
    let state = admin.get("/admin/state").await.body;
    assert_eq!(state["faults"][0]["fault"], "hang");
    let r = admin
        .send(admin.req(reqwest::Method::DELETE, "/admin/faults"))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(alice.get("/api/v2/users/me").await.status, StatusCode::OK);

    // Counters (admin calls are not counted).
    let counters = admin.get("/admin/counters").await.body;
    assert_eq!(counters["GET /api/v2/users/me"], 3);
    assert_eq!(counters["POST /api/v2/workspaces/{id}/builds"], 1);
    assert!(counters.get("POST /admin/users").is_none());
    assert_eq!(sim.counters().get("GET /api/v2/workspaces/{id}"), Some(&2));

    // State and delete.
    let state = admin.get("/admin/state").await.body;
    assert_eq!(state["users"][0]["username"], "alice");
    assert_eq!(state["workspaces"][0]["builds_created"], 2);
    assert_eq!(state["workspaces"][0]["builds_posted"], 1);
    let r = admin
        .send(admin.req(
            reqwest::Method::DELETE,
            &format!("/admin/workspaces/{ws_id}"),
        ))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        alice
            .get(&format!("/api/v2/workspaces/{ws_id}"))
            .await
            .status,
        StatusCode::GONE
    );
    // Bad input is a 400 with a message.
    let r = admin
        .post("/admin/workspaces", json!({"owner": "nobody", "name": "x"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

/// `/admin/events` streams every state change of a build the API started: job pending →
/// running → succeeded, then the chat agent's lifecycle up to `ready`.
#[tokio::test]
async fn admin_events_follow_a_build_to_a_ready_agent() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(coder_sim::WorkspaceSeed::new(alice.id, "dev").script(fast()));
    let mut resp = reqwest::Client::new()
        .get(format!("{}/admin/events", srv.url()))
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .expect("events");
    assert_eq!(resp.status(), StatusCode::OK);
    let api = Api::new(&srv, Some(&alice.token));
    assert_eq!(api.start(ws).await.status, StatusCode::CREATED);
    let build = sim.latest_build_id(ws).expect("build").to_string();
    let (mut buf, mut seen) = (String::new(), Vec::new());
    while !seen.iter().any(|(_, agent)| agent == "ready") {
        let chunk = resp.chunk().await.expect("read").expect("stream open");
        buf.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            assert!(frame.starts_with("event: change\n"), "{frame}");
            let data = frame.lines().find_map(|l| l.strip_prefix("data: "));
            let v: serde_json::Value = serde_json::from_str(data.expect("data")).expect("JSON");
            if v["build"] == build.as_str() {
                assert_eq!(v["workspace"], ws.to_string());
                seen.push((
                    v["job"].as_str().unwrap_or_default().to_owned(),
                    v["agent"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
    }
    let jobs: Vec<&str> = seen.iter().map(|(j, _)| j.as_str()).collect();
    assert_eq!(jobs.first(), Some(&"pending"), "{seen:?}");
    assert!(jobs.contains(&"running"), "{seen:?}");
    assert_eq!(jobs.last(), Some(&"succeeded"), "{seen:?}");
    assert!(sim.agent_ready_at(ws).is_some());
}
