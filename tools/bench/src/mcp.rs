//! The MCP server's costs (`--mcp-waits`): N tool calls from one caller waiting at once (resident
//! memory per waiting call, connections and watches to the API server), and a flood of 300
//! distinct junk bearer tokens from one address (TokenReviews that reach the API server, by its
//! audit log and by the server's own counter). No operator runs, so the calls keep waiting.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::measure::sum_metric;

/// Audience of the callers' tokens (the MCP server's default).
const AUDIENCE: &str = "workspace-start-operator";
/// Junk tokens in the flood.
const JUNK: usize = 300;

/// What the MCP run measured.
pub struct McpResult {
    /// Calls waiting at once.
    pub waits: usize,
    /// RSS (KiB) with no call, and with all calls waiting.
    pub rss_idle_kib: u64,
    /// RSS (KiB) with all calls waiting.
    pub rss_waiting_kib: u64,
    /// RSS (KiB) 2 s after the waiting calls ended (what the allocator kept).
    pub rss_after_kib: u64,
    /// RSS (KiB) with `waits` idle client connections open (no request sent).
    pub rss_idle_connections_kib: u64,
    /// Established connections from the MCP process to the API server while they wait.
    pub api_connections: usize,
    /// Shared watches open while they wait.
    pub watches: u64,
    /// Time until all calls waited.
    pub all_waiting_after: Duration,
    /// TokenReviews of the caller's one token for all calls.
    pub caller_reviews: u64,
    /// TokenReviews the junk flood caused: audit log, the server's counter.
    pub junk_reviews_audit: usize,
    /// The same by the server's own counter.
    pub junk_reviews_metric: u64,
    /// How long the flood took.
    pub junk_elapsed: Duration,
}

impl McpResult {
    /// Markdown table of the run.
    pub fn table(&self) -> String {
        let per_call = self.rss_waiting_kib.saturating_sub(self.rss_idle_kib) as f64
            / self.waits.max(1) as f64;
        format!(
            "### MCP server\n\n\
             | Figure | Value |\n|---|---|\n\
             | calls waiting at once (one caller) | {} (all waiting after {:.1} s) |\n\
             | RSS idle → with them waiting | {} KiB → {} KiB |\n\
             | RSS per waiting call | {:.1} KiB |\n\
             | RSS 2 s after the calls ended | {} KiB |\n\
             | of which an open client connection (idle, no request) | {:.1} KiB |\n\
             | connections to the API server while they wait | {} |\n\
             | shared watches while they wait | {} |\n\
             | TokenReviews for the caller's token | {} |\n\
             | {JUNK} junk tokens from one address: TokenReviews (audit log / own counter) | {} / {} in {:.1} s |\n",
            self.waits,
            self.all_waiting_after.as_secs_f64(),
            self.rss_idle_kib,
            self.rss_waiting_kib,
            per_call,
            self.rss_after_kib,
            self.rss_idle_connections_kib
                .saturating_sub(self.rss_idle_kib) as f64
                / self.waits.max(1) as f64,
            self.api_connections,
            self.watches,
            self.caller_reviews,
            self.junk_reviews_audit,
            self.junk_reviews_metric,
            self.junk_elapsed.as_secs_f64(),
        )
    }
}

