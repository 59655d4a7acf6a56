//! What chat agents learn about a start beyond "ready or not", end to end on the real API
//! server with coder-sim and the operator binary: Coder's guidance for agents managed outside
//! Coder, the template-version update Coder's tool reports, stage timings and build logs, and
//! the build logs port's defences (the MCP port's: review cache and rate, token bound, idle
//! timeout, connection cap).

mod support;

use std::time::Duration;

use coder_sim::{AgentSeed, Fault, WorkspaceSeed};
use serde_json::json;
use support::{Env, tokens};
use workspace_start_operator::api::crd::{Phase, StageTimings};
use workspace_start_operator::api::reason::Reason;
use workspace_start_operator::client::result::StartResult;
use workspace_start_operator::coder::external;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_agent_workspace_fails_fast_with_coders_guidance() {
    let mut env = Env::new("external-agent").await;
    // The agent's connection timeout passes without a watch event (as in Coder): a short
    // backstop poll sees it.
    env.start_operator(&["--backstop-poll-ms=300", "--poll-ms=300"])
        .await;
    let ws = env.sim.sim().add_workspace(
        WorkspaceSeed::new(env.alice.id, "byoh")
            .agents(vec![AgentSeed::external("laptop").connection_timeout(1)]),
    );
    // timeouts.agent is a day: only Coder's answer can end this request within the wait.
    env.create(
        "external",
        json!({"workspace": {"id": ws.to_string()}, "timeouts": {"agent": "24h"}}),
    )
    .await;
    let w = env.wait_terminal("external", T).await;
    let st = w.status.clone().expect("status");
    assert_eq!(st.phase, Some(Phase::Failed), "{st:?}");
    assert_eq!(
        support::ready(&w),
        (
            "False".to_owned(),
            Reason::ExternalAgentUnavailable.as_str().to_owned()
        )
    );
    assert_eq!(st.message.as_deref(), Some(external::NOT_CONNECTED_MESSAGE));
    // Coder's tool: started, agent not ready, with its guidance as the agent error.
    let result = StartResult::of(&w);
    assert!(result.started, "{result:?}");
    assert_eq!(result.agent_status.as_deref(), Some("not_ready"));
    assert_eq!(
        result.agent_error.as_deref(),
        Some(external::NOT_CONNECTED_MESSAGE)
    );
    // The build reported it too.
    let build = env.sim.sim().workspace_json(ws)["latest_build"].clone();
    assert_eq!(build["has_external_agent"], true, "{build}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_onto_the_active_template_version_says_so_as_coders_tool_does() {
    let mut env = Env::new("active-version").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let outdated = sim
        .add_workspace(WorkspaceSeed::new(env.alice.id, "outdated").require_active_version(true));
    let current = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "current"));
    env.create_for_workspace("outdated", outdated).await;
    env.create_for_workspace("current", current).await;

    let w = env.wait_terminal("outdated", T).await;
    let st = w.status.clone().expect("status");
    assert_eq!(st.phase, Some(Phase::Ready), "{st:?}");
    assert_eq!(st.updated_to_active_version, Some(true), "{st:?}");
    let result = StartResult::of(&w);
    assert_eq!(result.updated_to_active_version, Some(true), "{result:?}");
    assert_eq!(
        result.update_reason.as_deref(),
        Some("template requires active versions")
    );

    let w = env.wait_terminal("current", T).await;
    let result = StartResult::of(&w);
    assert_eq!(result.updated_to_active_version, None, "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_timings_add_up_to_the_time_to_ready() {
    let mut env = Env::new("timings").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    // Coder's host clock is an hour ahead of the cluster's.
    sim.set_clock_offset(jiff::SignedDuration::from_hours(1));
    let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "dev"));
    env.create_for_workspace("timed", ws).await;
    let w = env.wait_terminal("timed", T).await;
    let st = w.status.clone().expect("status");
    assert_eq!(st.phase, Some(Phase::Ready), "{st:?}");
    let t = st.timings.clone().expect("timings when Ready");
    // Every stage of a started build is there, none negative or beyond the total, and they
    // add up to the total: the hour between the clocks shows nowhere.
    assert_adds_up(&t);
    // The total is measured on precise instants; status keeps them to the second.
    let start = st.start_time.expect("startTime").0;
    let done = st.completion_time.expect("completionTime").0;
    let stored = done.duration_since(start).as_millis();
    assert!(
        (0..1000).contains(&(i128::from(t.total_ms) - stored)),
        "{t:?} vs {stored}ms"
    );
    // The same in the result (seconds), and in `kubectl get wsr -o wide`.
    let result = StartResult::of(&w);
    let rt = result.timings.expect("result timings");
    assert_eq!(rt.total_seconds, t.total_ms as f64 / 1000.0);
    let (ok, out) = env.kubectl(&["get", "wsr", "timed", "-o", "wide"], None);
    assert!(ok && out.contains("TOOK"), "{out}");
    assert!(out.contains(t.took.as_deref().expect("took")), "{out}");
    let metrics = env.operator().metrics().await;
    assert!(
        metrics.contains("workspace_start_operator_stage_seconds_count{stage=\"running\"} 1"),
        "{metrics}"
    );
    // Coder served its build timings: read once, Terraform's stages break down the running
    // job and fit in it.
    let p = t
        .provisioner_stages
        .clone()
        .expect("Coder's Terraform stages");
    let within = p.parts();
    assert!(within.iter().all(Option::is_some), "{p:?}");
    let running = t.running_ms.expect("running");
    assert!(within.iter().flatten().sum::<i64>() <= running, "{t:?}");
    assert!(rt.provisioner_stages.is_some(), "{rt:?}");
    assert_eq!(timings_reads(&env), 1);
    // ... and they are in the per-stage histogram.
    for stage in ["init", "plan", "graph", "apply"] {
        let count = format!(
            "workspace_start_operator_stage_seconds_count{{stage=\"terraform_{stage}\"}} 1"
        );
        assert!(metrics.contains(&count), "{count} in {metrics}");
    }
}

