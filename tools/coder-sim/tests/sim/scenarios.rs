//! Scenario files, including examples/coder-sim/demo.yaml and the binary.

use std::path::PathBuf;
use std::time::Duration;

use coder_sim::scenario::Scenario;
use coder_sim::{SimConfig, SimServer};
use reqwest::StatusCode;
use tokio::io::AsyncBufReadExt;

use crate::common::*;

/// The demo scenario of the checkout the tests run in: cargo sets `CARGO_MANIFEST_DIR` when
/// it runs them, so a test binary reused from a build cache shared with another checkout
/// still reads this one's file (the compile-time value is the fallback).
fn demo_path() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../../examples/coder-sim/demo.yaml")
}

const DEV: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const RUNNING: &str = "aaaaaaaa-0000-4000-8000-000000000002";
const SLOW: &str = "aaaaaaaa-0000-4000-8000-000000000003";
const QUOTA: &str = "aaaaaaaa-0000-4000-8000-000000000004";
const GONE: &str = "aaaaaaaa-0000-4000-8000-000000000005";
const BOBS: &str = "aaaaaaaa-0000-4000-8000-000000000006";
const CHAT_DEV: &str = "cccccccc-0000-4000-8000-000000000001";

async fn demo_server() -> SimServer {
    let scenario = Scenario::from_path(&demo_path()).expect("demo.yaml parses");
    let mut cfg = SimConfig::default();
    if let Some(s) = &scenario.server {
        s.apply_to(&mut cfg);
    }
    let srv = server_with(cfg).await;
    scenario.apply(&srv.sim()).expect("demo.yaml applies");
    srv
}

#[tokio::test]
async fn demo_scenario_seeds_fixed_ids() {
    let srv = demo_server().await;
    let alice = Api::new(&srv, Some("alice-token"));
    let me = alice.get("/api/v2/users/me").await.body;
    assert_eq!(me["id"], "11111111-1111-4111-8111-111111111111");
    let admin = alice.with_token("admin-token");
    assert_eq!(
        admin.get("/api/v2/users/me").await.body["roles"][0]["name"],
        "owner"
    );

    let status = |w: &serde_json::Value| {
        w["latest_build"]["status"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(
        status(&alice.get(&format!("/api/v2/workspaces/{DEV}")).await.body),
        "stopped"
    );
    assert_eq!(
        status(
            &alice
                .get(&format!("/api/v2/workspaces/{RUNNING}"))
                .await
                .body
        ),
        "running"
    );
    let slow = alice.get(&format!("/api/v2/workspaces/{SLOW}")).await.body;
    assert_eq!(slow["template_require_active_version"], true);
    assert_eq!(slow["outdated"], true);
    assert_eq!(
        alice
            .get(&format!("/api/v2/workspaces/{GONE}"))
            .await
            .status,
        StatusCode::GONE
    );
    assert_eq!(
        alice
            .get(&format!("/api/v2/workspaces/{BOBS}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        admin
            .get(&format!("/api/v2/workspaces/{BOBS}"))
            .await
            .status,
        StatusCode::OK
    );

    let chat = alice.get(&format!("/api/v2/chats/{CHAT_DEV}")).await.body;
    assert_eq!(chat["workspace_id"], DEV);
    let chat = alice
        .get("/api/v2/chats/cccccccc-0000-4000-8000-000000000003")
        .await
        .body;
    assert!(chat["workspace_id"].is_null());
}

#[tokio::test]
async fn demo_quota_workspace_fails_with_insufficient_quota() {
    let srv = demo_server().await;
    let sim = srv.sim();
    let quota: uuid::Uuid = QUOTA.parse().expect("uuid");
    // Speed the demo script up for the test; the error code comes from the
    // default script of the workspace in demo.yaml.
    let w = sim.workspace_json(quota);
    assert_eq!(w["latest_build"]["status"], "stopped");
    let alice = Api::new(&srv, Some("alice-token"));
    let r = alice.start(quota).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let w = eventually(Duration::from_secs(6), || async {
        let w = sim.workspace_json(quota);
        (w["latest_build"]["status"] == "failed").then_some(w)
    })
    .await;
    assert_eq!(w["latest_build"]["job"]["error_code"], "INSUFFICIENT_QUOTA");
}

#[tokio::test]
async fn json_scenario_and_server_section() {
    let text = r#"{"server": {"chat_era": "experimental_wrapped", "rate_limit_per_minute": -1, "version": "v2.30.0"},
                   "users": [{"username": "u", "token": "t"}],
                   "workspaces": [{"owner": "u", "name": "w", "state": "running", "agents": ["a-coderd-chat", "b"]}],
                   "chats": [{"id": "cccccccc-0000-4000-8000-0000000000ff", "owner": "u", "workspace": "w"}],
                   "faults": [{"route": "GET /api/v2/users/me", "fault": {"status": 418}}]}"#;
    let scenario = Scenario::parse(text, true).expect("parses");
    let mut cfg = SimConfig::default();
    scenario.server.as_ref().expect("server").apply_to(&mut cfg);
    let srv = server_with(cfg).await;
    scenario.apply(&srv.sim()).expect("applies");
    let api = Api::new(&srv, Some("t"));
    let r = api
        .get("/api/experimental/chats/cccccccc-0000-4000-8000-0000000000ff")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["chat"]["workspace_id"].is_string());
    assert_eq!(r.header("X-Coder-Build-Version"), Some("v2.30.0"));
    assert!(r.header("X-RateLimit-Limit").is_none());
    assert_eq!(api.get("/api/v2/users/me").await.status.as_u16(), 418);
    // Unknown keys are rejected.
    assert!(Scenario::parse("users: [{username: a, tokn: b}]", false).is_err());
}

#[tokio::test]
async fn binary_serves_the_demo_scenario() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_coder-sim"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--scenario")
        .arg(demo_path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn coder-sim");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("ready line in time")
        .expect("read")
        .expect("a line");
    let url = line
        .strip_prefix("coder-sim listening on ")
        .expect("ready line format")
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"));
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .get(format!("{url}/api/v2/workspaces/{RUNNING}"))
        .header("Coder-Session-Token", "alice-token")
        .send()
        .await
        .expect("workspace");
    assert_eq!(r.status(), StatusCode::OK);
    child.kill().await.expect("kill");
}
