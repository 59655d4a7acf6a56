//! [`ControlPlane`]: start (etcd, then kube-apiserver), the per-binary shared plane, and what
//! callers read from a running plane (URL, CA, admin kubeconfig and clients).

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use kube::{Client, Config};
use tokio::sync::OnceCell;

use crate::{
    Error,
    binaries::locate_bin_dir,
    credentials::{ADMIN_USER, write_plane_credentials},
    etcd::start_etcd,
    kubeconfig::{client_from_config, config_from_kubeconfig, kubeconfig_yaml},
    ports::free_ports,
    run_dir::{Guard, new_run_dir},
};

const START_ATTEMPTS: u32 = 3;

/// A running etcd + kube-apiserver pair on loopback (plus kube-controller-manager once a test
/// asks for it with [`ControlPlane::ensure_controller_manager`]), with its temp dir.
///
/// Dropping it stops kube-controller-manager, kube-apiserver, then etcd (SIGTERM, SIGKILL after
/// 10 s) and removes the temp dir unless `KEEP_ENVTEST=1`. The children also receive SIGKILL
/// when the test process dies (`PR_SET_PDEATHSIG`), so a `static` plane
/// ([`ControlPlane::shared`]) leaks nothing.
///
/// Clients are created fresh by every call to [`ControlPlane::admin_client`], so they are bound
/// to the caller's Tokio runtime (each `#[tokio::test]` has its own).
pub struct ControlPlane {
    pub(crate) guard: Guard,
    pub(crate) bin_dir: PathBuf,
    pub(crate) apiserver_port: u16,
    pub(crate) etcd_port: u16,
    pub(crate) admin_token: String,
    ca_pem: String,
    admin_kubeconfig: PathBuf,
    admin_config: Config,
    startup: Duration,
    /// Set once kube-controller-manager runs (started at most once per plane).
    pub(crate) controller_manager: OnceCell<()>,
    /// Whether the plane is made for a node ([`ControlPlane::start_with_node`]): kube-apiserver
    /// reachable from pods, ServiceAccount admission, the node's controllers.
    pub(crate) node: bool,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server_url())
            .field("dir", &self.guard.dir)
            .finish_non_exhaustive()
    }
}

static SHARED: OnceCell<ControlPlane> = OnceCell::const_new();