/// How many times the operator read a build's timings from Coder.
fn timings_reads(env: &Env) -> u64 {
    env.sim
        .sim()
        .counters()
        .get("GET /api/v2/workspacebuilds/{id}/timings")
        .copied()
        .unwrap_or(0)
}

/// The figures of `t` that add up to its total, each checked to be within it.
fn assert_adds_up(t: &StageTimings) {
    let stages = t.parts();
    assert!(stages.iter().all(Option::is_some), "{t:?}");
    assert!(
        stages
            .iter()
            .flatten()
            .all(|v| (0..=t.total_ms).contains(v)),
        "{t:?}"
    );
    assert_eq!(stages.iter().flatten().sum::<i64>(), t.total_ms, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_timings_come_from_the_build_when_coder_serves_no_timings() {
    let mut env = Env::new("timings-404").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    sim.set_clock_offset(jiff::SignedDuration::from_hours(-1));
    // An older Coder without the endpoint.
    sim.set_fault(
        "GET /api/v2/workspacebuilds/{id}/timings",
        Fault::Status(404),
    );
    let old = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "old"));
    env.create_for_workspace("old-coder", old).await;
    let w = env.wait_terminal("old-coder", T).await;
    let st = w.status.clone().expect("status");
    assert_eq!(st.phase, Some(Phase::Ready), "{st:?}");
    let t = st.timings.clone().expect("timings");
    assert_adds_up(&t);
    assert_eq!(t.provisioner_stages, None, "{t:?}");
    assert_eq!(timings_reads(&env), 1);
    // A Coder that never answers the read: the request still finishes, after the bound.
    sim.set_fault("GET /api/v2/workspacebuilds/{id}/timings", Fault::Hang);
    let slow = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "slow"));
    env.create_for_workspace("hung-timings", slow).await;
    let w = env.wait_terminal("hung-timings", T).await;
    let st = w.status.clone().expect("status");
    assert_eq!(st.phase, Some(Phase::Ready), "{st:?}");
    let t = st.timings.clone().expect("timings");
    assert_adds_up(&t);
    assert_eq!(t.provisioner_stages, None, "{t:?}");
    sim.clear_faults();
}

/// A ServiceAccount bound to the chart's ClusterRole `role` in the test namespace, and a token
/// for it (the API server's audience).
async fn caller_with_role(env: &Env, sa: &str, role: &str) -> String {
    tokens::caller_with_role(env, sa, role, None).await
}

/// An environment whose operator serves build logs (chart value logs.enabled) on a free port;
/// returns the logs base URL.
async fn env_with_logs(prefix: &str) -> (Env, String) {
    env_with_logs_flags(prefix, &[]).await
}

