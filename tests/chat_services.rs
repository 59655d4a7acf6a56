//! Chat services starting workspaces, end to end on the real API server with coder-sim and the
//! operator running as the chart's ServiceAccount: the MCP server (`workspace-start-operator
//! mcp`, running as the chart's MCP ServiceAccount with the chart's MCP RBAC) called by the
//! official Python `mcp` client (examples/clients/start_with_mcp.py), the official Python
//! `kubernetes` client example, and the `start` command, also as `kubectl wsr start`.
//!
//! Callers are ServiceAccounts: `chat-bot` may create requests in the test namespace (bound to the
//! chart's editor ClusterRole, as the built-in `edit` role would give it), `stranger` may not.
//! The Python clients live in a cached virtualenv made by scripts/client-venv.sh.

mod support;

use support::opproc;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use coder_sim::{BuildScript, InitialState, WorkspaceSeed};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use support::mcp::{self, McpServer};
use support::{Env, free_port, operator_bin, repo};
use workspace_start_operator::api::crd::{Phase, WorkspaceStartRequest};

/// The audience the MCP server expects by default (chart value `mcp.audience`).
const AUDIENCE: &str = "workspace-start-operator";
const T: Duration = Duration::from_secs(60);

/// The virtualenv's python (made once per test binary).
fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let out = std::process::Command::new(repo().join("scripts/client-venv.sh"))
            .output()
            .expect("run scripts/client-venv.sh");
        assert!(
            out.status.success(),
            "client-venv.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// One test's world: the operator, callers, and (for MCP tests) the MCP server.
struct World {
    env: Env,
    /// Token files of `chat-bot` (may create requests) and `stranger` (no RBAC), issued for the
    /// MCP audience.
    bot_token: PathBuf,
    stranger_token: PathBuf,
    /// Kubeconfig of `chat-bot` with an ordinary (API server audience) token.
    bot_kubeconfig: PathBuf,
    mcp: Option<McpServer>,
}

impl World {
    async fn new(prefix: &str) -> World {
        World::with_operator_args(prefix, &[]).await
    }

    /// Like [`World::new`], the operator started with `args`.
    async fn with_operator_args(prefix: &str, args: &[&str]) -> World {
        let mut env = Env::new(prefix).await;
        env.start_operator(args).await;
        let ns = env.ns.clone();
        for sa in ["chat-bot", "stranger"] {
            create_service_account(&env, sa).await;
        }
        // chat-bot gets what the built-in edit role aggregates from the chart.
        let binding = format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: chat-bot-edits-requests, namespace: {ns}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {}-editor}}\n\
             subjects: [{{kind: ServiceAccount, name: chat-bot, namespace: {ns}}}]\n",
            support::RELEASE
        );
        env.plane
            .apply_yaml(&binding, &ns)
            .await
            .expect("RoleBinding");
        let bot_token = write_token(&env, "chat-bot", Some(AUDIENCE)).await;
        let stranger_token = write_token(&env, "stranger", Some(AUDIENCE)).await;
        let (_, bot_kubeconfig) = env
            .plane
            .service_account_client(&ns, "chat-bot")
            .await
            .expect("chat-bot kubeconfig");
        World {
            env,
            bot_token,
            stranger_token,
            bot_kubeconfig,
            mcp: None,
        }
    }

    /// Installs the chart's MCP objects (ServiceAccount, RBAC) and runs `mcp` as that
    /// ServiceAccount with debug logs and `extra` flags; returns the endpoint URL.
    async fn start_mcp(&mut self, extra: &[&str]) -> String {
        let mut args = vec!["--log-level=workspace_start_operator=debug,info"];
        args.extend_from_slice(extra);
        let mcp = McpServer::start(&self.env, &args).await;
        let url = mcp.url();
        self.mcp = Some(mcp);
        url
    }

    /// Runs the MCP example as a caller: (exit code, result JSON on stdout, stderr).
    async fn mcp_call(&self, token: &Path, tool: &str, args: Value) -> (i32, Value, String) {
        let url = self.mcp.as_ref().expect("MCP server").url();
        let out = run(tokio::process::Command::new(python())
            .arg(repo().join("examples/clients/start_with_mcp.py"))
            .args([
                "--url",
                &url,
                "--tool",
                tool,
                "--arguments",
                &args.to_string(),
            ])
            .arg("--token-file")
            .arg(token))
        .await;
        parsed(out)
    }

    /// `start_workspace` for `chat` as chat-bot.
    async fn start_chat_as_bot(&self, chat: uuid::Uuid) -> (i32, Value, String) {
        let args = json!({"chat_id": chat.to_string()});
        self.mcp_call(&self.bot_token, "start_workspace", args)
            .await
    }

    async fn requests(&self) -> Vec<WorkspaceStartRequest> {
        self.env
            .wsrs()
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
    }

    async fn mcp_metrics(&self) -> String {
        let mcp = self.mcp.as_ref().expect("MCP server");
        mcp.proc.get("/metrics").await.expect("metrics").1
    }

    fn mcp_log(&self) -> String {
        self.mcp.as_ref().map(|m| m.proc.logs()).unwrap_or_default()
    }
}

