//! End-to-end harness: the shared real control plane (etcd + kube-apiserver), a fresh namespace
//! per test, an in-process coder-sim, the chart's RBAC applied to that namespace, and the
//! operator binary running as the chart's ServiceAccount (least privilege).
#![allow(dead_code)]

pub mod mcp;
pub mod opproc;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use coder_sim::{SimConfig, SimServer, SimUser};
use envtest::ControlPlane;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use workspace_start_operator::api::crd::{Phase, WorkspaceStartRequest};

/// Release name used when rendering the chart (fixes the ServiceAccount name).
pub const RELEASE: &str = "workspace-start-operator";

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One test's world.
pub struct Env {
    /// The shared control plane.
    pub plane: &'static ControlPlane,
    /// This test's namespace.
    pub ns: String,
    /// Admin client (for the test's own reads and writes).
    pub admin: Client,
    /// The Coder simulator.
    pub sim: SimServer,
    /// A regular Coder user whose token the operator uses.
    pub alice: SimUser,
    /// Kubeconfig of the operator's ServiceAccount.
    pub sa_kubeconfig: PathBuf,
    /// Scratch directory (token file, logs).
    pub dir: tempfile::TempDir,
    /// The running operator, if started.
    pub operator: Option<Operator>,
}

/// A running operator process; killed on drop.
pub struct Operator {
    child: tokio::process::Child,
    /// Its log file.
    pub log: PathBuf,
    /// Metrics address (`127.0.0.1:port`).
    pub metrics_addr: String,
}

