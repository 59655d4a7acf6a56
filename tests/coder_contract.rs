//! The Coder contract, from both sides, against fixtures written from codersdk's types
//! (`tests/fixtures/coder/`, provenance in its README):
//!
//! - the operator's types parse every answer it reads, as real coderd sends it;
//! - coder-sim answers the same case with the same shape (same keys at every level, same JSON
//!   types), so end-to-end tests exercise the operator against what coderd really sends, not
//!   against a shared misreading.
//!
//! The comparison is of shape, not values: ids, names and times differ by design.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use coder_sim::{
    AgentSeed, BuildScript, ChatEra, InitialState, SimConfig, SimServer, WorkspaceSeed,
};
use serde_json::Value;
use workspace_start_operator::coder::logs::{ProvisionerJobLog, WorkspaceBuildTimings};
use workspace_start_operator::coder::sse::SseParser;
use workspace_start_operator::coder::types::{
    ChatResponse, CoderVersion, ErrorBody, JobStatus, Transition, User, Workspace, WorkspaceBuild,
};

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/coder")
        .join(name)
}

fn text(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn fixture(name: &str) -> Value {
    serde_json::from_str(&text(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn parse<T: serde::de::DeserializeOwned>(name: &str) -> T {
    serde_json::from_str(&text(name)).unwrap_or_else(|e| panic!("{name} does not parse: {e}"))
}

/// The SSE frames of the watch fixture: (event, data).
fn sse_frames(name: &str) -> Vec<(String, Vec<u8>)> {
    let mut parser = SseParser::new(1 << 20);
    parser
        .push(text(name).as_bytes())
        .expect("frames within the limit")
        .into_iter()
        .map(|f| (f.event, f.data))
        .collect()
}

#[test]
fn the_operator_parses_every_answer_coderd_sends() {
    let b: CoderVersion = parse("buildinfo.json");
    assert_eq!(b.version, "v2.37.0");

    let u: User = parse("user.json");
    assert_eq!(u.username, "alice");
    assert_eq!(u.status.as_deref(), Some("active"));

    let c = parse::<ChatResponse>("chat.json").into_chat();
    assert!(c.workspace_id.is_some() && c.build_id.is_some());
    let c = parse::<ChatResponse>("chat-unbound.json").into_chat();
    assert_eq!(
        c.workspace_id, None,
        "an unbound chat has no workspace_id key"
    );
    let c = parse::<ChatResponse>("chat-experimental-wrapped.json").into_chat();
    assert!(c.workspace_id.is_some());

    let w: Workspace = parse("workspace-running.json");
    assert_eq!(w.latest_build.job.status, JobStatus::Succeeded);
    assert_eq!(w.latest_build.transition, Transition::Start);
    let names: Vec<&str> = w.latest_build.agents().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["dev-coderd-chat", "main"]);
    assert!(w.latest_build.job.completed_at.is_some());
    let w: Workspace = parse("workspace-stopped.json");
    assert_eq!(w.latest_build.transition, Transition::Stop);
    assert_eq!(w.latest_build.agents().count(), 0);
    assert_eq!(w.dormant_at, None);

    let b: WorkspaceBuild = parse("build-created.json");
    assert_eq!(b.job.status, JobStatus::Pending);
    assert_eq!(b.build_number, 3);

    let e: ErrorBody = parse("error-conflict.json");
    assert_eq!(e.message, "A workspace build is already active.");
    let e: ErrorBody = parse("error-validation.json");
    assert_eq!(
        e.validations.first().map(|v| v.field.as_str()),
        Some("transition")
    );
    let e: ErrorBody = parse("error-rate-limited.json");
    assert!(e.message.contains("rate limited"));

    let frames = sse_frames("watch.sse");
    let events: Vec<&str> = frames.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(events, ["ping", "data", "error"]);
    let w: Workspace = serde_json::from_slice(&frames[1].1).expect("data frame is a workspace");
    assert_eq!(w.name, "dev");
    let e: ErrorBody = serde_json::from_slice(&frames[2].1).expect("error frame is a Response");
    assert_eq!(e.message, "Internal error fetching workspace.");
}

/// Every difference in shape between `want` (the fixture) and `got` (coder-sim), by path.
fn shape_diff(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let wk: BTreeSet<&String> = w.keys().collect();
            let gk: BTreeSet<&String> = g.keys().collect();
            for k in wk.difference(&gk) {
                out.push(format!("{path}.{k}: missing in coder-sim"));
            }
            for k in gk.difference(&wk) {
                out.push(format!("{path}.{k}: coder-sim sends it, coderd does not"));
            }
            for k in wk.intersection(&gk) {
                shape_diff(&format!("{path}.{k}"), &w[*k], &g[*k], out);
            }
        }
        (Value::Array(w), Value::Array(g)) => match (w.first(), g.first()) {
            (Some(w0), Some(_)) => {
                for (i, gi) in g.iter().enumerate() {
                    shape_diff(&format!("{path}[{i}]"), w0, gi, out);
                }
            }
            (None, None) => {}
            (Some(_), None) => out.push(format!("{path}: empty in coder-sim")),
            (None, Some(_)) => out.push(format!("{path}: empty in the fixture")),
        },
        _ if kind(want) == kind(got) => {}
        _ => out.push(format!(
            "{path}: {} in the fixture, {} in coder-sim",
            kind(want),
            kind(got)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[track_caller]
fn assert_same_shape(name: &str, got: &Value) {
    let mut diffs = Vec::new();
    shape_diff("$", &fixture(name), got, &mut diffs);
    assert!(
        diffs.is_empty(),
        "{name}: coder-sim's answer differs from coderd's shape:\n  {}\ncoder-sim sent: {got}",
        diffs.join("\n  ")
    );
}

/// One HTTP client with a token.
struct Http {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Http {
    fn new(srv: &SimServer, token: &str) -> Http {
        Http {
            base: srv.url(),
            token: token.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req
            .header("Coder-Session-Token", &self.token)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON body"))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.client.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    /// The first `n` SSE frames of the workspace's watch stream.
    async fn watch(
        &self,
        ws: uuid::Uuid,
        n: usize,
        between: impl FnOnce(),
    ) -> Vec<(String, Value)> {
        let mut resp = self
            .client
            .get(format!("{}/api/v2/workspaces/{ws}/watch", self.base))
            .header("Coder-Session-Token", &self.token)
            .send()
            .await
            .expect("watch");
        let mut parser = SseParser::new(1 << 20);
        let mut frames = Vec::new();
        let mut between = Some(between);
        while frames.len() < n {
            let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
                .await
                .expect("a frame in time")
                .expect("stream")
                .expect("stream open");
            for f in parser.push(&chunk).expect("frame size") {
                let data = serde_json::from_slice(&f.data).unwrap_or(Value::Null);
                frames.push((f.event, data));
            }
            if frames.len() >= 2
                && let Some(b) = between.take()
            {
                b();
            }
        }
        frames
    }
}

#[test]
fn the_operator_parses_build_logs_and_timings() {
    let logs: Vec<ProvisionerJobLog> = parse("build-logs.json");
    assert_eq!(logs.len(), 3);
    assert!(logs.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(logs[2].log_level, "error");
    let t: WorkspaceBuildTimings = parse("build-timings.json");
    assert_eq!(t.provisioner_timings[0].stage, "init");
    assert_eq!(t.provisioner_timings[0].resource, "coder_stage_init");
    assert_eq!(t.agent_connection_timings[0].stage, "connect");
    // Go's zero time for an agent that never connected.
    let never = &t.agent_connection_timings[1];
    assert!(never.ended_at < never.started_at, "{never:?}");
    let script = &t.agent_script_timings[0];
    assert_eq!(script.workspace_agent_name, "main");
    assert_eq!((script.status.as_str(), script.exit_code), ("ok", 0));
}

#[tokio::test]
async fn coder_sim_serves_build_logs_and_timings_in_coderds_shape() {
    let srv = SimServer::start(SimConfig::default()).await.expect("sim");
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let api = Http::new(&srv, &alice.token);
    let ws = sim.add_workspace(
        WorkspaceSeed::new(alice.id, "dev").script(BuildScript::failed(None, "exit status 1")),
    );
    let (code, b) = api
        .post(
            &format!("/api/v2/workspaces/{ws}/builds"),
            serde_json::json!({"transition": "start"}),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    let id = b["id"].as_str().expect("build id").to_owned();
    // Poll until the scripted job ended (no timed assertion: the job's end is the condition).
    let logs = loop {
        let (_, logs) = api.get(&format!("/api/v2/workspacebuilds/{id}/logs")).await;
        if logs
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["log_level"] == "error"))
        {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_same_shape("build-logs.json", &logs);
    let all = logs.as_array().expect("array");
    assert!(all.iter().any(|l| {
        l["output"]
            .as_str()
            .is_some_and(|o| o.contains(coder_sim::LOG_SECRET))
    }));
    // `after` pages by id.
    let after = all[1]["id"].as_i64().expect("id");
    let (_, rest) = api
        .get(&format!("/api/v2/workspacebuilds/{id}/logs?after={after}"))
        .await;
    assert_eq!(rest.as_array().map(Vec::len), Some(all.len() - 2));
    let (code, _) = api
        .get(&format!("/api/v2/workspacebuilds/{id}/logs?after=x"))
        .await;
    assert_eq!(code, 400);

    let running =
        sim.add_workspace(WorkspaceSeed::new(alice.id, "up").script(BuildScript::instant()));
    let (_, b) = api
        .post(
            &format!("/api/v2/workspaces/{running}/builds"),
            serde_json::json!({"transition": "start"}),
        )
        .await;
    let id = b["id"].as_str().expect("build id").to_owned();
    let timings = loop {
        let (_, t) = api
            .get(&format!("/api/v2/workspacebuilds/{id}/timings"))
            .await;
        if t["agent_script_timings"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
        {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_same_shape("build-timings.json", &timings);
}

#[tokio::test]
async fn coder_sim_answers_in_coderds_shape() {
    let srv = SimServer::start(SimConfig::default()).await.expect("sim");
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let api = Http::new(&srv, &alice.token);

    let (_, b) = api.get("/api/v2/buildinfo").await;
    assert_same_shape("buildinfo.json", &b);
    let (_, u) = api.get(&format!("/api/v2/users/{}", alice.id)).await;
    assert_same_shape("user.json", &u);

    let running = sim.add_workspace(
        WorkspaceSeed::new(alice.id, "dev")
            .state(InitialState::Running)
            .agents(vec![
                AgentSeed::new("dev-coderd-chat"),
                AgentSeed::new("main"),
            ]),
    );
    let (_, w) = api.get(&format!("/api/v2/workspaces/{running}")).await;
    assert_same_shape("workspace-running.json", &w);
    let chat = sim.add_chat(alice.id, Some(running));
    let (_, c) = api.get(&format!("/api/v2/chats/{chat}")).await;
    assert_same_shape("chat.json", &c);
    let lonely = sim.add_chat(alice.id, None);
    let (_, c) = api.get(&format!("/api/v2/chats/{lonely}")).await;
    assert_same_shape("chat-unbound.json", &c);

    let stopped = sim.add_workspace(WorkspaceSeed::new(alice.id, "stopped"));
    let (_, w) = api.get(&format!("/api/v2/workspaces/{stopped}")).await;
    assert_same_shape("workspace-stopped.json", &w);

    // The POST's 201 (a pending job), then a 409 while it is active, and a 400.
    sim.script_next_build(
        stopped,
        BuildScript::default().with_job(Duration::from_secs(60), Duration::from_secs(1)),
    );
    let builds = format!("/api/v2/workspaces/{stopped}/builds");
    let (status, b) = api
        .post(&builds, serde_json::json!({"transition": "start"}))
        .await;
    assert_eq!(status, 201);
    assert_same_shape("build-created.json", &b);
    let (status, e) = api
        .post(&builds, serde_json::json!({"transition": "start"}))
        .await;
    assert_eq!(status, 409);
    assert_same_shape("error-conflict.json", &e);
    let (status, e) = api
        .post(&builds, serde_json::json!({"transition": "restart"}))
        .await;
    assert_eq!(status, 400);
    assert_same_shape("error-validation.json", &e);

    // The watch stream: a ping, the workspace, then an error event.
    let frames = api
        .watch(running, 3, || {
            sim.fail_watchers(running, "Internal error fetching workspace.")
        })
        .await;
    let events: Vec<&str> = frames.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(events, ["ping", "data", "error"]);
    let want = sse_frames("watch.sse");
    for ((event, got), (want_event, want_data)) in frames.iter().zip(&want) {
        assert_eq!(event, want_event);
        let want: Value = serde_json::from_slice(want_data).unwrap_or(Value::Null);
        let mut diffs = Vec::new();
        shape_diff(&format!("{event} frame"), &want, got, &mut diffs);
        assert!(diffs.is_empty(), "watch.sse: {}", diffs.join("\n  "));
    }
}

#[tokio::test]
async fn coder_sim_limits_and_old_chat_shape_match_coderd() {
    let srv = SimServer::start(SimConfig {
        rate_limit_per_minute: 1,
        chat_era: ChatEra::ExperimentalWrapped,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let api = Http::new(&srv, &alice.token);
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev"));
    let chat = sim.add_chat(alice.id, Some(ws));
    let path = format!("/api/experimental/chats/{chat}");
    let (status, c) = api.get(&path).await;
    assert_eq!(status, 200);
    assert_same_shape("chat-experimental-wrapped.json", &c);
    let (status, e) = api.get(&path).await;
    assert_eq!(status, 429);
    assert_same_shape("error-rate-limited.json", &e);
}