extern "C" fn teardown_shared_at_exit() {
    if let Some(cp) = SHARED.get() {
        // Never block at exit: another thread may hold a lock; PDEATHSIG covers the processes.
        cp.guard.teardown(Duration::from_millis(500), false);
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver on free loopback ports and waits until `/readyz` is OK
    /// (120 s timeout) and the `default` namespace exists.
    ///
    /// Binaries come from [`locate_bin_dir`]. A start that loses a port race is retried with fresh
    /// ports, up to 3 attempts. On failure the error carries the tails of both logs.
    pub async fn start() -> Result<ControlPlane, Error> {
        let bin_dir = locate_bin_dir()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(&bin_dir, false).await {
                Err(Error::PortInUse { process }) if attempt < START_ATTEMPTS => {
                    tracing::warn!(
                        "envtest: {process} lost a port race, retrying (attempt {attempt})"
                    );
                }
                other => return other,
            }
        }
    }

    /// The plane shared by all tests of one test binary, started on first use.
    ///
    /// It is never dropped: its processes die with the test process (`PR_SET_PDEATHSIG`) and its
    /// temp dir is removed at exit (and, failing that, by the next run's stale-dir sweep).
    ///
    /// # Panics
    ///
    /// When the plane cannot start (with the reason and log tails): tests cannot proceed anyway.
    pub async fn shared() -> &'static ControlPlane {
        SHARED
            .get_or_init(|| async {
                match ControlPlane::start().await {
                    Ok(cp) => {
                        // SAFETY: registers a plain extern "C" fn without captured state.
                        unsafe { libc::atexit(teardown_shared_at_exit) };
                        cp
                    }
                    Err(e) => panic!("envtest: cannot start the shared control plane: {e}"),
                }
            })
            .await
    }

    pub(crate) async fn start_once(bin_dir: &Path, node: bool) -> Result<ControlPlane, Error> {
        let t0 = Instant::now();
        let dir = new_run_dir()?;
        let guard = Guard::new(dir.clone());
        let admin_token = write_plane_credentials(&dir)?;
        let [etcd_port, peer_port, apiserver_port] = free_ports::<3>()?;
        start_etcd(&guard, bin_dir, etcd_port, peer_port).await?;

        let server = format!("https://127.0.0.1:{apiserver_port}");
        let mut cp = ControlPlane {
            guard,
            bin_dir: bin_dir.to_owned(),
            apiserver_port,
            etcd_port,
            admin_token,
            ca_pem: String::new(),
            admin_kubeconfig: dir.join("kubeconfig"),
            admin_config: Config::new(server.parse().map_err(|e| Error::Manifest {
                location: String::new(),
                detail: format!("bad server url {server}: {e}"),
            })?),
            startup: Duration::ZERO,
            controller_manager: OnceCell::new(),
            node,
        };
        cp.spawn_apiserver().await?;
        cp.wait_apiserver_ready().await?;
        cp.write_admin_kubeconfig().await?;
        cp.wait_default_namespace().await?;
        cp.startup = t0.elapsed();
        tracing::info!(server = %cp.server_url(), startup = ?cp.startup, "envtest control plane ready");
        Ok(cp)
    }

    /// Trusts the generated serving cert (its file holds the cert and the signing CA) and writes
    /// the admin kubeconfig.
    async fn write_admin_kubeconfig(&mut self) -> Result<(), Error> {
        let crt = self.guard.dir.join("pki/apiserver.crt");
        self.ca_pem =
            fs::read_to_string(&crt).map_err(Error::io(format!("reading {}", crt.display())))?;
        let yaml = kubeconfig_yaml(
            &self.server_url(),
            &self.ca_pem,
            ADMIN_USER,
            &self.admin_token,
            "default",
        );
        fs::write(&self.admin_kubeconfig, &yaml)
            .map_err(Error::io("writing the admin kubeconfig"))?;
        self.admin_config = config_from_kubeconfig(&yaml).await?;
        Ok(())
    }

    pub(crate) fn admin_client_checked(&self) -> Result<Client, Error> {
        client_from_config(self.admin_config.clone())
    }

    /// A new client authenticated as the admin (group `system:masters`, bypasses RBAC).
    ///
    /// Must be called inside a Tokio runtime; the client is bound to that runtime.
    ///
    /// # Panics
    ///
    /// Only if the client stack cannot be built from the configuration that already produced a
    /// working client during [`ControlPlane::start`] (i.e. never in practice).
    pub fn admin_client(&self) -> Client {
        match self.admin_client_checked() {
            Ok(c) => c,
            Err(e) => panic!("envtest: cannot build the admin client: {e}"),
        }
    }

    /// The admin's `kube::Config` (clone it to build clients with other settings).
    pub fn admin_config(&self) -> &Config {
        &self.admin_config
    }

    /// Path of a kubeconfig file for the admin, usable by `kubectl`/`helm` (CA embedded).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// `https://127.0.0.1:<port>` of kube-apiserver (`https://localhost:<port>` on a node plane,
    /// whose self-signed serving certificate names the node's address and `localhost`, not
    /// 127.0.0.1).
    pub fn server_url(&self) -> String {
        if self.node {
            format!("https://localhost:{}", self.apiserver_port)
        } else {
            format!("https://127.0.0.1:{}", self.apiserver_port)
        }
    }

    /// Established TCP connections of process `pid` to this kube-apiserver (read from `/proc`;
    /// 0 when the process is gone).
    pub fn connections_from(&self, pid: u32) -> usize {
        crate::connections::established_to(pid, self.apiserver_port)
    }

    /// `http://127.0.0.1:<port>` of etcd (its v3 JSON gateway too), for tests that must put
    /// into storage what the API server would refuse, e.g. an object it cannot decode.
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// Writes `value` under `key` straight into etcd (its v3 JSON gateway), bypassing the API
    /// server: how a test stores an object the API server cannot decode (a storage fault).
    pub async fn etcd_put(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let body = serde_json::json!({"key": b64(key.as_bytes()), "value": b64(value)});
        reqwest::Client::new()
            .post(format!("{}/v3/kv/put", self.etcd_url()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// PEM of the certificate(s) to trust for [`ControlPlane::server_url`].
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Directory of the binaries (`kube-apiserver`, `etcd`, and `kube-controller-manager`,
    /// `kubectl`, `helm` when built by the script).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The plane's temp dir (logs, kubeconfigs, etcd data, certificates).
    pub fn dir(&self) -> &Path {
        &self.guard.dir
    }

    /// How long [`ControlPlane::start`] took until the API was usable.
    pub fn startup_duration(&self) -> Duration {
        self.startup
    }

    /// Stops the processes and removes the temp dir now (what `Drop` does).
    pub fn stop(self) {
        drop(self);
    }
}