impl Operator {
    /// Kills the process at once (SIGKILL), as a crash would.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Stops it with SIGTERM and waits for it to exit.
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            unsafe_kill(pid, 15);
        }
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its process id (`None` once it was reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The process's peak and current resident memory in KiB (`VmHWM`, `VmRSS` from
    /// `/proc/<pid>/status`).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = self
            .child
            .id()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// CPU time (user + system) the process used so far, in seconds (`/proc/<pid>/stat`).
    pub fn cpu_seconds(&self) -> f64 {
        let stat = self
            .child
            .id()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .unwrap_or_default();
        // Fields after the command name (which ends with ')'): utime and stime are 12 and 13.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
            .sum();
        ticks / 100.0
    }

    /// The log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fetches `/metrics`.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr);
        match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Renders the chart for namespaced mode in `ns` (admission policies off unless `extra` turns
/// them on) and returns the YAML.
pub fn render_chart(ns: &str, coder_url: &str, extra: &[&str]) -> String {
    let helm = ControlPlaneBins::helm();
    let mut cmd = std::process::Command::new(helm);
    cmd.args(["template", RELEASE])
        .arg(repo().join("charts/workspace-start-operator"))
        .args(["--namespace", ns])
        .arg(format!("--set=watchNamespaces={{{ns}}}"))
        .arg(format!("--set=coder.url={coder_url}"))
        .arg("--set=coder.token=unused-in-tests")
        // Without the tenancy admission policies, as the tests written before tenancy expect;
        // tests/tenancy.rs turns them on (a later --set wins).
        .arg("--set=tenancy.admissionPolicies=false");
    for e in extra {
        cmd.arg(e);
    }
    let out = cmd.output().expect("run helm template");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// Paths of the cached tools.
pub struct ControlPlaneBins;

impl ControlPlaneBins {
    /// The bin dir (same lookup as the envtest crate).
    pub fn dir() -> PathBuf {
        envtest::locate_bin_dir()
            .expect("control-plane binaries: run scripts/control-plane-bins.sh")
    }
    /// helm.
    pub fn helm() -> PathBuf {
        Self::dir().join("helm")
    }
    /// kubectl.
    pub fn kubectl() -> PathBuf {
        Self::dir().join("kubectl")
    }
}

/// The operator binary built by cargo for this test run.
pub fn operator_bin() -> &'static str {
    env!("CARGO_BIN_EXE_workspace-start-operator")
}

impl Env {
    /// A namespace, a simulator with user alice, the chart's RBAC and the SA kubeconfig.
    /// The operator is not started yet (see [`Env::start_operator`]).
    pub async fn new(prefix: &str) -> Env {
        Self::with_sim(prefix, SimConfig::default()).await
    }

    /// Like [`Env::new`] with a custom simulator configuration.
    pub async fn with_sim(prefix: &str, cfg: SimConfig) -> Env {
        Self::on_plane(ControlPlane::shared().await, prefix, cfg).await
    }

    /// Like [`Env::with_sim`] on a given control plane (e.g. a private one a test restarts).
    pub async fn on_plane(plane: &'static ControlPlane, prefix: &str, cfg: SimConfig) -> Env {
        plane
            .install_crds(&repo().join("crds"))
            .await
            .expect("install CRDs");
        let ns = plane.create_namespace(prefix).await.expect("namespace");
        let sim = SimServer::start(cfg).await.expect("start coder-sim");
        let alice = sim.sim().add_user("alice");
        let yaml = render_chart(&ns, &sim.url(), &[]);
        plane.apply_yaml(&yaml, &ns).await.expect("apply chart");
        let (_, sa_kubeconfig) = plane
            .service_account_client(&ns, RELEASE)
            .await
            .expect("ServiceAccount token");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), format!("{}\n", alice.token)).expect("token file");
        Env {
            plane,
            admin: plane.admin_client(),
            ns,
            sim,
            alice,
            sa_kubeconfig,
            dir,
            operator: None,
        }
    }

    /// Path of the operator's token file.
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// Starts the operator as the chart's ServiceAccount, watching only this namespace, in open
    /// tenancy unless `extra` says `--tenancy=bound`.
    pub async fn start_operator(&mut self, extra: &[&str]) {
        let op = self.spawn_operator(extra, &[]).await;
        self.operator = Some(op);
    }

    /// Starts one more operator like [`Env::start_operator`] with extra environment variables
    /// (e.g. `POD_NAME`, the Events' reporting instance), waits for `/readyz` and returns it.
    pub async fn spawn_operator(&self, extra: &[&str], envs: &[(&str, &str)]) -> Operator {
        let log = self.dir.path().join(format!(
            "operator-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        ));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let port = free_port();
        let mut cmd = tokio::process::Command::new(operator_bin());
        cmd.arg("run")
            .arg(format!("--coder-url={}", self.sim.url()))
            .arg(format!(
                "--coder-token-file={}",
                self.token_file().display()
            ))
            .arg(format!("--namespaces={}", self.ns))
            .arg(format!("--metrics-addr=127.0.0.1:{port}"))
            .arg("--poll-ms=300")
            .arg("--backstop-poll-ms=5000")
            .arg("--coder-timeout-ms=3000")
            .arg("--log-level=workspace_start_operator=debug,info")
            // Open tenancy, so the tests written before tenancy keep their assertions; the
            // tenancy tests (tests/tenancy.rs) pass --tenancy=bound, which overrides this.
            .arg("--tenancy=open")
            .args(extra)
            .envs(envs.iter().copied())
            .env("KUBECONFIG", &self.sa_kubeconfig)
            .env("POD_NAMESPACE", &self.ns)
            .env_remove("CODER_URL")
            .env_remove("WATCH_NAMESPACES")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = cmd.spawn().expect("spawn operator");
        let op = Operator {
            child,
            log,
            metrics_addr: format!("127.0.0.1:{port}"),
        };
        // Wait for /readyz (caches synced).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = reqwest::get(format!("http://{}/readyz", op.metrics_addr))
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "operator never became ready; log:\n{}",
                op.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        op
    }

    /// The running operator.
    pub fn operator(&mut self) -> &mut Operator {
        self.operator.as_mut().expect("operator started")
    }

    /// Typed API for requests in this namespace.
    pub fn wsrs(&self) -> Api<WorkspaceStartRequest> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// Creates a request from a spec given as JSON.
    pub async fn create(&self, name: &str, spec: serde_json::Value) -> WorkspaceStartRequest {
        let obj: WorkspaceStartRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "coder.com/v1alpha1",
            "kind": "WorkspaceStartRequest",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": spec,
        }))
        .expect("valid request");
        self.wsrs()
            .create(&PostParams::default(), &obj)
            .await
            .expect("create request")
    }

    /// Creates a Secret in this namespace from string data.
    pub async fn create_secret(&self, name: &str, data: &[(&str, &str)]) {
        let data: std::collections::BTreeMap<&str, &str> = data.iter().copied().collect();
        let s: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": self.ns},
            "stringData": data,
        }))
        .expect("secret");
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(self.admin.clone(), &self.ns)
            .create(&PostParams::default(), &s)
            .await
            .expect("create secret");
    }

    /// Creates a request for `workspace` by id.
    pub async fn create_for_workspace(
        &self,
        name: &str,
        workspace: uuid::Uuid,
    ) -> WorkspaceStartRequest {
        self.create(
            name,
            serde_json::json!({"workspace": {"id": workspace.to_string()}}),
        )
        .await
    }

    /// Waits until the request reaches `phase`.
    pub async fn wait_phase(
        &self,
        name: &str,
        phase: Phase,
        timeout: Duration,
    ) -> WorkspaceStartRequest {
        self.wait_for(name, timeout, |w| {
            w.status.as_ref().and_then(|s| s.phase) == Some(phase)
        })
        .await
    }

    /// Waits until the request is Ready or Failed.
    pub async fn wait_terminal(&self, name: &str, timeout: Duration) -> WorkspaceStartRequest {
        self.wait_for(name, timeout, |w| {
            w.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(Phase::is_terminal)
        })
        .await
    }

    /// Waits until `pred` holds for the request.
    pub async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&WorkspaceStartRequest) -> bool,
    ) -> WorkspaceStartRequest {
        let deadline = Instant::now() + timeout;
        loop {
            let w = self.wsrs().get(name).await.expect("get request");
            if pred(&w) {
                return w;
            }
            if Instant::now() > deadline {
                let logs = self
                    .operator
                    .as_ref()
                    .map(Operator::logs)
                    .unwrap_or_default();
                panic!(
                    "timed out waiting for {name}; status: {}\noperator log tail:\n{}",
                    serde_json::to_string_pretty(&w.status).unwrap_or_default(),
                    tail(&logs, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Events recorded for the request, oldest first: (type, reason, note). Events are
    /// published in the background, so this waits (up to 10 s) until the event for the
    /// request's current Ready reason is visible.
    pub async fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let current = self
            .wsrs()
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .map(|w| ready(&w).1);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let evs = self.list_events(name).await;
            let seen = current
                .as_ref()
                .is_none_or(|r| r.is_empty() || evs.iter().any(|e| &e.1 == r));
            if seen || Instant::now() > deadline {
                return evs;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn list_events(&self, name: &str) -> Vec<(String, String, String)> {
        let api: Api<Event> = Api::namespaced(self.admin.clone(), &self.ns);
        let mut evs: Vec<Event> = api
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect();
        evs.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        evs.into_iter()
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Runs kubectl as admin in this namespace; returns (success, stdout+stderr).
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let ns = format!("--namespace={}", self.ns);
        let args: Vec<&str> = std::iter::once(ns.as_str())
            .chain(args.iter().copied())
            .collect();
        kubectl_admin(self.plane, &args, stdin)
    }

    /// Deletes a request.
    pub async fn delete(&self, name: &str) {
        let _ = self.wsrs().delete(name, &DeleteParams::default()).await;
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(op) = &self.operator
        {
            eprintln!(
                "--- operator log ({}) ---\n{}",
                op.log.display(),
                tail(&op.logs(), 80)
            );
        }
    }
}

/// Runs kubectl with the admin kubeconfig; returns (success, stdout+stderr).
pub fn kubectl_admin(plane: &ControlPlane, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(ControlPlaneBins::kubectl())
        .arg(format!(
            "--kubeconfig={}",
            plane.admin_kubeconfig().display()
        ))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    if let (Some(input), Some(mut si)) = (stdin, child.stdin.take()) {
        si.write_all(input.as_bytes()).expect("kubectl stdin");
    }
    let out = child.wait_with_output().expect("kubectl output");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Polls `pred` every 20 ms until it holds (panics after `timeout`, naming `what`).
pub async fn eventually(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last `n` lines.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A TCP port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The Ready condition's (status, reason).
pub fn ready(w: &WorkspaceStartRequest) -> (String, String) {
    w.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}
