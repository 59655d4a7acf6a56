//! The MCP server's limits, on the real API server (its audit log counts TokenReviews) with the
//! MCP server running as the chart's MCP ServiceAccount: waiting calls share one watch and one
//! connection to the API server; calls over a caller's cap get `TooManyCalls`, over the server's
//! cap HTTP 503; junk and over-size tokens cause few or no TokenReviews; idle connections and
//! trickled bodies are cut by the default timeouts.
//!
//! No operator runs: requests stay Pending, so calls that wait keep waiting.

mod support;

use support::mcp::{self, McpServer};
use support::tokens;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Env;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const AUDIENCE: &str = "workspace-start-operator";
const T: Duration = Duration::from_secs(60);
/// The default idle and body timeouts (`--idle-timeout`, `--body-timeout`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Scheduling slack on top of a timeout on a 2-core machine.
const SLACK: Duration = Duration::from_secs(3);

/// A namespace, callers with tokens for the MCP audience, and the MCP server.
struct World {
    env: Env,
    mcp: McpServer,
}

impl World {
    /// Starts the MCP server as the chart's MCP ServiceAccount with `extra` flags.
    async fn new(prefix: &str, extra: &[&str]) -> World {
        let env = Env::new(prefix).await;
        let mcp = McpServer::start(&env, extra).await;
        World { env, mcp }
    }

    fn url(&self) -> String {
        self.mcp.url()
    }

    /// A ServiceAccount that may create requests here, and its token for the MCP audience.
    async fn caller(&self, name: &str) -> String {
        tokens::caller_with_role(&self.env, name, "editor", Some(AUDIENCE)).await
    }

    /// One MCP metric's value (0 when absent).
    async fn metric(&self, series: &str) -> f64 {
        let text = self
            .mcp
            .proc
            .get("/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// TokenReviews the MCP server sent, as the API server's audit log records them.
    fn reviews_in_audit_log(&self) -> usize {
        tokens::token_reviews_by(self.env.plane, &self.mcp.user)
    }

    fn pid(&self) -> u32 {
        self.mcp.proc.pid().expect("MCP server running")
    }
}

/// A `tools/call` over plain HTTP: (status, the JSON-RPC message answering it).
async fn call(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    tool: &str,
    arguments: Value,
) -> (u16, Value) {
    let body = json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    });
    let resp = mcp::post(http, url, Some(token), body.to_string())
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .expect("POST");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, answer(&text))
}

/// The JSON-RPC response in a JSON or SSE body.
fn answer(text: &str) -> Value {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return v;
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("result").is_some() || v.get("error").is_some())
        .unwrap_or(Value::Null)
}