/// [`env_with_logs`] with `extra` operator flags.
async fn env_with_logs_flags(prefix: &str, extra: &[&str]) -> (Env, String) {
    let mut env = Env::new(prefix).await;
    let yaml = support::render_chart(&env.ns, &env.sim.url(), &["--set=logs.enabled=true"]);
    env.plane
        .apply_yaml(&yaml, &env.ns)
        .await
        .expect("apply chart with logs.enabled");
    // The chart's ClusterRoleBinding is cluster-wide and shared by concurrent tests (same
    // release name): bind the chart's ClusterRole to this test's operator under its own name.
    let ns = &env.ns;
    let release = support::RELEASE;
    let binding = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {ns}-logs-reviews}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {release}-logs-reviews}}\n\
         subjects: [{{kind: ServiceAccount, name: {release}, namespace: {ns}}}]\n"
    );
    env.plane
        .apply_yaml(&binding, ns)
        .await
        .expect("ClusterRoleBinding");
    let port = support::free_port();
    let logs_addr = format!("--logs-addr=127.0.0.1:{port}");
    let flags: Vec<&str> = std::iter::once(logs_addr.as_str())
        .chain(extra.iter().copied())
        .collect();
    env.start_operator(&flags).await;
    (env, format!("http://127.0.0.1:{port}/logs"))
}

async fn get_logs(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("logs endpoint answers");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_logs_reach_an_authorised_caller_and_never_status_or_events() {
    let (env, base) = env_with_logs("logs-ok").await;
    let secret = coder_sim::LOG_SECRET;
    let ws = env
        .sim
        .sim()
        .add_workspace(WorkspaceSeed::new(env.alice.id, "dev").script(
            coder_sim::BuildScript::failed(
                None,
                &format!("terraform apply: password {secret} rejected"),
            ),
        ));
    env.create_for_workspace("broken", ws).await;
    let w = env.wait_terminal("broken", T).await;
    assert_eq!(w.status.as_ref().and_then(|s| s.phase), Some(Phase::Failed));
    let token = caller_with_role(&env, "developer", "editor").await;

    // Paged as Coder's tool pages: has_more and next_after_id until the last page.
    let mut after = 0;
    let mut lines = Vec::new();
    let mut last = serde_json::Value::Null;
    for _ in 0..20 {
        let url = format!("{base}/{}/broken?limit=3&after={after}", env.ns);
        let (code, page) = get_logs(&url, Some(&token)).await;
        assert_eq!(code, 200, "{page}");
        lines.extend(page["logs"].as_array().cloned().unwrap_or_default());
        if page["has_more"] != true {
            last = page;
            break;
        }
        after = page["next_after_id"].as_i64().expect("next_after_id");
    }
    assert!(lines.len() > 3, "several pages: {lines:?}");
    assert!(
        lines
            .windows(2)
            .all(|p| p[0]["id"].as_i64() < p[1]["id"].as_i64()),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["output"].as_str().is_some_and(|o| o.contains(secret))),
        "the logs reach the caller as Coder has them: {lines:?}"
    );
    assert_eq!(last["job_status"], "failed", "{last}");
    assert!(
        last["job_error"]
            .as_str()
            .is_some_and(|e| e.contains("rejected")),
        "{last}"
    );

    // Never in status, Events or the operator's log.
    let w = env.wsrs().get("broken").await.expect("request");
    let status = serde_json::to_string(&w.status).expect("status json");
    assert!(!status.contains(secret), "{status}");
    let events = format!("{:?}", env.events("broken").await);
    assert!(!events.contains(secret), "{events}");
    let log = env.operator.as_ref().map(|o| o.logs()).unwrap_or_default();
    assert!(!log.contains(secret), "operator log holds the secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_rights_on_the_request_gets_no_logs() {
    let (env, base) = env_with_logs("logs-refused").await;
    let ws = env
        .sim
        .sim()
        .add_workspace(WorkspaceSeed::new(env.alice.id, "dev"));
    env.create_for_workspace("started", ws).await;
    env.wait_terminal("started", T).await;
    let url = format!("{base}/{}/started", env.ns);
    let viewer = caller_with_role(&env, "onlooker", "viewer").await;
    let reader = caller_with_role(&env, "developer", "editor").await;

    // The viewer role may read the request but not its logs.
    let (code, body) = get_logs(&url, Some(&viewer)).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("workspacestartrequests/logs"))
    );
    assert!(body.get("logs").is_none(), "{body}");
    // No token, or one the API server does not accept.
    let (code, _) = get_logs(&url, None).await;
    assert_eq!(code, 401);
    let (code, _) = get_logs(&url, Some("not-a-token")).await;
    assert_eq!(code, 401);
    // Another namespace's request, even with a name that exists here: no rights there.
    let (code, _) = get_logs(&format!("{base}/kube-system/started"), Some(&reader)).await;
    assert_eq!(code, 403);
    // The editor may.
    let (code, body) = get_logs(&url, Some(&reader)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["job_status"], "succeeded");
}

