//! What chat agents learn about a start beyond "ready or not", end to end on the real API
//! server with coder-sim and the operator binary: Coder's guidance for agents managed outside
//! Coder, the template-version update Coder's tool reports, stage timings and build logs.

mod support;

use std::time::Duration;

use coder_sim::{AgentSeed, Fault, WorkspaceSeed};
use serde_json::json;
use support::Env;
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
    let stages = [
        Some(t.queued_ms),
        t.pending_ms,
        t.running_ms,
        t.agent_connecting_ms,
        t.agent_starting_ms,
        Some(t.other_ms),
    ];
    // Every stage of a started build is there, none negative or beyond the total, and they
    // add up to the total: the hour between the clocks shows nowhere.
    assert!(stages.iter().all(Option::is_some), "{t:?}");
    assert!(
        stages
            .iter()
            .flatten()
            .all(|v| (0..=t.total_ms).contains(v)),
        "{t:?}"
    );
    assert_eq!(stages.iter().flatten().sum::<i64>(), t.total_ms, "{t:?}");
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
    let within = [p.init_ms, p.plan_ms, p.graph_ms, p.apply_ms];
    assert!(within.iter().all(Option::is_some), "{p:?}");
    let running = t.running_ms.expect("running");
    assert!(within.iter().flatten().sum::<i64>() <= running, "{t:?}");
    assert!(rt.provisioner_stages.is_some(), "{rt:?}");
    assert_eq!(timings_reads(&env), 1);
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
    let stages = [
        Some(t.queued_ms),
        t.pending_ms,
        t.running_ms,
        t.agent_connecting_ms,
        t.agent_starting_ms,
        Some(t.other_ms),
    ];
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
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use kube::api::{Api, PostParams};
    let api: Api<ServiceAccount> = Api::namespaced(env.admin.clone(), &env.ns);
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": sa}})).expect("sa");
    api.create(&PostParams::default(), &account)
        .await
        .expect("create ServiceAccount");
    let ns = &env.ns;
    let binding = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {sa}-{role}, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {}-{role}}}\n\
         subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]\n",
        support::RELEASE
    );
    env.plane
        .apply_yaml(&binding, ns)
        .await
        .expect("RoleBinding");
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    api.create_token_request(sa, &PostParams::default(), &req)
        .await
        .expect("TokenRequest")
        .status
        .and_then(|s| s.token)
        .expect("token")
}

/// An environment whose operator serves build logs (chart value logs.enabled) on a free port;
/// returns the logs base URL.
async fn env_with_logs(prefix: &str) -> (Env, String) {
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    env.start_operator(&[&format!("--logs-addr=127.0.0.1:{port}")])
        .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_command_prints_the_last_lines_for_an_authorised_caller() {
    let (env, base) = env_with_logs("logs-cmd").await;
    let ws = env.sim.sim().add_workspace(
        WorkspaceSeed::new(env.alice.id, "dev")
            .script(coder_sim::BuildScript::failed(None, "exit status 1")),
    );
    env.create_for_workspace("broken", ws).await;
    env.wait_terminal("broken", T).await;
    let token = caller_with_role(&env, "developer", "editor").await;
    let token_file = env.dir.path().join("developer-token");
    std::fs::write(&token_file, &token).expect("token file");
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