/// Runs the MCP server (release binary `bin`, as the plane's admin) and measures it.
pub async fn run(
    plane: &envtest::ControlPlane,
    bin: &Path,
    waits: usize,
) -> anyhow::Result<McpResult> {
    let admin = plane.admin_client();
    let ns = plane.create_namespace("bench-mcp").await?;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "caller"}}))?;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    sas.create(&PostParams::default(), &sa).await?;
    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: caller, namespace: {ns}}}\n\
         rules: [{{apiGroups: [coder.com], resources: [workspacestartrequests], verbs: [get, list, watch, create]}}]\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: caller, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: caller}}\n\
         subjects: [{{kind: ServiceAccount, name: caller, namespace: {ns}}}]\n"
    );
    plane.apply_yaml(&rbac, &ns).await?;
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![AUDIENCE.to_owned()]),
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = sas
        .create_token_request("caller", &PostParams::default(), &req)
        .await?
        .status
        .and_then(|s| s.token)
        .context("no token")?;

    let port = free_port()?;
    let metrics_port = free_port()?;
    let log = std::env::temp_dir().join(format!("wso-bench-mcp-{port}.log"));
    let out = std::fs::File::create(&log)?;
    let mut child = tokio::process::Command::new(bin)
        .arg("mcp")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
        .arg(format!("--namespaces={ns}"))
        .arg(format!("--max-calls-per-caller={}", waits + 10))
        .arg(format!("--max-calls={}", waits + 100))
        .arg("--calls-per-minute=1000000")
        .arg(format!("--call-burst={}", waits + 10))
        .arg("--log-level=warn")
        .env("KUBECONFIG", plane.admin_kubeconfig())
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("MCP server pid")?;
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let metric = |name: &'static str| {
        let url = metrics_url.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            Some(sum_metric(&text, name, ""))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("http://127.0.0.1:{metrics_port}/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        if Instant::now() > deadline {
            bail!("the MCP server never became ready; log {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = format!("http://127.0.0.1:{port}/mcp");
    let http = reqwest::Client::new();
    // One call first: the token is reviewed and the process warmed up.
    post(&http, &url, &token, tools_list()).await?;
    let rss_idle_kib = rss_kib(pid);
    // The share of a bare client connection: as many connections that send nothing.
    let mut idle = Vec::new();
    for _ in 0..waits {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle_connections_kib = rss_kib(pid);
    drop(idle);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let t0 = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..waits {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        calls.push(tokio::spawn(async move {
            let body = json!({
                "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "start_workspace", "arguments": {
                    "chat_id": uuid::Uuid::new_v4().to_string(), "timeout": "10m"}},
            });
            post(&http, &url, &token, body).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let waiting = metric("workspace_start_operator_mcp_waiting_calls")
            .await
            .unwrap_or(0);
        if waiting as usize >= waits {
            break;
        }
        if Instant::now() > deadline || calls.iter().any(|c| c.is_finished()) {
            bail!("{waiting} of {waits} calls waiting; log {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_waiting_after = t0.elapsed();
    let rss_waiting_kib = rss_kib(pid);
    let api_connections = plane.connections_from(pid);
    let watches = metric("workspace_start_operator_mcp_shared_watches")
        .await
        .unwrap_or(0);
    let caller_reviews = metric("workspace_start_operator_mcp_token_reviews_total")
        .await
        .unwrap_or(0);
    for c in calls {
        c.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric("workspace_start_operator_mcp_waiting_calls")
        .await
        .unwrap_or(0)
        > 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_kib = rss_kib(pid);

    // The flood: distinct junk tokens, 8 at a time, as fast as they are answered.
    let audit_before = audit_reviews(plane);
    let t0 = Instant::now();
    let junk: Vec<String> = (0..JUNK)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    for chunk in junk.chunks(8) {
        let sends = chunk
            .iter()
            .map(|t| post(&http, &url, t, tools_list()))
            .collect::<Vec<_>>();
        for r in futures::future::join_all(sends).await {
            r?;
        }
    }
    let junk_elapsed = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let junk_reviews_audit = audit_reviews(plane) - audit_before;
    let junk_reviews_metric = metric("workspace_start_operator_mcp_token_reviews_total")
        .await
        .unwrap_or(0)
        .saturating_sub(caller_reviews);
    let _ = child.kill().await;
    Ok(McpResult {
        waits,
        rss_idle_kib,
        rss_waiting_kib,
        rss_idle_connections_kib,
        rss_after_kib,
        api_connections,
        watches,
        all_waiting_after,
        caller_reviews,
        junk_reviews_audit,
        junk_reviews_metric,
        junk_elapsed,
    })
}

fn tools_list() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: Value,
) -> anyhow::Result<(u16, String)> {
    let resp = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .body(body.to_string())
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.unwrap_or_default()))
}

/// TokenReviews in the plane's audit log (every sender: the bench's plane has only this one).
fn audit_reviews(plane: &envtest::ControlPlane) -> usize {
    std::fs::read_to_string(plane.audit_log())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["objectRef"]["resource"] == "tokenreviews" && e["stage"] == "ResponseComplete"
        })
        .count()
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
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
