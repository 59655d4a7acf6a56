//! A real Kubernetes control plane (etcd + kube-apiserver, and kube-controller-manager on
//! demand; a node with kubelet and scheduler on request) on loopback, for integration tests,
//! the demo and the benchmark.
//!
//! The model is controller-runtime's *envtest*: the processes run from prebuilt binaries (see
//! [`locate_bin_dir`]; `scripts/control-plane-bins.sh` builds them), on free loopback ports, in a
//! temporary directory under `$TMPDIR/wso-envtest-<pid>/`. The admin authenticates with a bearer
//! token from `--token-auth-file` in group `system:masters`; everyone else is authorized by RBAC
//! only. ServiceAccount tokens come from the TokenRequest API
//! ([`ControlPlane::service_account_client`]). Tests that need real controllers (role
//! aggregation, garbage collection, Deployments) call
//! [`ControlPlane::ensure_controller_manager`]; the others do not pay for it.
//!
//! [`ControlPlane::start_with_node`] (and [`ControlPlane::shared_with_node`]) add a real node:
//! kube-scheduler, containerd with runc, a kubelet and kube-proxy on a bridge pod network (root
//! only; `scripts/node-bins.sh` builds them; docs/node.md).
//!
//! Child processes are started from one long-lived thread with `PR_SET_PDEATHSIG=SIGKILL`, so they
//! die with the test process even when the plane lives in a `static` and is never dropped
//! ([`ControlPlane::shared`]).
//!
//! Modules: [`plane`](ControlPlane) (start, shared plane, accessors), `etcd`, `apiserver`,
//! `controller_manager`, `node` (scheduler, kubelet, runtime, proxy, pod network), `manifests`
//! (apply YAML, install CRDs), `accounts` (namespaces, ServiceAccount and token clients), `process`
//! (child processes), `probe` (HTTPS health probes), `run_dir` (temp dir and teardown),
//! `credentials`, `kubeconfig`, `ports`, `binaries`, `connections` (a process's connections to
//! the API server), `error`.

mod accounts;
mod apiserver;
mod binaries;
mod connections;
mod controller_manager;
mod credentials;
mod error;
mod etcd;
mod kubeconfig;
mod manifests;
mod node;
mod plane;
mod ports;
mod probe;
mod process;
mod run_dir;

pub use binaries::locate_bin_dir;
pub use controller_manager::CONTROLLERS;
pub use error::Error;
pub use manifests::crd_names_in;
pub use node::{
    BRIDGE, CGROUP_ROOT, NODE_BUILD_SCRIPT, NODE_IP, NODE_NAME, PAUSE_IMAGE, POD_SUBNET,
};
pub use plane::ControlPlane;

/// Kubernetes version the binaries are built at (by `scripts/control-plane-bins.sh`).
pub const KUBERNETES_VERSION: &str = "v1.37.2";

/// Field manager used for every server-side apply made by this crate.
pub const FIELD_MANAGER: &str = "wso-envtest";

/// The build script that produces the binaries; named in errors.
pub const BUILD_SCRIPT: &str = "scripts/control-plane-bins.sh";
