//! etcd: started first, on a client and a peer port of its own, with data in the plane's dir.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    Error,
    process::{check_alive, lock, spawn_proc},
    run_dir::Guard,
};

const ETCD_TIMEOUT: Duration = Duration::from_secs(30);

fn etcd_args(dir: &Path, port: u16, peer: u16) -> Vec<String> {
    vec![
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls=http://127.0.0.1:{port}"),
        format!("--advertise-client-urls=http://127.0.0.1:{port}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
        "--unsafe-no-fsync=true".into(),
        "--log-level=warn".into(),
    ]
}

/// Starts etcd from `bin_dir` into `guard` and waits until `/health` says so.
pub(crate) async fn start_etcd(
    guard: &Guard,
    bin_dir: &Path,
    port: u16,
    peer: u16,
) -> Result<(), Error> {
    let log = guard.dir.join("etcd.log");
    let args = etcd_args(&guard.dir, port, peer);
    let etcd = spawn_proc("etcd", &bin_dir.join("etcd"), &args, &log).await?;
    *lock(&guard.etcd) = Some(etcd);
    wait_etcd(guard, port).await
}

async fn wait_etcd(guard: &Guard, port: u16) -> Result<(), Error> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("http://127.0.0.1:{port}/health");
    let deadline = Instant::now() + ETCD_TIMEOUT;
    while Instant::now() < deadline {
        check_alive(&guard.etcd)?;
        if let Ok(r) = http.get(&url).send().await
            && let Ok(body) = r.text().await
            && body.contains("\"health\":\"true\"")
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Timeout {
        what: format!("etcd {url}"),
        timeout: ETCD_TIMEOUT,
        log_tail: guard.log_tails(),
    })
}
