//! Per-user per-path rate limiting (Coder keys by user and URL path).

use coder_sim::{SimConfig, WorkspaceSeed};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn limit_per_user_per_path_with_retry_after() {
    let srv = server_with(SimConfig {
        rate_limit_per_minute: 3,
        ..SimConfig::default()
    })
    .await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let bob = sim.add_user("bob");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev"));
    let api = Api::new(&srv, Some(&alice.token));
    let path = format!("/api/v2/workspaces/{ws}");
    for remaining in ["2", "1", "0"] {
        let r = api.get(&path).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("X-RateLimit-Limit"), Some("3"));
        assert_eq!(r.header("X-RateLimit-Remaining"), Some(remaining));
    }
    let r = api.get(&path).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("Retry-After"), Some("60"));
    assert_eq!(r.header("X-RateLimit-Remaining"), Some("0"));
    assert_eq!(
        r.body,
        json!({"message": "You've been rate limited for sending more than 3 requests in 1m0s."})
    );
    // Another route has its own budget; so has another workspace on the same route (the key
    // is the URL path); another user too; healthz is exempt.
    assert_eq!(api.get("/api/v2/users/me").await.status, StatusCode::OK);
    let other = sim.add_workspace(WorkspaceSeed::new(alice.id, "other"));
    assert_eq!(
        api.get(&format!("/api/v2/workspaces/{other}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.with_token(&bob.token).get(&path).await.status,
        StatusCode::NOT_FOUND
    );
    for _ in 0..5 {
        assert_eq!(api.get("/healthz").await.status, StatusCode::OK);
    }
    // Rate-limited requests are still counted (counters are per route template).
    assert_eq!(sim.count("GET /api/v2/workspaces/{id}"), 6);
}

#[tokio::test]
async fn owner_may_bypass_member_gets_428() {
    let srv = server_with(SimConfig {
        rate_limit_per_minute: 1,
        ..SimConfig::default()
    })
    .await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let admin = sim.add_admin("admin");
    let api = Api::new(&srv, Some(&admin.token));
    for _ in 0..3 {
        let r = api
            .send(
                api.req(reqwest::Method::GET, "/api/v2/users/me")
                    .header("X-Coder-Bypass-Ratelimit", "true"),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let member = api.with_token(&alice.token);
    let r = member
        .send(
            member
                .req(reqwest::Method::GET, "/api/v2/users/me")
                .header("X-Coder-Bypass-Ratelimit", "true"),
        )
        .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_REQUIRED);
}

#[tokio::test]
async fn disabled_when_not_positive() {
    let srv = server_with(SimConfig {
        rate_limit_per_minute: 0,
        ..SimConfig::default()
    })
    .await;
    let alice = srv.sim().add_user("alice");
    let api = Api::new(&srv, Some(&alice.token));
    for _ in 0..5 {
        let r = api.get("/api/v2/users/me").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.header("X-RateLimit-Limit").is_none());
    }
}

#[tokio::test]
async fn methods_on_one_path_share_a_budget() {
    // httprate.KeyByEndpoint is the URL path alone: GET and POST …/builds count together.
    let srv = server_with(SimConfig {
        rate_limit_per_minute: 2,
        ..SimConfig::default()
    })
    .await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev"));
    let api = Api::new(&srv, Some(&alice.token));
    let path = format!("/api/v2/workspaces/{ws}/builds");
    assert_eq!(api.get(&path).await.status, StatusCode::OK);
    assert_eq!(api.get(&path).await.status, StatusCode::OK);
    let r = api
        .send(
            api.req(reqwest::Method::POST, &path)
                .json(&json!({"transition": "start"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
}
