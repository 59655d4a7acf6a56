//! Health probes of the plane's HTTPS endpoints (kube-apiserver `/readyz`,
//! kube-controller-manager `/healthz`).

use std::time::{Duration, Instant};

use crate::{Error, run_dir::Guard};

/// An HTTPS endpoint to poll until it answers 2xx.
pub(crate) struct Probe<'a> {
    /// What is awaited, for the timeout error (e.g. `kube-apiserver`).
    pub(crate) what: &'a str,
    /// The URL (self-signed certificates are accepted).
    pub(crate) url: String,
    /// Bearer token to send, if any.
    pub(crate) token: Option<&'a str>,
    /// How long to wait in total.
    pub(crate) timeout: Duration,
}

impl Probe<'_> {
    /// Polls every 200 ms until a 2xx answer. Before each attempt `alive` is checked, so a
    /// process that exited fails the wait at once; the timeout error carries the last answer
    /// and the log tails of `guard`.
    pub(crate) async fn wait(
        &self,
        guard: &Guard,
        alive: impl Fn() -> Result<(), Error>,
    ) -> Result<(), Error> {
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(5))
            .build()?;
        let deadline = Instant::now() + self.timeout;
        let mut last = String::from("no response yet");
        while Instant::now() < deadline {
            alive()?;
            let mut req = http.get(&self.url);
            if let Some(t) = self.token {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    let status = r.status();
                    last = format!("HTTP {status}: {}", r.text().await.unwrap_or_default());
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(Error::Timeout {
            what: format!("{} {} (last: {last})", self.what, self.url),
            timeout: self.timeout,
            log_tail: guard.log_tails(),
        })
    }
}