/// Request `broken`, whose build failed with `exit status 1`, and a token (and its file) of a
/// caller bound to the editor role, who may read its logs.
async fn failed_build_and_editor_token(env: &Env) -> (String, std::path::PathBuf) {
    let ws = env.sim.sim().add_workspace(
        WorkspaceSeed::new(env.alice.id, "dev")
            .script(coder_sim::BuildScript::failed(None, "exit status 1")),
    );
    env.create_for_workspace("broken", ws).await;
    env.wait_terminal("broken", T).await;
    let token = caller_with_role(env, "developer", "editor").await;
    let token_file = env.dir.path().join("developer-token");
    std::fs::write(&token_file, &token).expect("token file");
    (token, token_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_command_prints_the_last_lines_for_an_authorised_caller() {
    let (env, base) = env_with_logs("logs-cmd").await;
    let (_, token_file) = failed_build_and_editor_token(&env).await;
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(support::operator_bin());
        cmd.args(["logs", "broken", "-n", &env.ns, "--logs-url", &base])
            .arg("--token-file")
            .arg(&token_file)
            .args(extra);
        cmd.output().expect("run logs")
    };
    let all = run(&[]);
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    let all = String::from_utf8_lossy(&all.stdout).into_owned();
    assert!(
        all.contains("exit status 1") && all.contains("==> Setting up"),
        "{all}"
    );
    let tail = run(&["--tail", "2"]);
    let tail = String::from_utf8_lossy(&tail.stdout).into_owned();
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(all.ends_with(&tail), "{all}\n---\n{tail}");
    // Without rights: refused, exit 1.
    let viewer = caller_with_role(&env, "onlooker", "viewer").await;
    std::fs::write(&token_file, &viewer).expect("token file");
    let refused = run(&[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(refused.stdout.is_empty());
}

/// Username of the operator (the chart's ServiceAccount), as the audit log names it.
fn operator_user(env: &Env) -> String {
    format!("system:serviceaccount:{}:{}", env.ns, support::RELEASE)
}

/// One metric's value from the operator's `/metrics` (0 when absent).
async fn operator_metric(env: &mut Env, series: &str) -> f64 {
    let text = env.operator().metrics().await;
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_tokens_sent_to_the_logs_endpoint_hit_the_review_cache_and_rate_and_oversize_ones_none()
 {
    let (mut env, base) = env_with_logs("logs-junk").await;
    let url = format!("{base}/{}/no-such-request", env.ns);
    let operator = operator_user(&env);
    let reviews = || tokens::token_reviews_by(env.plane, &operator);
    let http = reqwest::Client::new();
    let get = |token: String| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let resp = http.get(&url).bearer_auth(token).send().await.expect("GET");
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
    };
    let fixed = [
        r#"{"message":"unauthorized: invalid token"}"#,
        r#"{"message":"unauthorized: too many authentication attempts from this address; retry in"#,
    ];

    // Over-size tokens: refused with the fixed message, never reviewed.
    let before = reviews();
    for token in tokens::oversize_tokens(20) {
        let (status, body) = get(token).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body, fixed[0]);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        reviews() - before,
        0,
        "over-size tokens reached the API server"
    );

    // A valid token used 20 times: reviewed once, then answered from the cache.
    let editor = caller_with_role(&env, "developer", "editor").await;
    let before = reviews();
    for _ in 0..20 {
        let (status, body) = get(editor.clone()).await;
        assert_eq!(
            status, 404,
            "an authorised caller reaches the handler: {body}"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(reviews() - before, 1, "a valid token is reviewed once");

    // 300 distinct junk tokens from one address: the per-address review rate stops them.
    let before = reviews();
    let statuses = tokens::send_junk_tokens(300, &get, |status, body| {
        assert!(
            [401, 429].contains(&status),
            "junk token answered {status}: {body}"
        );
        assert!(
            fixed.iter().any(|f| body.starts_with(f)),
            "not a fixed message: {body}"
        );
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = reviews() - before;
    eprintln!("logs endpoint, 300 junk tokens: answers {statuses:?}, {sent} TokenReviews");
    assert!(sent <= 50, "{sent} TokenReviews for 300 junk tokens");
    assert!(sent > 0, "the audit log records the reviews");
    assert!(
        statuses.get(&429).is_some_and(|&n| n >= 250),
        "{statuses:?}"
    );
    let limited = operator_metric(
        &mut env,
        "workspace_start_operator_logs_auth_failures_total{reason=\"source_rate_limited\"}",
    )
    .await;
    assert_eq!(
        limited as usize, statuses[&429],
        "the operator counts the refusals"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_to_the_logs_port_are_cut_after_the_idle_timeout_and_over_the_cap_at_once()
{
    let (mut env, base) =
        env_with_logs_flags("logs-idle", &["--idle-timeout=5s", "--max-connections=100"]).await;
    let addr = base
        .trim_start_matches("http://")
        .trim_end_matches("/logs")
        .to_owned();
    let within = Duration::from_secs(5 + 3);
    let (open, longest) = tokens::idle_connections(&addr, 3, within).await;
    eprintln!(
        "300 idle connections to the logs port: {open} open after {within:?}, longest {longest:?}"
    );
    assert_eq!(open, 0, "connections still open after {within:?}");
    let refused = operator_metric(
        &mut env,
        "workspace_start_operator_logs_limited_total{limit=\"connections\"}",
    )
    .await;
    assert!(
        refused >= 200.0,
        "{refused} connections over the cap of 100 closed at once"
    );
    // Still serving afterwards.
    let (code, _) = get_logs(&format!("{base}/{}/x", env.ns), None).await;
    assert_eq!(code, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_logs_over_tls_reach_only_callers_that_trust_the_ca_and_follow_a_renewal() {
    let ca = coder_sim::TestCa::generate("wso logs test CA").expect("test CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path.display().to_string()
    };
    let cert = file("tls.crt", &ca.tls.cert_pem);
    let key = file("tls.key", &ca.tls.key_pem);
    let ca_file = file("ca.crt", &ca.ca_pem);
    let (env, base) = env_with_logs_flags(
        "logs-tls",
        &[
            &format!("--tls-cert-file={cert}"),
            &format!("--tls-key-file={key}"),
        ],
    )
    .await;
    let https = base.replacen("http://", "https://", 1);
    let (token, token_file) = failed_build_and_editor_token(&env).await;
    let logs = |url: &str, extra: &[&str]| {
        let mut cmd = std::process::Command::new(support::operator_bin());
        cmd.args(["logs", "broken", "-n", &env.ns, "--logs-url", url])
            .arg("--token-file")
            .arg(&token_file)
            .args(extra)
            .env_remove("WSO_LOGS_CA_FILE");
        cmd.output().expect("run logs")
    };

    // With the CA: the logs, over TLS.
    let out = logs(&https, &["--logs-ca-file", &ca_file]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("exit status 1"), "{stdout}");

    // Without it the server's certificate is not trusted: nothing is sent, exit 4.
    let out = logs(&https, &[]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());

    // In clear, the port answers nothing: the token never travels unencrypted to a handler.
    let plain = reqwest::Client::new()
        .get(format!("{base}/{}/broken", env.ns))
        .bearer_auth(&token)
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");

    // The Secret is renewed (here with a certificate from another CA, so the change shows):
    // the port serves the new pair without a restart, within its 10 s look.
    let renewed = coder_sim::TestCa::generate("wso logs test CA, renewed").expect("test CA");
    file("tls.key", &renewed.tls.key_pem);
    file("tls.crt", &renewed.tls.cert_pem);
    let renewed_ca = file("renewed-ca.crt", &renewed.ca_pem);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !logs(&https, &["--logs-ca-file", &renewed_ca])
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate is not served 30 s after the files changed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out = logs(&https, &["--logs-ca-file", &ca_file]);
    assert_eq!(out.status.code(), Some(4), "the old certificate is gone");
    let log = env.operator.as_ref().map(|o| o.logs()).unwrap_or_default();
    assert!(log.contains("serving the renewed TLS certificate"), "{log}");
    assert!(!log.contains(&token), "the operator logged a token");
}