async fn create_service_account(env: &Env, name: &str) {
    let api: Api<ServiceAccount> = Api::namespaced(env.admin.clone(), &env.ns);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("sa");
    api.create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
}

/// Mints a token for ServiceAccount `sa` (for `audience`, or the API server's) into a file.
async fn write_token(env: &Env, sa: &str, audience: Option<&str>) -> PathBuf {
    let token = support::tokens::token_for(env, sa, audience).await;
    let path = env
        .dir
        .path()
        .join(format!("token-{sa}-{}", audience.unwrap_or("api")));
    std::fs::write(&path, token).expect("token file");
    path
}

async fn run(cmd: &mut tokio::process::Command) -> Output {
    let fut = cmd.kill_on_drop(true).output();
    tokio::time::timeout(Duration::from_secs(120), fut)
        .await
        .expect("command finished within 2 minutes")
        .expect("command ran")
}

/// (exit code, stdout as JSON or Null, stderr).
fn parsed(out: Output) -> (i32, Value, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        format!("{stderr}\n--- stdout ---\n{stdout}"),
    )
}

fn stopped(env: &Env, name: &str) -> uuid::Uuid {
    env.sim
        .sim()
        .add_workspace(WorkspaceSeed::new(env.alice.id, name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_client_starts_a_chats_workspace_and_sees_progress_until_ready() {
    let mut w = World::new("mcp-ready").await;
    w.start_mcp(&[]).await;
    let ws = stopped(&w.env, "dev");
    let chat = w.env.sim.sim().add_chat(w.env.alice.id, Some(ws));

    let (code, result, stderr) = w.start_chat_as_bot(chat).await;
    assert_eq!(code, 0, "{stderr}\nMCP log:\n{}", w.mcp_log());
    assert!(
        stderr.contains("tools: ")
            && stderr.contains("start_workspace")
            && stderr.contains("get_workspace_start"),
        "{stderr}"
    );
    assert!(
        stderr.contains("progress 1:"),
        "no progress notification: {stderr}"
    );
    assert!(
        stderr.contains("Starting"),
        "progress should show the build: {stderr}"
    );
    assert_eq!(result["started"], true, "{result}");
    assert_eq!(result["workspace_name"], "dev");
    assert_eq!(result["agent_status"], "ready");
    assert_eq!(result["phase"], "Ready");
    assert_eq!(result["reason"], "Ready");
    assert_eq!(result["namespace"], w.env.ns.as_str());
    assert!(result["build_id"].is_string(), "{result}");
    assert_eq!(w.env.sim.sim().builds_created(ws), 1);

    // The request exists, labelled with the caller, and is Ready.
    let name = result["name"].as_str().expect("request name");
    let req = w.env.wsrs().get(name).await.expect("request exists");
    assert_eq!(req.status.and_then(|s| s.phase), Some(Phase::Ready));
    let labels = req.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("coder.com/requested-via").map(String::as_str),
        Some("mcp")
    );
    assert_eq!(
        labels
            .get("coder.com/requested-by-serviceaccount")
            .map(String::as_str),
        Some("chat-bot")
    );
    assert_eq!(
        labels
            .get("coder.com/requested-by-namespace")
            .map(String::as_str),
        Some(w.env.ns.as_str())
    );
    assert_eq!(req.spec.chat_id, Some(chat.to_string()));

    // get_workspace_start reads it back by name, in the same shape.
    let (code, again, stderr) = w
        .mcp_call(&w.bot_token, "get_workspace_start", json!({"name": name}))
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(again["started"], true);
    assert_eq!(again["name"], name);

    // Already running now: a second start needs no build, as Coder's tool reports it.
    let (code, second, stderr) = w
        .mcp_call(
            &w.bot_token,
            "start_workspace",
            json!({"owner": "alice", "name": "dev"}),
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(second["no_build"], true, "{second}");
    assert_eq!(w.env.sim.sim().builds_created(ws), 1);

    let metrics = w.mcp_metrics().await;
    assert!(
        metrics.contains("workspace_start_operator_mcp_tool_calls_total{tool=\"start_workspace\",outcome=\"ready\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_refuses_callers_without_rbac_or_with_bad_tokens_and_creates_nothing() {
    let mut w = World::new("mcp-refuse").await;
    w.start_mcp(&[]).await;
    let ws = stopped(&w.env, "dev");
    let args = json!({"workspace_id": ws.to_string()});

    // A valid token whose ServiceAccount may not create requests: a tool error, nothing created.
    let (code, result, stderr) = w
        .mcp_call(&w.stranger_token, "start_workspace", args.clone())
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(result["reason"], "Forbidden", "{result}");
    assert_eq!(result["started"], false);
    let msg = result["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("system:serviceaccount:{}:stranger may not create workspacestartrequests.coder.com in namespace {}", w.env.ns, w.env.ns)),
        "{msg}"
    );

    // Not a token at all, and a real token for another audience: refused (HTTP 401 with a
    // JSON-RPC error body) before any MCP message is read.
    let bad = w.env.dir.path().join("bad-token");
    std::fs::write(&bad, "not-a-token").expect("write");
    let api_audience = write_token(&w.env, "chat-bot", None).await;
    for token in [&bad, &api_audience] {
        let (code, _, stderr) = w.mcp_call(token, "start_workspace", args.clone()).await;
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("MCP error -32001: unauthorized: invalid token"),
            "{stderr}"
        );
    }
    // No token at all, straight over HTTP.
    let url = w.mcp.as_ref().expect("mcp").url();
    let resp = mcp::post(&reqwest::Client::new(), &url, None, mcp::TOOLS_LIST.into())
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    assert!(
        resp.text()
            .await
            .unwrap_or_default()
            .contains("missing bearer token")
    );

    assert!(w.requests().await.is_empty(), "nothing may be created");
    assert_eq!(w.env.sim.sim().builds_created(ws), 0);
    let metrics = w.mcp_metrics().await;
    let refused = |reason: &str| -> f64 {
        let series =
            format!("workspace_start_operator_mcp_auth_failures_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    // Each client call is refused at its first HTTP request (the client then tries once more).
    assert!(refused("invalid_token") >= 2.0, "{metrics}");
    assert_eq!(refused("missing_token"), 1.0, "{metrics}");
    assert!(
        !w.mcp_log().contains("not-a-token"),
        "tokens are never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_invalid_arguments_get_an_error_naming_the_argument() {
    let mut w = World::new("mcp-args").await;
    w.start_mcp(&[]).await;
    let cases = [
        (json!({"chat_id": "not-a-uuid"}), "chat_id: must be a UUID"),
        (json!({"chat_id": 42}), "chat_id: invalid type"),
        (json!({"owner": "alice"}), "name: required with owner"),
        (
            json!({}),
            "give exactly one of chat_id, workspace_id, or owner with name",
        ),
        (json!({"workspace": "dev"}), "unknown field `workspace`"),
        (
            json!({"owner": "alice", "name": "dev", "timeout": "soon"}),
            "timeout: must be a positive duration",
        ),
        (
            json!({"owner": "alice", "name": "dev", "namespace": "Not_A_Namespace"}),
            "namespace: must be a namespace name",
        ),
        (
            json!({"owner": "alice", "name": "dev", "namespace": "kube-system"}),
            "namespace: kube-system is not served here",
        ),
    ];
    for (args, want) in cases {
        let (code, _, stderr) = w
            .mcp_call(&w.bot_token, "start_workspace", args.clone())
            .await;
        assert_eq!(code, 2, "{args}: {stderr}");
        assert!(stderr.contains("MCP error -32602"), "{args}: {stderr}");
        assert!(
            stderr.contains(want),
            "{args}: expected {want:?} in {stderr}"
        );
    }
    assert!(w.requests().await.is_empty(), "nothing may be created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_failed_start_returns_the_reason_as_a_tool_result() {
    let mut w = World::new("mcp-quota").await;
    w.start_mcp(&[]).await;
    let ws = w.env.sim.sim().add_workspace(
        WorkspaceSeed::new(w.env.alice.id, "quota").script(BuildScript::insufficient_quota()),
    );
    let chat = w.env.sim.sim().add_chat(w.env.alice.id, Some(ws));
    let (code, result, stderr) = w.start_chat_as_bot(chat).await;
    assert_eq!(
        code, 1,
        "a tool result with isError, not a transport error: {stderr}"
    );
    assert_eq!(result["started"], false, "{result}");
    assert_eq!(result["phase"], "Failed");
    assert_eq!(result["reason"], "InsufficientQuota");
    assert_eq!(result["error_code"], "INSUFFICIENT_QUOTA");
    assert_eq!(result["title"], "Workspace quota reached");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("workspace start build failed: "),
        "{error}"
    );
    assert!(
        !error.contains("credits consumed"),
        "job error text never leaves the operator: {error}"
    );

    // A chat without a workspace fails with Coder's reason, too.
    let lonely = w.env.sim.sim().add_chat(w.env.alice.id, None);
    let (code, result, _) = w
        .mcp_call(
            &w.bot_token,
            "start_workspace",
            json!({"chat_id": lonely.to_string(), "timeout": "30s"}),
        )
        .await;
    assert_eq!(code, 1);
    assert_eq!(result["reason"], "ChatHasNoWorkspace", "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_calls_beyond_the_callers_rate_limit_are_refused() {
    let mut w = World::new("mcp-limit").await;
    w.start_mcp(&["--calls-per-minute=1", "--call-burst=2"])
        .await;
    let args = json!({"name": "no-such-request"});
    for _ in 0..2 {
        let (code, result, stderr) = w
            .mcp_call(&w.bot_token, "get_workspace_start", args.clone())
            .await;
        assert_eq!(
            (code, result["reason"].as_str()),
            (1, Some("NotFound")),
            "{stderr}"
        );
    }
    let (code, result, stderr) = w
        .mcp_call(&w.bot_token, "get_workspace_start", args.clone())
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(result["reason"], "RateLimited", "{result}");
    let msg = result["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("at most 1 tool calls per minute") && msg.contains("retry in"),
        "{msg}"
    );
    // Another caller has its own bucket (and is refused by RBAC instead).
    let (_, result, _) = w
        .mcp_call(&w.stranger_token, "get_workspace_start", args)
        .await;
    assert_eq!(result["reason"], "Forbidden", "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_python_client_example_waits_until_ready() {
    let w = World::new("py-k8s").await;
    let ws = stopped(&w.env, "dev");
    let chat = w.env.sim.sim().add_chat(w.env.alice.id, Some(ws));
    let out = run(tokio::process::Command::new(python())
        .arg(repo().join("examples/clients/start_with_kubernetes.py"))
        .args(["--chat-id", &chat.to_string(), "--timeout", "60"])
        .env("KUBECONFIG", &w.bot_kubeconfig))
    .await;
    let (code, result, stderr) = parsed(out);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(result["phase"], "Ready", "{result}");
    assert_eq!(result["reason"], "Ready", "{result}");
    assert_eq!(result["workspace"], "dev", "{result}");
    assert_eq!(result["namespace"], w.env.ns.as_str());
    assert!(
        stderr.contains("created workspacestartrequest") && stderr.contains("Ready: Ready"),
        "{stderr}"
    );
    let name = result["name"].as_str().expect("name");
    assert!(name.starts_with("chat-"), "{name}");
    assert_eq!(w.env.sim.sim().builds_created(ws), 1);
}

/// Runs `workspace-start-operator start ...` as chat-bot.
async fn start_cmd(w: &World, args: &[&str]) -> (i32, String, String) {
    let out = run(tokio::process::Command::new(operator_bin())
        .arg("start")
        .args(args)
        .env("KUBECONFIG", &w.bot_kubeconfig))
    .await;
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_command_exits_0_when_ready_and_prints_the_tool_result_as_json_or_yaml() {
    let w = World::new("start-ok").await;
    let ws = stopped(&w.env, "dev");
    let (code, stdout, stderr) = start_cmd(
        &w,
        &[
            "--workspace",
            &ws.to_string(),
            "--wait",
            "--timeout",
            "1m",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(result["started"], true);
    assert_eq!(result["workspace_name"], "dev");
    assert_eq!(result["agent_status"], "ready");
    assert_eq!(result["namespace"], w.env.ns.as_str());
    // Not a terminal: plain progress lines on stderr, one per change.
    assert!(
        stderr.contains("created; waiting for it to be Ready"),
        "{stderr}"
    );
    assert!(
        stderr.contains("] Starting") && stderr.contains("] Ready"),
        "{stderr}"
    );

    // Already running: -o yaml parses to the same shape, no build.
    let (code, stdout, stderr) =
        start_cmd(&w, &["--workspace", "alice/dev", "--wait", "-o", "yaml"]).await;
    assert_eq!(code, 0, "{stderr}");
    let result: Value = serde_yaml::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(result["no_build"], true, "{result}");

    // Without --wait: created, exit 0 at once, in the namespace of the kubeconfig's context.
    let (code, stdout, stderr) = start_cmd(&w, &["--workspace", "alice/dev"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("workspacestartrequest.coder.com/alice-dev-")
            && stdout.trim_end().ends_with(" created"),
        "{stdout}"
    );
    assert_eq!(w.env.sim.sim().builds_created(ws), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_command_exits_nonzero_with_the_reason_on_failure_timeout_and_bad_arguments() {
    let w = World::new("start-fail").await;
    let quota = w.env.sim.sim().add_workspace(
        WorkspaceSeed::new(w.env.alice.id, "quota").script(BuildScript::insufficient_quota()),
    );
    let (code, stdout, stderr) =
        start_cmd(&w, &["--workspace", &quota.to_string(), "--wait"]).await;
    assert_eq!(code, 1, "Failed: {stdout}{stderr}");
    assert!(
        stdout.contains(" Failed after ")
            && stdout.contains(": InsufficientQuota: workspace start build failed: "),
        "{stdout}"
    );

    // A build that stays pending past --timeout: exit 3, still in progress.
    let slow =
        w.env
            .sim
            .sim()
            .add_workspace(WorkspaceSeed::new(w.env.alice.id, "slow").script(
                BuildScript::default().with_job(Duration::from_secs(60), Duration::from_secs(1)),
            ));
    let (code, stdout, stderr) = start_cmd(
        &w,
        &[
            "--workspace",
            &slow.to_string(),
            "--wait",
            "--timeout",
            "3s",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 3, "timeout: {stdout}{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(result["phase"], "Starting", "{result}");
    assert!(
        result["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("timed out after 3s"),
        "{result}"
    );

    // Bad arguments: exit 2 naming the flag, nothing created.
    let before = w.requests().await.len();
    let (code, _, stderr) = start_cmd(&w, &["--chat", "nope"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--chat: must be a UUID"), "{stderr}");
    let (code, _, stderr) = start_cmd(
        &w,
        &["--workspace", "alice/dev", "--timeout", "0s", "--wait"],
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = start_cmd(&w, &[]).await;
    assert_eq!(code, 2, "clap usage error: {stderr}");
    assert_eq!(w.requests().await.len(), before);

    // No RBAC in another namespace: exit 4 with the API server's reason.
    let (code, _, stderr) = start_cmd(&w, &["--workspace", "alice/dev", "-n", "default"]).await;
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("forbidden"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_wsr_plugin_starts_a_workspace_by_owner_and_name() {
    let w = World::new("kubectl-wsr").await;
    let ws = w
        .env
        .sim
        .sim()
        .add_workspace(WorkspaceSeed::new(w.env.alice.id, "box").state(InitialState::Stopped));
    // kubectl finds plugins on PATH by name: kubectl-wsr is the operator binary under that name.
    let bin = w.env.dir.path().join("plugins");
    std::fs::create_dir_all(&bin).expect("dir");
    std::os::unix::fs::symlink(operator_bin(), bin.join("kubectl-wsr")).expect("symlink");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kubectl = support::ControlPlaneBins::kubectl();
    let out = run(tokio::process::Command::new(&kubectl)
        .args([
            "wsr",
            "start",
            "--workspace",
            "alice/box",
            "--wait",
            "-o",
            "json",
        ])
        .env("PATH", &path)
        .env("KUBECONFIG", &w.bot_kubeconfig))
    .await;
    let (code, result, stderr) = parsed(out);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(result["started"], true, "{result}");
    assert_eq!(result["workspace_name"], "box");
    assert_eq!(w.env.sim.sim().builds_created(ws), 1);

    let out = run(tokio::process::Command::new(&kubectl)
        .args(["wsr", "start", "--help"])
        .env("PATH", &path))
    .await;
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Usage: kubectl wsr start"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_server_stops_promptly_during_a_long_call_and_the_request_goes_on() {
    let mut w = World::new("mcp-stop").await;
    w.start_mcp(&[]).await;
    let slow =
        w.env
            .sim
            .sim()
            .add_workspace(WorkspaceSeed::new(w.env.alice.id, "slow").script(
                BuildScript::default().with_job(Duration::from_secs(120), Duration::from_secs(1)),
            ));
    let url = w.mcp.as_ref().expect("mcp").url();
    let call = tokio::process::Command::new(python())
        .arg(repo().join("examples/clients/start_with_mcp.py"))
        .args(["--url", &url, "--arguments"])
        .arg(json!({"workspace_id": slow.to_string()}).to_string())
        .arg("--token-file")
        .arg(&w.bot_token)
        .kill_on_drop(true)
        .output();
    let call = tokio::spawn(call);
    opproc::eventually("the request to be created", T, || async {
        let reqs = w.requests().await;
        reqs.first()
            .and_then(|r| r.status.as_ref())
            .is_some_and(|s| s.phase == Some(Phase::Starting))
            .then_some(())
    })
    .await;

    let started = std::time::Instant::now();
    let status = w.mcp.as_mut().expect("mcp").proc.terminate().await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit: {status:?}\n{}",
        w.mcp_log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?} with a call in flight",
        started.elapsed()
    );
    let out = call.await.expect("join").expect("client ran");
    assert_ne!(out.status.code(), Some(0), "the cut call is not a success");
    // The request is not lost: the operator goes on with it.
    let reqs = w.requests().await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(w.env.sim.sim().builds_created(slow), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_command_and_mcp_send_requests_to_a_shard() {
    let mut w = World::new("to-shard").await;
    let shard_op = w.env.spawn_operator(&["--shard=gpu"], &[]).await;
    w.start_mcp(&["--shard=gpu"]).await;
    let by_start = stopped(&w.env, "by-start");
    let by_mcp = stopped(&w.env, "by-mcp");
    let chat = w.env.sim.sim().add_chat(w.env.alice.id, Some(by_mcp));

    // `start --shard`: labelled for the shard, followed until Ready.
    let (code, stdout, stderr) = start_cmd(
        &w,
        &[
            "--workspace",
            &by_start.to_string(),
            "--shard",
            "gpu",
            "--wait",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(result["phase"], "Ready", "{result}");
    let from_start = result["name"].as_str().expect("name").to_owned();

    // The MCP server run with `--shard` labels what it creates.
    let (code, result, stderr) = w.start_chat_as_bot(chat).await;
    assert_eq!(code, 0, "{stderr}\nMCP log:\n{}", w.mcp_log());
    assert_eq!(result["phase"], "Ready", "{result}");
    let from_mcp = result["name"].as_str().expect("name").to_owned();

    let default_log = w.env.operator().logs();
    for name in [&from_start, &from_mcp] {
        let r = w.env.wsrs().get(name).await.expect("get");
        let labels = r.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels.get("coder.com/shard").map(String::as_str),
            Some("gpu"),
            "{labels:?}"
        );
        // Reconciled by the shard, never by the default deployment.
        assert!(
            shard_op.logs().contains(name.as_str()),
            "shard log lacks {name}"
        );
        assert!(!default_log.contains(name.as_str()), "default took {name}");
    }
    assert_eq!(w.env.sim.sim().builds_created(by_start), 1);
    assert_eq!(w.env.sim.sim().builds_created(by_mcp), 1);

    // A shard name that cannot be a label value: exit 2 naming the flag, nothing created.
    let before = w.requests().await.len();
    let (code, _, stderr) = start_cmd(&w, &["--workspace", "alice/dev", "--shard", "GPU"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--shard"), "{stderr}");
    assert_eq!(w.requests().await.len(), before);
}

/// Tenancy through MCP (kept here, beside the MCP harness; the other tenancy tests are in
/// tests/tenancy.rs): a chat bot in a namespace bound to alice that asks for bob's workspace
/// gets a tool result with isError and reason OwnerNotAllowed, and nothing is started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_caller_cannot_start_a_workspace_outside_its_namespace_binding() {
    use workspace_start_operator::api::policy::{WorkspaceStartPolicy, WorkspaceStartPolicySpec};
    let mut w = World::new("mcp-tenancy").await;
    // The operator in bound mode with an admin Coder token (reaches every user's workspace).
    w.env.operator().terminate().await;
    let admin = w.env.sim.sim().add_admin("coder-admin");
    std::fs::write(w.env.token_file(), format!("{}\n", admin.token)).expect("token file");
    let policy = WorkspaceStartPolicy::new(
        &w.env.ns,
        WorkspaceStartPolicySpec {
            namespaces: vec![w.env.ns.clone()],
            owners: vec!["alice".into()],
            ..Default::default()
        },
    );
    let policies = Api::<WorkspaceStartPolicy>::all(w.env.admin.clone());
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("policy");
    w.env.start_operator(&["--tenancy=bound"]).await;
    w.start_mcp(&[]).await;

    let bob = w.env.sim.sim().add_user("bob");
    let bobs = w
        .env
        .sim
        .sim()
        .add_workspace(WorkspaceSeed::new(bob.id, "dev"));
    let bobs_chat = w.env.sim.sim().add_chat(bob.id, Some(bobs));
    let (code, result, stderr) = w.start_chat_as_bot(bobs_chat).await;
    assert_eq!(code, 1, "a tool result with isError: {stderr}");
    assert_eq!(result["started"], false, "{result}");
    assert_eq!(result["reason"], "OwnerNotAllowed", "{result}");
    let (code, result, _) = w
        .mcp_call(
            &w.bot_token,
            "start_workspace",
            json!({"owner": "bob", "name": "dev"}),
        )
        .await;
    assert_eq!(code, 1);
    assert_eq!(result["reason"], "OwnerNotAllowed", "{result}");
    assert_eq!(w.env.sim.sim().builds_posted(bobs), 0, "nothing started");

    // Alice's chat in the same namespace is served.
    let alices = stopped(&w.env, "alices");
    let chat = w.env.sim.sim().add_chat(w.env.alice.id, Some(alices));
    let (code, result, stderr) = w.start_chat_as_bot(chat).await;
    assert_eq!(code, 0, "{result} {stderr}");
    let _ = policies.delete(&w.env.ns, &Default::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_id_twice_creates_one_request() {
    let mut w = World::new("request-id").await;
    w.start_mcp(&[]).await;
    let ws = stopped(&w.env, "dev");
    let args = json!({"workspace_id": ws.to_string(), "request_id": "toolu_01ABC"});

    // A model's call that returned at once, then its retry that waits.
    let mut first_args = args.clone();
    first_args["wait"] = json!(false);
    let (code, first, stderr) = w
        .mcp_call(&w.bot_token, "start_workspace", first_args)
        .await;
    assert_eq!(code, 0, "{stderr}\nMCP log:\n{}", w.mcp_log());
    let (code, retried, stderr) = w
        .mcp_call(&w.bot_token, "start_workspace", args.clone())
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(retried["name"], first["name"], "{first}\n{retried}");
    assert_eq!(retried["started"], true, "{retried}");
    assert!(retried["build_id"].is_string(), "{retried}");
    assert_eq!(w.requests().await.len(), 1);
    assert_eq!(w.env.sim.sim().builds_created(ws), 1);
    let name = first["name"].as_str().expect("name");
    let req = w.env.wsrs().get(name).await.expect("request");
    let labels = req.metadata.labels.unwrap_or_default();
    assert!(labels.contains_key("coder.com/request-id"), "{labels:?}");

    // The same request id for another start is an invalid argument, and creates nothing.
    let other = stopped(&w.env, "other");
    let (code, _, stderr) = w
        .mcp_call(
            &w.bot_token,
            "start_workspace",
            json!({"workspace_id": other.to_string(), "request_id": "toolu_01ABC"}),
        )
        .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("request_id"), "{stderr}");
    assert_eq!(w.requests().await.len(), 1);

    // The start command (the same ServiceAccount through its kubeconfig): twice, one request.
    let cli = [
        "--workspace",
        "alice/dev",
        "--request-id",
        "run-7",
        "-o",
        "json",
    ];
    let (code, out1, stderr) = start_cmd(&w, &cli).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, out2, stderr) = start_cmd(&w, &cli).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("--request-id seen before"), "{stderr}");
    let (a, b): (Value, Value) = (
        serde_json::from_str(&out1).expect("json"),
        serde_json::from_str(&out2).expect("json"),
    );
    assert_eq!(a["name"], b["name"]);
    assert_ne!(a["name"], first["name"]);
    assert_eq!(w.requests().await.len(), 2);
    assert_eq!(w.env.sim.sim().builds_created(other), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_client_lists_the_new_tools_and_reads_paged_build_logs() {
    let port = free_port();
    let logs_addr = format!("--logs-addr=127.0.0.1:{port}");
    // The operator accepts the MCP audience: the MCP server forwards the caller's own token.
    let mut w = World::with_operator_args(
        "mcp-logs",
        &[&logs_addr, &format!("--logs-audiences={AUDIENCE}")],
    )
    .await;
    let ns = w.env.ns.clone();
    let yaml = support::render_chart(&ns, &w.env.sim.url(), &["--set=logs.enabled=true"]);
    w.env
        .plane
        .apply_yaml(&yaml, &ns)
        .await
        .expect("chart with logs.enabled");
    let release = support::RELEASE;
    let binding = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {ns}-logs-reviews}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {release}-logs-reviews}}\n\
         subjects: [{{kind: ServiceAccount, name: {release}, namespace: {ns}}}]\n"
    );
    w.env
        .plane
        .apply_yaml(&binding, &ns)
        .await
        .expect("ClusterRoleBinding");
    w.start_mcp(&[&format!("--logs-url=http://127.0.0.1:{port}/logs")])
        .await;
    let ws = w.env.sim.sim().add_workspace(
        WorkspaceSeed::new(w.env.alice.id, "dev")
            .script(BuildScript::failed(None, "exit status 1")),
    );
    let (code, started, stderr) = w
        .mcp_call(
            &w.bot_token,
            "start_workspace",
            json!({"workspace_id": ws.to_string()}),
        )
        .await;
    assert_eq!(code, 1, "the build fails: {stderr}");
    for tool in [
        "start_workspace",
        "get_workspace_start",
        "get_workspace_build_logs",
    ] {
        assert!(stderr.contains(tool), "{tool} not listed: {stderr}");
    }
    let name = started["name"].as_str().expect("name").to_owned();

    let mut after = 0;
    let mut pages = 0;
    let mut lines = 0;
    loop {
        let (code, page, stderr) = w
            .mcp_call(
                &w.bot_token,
                "get_workspace_build_logs",
                json!({"name": name, "limit": 2, "after_id": after}),
            )
            .await;
        assert_eq!(code, 0, "{stderr}\nMCP log:\n{}", w.mcp_log());
        pages += 1;
        lines += page["logs"].as_array().map_or(0, Vec::len);
        if page["has_more"] != true {
            assert_eq!(page["job_status"], "failed", "{page}");
            assert_eq!(page["job_error"], "exit status 1", "{page}");
            break;
        }
        after = page["next_after_id"].as_i64().expect("next_after_id");
        assert!(pages < 20, "paging ends");
    }
    assert!(pages > 1 && lines > 2, "{pages} pages, {lines} lines");

    // A caller without RBAC gets a refusal as a tool result, and no logs.
    let (code, refused, _) = w
        .mcp_call(
            &w.stranger_token,
            "get_workspace_build_logs",
            json!({"name": name, "namespace": ns}),
        )
        .await;
    assert_eq!(code, 1, "{refused}");
    assert_eq!(refused["reason"], "Forbidden", "{refused}");
    assert!(refused.get("logs").is_none());
}
