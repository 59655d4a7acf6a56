//! Each fault kind, per route key.

use std::time::{Duration, Instant};

use coder_sim::{ANY_ROUTE, Fault, WorkspaceSeed};
use reqwest::StatusCode;

use crate::common::*;

const POST_BUILDS: &str = "POST /api/v2/workspaces/{id}/builds";
const GET_WS: &str = "GET /api/v2/workspaces/{id}";

#[tokio::test]
async fn status_fault_times_then_clears() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev"));
    sim.set_fault(GET_WS, Fault::times(2, Fault::Status(503)));
    let api = Api::new(&srv, Some(&alice.token));
    let path = format!("/api/v2/workspaces/{ws}");
    for _ in 0..2 {
        let r = api.get(&path).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.body["message"].is_string());
        assert_eq!(r.header("X-Coder-Build-Version"), Some("v2.37.0"));
    }
    assert_eq!(api.get(&path).await.status, StatusCode::OK);
    assert_eq!(sim.count(GET_WS), 3);
    // 429 faults carry Retry-After; clear_faults removes permanent faults.
    sim.set_fault(GET_WS, Fault::Status(429));
    let r = api.get(&path).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("Retry-After"), Some("60"));
    sim.clear_faults();
    assert_eq!(api.get(&path).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_fault_on_every_route_is_a_whole_outage_and_a_routes_own_fault_comes_first() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev"));
    let api = Api::new(&srv, Some(&alice.token));
    let path = format!("/api/v2/workspaces/{ws}");
    sim.set_fault(ANY_ROUTE, Fault::Status(503));
    sim.set_fault(GET_WS, Fault::times(1, Fault::Status(500)));
    assert_eq!(
        api.get(&path).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(api.get(&path).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        api.get("/api/v2/buildinfo").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(sim.count("GET /api/v2/buildinfo"), 1, "counted per route");
    sim.clear_faults();
    assert_eq!(api.get(&path).await.status, StatusCode::OK);
}

#[tokio::test]
async fn hang_never_answers() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    sim.set_fault("GET /api/v2/users/me", Fault::Hang);
    let api = Api::new(&srv, Some(&alice.token));
    let res = api
        .req(reqwest::Method::GET, "/api/v2/users/me")
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    let err = res.expect_err("must time out");
    assert!(err.is_timeout(), "{err}");
    // Other routes are unaffected.
    assert_eq!(api.get("/api/v2/buildinfo").await.status, StatusCode::OK);
}

#[tokio::test]
async fn reset_closes_the_connection_without_a_response() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    sim.set_fault("GET /api/v2/users/me", Fault::times(1, Fault::Reset));
    let api = Api::new(&srv, Some(&alice.token));
    let err = api
        .req(reqwest::Method::GET, "/api/v2/users/me")
        .send()
        .await
        .expect_err("must fail");
    assert!(!err.is_timeout(), "{err}");
    assert!(err.status().is_none());
    // The next request works (new connection).
    assert_eq!(api.get("/api/v2/users/me").await.status, StatusCode::OK);
}

#[tokio::test]
async fn commit_then_fail_creates_the_build_and_answers_500() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev").script(fast()));
    sim.set_fault(POST_BUILDS, Fault::times(1, Fault::CommitThenFail));
    let api = Api::new(&srv, Some(&alice.token));
    let r = api.start(ws).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.body["message"].is_string());
    assert_eq!(sim.builds_created(ws), 1);
    let w = api.get(&format!("/api/v2/workspaces/{ws}")).await.body;
    assert_eq!(w["latest_build"]["transition"], "start");
    assert_eq!(w["latest_build"]["status"], "pending");
    // A retry now conflicts: exactly the trap an operator must handle.
    assert_eq!(api.start(ws).await.status, StatusCode::CONFLICT);
    assert_eq!(sim.builds_created(ws), 1);
}

#[tokio::test]
async fn slow_delays_then_answers() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    sim.set_fault(
        "GET /api/v2/users/me",
        Fault::Slow(Duration::from_millis(300)),
    );
    let api = Api::new(&srv, Some(&alice.token));
    let t = Instant::now();
    let r = api.get("/api/v2/users/me").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn commit_then_hang_creates_the_build_and_never_answers() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev").script(fast()));
    sim.set_fault(POST_BUILDS, Fault::times(1, Fault::CommitThenHang));
    let api = Api::new(&srv, Some(&alice.token));
    let res = api
        .req(
            reqwest::Method::POST,
            &format!("/api/v2/workspaces/{ws}/builds"),
        )
        .json(&serde_json::json!({"transition": "start"}))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(res.expect_err("must time out").is_timeout());
    assert_eq!(
        sim.builds_posted(ws),
        1,
        "the build was committed before the hang"
    );
}

#[tokio::test]
async fn rate_limited_sets_retry_after() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    sim.set_fault(
        "GET /api/v2/users/me",
        Fault::times(1, Fault::RateLimited(2)),
    );
    let api = Api::new(&srv, Some(&alice.token));
    let r = api.get("/api/v2/users/me").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("Retry-After"), Some("2"));
    assert_eq!(api.get("/api/v2/users/me").await.status, StatusCode::OK);
}
