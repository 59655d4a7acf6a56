//! Per-user per-route rate limiting.

use coder_sim::{SimConfig, WorkspaceSeed};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn limit_per_user_per_route_with_retry_after() {
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
    // Another route has its own budget; another user too; healthz is exempt.
    assert_eq!(api.get("/api/v2/users/me").await.status, StatusCode::OK);
    assert_eq!(
        api.with_token(&bob.token).get(&path).await.status,
        StatusCode::NOT_FOUND
    );
    for _ in 0..5 {
        assert_eq!(api.get("/healthz").await.status, StatusCode::OK);
    }
    // Rate-limited requests are still counted.
    assert_eq!(sim.count("GET /api/v2/workspaces/{id}"), 5);
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
