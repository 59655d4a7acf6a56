//! kube-controller-manager, started on demand by the tests that need real controllers:
//! aggregation of ClusterRoles into `admin`/`edit`/`view`, ownerReference garbage collection,
//! Deployments → ReplicaSets → Pods, namespace deletion and PodDisruptionBudget status.
//!
//! There is no scheduler or kubelet: Pods are created but never run.

use std::time::{Duration, Instant};

use crate::{
    ControlPlane, Error,
    binaries::{CONTROLLER_MANAGER, require},
    ports::free_ports,
    probe::Probe,
    process::{check_alive, lock, spawn_proc, stop_proc},
};

/// The controllers [`ControlPlane::ensure_controller_manager`] runs (names as in
/// `kube-controller-manager --help`).
pub const CONTROLLERS: &[&str] = &[
    "clusterrole-aggregation-controller",
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "namespace-controller",
    "disruption-controller",
];

const HEALTHY_TIMEOUT: Duration = Duration::from_secs(120);
const START_ATTEMPTS: u32 = 3;

impl ControlPlane {
    /// Starts kube-controller-manager with [`CONTROLLERS`] against this plane unless it already
    /// runs, and waits until its `/healthz` answers OK. Idempotent and safe to call from
    /// concurrent tests: the process is started once per plane and stopped with it.
    ///
    /// Controllers act as the admin (`--use-service-account-credentials=false`), without leader
    /// election. The garbage collector discovers kinds added later (CRDs) within about 30 s.
    pub async fn ensure_controller_manager(&self) -> Result<(), Error> {
        self.controller_manager
            .get_or_try_init(|| self.start_controller_manager())
            .await
            .map(|_| ())
    }

    async fn start_controller_manager(&self) -> Result<(), Error> {
        require(&self.bin_dir, &[CONTROLLER_MANAGER])?;
        let t0 = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let [port] = free_ports::<1>()?;
            let log = self.guard.dir.join(format!("{CONTROLLER_MANAGER}.log"));
            let p = spawn_proc(
                CONTROLLER_MANAGER,
                &self.bin_dir.join(CONTROLLER_MANAGER),
                &self.controller_manager_args(port),
                &log,
            )
            .await?;
            *lock(&self.guard.controller_manager) = Some(p);
            match self.wait_controller_manager_healthy(port).await {
                Err(Error::PortInUse { .. }) if attempt < START_ATTEMPTS => continue,
                Err(e) => {
                    if let Some(mut p) = lock(&self.guard.controller_manager).take() {
                        stop_proc(&mut p, Duration::from_secs(2));
                    }
                    return Err(e);
                }
                Ok(()) => break,
            }
        }
        tracing::info!(startup = ?t0.elapsed(), "envtest kube-controller-manager healthy");
        Ok(())
    }

    /// [`CONTROLLERS`], plus the node's on a node plane.
    fn controllers(&self) -> Vec<&'static str> {
        let mut c = CONTROLLERS.to_vec();
        if self.node {
            c.extend_from_slice(crate::node::NODE_CONTROLLERS);
        }
        c
    }

    fn controller_manager_args(&self, port: u16) -> Vec<String> {
        let kubeconfig = self.admin_kubeconfig().display().to_string();
        let path = |f: &str| self.guard.dir.join(f).display().to_string();
        vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            format!("--controllers={}", self.controllers().join(",")),
            "--leader-elect=false".into(),
            "--use-service-account-credentials=false".into(),
            format!("--service-account-private-key-file={}", path("sa.key")),
            format!("--root-ca-file={}", path("pki/apiserver.crt")),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", path("pki/controller-manager")),
            "--v=1".into(),
        ]
    }

    /// Polls `https://127.0.0.1:<port>/healthz` (always allowed) until 200, failing fast if the
    /// process exits.
    async fn wait_controller_manager_healthy(&self, port: u16) -> Result<(), Error> {
        let probe = Probe {
            what: CONTROLLER_MANAGER,
            url: format!("https://127.0.0.1:{port}/healthz"),
            token: None,
            timeout: HEALTHY_TIMEOUT,
        };
        probe
            .wait(&self.guard, || check_alive(&self.guard.controller_manager))
            .await
    }
}