/// A start that waits (no operator runs, so it waits until `timeout`).
fn waiting_start(timeout: &str) -> Value {
    json!({"chat_id": uuid::Uuid::new_v4().to_string(), "timeout": timeout})
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_waiting_calls_from_one_caller_share_one_watch_and_at_most_two_api_connections()
{
    let w = World::new(
        "mcp-shared-watch",
        &[
            "--max-calls-per-caller=250",
            "--calls-per-minute=100000",
            "--call-burst=1000",
        ],
    )
    .await;
    let token = w.caller("chat-bot").await;
    let pid = w.pid();
    let rss_before = rss_kib(pid);
    let http = reqwest::Client::new();
    let url = w.url();
    let mut calls = Vec::new();
    for _ in 0..200 {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        calls.push(tokio::spawn(async move {
            call(&http, &url, &token, "start_workspace", waiting_start("5m")).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while w.metric("workspace_start_operator_mcp_waiting_calls").await < 200.0 {
        assert!(
            Instant::now() < deadline,
            "200 calls never all waited; log:\n{}",
            support::tail(&w.mcp.proc.logs(), 40)
        );
        for c in &calls {
            assert!(!c.is_finished(), "a waiting call ended early");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connections = w.env.plane.connections_from(pid);
    let watches = w
        .metric("workspace_start_operator_mcp_shared_watches")
        .await;
    let rss_after = rss_kib(pid);
    eprintln!(
        "200 waiting calls: {connections} connection(s) to the API server, {watches} shared watch(es), \
         RSS {rss_before} KiB -> {rss_after} KiB ({:.1} KiB per waiting call)",
        (rss_after.saturating_sub(rss_before)) as f64 / 200.0
    );
    assert!(
        (1..=2).contains(&connections),
        "{connections} established connections from the MCP process to the API server"
    );
    assert_eq!(watches, 1.0, "one watch for the namespace");
    for c in calls {
        c.abort();
    }
    // The watch stops once no call waits on it.
    let deadline = Instant::now() + T;
    while w
        .metric("workspace_start_operator_mcp_shared_watches")
        .await
        != 0.0
    {
        assert!(
            Instant::now() < deadline,
            "the shared watch outlived its waiters"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_cap_gets_too_many_calls_and_the_server_over_its_cap_answers_503() {
    let w = World::new(
        "mcp-call-caps",
        &["--max-calls-per-caller=2", "--max-calls=3"],
    )
    .await;
    let bot = w.caller("chat-bot").await;
    let other = w.caller("other-bot").await;
    let http = reqwest::Client::new();
    let url = w.url();
    let spawn_wait = |token: &str| {
        let (http, url, token) = (http.clone(), url.clone(), token.to_owned());
        tokio::spawn(async move {
            call(&http, &url, &token, "start_workspace", waiting_start("2m")).await
        })
    };
    let held = [spawn_wait(&bot), spawn_wait(&bot)];
    let deadline = Instant::now() + T;
    while w.metric("workspace_start_operator_mcp_waiting_calls").await < 2.0 {
        assert!(Instant::now() < deadline, "two calls never waited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A third call of the same caller: a tool error with reason TooManyCalls, nothing created.
    let (status, msg) = call(&http, &url, &bot, "start_workspace", waiting_start("2m")).await;
    assert_eq!(status, 200, "{msg}");
    let result = &msg["result"];
    assert_eq!(result["isError"], true, "{msg}");
    assert_eq!(
        result["structuredContent"]["reason"], "TooManyCalls",
        "{msg}"
    );
    assert_eq!(result["structuredContent"]["started"], false, "{msg}");

    // Another caller still has room, until the server's cap of 3 calls in flight is reached.
    let third = spawn_wait(&other);
    while w.metric("workspace_start_operator_mcp_waiting_calls").await < 3.0 {
        assert!(Instant::now() < deadline, "the third call never waited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = mcp::post(&http, &url, Some(&other), mcp::TOOLS_LIST.into())
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let body = resp.text().await.unwrap_or_default();
    assert!(body.contains("server busy"), "{body}");
    assert_eq!(
        w.metric("workspace_start_operator_mcp_limited_total{limit=\"calls_per_caller\"}")
            .await,
        1.0
    );
    for c in held {
        c.abort();
    }
    third.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_tokens_from_one_address_cause_at_most_fifty_token_reviews_and_oversize_tokens_none() {
    let w = World::new("mcp-junk-tokens", &[]).await;
    let bot = w.caller("chat-bot").await;
    let http = reqwest::Client::new();
    let url = w.url();
    let list = |token: String| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let resp = mcp::post(&http, &url, Some(&token), mcp::TOOLS_LIST.into())
                .send()
                .await
                .expect("POST");
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
    };
    let fixed = [
        r#""message":"unauthorized: invalid token""#,
        r#""message":"unauthorized: too many authentication attempts from this address; retry in"#,
    ];

    // 20 over-size tokens (9 KiB and 300 KB): refused, never reviewed.
    let before = w.reviews_in_audit_log();
    for token in tokens::oversize_tokens(20) {
        let (status, body) = list(token).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains(fixed[0]), "{body}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        w.reviews_in_audit_log() - before,
        0,
        "over-size tokens reached the API server"
    );

    // One valid token used 20 times: one review (cached).
    let before = w.reviews_in_audit_log();
    for _ in 0..20 {
        let (status, body) = list(bot.clone()).await;
        assert_eq!(status, 200, "{body}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        w.reviews_in_audit_log() - before,
        1,
        "a valid token is reviewed once"
    );

    // 300 distinct junk tokens of 32 bytes, 8 at a time, as fast as they are answered.
    let before = w.reviews_in_audit_log();
    let statuses = tokens::send_junk_tokens(300, &list, |status, body| {
        assert!(
            [401, 429].contains(&status),
            "junk token answered {status}: {body}"
        );
        assert!(
            fixed.iter().any(|f| body.contains(f)),
            "not a fixed message: {body}"
        );
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reviews = w.reviews_in_audit_log() - before;
    eprintln!(
        "300 junk tokens: answers {statuses:?}, {reviews} TokenReviews reached the API server"
    );
    assert!(reviews <= 50, "{reviews} TokenReviews for 300 junk tokens");
    assert!(reviews > 0, "the audit log records the reviews");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_are_all_closed_within_the_default_idle_timeout() {
    let w = World::new("mcp-idle", &[]).await;
    let limit = DEFAULT_TIMEOUT + SLACK;
    let (open, longest) = tokens::idle_connections(&w.mcp.addr, 20, limit).await;
    eprintln!("2000 idle connections: {open} still open after {limit:?}, longest {longest:?}");
    assert_eq!(open, 0, "connections still open after {limit:?}");
    assert!(
        w.metric("workspace_start_operator_mcp_limited_total{limit=\"connections\"}")
            .await
            >= 2000.0 - 1024.0,
        "connections over the default cap of 1024 are closed at once"
    );
    // The server still serves afterwards.
    assert_eq!(w.mcp.proc.get("/readyz").await.map(|r| r.0), Some(200));
}

/// Sends headers of a POST with a 1000-byte body, then one body byte every 5 s; returns the
/// status line and how long after the headers the server closed the connection.
async fn trickle(addr: &str, token: &str, within: Duration) -> (String, Option<Duration>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: 1000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("headers");
    let t0 = Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        loop {
            if wr.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(within, async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| t0.elapsed());
    writer.abort();
    let text = String::from_utf8_lossy(&got);
    (text.lines().next().unwrap_or_default().to_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickling_one_byte_every_five_seconds_is_cut_within_the_default_body_timeout() {
    let w = World::new("mcp-trickle", &[]).await;
    let bot = w.caller("chat-bot").await;
    let limit = DEFAULT_TIMEOUT + SLACK;

    // An authenticated caller: the body deadline cuts it (HTTP 408, connection closed).
    let (status, closed) = trickle(&w.mcp.addr, &bot, limit + SLACK).await;
    assert!(status.contains(" 408 "), "status line {status:?}");
    let closed = closed.expect("connection closed");
    eprintln!("trickled body cut after {closed:?}");
    assert!(closed <= limit, "cut after {closed:?}");
    assert!(
        closed >= DEFAULT_TIMEOUT - Duration::from_secs(1),
        "cut after {closed:?}: before the body timeout"
    );

    // Without a valid token the server answers from the headers and closes at once.
    let (status, closed) = trickle(&w.mcp.addr, "junk", limit).await;
    assert!(status.contains(" 401 "), "status line {status:?}");
    assert!(closed.is_some(), "connection closed");
    assert_eq!(
        w.metric("workspace_start_operator_mcp_limited_total{limit=\"body_timeout\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_call_whose_request_is_deleted_ends_with_not_found_on_the_shared_watch() {
    let w = World::new("mcp-watch-delete", &[]).await;
    let bot = w.caller("chat-bot").await;
    let (http, url) = (reqwest::Client::new(), w.url());
    let waiting = {
        let (http, url, bot) = (http.clone(), url.clone(), bot.clone());
        tokio::spawn(async move {
            call(&http, &url, &bot, "start_workspace", waiting_start("2m")).await
        })
    };
    let deadline = Instant::now() + T;
    while w.metric("workspace_start_operator_mcp_waiting_calls").await < 1.0 {
        assert!(Instant::now() < deadline, "the call never waited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = w
        .env
        .wsrs()
        .list(&Default::default())
        .await
        .expect("list")
        .items;
    assert_eq!(requests.len(), 1);
    let name = requests[0].metadata.name.clone().expect("name");
    w.env.delete(&name).await;
    let (status, msg) = tokio::time::timeout(T, waiting)
        .await
        .expect("the call ended after the delete")
        .expect("task");
    assert_eq!(status, 200, "{msg}");
    let result = &msg["result"]["structuredContent"];
    assert_eq!(result["reason"], "NotFound", "{msg}");
    assert!(
        result["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("{name} was deleted before it finished")),
        "{msg}"
    );
}
