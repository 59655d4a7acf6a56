//! The `/watch` SSE stream.

use std::time::Duration;

use coder_sim::{BuildScript, Fault, LifecycleState, WorkspaceSeed};
use reqwest::StatusCode;
use serde_json::Value;

use crate::common::*;

struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(api: &Api, ws: uuid::Uuid) -> Sse {
        let resp = api
            .req(
                reqwest::Method::GET,
                &format!("/api/v2/workspaces/{ws}/watch"),
            )
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("watch");
        assert_eq!(resp.status(), StatusCode::OK);
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert_eq!(ct, "text/event-stream");
        assert!(resp.headers().get("X-Coder-Build-Version").is_some());
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// Next (event, data) frame, or None when the stream ended.
    async fn next(&mut self) -> Option<(String, Option<Value>)> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..i + 2).collect();
                let mut event = String::new();
                let mut data = None;
                for line in frame.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = e.to_owned();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(d).expect("data is JSON"));
                    }
                }
                return Some((event, data));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.resp.chunk())
                .await
                .expect("frame in time")
                .ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn ping_then_data_then_data_on_every_change_until_ready() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ms = Duration::from_millis;
    let script = BuildScript::default()
        .with_job(ms(150), ms(150))
        .with_agent(ms(150), ms(150), LifecycleState::Ready);
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev").script(script));
    let api = Api::new(&srv, Some(&alice.token));
    let mut sse = Sse::open(&api, ws).await;
    let (e, d) = sse.next().await.expect("ping");
    assert_eq!(e, "ping");
    assert!(d.is_none());
    let (e, d) = sse.next().await.expect("data");
    assert_eq!(e, "data");
    let d = d.expect("workspace");
    assert_eq!(d["id"], serde_json::json!(ws));
    assert_eq!(d["latest_build"]["status"], "stopped");

    assert_eq!(api.start(ws).await.status, StatusCode::CREATED);
    let mut statuses = Vec::new();
    loop {
        let (e, d) = sse.next().await.expect("stream open");
        if e != "data" {
            continue;
        }
        let d = d.expect("workspace");
        let b = &d["latest_build"];
        let lifecycle = b["resources"][0]["agents"][0]["lifecycle_state"]
            .as_str()
            .unwrap_or("-")
            .to_owned();
        statuses.push(format!(
            "{}/{}",
            b["status"].as_str().unwrap_or("?"),
            lifecycle
        ));
        if lifecycle == "ready" {
            break;
        }
    }
    assert_eq!(
        statuses,
        vec![
            "pending/-",
            "starting/-",
            "running/created",
            "running/starting",
            "running/ready"
        ]
    );
    // Only one request for the whole build.
    assert_eq!(sim.count("GET /api/v2/workspaces/{id}/watch"), 1);
}

#[tokio::test]
async fn error_event_keeps_the_stream_open() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev"));
    let api = Api::new(&srv, Some(&alice.token));
    let mut sse = Sse::open(&api, ws).await;
    assert_eq!(sse.next().await.expect("ping").0, "ping");
    assert_eq!(sse.next().await.expect("data").0, "data");
    sim.fail_watchers(ws, "Internal error fetching workspace.");
    let (e, d) = sse.next().await.expect("error");
    assert_eq!(e, "error");
    assert_eq!(
        d.expect("response")["message"],
        "Internal error fetching workspace."
    );
    // As coderd: the stream goes on and carries the next event.
    sim.start_build(ws, coder_sim::Transition::Start);
    let (e, d) = sse.next().await.expect("data after the error");
    assert_eq!(e, "data");
    assert_eq!(d.expect("workspace")["latest_build"]["build_number"], 3);
}

#[tokio::test]
async fn no_frame_for_a_change_only_time_causes() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let never = BuildScript::instant().with_agent(
        Duration::from_secs(3600),
        Duration::ZERO,
        LifecycleState::Ready,
    );
    let ws = sim.add_workspace(
        WorkspaceSeed::new(alice.id, "dev")
            .agents(vec![
                coder_sim::AgentSeed::new("main").connection_timeout(1),
            ])
            .script(never),
    );
    sim.start_build(ws, coder_sim::Transition::Start);
    let api = Api::new(&srv, Some(&alice.token));
    let mut sse = Sse::open(&api, ws).await;
    assert_eq!(sse.next().await.expect("ping").0, "ping");
    let (_, d) = sse.next().await.expect("data");
    let agent = |d: &Value| d["latest_build"]["resources"][0]["agents"][0]["status"].clone();
    assert_eq!(agent(&d.expect("workspace")), "connecting");
    // The connection timeout passes: a read shows it, the stream sends nothing.
    let read = eventually(Duration::from_secs(5), || async {
        let w = sim.workspace_json(ws);
        (agent(&w) == "timeout").then_some(w)
    })
    .await;
    assert_eq!(agent(&read), "timeout");
    let quiet = tokio::time::timeout(Duration::from_millis(700), sse.next()).await;
    assert!(quiet.is_err(), "unexpected frame {quiet:?}");
    // The next event carries it.
    sim.publish_template_version(ws);
    let (e, d) = sse.next().await.expect("data");
    assert_eq!(e, "data");
    assert_eq!(agent(&d.expect("workspace")), "timeout");
}

#[tokio::test]
async fn watch_access_and_faults() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let bob = sim.add_user("bob");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev"));
    let api = Api::new(&srv, Some(&bob.token));
    assert_eq!(
        api.get(&format!("/api/v2/workspaces/{ws}/watch"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    sim.set_fault(
        "GET /api/v2/workspaces/{id}/watch",
        Fault::times(1, Fault::Status(502)),
    );
    let api = api.with_token(&alice.token);
    let r = api
        .req(
            reqwest::Method::GET,
            &format!("/api/v2/workspaces/{ws}/watch"),
        )
        .send()
        .await
        .expect("resp");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn server_drop_ends_streams() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev"));
    let api = Api::new(&srv, Some(&alice.token));
    let mut sse = Sse::open(&api, ws).await;
    assert_eq!(sse.next().await.expect("ping").0, "ping");
    assert_eq!(sse.next().await.expect("data").0, "data");
    drop(srv);
    assert!(sse.next().await.is_none());
}
