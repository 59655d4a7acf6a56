//! What the bench reads from outside the operator: its process (peak RSS, CPU), the API
//! server's request counters and the operator's own metrics; and the operator process itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How to start an operator process for one run.
#[derive(Clone)]
pub struct Launch {
    /// The release binary.
    pub bin: PathBuf,
    /// Admin kubeconfig of the control plane.
    pub kubeconfig: PathBuf,
    /// The run's namespace (watched, and the operator's own).
    pub ns: String,
    /// coder-sim's URL.
    pub coder_url: String,
    /// File with the Coder token.
    pub token_file: PathBuf,
    /// Log file (appended to across restarts).
    pub log: PathBuf,
    /// `--coder-watch`.
    pub watch: bool,
    /// Extra flags.
    pub extra: Vec<String>,
}

/// A running operator process.
pub struct Operator {
    child: tokio::process::Child,
    /// Its pid.
    pub pid: u32,
    /// `127.0.0.1:port` of /metrics and /readyz.
    pub metrics: String,
    /// From spawn until /readyz answered 200.
    pub ready_after: Duration,
}

impl Operator {
    /// Starts the operator and waits (at most 60 s) until /readyz answers 200.
    pub async fn start(l: &Launch) -> anyhow::Result<Operator> {
        let port = free_port()?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&l.log)?;
        let err = out.try_clone()?;
        let mut cmd = tokio::process::Command::new(&l.bin);
        cmd.arg("run")
            .arg(format!("--coder-url={}", l.coder_url))
            .arg(format!("--coder-token-file={}", l.token_file.display()))
            .arg(format!("--namespaces={}", l.ns))
            .arg(format!("--metrics-addr=127.0.0.1:{port}"))
            .arg(format!("--coder-watch={}", l.watch))
            .arg("--log-level=warn")
            // The benchmark measures the request path, not the tenancy checks (single tenant).
            .arg("--tenancy=open")
            .args(&l.extra)
            .env("KUBECONFIG", &l.kubeconfig)
            .env("POD_NAMESPACE", &l.ns)
            .env_remove("CODER_URL")
            .env_remove("WATCH_NAMESPACES")
            .env_remove("WSO_CODER_WATCH")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let spawned = Instant::now();
        let child = cmd.spawn().context("spawn operator")?;
        let pid = child.id().context("operator pid")?;
        let metrics = format!("127.0.0.1:{port}");
        let client = reqwest::Client::new();
        loop {
            let ok = client
                .get(format!("http://{metrics}/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return Ok(Operator {
                    child,
                    pid,
                    metrics,
                    ready_after: spawned.elapsed(),
                });
            }
            if spawned.elapsed() > Duration::from_secs(60) {
                bail!(
                    "operator never became ready: {}",
                    std::fs::read_to_string(&l.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The operator's /metrics text.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.metrics))
            .await?
            .text()
            .await?)
    }

    /// Stops it with SIGTERM (SIGKILL after 10 s).
    pub async fn stop(mut self) {
        signal(self.pid, "-TERM");
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status();
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Peak RSS (KiB, `VmHWM`) and CPU seconds (user + system) of a process.
pub fn proc_usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let cpu = (ticks(11) + ticks(12)) as f64 / clock_ticks();
    (hwm, cpu)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `apiserver_request_total` for the operator's resources, summed by
/// `VERB resource[/subresource]`.
pub async fn apiserver_requests(client: &kube::Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let get = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let resource = get("resource");
        if !matches!(
            resource.as_str(),
            "workspacestartrequests" | "events" | "leases" | "secrets"
        ) {
            continue;
        }
        let sub = get("subresource");
        let key = if sub.is_empty() {
            format!("{} {resource}", get("verb"))
        } else {
            format!("{} {resource}/{sub}", get("verb"))
        };
        *out.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    Ok(out)
}

/// True for a `VERB resource` key of [`apiserver_requests`] that writes.
pub fn is_write(key: &str) -> bool {
    !matches!(
        key.split(' ').next(),
        Some("GET" | "LIST" | "WATCH" | "WATCHLIST")
    )
}

/// Sum of a metric's samples whose line contains `filter`.
pub fn sum_metric(text: &str, name: &str, filter: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

/// The commit the bench runs at (`git describe`-like short hash, `-dirty` with local changes).
pub fn commit(repo: &Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let hash = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{hash}-dirty") } else { hash }
}

/// Cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
