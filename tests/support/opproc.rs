//! Part of the one test harness (`tests/support`): rendering the chart with
//! arbitrary values, and running the operator binary with arbitrary flags and environment (as a
//! given ServiceAccount kubeconfig), beside the harness's `Env`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{ControlPlaneBins, operator_bin, repo, tail};

/// `helm template <release> charts/workspace-start-operator --namespace <ns> <args...>`.
pub fn helm_template(release: &str, ns: &str, args: &[String]) -> String {
    let out = std::process::Command::new(ControlPlaneBins::helm())
        .args(["template", release])
        .arg(repo().join("charts/workspace-start-operator"))
        .args(["--namespace", ns])
        .args(args)
        .output()
        .expect("run helm template");
    assert!(
        out.status.success(),
        "helm template {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// An operator process started with exactly the given flags; killed on drop.
pub struct Proc {
    child: tokio::process::Child,
    /// stdout+stderr of the process.
    pub log: PathBuf,
    /// `127.0.0.1:port` of /metrics, /healthz, /readyz.
    pub addr: String,
}

/// How to start an operator.
pub struct Launch<'a> {
    /// Kubeconfig to run as (a ServiceAccount's).
    pub kubeconfig: &'a Path,
    /// Directory for the log file.
    pub dir: &'a Path,
    /// Flags after `run` (the metrics address is added).
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl Proc {
    /// Spawns the operator (`run`). Every `WSO_*`/`CODER_*`/`WATCH_NAMESPACES` variable of the
    /// test process is removed first, so only `launch` decides the configuration. Open tenancy
    /// unless `launch.args` give `--tenancy` (the tests written before tenancy keep their
    /// assertions; tests/tenancy.rs runs bound mode).
    pub fn spawn(mut launch: Launch<'_>) -> Proc {
        if !launch.args.iter().any(|a| a.starts_with("--tenancy")) {
            launch.args.insert(0, "--tenancy=open".to_owned());
        }
        Proc::spawn_command("run", launch)
    }

    /// Like [`Proc::spawn`] for another subcommand that serves metrics (e.g. `mcp`).
    pub fn spawn_command(subcommand: &str, launch: Launch<'_>) -> Proc {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = launch.dir.join(format!("operator-{port}-{n}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = tokio::process::Command::new(operator_bin());
        cmd.arg(subcommand)
            .arg(format!("--metrics-addr=127.0.0.1:{port}"))
            .args(&launch.args)
            .env("KUBECONFIG", launch.kubeconfig)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            if k.starts_with("WSO_")
                || k.starts_with("CODER_")
                || k == "WATCH_NAMESPACES"
                || k == "RUST_LOG"
            {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &launch.env {
            cmd.env(k, v);
        }
        Proc {
            child: cmd.spawn().expect("spawn operator"),
            log,
            addr: format!("127.0.0.1:{port}"),
        }
    }

    /// The process id (None once it was reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// HTTP status and body of `path` on the metrics server (None while it does not answer).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = reqwest::Client::new()
            .get(format!("http://{}{path}", self.addr))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let code = r.status().as_u16();
        Some((code, r.text().await.unwrap_or_default()))
    }

    /// Waits until `path` answers `code`.
    pub async fn wait_status(&self, path: &str, code: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.get(path).await.map(|r| r.0) == Some(code) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never answered {code}; log tail:\n{}",
                tail(&self.logs(), 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits (15 s) for the exit.
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-15")
                .arg(pid.to_string())
                .status();
        }
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- operator log ({}) ---\n{}",
                self.log.display(),
                tail(&self.logs(), 60)
            );
        }
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
