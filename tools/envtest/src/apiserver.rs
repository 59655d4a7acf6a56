//! kube-apiserver: flags, start, readiness (`/readyz` and the `default` namespace) and restart.

use std::{
    io,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

use crate::{
    ControlPlane, Error,
    probe::Probe,
    process::{check_alive, lock, spawn_proc, stop_proc},
    run_dir::STOP_GRACE,
};

const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Audit policy of the plane: TokenReviews at Metadata level (who sent one, when, the answer
/// code; never the token), nothing else. Tests count the reviews a server under test causes.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    resources:
      - group: authentication.k8s.io
        resources: [tokenreviews]
  - level: None
";
const AUDIT_POLICY_FILE: &str = "audit-policy.yaml";
const AUDIT_LOG_FILE: &str = "audit.log";

impl ControlPlane {
    /// Flags: token auth for the admin, RBAC for everyone else, ServiceAccount tokens signed
    /// with the plane's key, self-signed serving certificate in `pki/`.
    fn apiserver_args(&self) -> Vec<String> {
        let d = &self.guard.dir;
        let p = self.apiserver_port;
        let path = |f: &str| d.join(f).display().to_string();
        if self.node {
            // Pods reach kube-apiserver at the node's address through the `kubernetes` Service
            // (its endpoint is the advertised address) and get projected ServiceAccount tokens.
            return vec![
                format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
                "--bind-address=0.0.0.0".into(),
                format!("--advertise-address={}", crate::node::NODE_IP),
                format!("--secure-port={p}"),
                format!("--cert-dir={}", path("pki")),
                format!("--token-auth-file={}", path("tokens.csv")),
                "--authorization-mode=RBAC".into(),
                format!("--service-account-issuer=https://127.0.0.1:{p}"),
                format!("--service-account-signing-key-file={}", path("sa.key")),
                format!("--service-account-key-file={}", path("sa.key")),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--allow-privileged=true".into(),
                "--v=1".into(),
            ];
        }
        vec![
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={p}"),
            format!("--cert-dir={}", path("pki")),
            format!("--token-auth-file={}", path("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer=https://127.0.0.1:{p}"),
            format!("--service-account-signing-key-file={}", path("sa.key")),
            format!("--service-account-key-file={}", path("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--allow-privileged=true".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--audit-policy-file={}", path(AUDIT_POLICY_FILE)),
            format!("--audit-log-path={}", path(AUDIT_LOG_FILE)),
            "--v=1".into(),
        ]
    }

    /// Starts kube-apiserver (not waiting for it) into the guard's slot.
    pub(crate) async fn spawn_apiserver(&self) -> Result<(), Error> {
        let policy = self.guard.dir.join(AUDIT_POLICY_FILE);
        std::fs::write(&policy, AUDIT_POLICY)
            .map_err(Error::io(format!("writing {}", policy.display())))?;
        let log = self.guard.dir.join("kube-apiserver.log");
        let p = spawn_proc(
            "kube-apiserver",
            &self.bin_dir.join("kube-apiserver"),
            &self.apiserver_args(),
            &log,
        )
        .await?;
        *lock(&self.guard.apiserver) = Some(p);
        Ok(())
    }

    /// The API server's audit log (JSON lines): every TokenReview, at Metadata level.
    pub fn audit_log(&self) -> std::path::PathBuf {
        self.guard.dir.join(AUDIT_LOG_FILE)
    }

    /// Polls `/readyz` with the admin token until 200, failing fast if a process exits.
    pub(crate) async fn wait_apiserver_ready(&self) -> Result<(), Error> {
        let probe = Probe {
            what: "kube-apiserver",
            url: format!("{}/readyz", self.server_url()),
            token: Some(&self.admin_token),
            timeout: READY_TIMEOUT,
        };
        probe
            .wait(&self.guard, || {
                check_alive(&self.guard.etcd)?;
                check_alive(&self.guard.apiserver)
            })
            .await
    }

    /// Waits (30 s) until the `default` namespace exists: the API is usable from then on.
    pub(crate) async fn wait_default_namespace(&self) -> Result<(), Error> {
        let api: Api<Namespace> = Api::all(self.admin_client_checked()?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match api.get_opt("default").await {
                Ok(Some(_)) => return Ok(()),
                Ok(None) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(None) => {
                    return Err(Error::Timeout {
                        what: "the `default` namespace".into(),
                        timeout: Duration::from_secs(30),
                        log_tail: self.guard.log_tails(),
                    });
                }
                Err(e) => return Err(Error::kube("reading namespace default")(e)),
            }
        }
    }

    /// Stops kube-apiserver (SIGTERM, SIGKILL after 10 s) and starts it again on the same port
    /// with the same etcd data, certificates and keys; returns when `/readyz` is OK again.
    ///
    /// Clients keep working afterwards (same URL, CA and tokens); in-flight requests and watches
    /// fail or reconnect, which is the point of reliability tests.
    pub async fn restart_apiserver(&self) -> Result<(), Error> {
        let old = lock(&self.guard.apiserver).take();
        if let Some(mut p) = old {
            tokio::task::spawn_blocking(move || stop_proc(&mut p, STOP_GRACE))
                .await
                .map_err(|e| Error::Io {
                    context: "stopping kube-apiserver".into(),
                    source: io::Error::other(e),
                })?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.spawn_apiserver().await?;
            match self.wait_apiserver_ready().await {
                Err(Error::PortInUse { .. }) if attempt < 10 => {
                    // The old socket may linger briefly; try again.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => return other,
            }
        }
    }
}
