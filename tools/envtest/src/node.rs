//! A real node: kube-scheduler, containerd (with runc), a kubelet and kube-proxy join the plane
//! as node [`NODE_NAME`], so Pods really run ([`ControlPlane::start_with_node`]).
//!
//! What the node needs from the machine, and what it changes on it (one node per machine at a
//! time; everything is undone at teardown, and a crashed run's leftovers are swept at the next
//! start):
//!
//! - root, cgroup v1 or v2 (the kubelet runs with `failCgroupV1: false`, `cgroupfs` driver, its
//!   pods under the cgroup [`CGROUP_ROOT`]);
//! - a Linux bridge [`BRIDGE`] with [`NODE_IP`] (`/24`): the pod network, through the Debian CNI
//!   `bridge` + `host-local` plugins, without masquerading. Pods reach the host (kube-apiserver
//!   through the `kubernetes` Service, coder-sim at `NODE_IP`) and each other, nothing else: two
//!   `mangle FORWARD` rules drop whatever would leave or enter the bridge from another interface;
//! - sysctls: `net.ipv4.ip_forward=1` and `net.bridge.bridge-nf-call-iptables=1` (Service
//!   traffic between pods), plus those the kubelet sets (`vm.overcommit_memory`,
//!   `kernel.panic`, ...); their previous values are restored;
//! - kube-proxy's iptables chains (removed with `kube-proxy --cleanup`).
//!
//! kube-apiserver of such a plane listens on all addresses (pods reach it at `NODE_IP` through
//! the `kubernetes` Service), runs the ServiceAccount admission plugin (pods get their projected
//! token volume), and kube-controller-manager also runs the ServiceAccount, root-CA publisher and
//! EndpointSlice controllers.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use tokio::sync::OnceCell;

use crate::{
    ControlPlane, Error,
    binaries::require,
    ports::free_ports,
    probe::Probe,
    process::{Proc, lock, log_tail, spawn_proc, stop_proc},
};

/// The node's name.
pub const NODE_NAME: &str = "wso-node";
/// The host's address on the pod network: kube-apiserver's advertised address, the node's
/// InternalIP, and where host processes (coder-sim) listen for pods.
pub const NODE_IP: &str = "10.88.0.1";
/// The pod network (host-local IPAM hands out addresses from it).
pub const POD_SUBNET: &str = "10.88.0.0/24";
/// The bridge of the pod network.
pub const BRIDGE: &str = "wso0";
/// The cgroup (in every hierarchy) under which the kubelet puts its pods.
pub const CGROUP_ROOT: &str = "wso-node";
/// The pod sandbox image, built by `scripts/node-bins.sh` (`tools/pause/pause.c`).
pub const PAUSE_IMAGE: &str = "localhost/wso-pause:1";
/// The script that builds the node's binaries; named in errors.
pub const NODE_BUILD_SCRIPT: &str = "scripts/node-bins.sh";

const NODE_BINARIES: &[&str] = &[
    "kubelet",
    "kube-scheduler",
    "kube-proxy",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "wso-pause.oci.tar",
];

/// Controllers a node plane runs on top of [`crate::CONTROLLERS`]: a `default` ServiceAccount per
/// namespace, the `kube-root-ca.crt` ConfigMap every pod's token volume projects, the
/// EndpointSlices kube-proxy routes Services with, and node lifecycle (it lifts the `not-ready`
/// taint the kubelet registers the node with once the node is Ready).
pub(crate) const NODE_CONTROLLERS: &[&str] = &[
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "endpointslice-controller",
    "node-lifecycle-controller",
];

const READY_TIMEOUT: Duration = Duration::from_secs(180);
const GUARD_COMMENT: &str = "wso-node: pod traffic stays on this machine";

/// Sysctls the node (or its kubelet) writes; their values are restored at teardown.
const SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// The node's processes and what it changed on the machine.
pub(crate) struct NodeRuntime {
    /// In start order: kube-scheduler, containerd, kubelet, kube-proxy.
    procs: Vec<Proc>,
    dir: PathBuf,
    bin_dir: PathBuf,
    /// Sysctl values before the node started.
    sysctls: Vec<(String, String)>,
}

static SHARED_NODE: OnceCell<ControlPlane> = OnceCell::const_new();

extern "C" fn teardown_shared_node_at_exit() {
    if let Some(cp) = SHARED_NODE.get() {
        // Pods and container shims are not our children: PDEATHSIG does not reach them, so the
        // node is torn down here (bounded waits).
        cp.guard.teardown(Duration::from_secs(2), false);
    }
}

impl ControlPlane {
    /// Starts a plane with a real node (see the module docs): etcd, kube-apiserver,
    /// kube-controller-manager, kube-scheduler, containerd, kubelet and kube-proxy, and waits
    /// until the node is Ready and kube-proxy healthy.
    ///
    /// Needs root and the binaries of [`NODE_BUILD_SCRIPT`]. One node per machine at a time.
    pub async fn start_with_node() -> Result<ControlPlane, Error> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::Command {
                command: "ControlPlane::start_with_node".into(),
                detail: "a node needs root (bridge, iptables, cgroups, mounts); see docs/node.md"
                    .into(),
            });
        }
        let bin_dir = crate::locate_bin_dir()?;
        require(&bin_dir, NODE_BINARIES).map_err(|e| match e {
            Error::MissingBinaries { dir, missing } => Error::MissingNodeBinaries { dir, missing },
            e => e,
        })?;
        sweep_stale_node(&bin_dir);
        let sysctls = read_sysctls();
        save_sysctls(&sysctls);
        setup_network()?;
        setup_cgroups()?;
        let plane = match ControlPlane::start_node_plane().await {
            Ok(p) => p,
            Err(e) => {
                teardown_network();
                restore_sysctls(&sysctls);
                return Err(e);
            }
        };
        *lock(&plane.guard.node) = Some(NodeRuntime {
            procs: Vec::new(),
            dir: plane.guard.dir.clone(),
            bin_dir: bin_dir.clone(),
            sysctls,
        });
        let t0 = Instant::now();
        plane.ensure_controller_manager().await?;
        plane.start_scheduler().await?;
        plane.start_containerd().await?;
        plane
            .import_image(&bin_dir.join("wso-pause.oci.tar"))
            .await?;
        plane.start_kubelet().await?;
        plane.wait_node_ready().await?;
        plane.start_kube_proxy().await?;
        tracing::info!(startup = ?t0.elapsed(), "envtest node {NODE_NAME} ready");
        Ok(plane)
    }

    /// The node plane shared by all tests of one test binary, started on first use (like
    /// [`ControlPlane::shared`]); the node is torn down when the process exits.
    ///
    /// # Panics
    ///
    /// When the plane or its node cannot start (with the reason and log tails).
    pub async fn shared_with_node() -> &'static ControlPlane {
        SHARED_NODE
            .get_or_init(|| async {
                match ControlPlane::start_with_node().await {
                    Ok(cp) => {
                        // SAFETY: registers a plain extern "C" fn without captured state.
                        unsafe { libc::atexit(teardown_shared_node_at_exit) };
                        cp
                    }
                    Err(e) => panic!("envtest: cannot start the node plane: {e}"),
                }
            })
            .await
    }

    /// Whether this plane has a node.
    pub fn has_node(&self) -> bool {
        self.node
    }

    /// Imports an OCI image archive (e.g. `make image`'s) into the node's containerd, in the
    /// `k8s.io` namespace the kubelet uses; the image keeps the name its index gives it.
    pub async fn import_image(&self, archive: &Path) -> Result<(), Error> {
        let ctr = self.bin_dir.join("ctr");
        let socket = self.guard.dir.join("containerd.sock");
        let archive = archive.to_owned();
        tokio::task::spawn_blocking(move || {
            run(Command::new(ctr)
                .arg(format!("--address={}", socket.display()))
                .args(["--namespace=k8s.io", "images", "import"])
                .arg(&archive))
        })
        .await
        .map_err(|e| Error::Io {
            context: "importing an image".into(),
            source: std::io::Error::other(e),
        })??;
        Ok(())
    }

    /// Runs `ctr` against the node's containerd (namespace `k8s.io`) and returns its stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String, Error> {
        run(Command::new(self.bin_dir.join("ctr"))
            .arg(format!(
                "--address={}",
                self.guard.dir.join("containerd.sock").display()
            ))
            .arg("--namespace=k8s.io")
            .args(args))
    }

    async fn start_node_plane() -> Result<ControlPlane, Error> {
        let bin_dir = crate::locate_bin_dir()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(&bin_dir, true).await {
                Err(Error::PortInUse { .. }) if attempt < 3 => {}
                other => return other,
            }
        }
    }

    fn push_node_proc(&self, p: Proc) {
        if let Some(n) = lock(&self.guard.node).as_mut() {
            n.procs.push(p);
        }
    }

    fn check_node_alive(&self) -> Result<(), Error> {
        let mut g = lock(&self.guard.node);
        let Some(n) = g.as_mut() else { return Ok(()) };
        for p in &mut n.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(Error::ProcessExited {
                    process: p.name,
                    status: status.to_string(),
                    log_tail: log_tail(&p.log, 40),
                });
            }
        }
        Ok(())
    }

    async fn start_scheduler(&self) -> Result<(), Error> {
        let [port] = free_ports::<1>()?;
        let kubeconfig = self.admin_kubeconfig().display().to_string();
        let args = vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            "--v=1".into(),
        ];
        let log = self.guard.dir.join("kube-scheduler.log");
        let p = spawn_proc(
            "kube-scheduler",
            &self.bin_dir.join("kube-scheduler"),
            &args,
            &log,
        )
        .await?;
        self.push_node_proc(p);
        Probe {
            what: "kube-scheduler",
            url: format!("https://127.0.0.1:{port}/healthz"),
            token: None,
            timeout: READY_TIMEOUT,
        }
        .wait(&self.guard, || self.check_node_alive())
        .await
    }

    async fn start_containerd(&self) -> Result<(), Error> {
        let d = &self.guard.dir;
        let cni = d.join("cni");
        fs::create_dir_all(&cni).map_err(Error::io("creating the CNI config dir"))?;
        write(&cni.join("10-wso.conflist"), &cni_config(d))?;
        let socket = d.join("containerd.sock");
        write(&d.join("containerd.toml"), &containerd_config(d))?;
        let hosts = d.join("certs.d/_default");
        fs::create_dir_all(&hosts).map_err(Error::io("creating the registry hosts dir"))?;
        write(
            &hosts.join("hosts.toml"),
            "server = \"http://127.0.0.1:9\"\n[host.\"http://127.0.0.1:9\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        )?;
        let args = vec![format!("--config={}", d.join("containerd.toml").display())];
        let log = d.join("containerd.log");
        let p = spawn_proc("containerd", &self.bin_dir.join("containerd"), &args, &log).await?;
        self.push_node_proc(p);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_node_alive()?;
            if socket.exists() && self.ctr(&["version"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("containerd at {}", socket.display()),
                    timeout: Duration::from_secs(60),
                    log_tail: self.guard.log_tails(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn start_kubelet(&self) -> Result<(), Error> {
        let d = &self.guard.dir;
        let [port, healthz] = free_ports::<2>()?;
        for sub in ["kubelet", "pod-logs"] {
            fs::create_dir_all(d.join(sub)).map_err(Error::io("creating kubelet dirs"))?;
        }
        write(&d.join("kubelet.yaml"), &kubelet_config(d, port, healthz))?;
        let args = vec![
            format!("--config={}", d.join("kubelet.yaml").display()),
            format!("--kubeconfig={}", self.admin_kubeconfig().display()),
            format!("--root-dir={}", d.join("kubelet").display()),
            format!("--cert-dir={}", d.join("pki/kubelet").display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            "--v=1".into(),
        ];
        let log = d.join("kubelet.log");
        let p = spawn_proc("kubelet", &self.bin_dir.join("kubelet"), &args, &log).await?;
        self.push_node_proc(p);
        Probe {
            what: "kubelet",
            url: format!("http://127.0.0.1:{healthz}/healthz"),
            token: None,
            timeout: READY_TIMEOUT,
        }
        .wait(&self.guard, || self.check_node_alive())
        .await
    }

    /// Waits until node [`NODE_NAME`] is registered and Ready.
    async fn wait_node_ready(&self) -> Result<(), Error> {
        let nodes: Api<Node> = Api::all(self.admin_client_checked()?);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("not registered");
        loop {
            self.check_node_alive()?;
            if let Ok(Some(node)) = nodes.get_opt(NODE_NAME).await {
                let ready = node
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
                match ready {
                    Some(c) if c.status == "True" => return Ok(()),
                    Some(c) => {
                        last = format!(
                            "Ready={} {}: {}",
                            c.status,
                            c.reason.clone().unwrap_or_default(),
                            c.message.clone().unwrap_or_default()
                        )
                    }
                    None => last = "no Ready condition".into(),
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("node {NODE_NAME} to be Ready (last: {last})"),
                    timeout: READY_TIMEOUT,
                    log_tail: self.guard.log_tails(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn start_kube_proxy(&self) -> Result<(), Error> {
        let d = &self.guard.dir;
        let [healthz, metrics] = free_ports::<2>()?;
        let config = format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             clientConnection:\n  kubeconfig: {kubeconfig}\n\
             hostnameOverride: {NODE_NAME}\nmode: iptables\nclusterCIDR: {POD_SUBNET}\n\
             healthzBindAddress: 127.0.0.1:{healthz}\nmetricsBindAddress: 127.0.0.1:{metrics}\n\
             nodePortAddresses: [\"{NODE_IP}/32\"]\n\
             conntrack:\n  maxPerCore: 0\n  min: 0\n  tcpEstablishedTimeout: 0s\n  tcpCloseWaitTimeout: 0s\n",
            kubeconfig = self.admin_kubeconfig().display(),
        );
        write(&d.join("kube-proxy.yaml"), &config)?;
        let args = vec![
            format!("--config={}", d.join("kube-proxy.yaml").display()),
            "--v=1".into(),
        ];
        let log = d.join("kube-proxy.log");
        let p = spawn_proc("kube-proxy", &self.bin_dir.join("kube-proxy"), &args, &log).await?;
        self.push_node_proc(p);
        Probe {
            what: "kube-proxy",
            url: format!("http://127.0.0.1:{healthz}/healthz"),
            token: None,
            timeout: READY_TIMEOUT,
        }
        .wait(&self.guard, || self.check_node_alive())
        .await
    }
}

impl NodeRuntime {
    /// Stops the node: kube-proxy and the kubelet, every process in the pods' cgroups, the
    /// container shims of this containerd, containerd and kube-scheduler; then unmounts what
    /// the node mounted under the plane's dir, removes the cgroups, kube-proxy's rules, the
    /// bridge and the guard rules, and restores the sysctls.
    pub(crate) fn teardown(&mut self, grace: Duration) {
        // kube-proxy and kubelet first (reverse start order), so nothing restarts pods.
        for name in ["kube-proxy", "kubelet"] {
            if let Some(p) = self.procs.iter_mut().find(|p| p.name == name) {
                stop_proc(p, grace);
            }
        }
        kill_cgroup_tree(Duration::from_secs(10));
        kill_shims(&self.dir.join("containerd.sock"));
        for p in self.procs.iter_mut().rev() {
            stop_proc(p, grace);
        }
        unmount_under(&self.dir);
        remove_cgroups();
        let _ = Command::new(self.bin_dir.join("kube-proxy"))
            .arg("--cleanup")
            .output();
        teardown_network();
        restore_sysctls(&self.sysctls);
    }

    /// The node's log files, for error messages.
    pub(crate) fn log_names() -> [&'static str; 4] {
        ["kube-scheduler", "containerd", "kubelet", "kube-proxy"]
    }
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    fs::write(path, text).map_err(Error::io(format!("writing {}", path.display())))
}

/// Runs a helper command; errors with its stderr when it fails.
fn run(cmd: &mut Command) -> Result<String, Error> {
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(Error::io(format!("running {line}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: line,
            detail: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

fn cni_config(dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "wso",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": dir.join("cni-ipam").display().to_string(),
            },
        }],
    })
    .to_string()
}

fn containerd_config(d: &Path) -> String {
    let p = |s: &str| d.join(s).display().to_string();
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"
  # Every registry resolves to a closed loopback port: images are imported, never pulled.
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "{certs}"
[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  # This machine withholds CAP_SYS_RESOURCE: no oom_score_adj below containerd's own (the
  # sandbox asks for -998).
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni", "/opt/cni/bin"]
    conf_dir = "{cni}"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
        root = p("containerd/root"),
        state = p("containerd/state"),
        sock = p("containerd.sock"),
        cni = p("cni"),
        certs = p("certs.d"),
        runc = which("runc").unwrap_or_else(|| "/usr/sbin/runc".into()),
    )
}

fn which(name: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

fn kubelet_config(d: &Path, port: u16, healthz: u16) -> String {
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
         # This machine has cgroup v1, which the kubelet refuses by default since 1.35.\n\
         failCgroupV1: false\n\
         cgroupDriver: cgroupfs\ncgroupRoot: /{CGROUP_ROOT}\n\
         failSwapOn: false\n\
         containerRuntimeEndpoint: unix://{sock}\n\
         address: {NODE_IP}\nport: {port}\nreadOnlyPort: 0\n\
         healthzBindAddress: 127.0.0.1\nhealthzPort: {healthz}\n\
         authentication:\n  anonymous:\n    enabled: true\n  webhook:\n    enabled: false\n\
         authorization:\n  mode: AlwaysAllow\n\
         podLogsDir: {logs}\n\
         # No cluster DNS and no host resolver for pods: they address everything by IP.\n\
         resolvConf: \"\"\n\
         # Pick up Secret changes and probe results promptly on a test node.\n\
         syncFrequency: 10s\n\
         nodeStatusUpdateFrequency: 5s\n\
         # Imported images cannot be pulled again: never garbage-collect them.\n\
         imageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 99\n\
         evictionHard:\n  memory.available: 100Mi\n  nodefs.available: 1%\n  imagefs.available: 1%\n  nodefs.inodesFree: 1%\n\
         serializeImagePulls: false\n\
         maxPods: 50\n",
        sock = d.join("containerd.sock").display(),
        logs = d.join("pod-logs").display(),
    )
}

fn read_sysctls() -> Vec<(String, String)> {
    SYSCTLS
        .iter()
        .filter_map(|k| {
            let v = fs::read_to_string(format!("/proc/sys/{k}")).ok()?;
            Some(((*k).to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// Where the sysctl values from before a node started are kept while it runs, so that the next
/// start restores them after a crashed run (which could not).
const SYSCTL_STATE: &str = "/run/wso-node.sysctls";

fn save_sysctls(values: &[(String, String)]) {
    let text: String = values.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let _ = fs::write(SYSCTL_STATE, text);
}

/// Restores `values` and forgets the saved copy.
fn restore_sysctls(values: &[(String, String)]) {
    for (k, v) in values {
        let _ = fs::write(format!("/proc/sys/{k}"), v);
    }
    let _ = fs::remove_file(SYSCTL_STATE);
}

/// The values a crashed run saved, if any.
fn saved_sysctls() -> Vec<(String, String)> {
    fs::read_to_string(SYSCTL_STATE)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| SYSCTLS.contains(k))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn guard_rules() -> [Vec<String>; 2] {
    let rule = |a: &[&str]| {
        let mut v: Vec<String> = vec!["-t".into(), "mangle".into()];
        v.extend(a.iter().map(|s| (*s).to_owned()));
        v.extend(
            ["-m", "comment", "--comment", GUARD_COMMENT, "-j", "DROP"]
                .iter()
                .map(|s| (*s).to_owned()),
        );
        v
    };
    [
        rule(&["FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE]),
        rule(&["FORWARD", "-o", BRIDGE, "!", "-i", BRIDGE]),
    ]
}

/// The bridge with the host's address, the guard rules, and the sysctls Service traffic needs.
fn setup_network() -> Result<(), Error> {
    run(Command::new("ip").args(["link", "add", BRIDGE, "type", "bridge"]))?;
    run(Command::new("ip").args(["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE]))?;
    run(Command::new("ip").args(["link", "set", BRIDGE, "up"]))?;
    for rule in guard_rules() {
        let mut args = rule.clone();
        args.insert(2, "-I".into());
        run(Command::new("iptables").args(&args))?;
    }
    for k in ["net/bridge/bridge-nf-call-iptables", "net/ipv4/ip_forward"] {
        fs::write(format!("/proc/sys/{k}"), "1").map_err(Error::io(format!("setting {k}")))?;
    }
    Ok(())
}

/// iptables commands that remove the chains the kubelet creates (kube-proxy's own go with
/// `kube-proxy --cleanup`).
const KUBELET_CHAIN_CLEANUP: &[&[&str]] = &[
    &["-t", "filter", "-D", "INPUT", "-j", "KUBE-FIREWALL"],
    &["-t", "filter", "-D", "OUTPUT", "-j", "KUBE-FIREWALL"],
    &["-t", "filter", "-F", "KUBE-FIREWALL"],
    &["-t", "filter", "-X", "KUBE-FIREWALL"],
    &["-t", "filter", "-X", "KUBE-KUBELET-CANARY"],
    &["-t", "nat", "-X", "KUBE-KUBELET-CANARY"],
    &["-t", "mangle", "-X", "KUBE-KUBELET-CANARY"],
    &["-t", "mangle", "-X", "KUBE-IPTABLES-HINT"],
];

fn teardown_network() {
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
    for args in KUBELET_CHAIN_CLEANUP {
        let _ = Command::new("iptables").args(*args).output();
    }
    for rule in guard_rules() {
        let mut args = rule.clone();
        args.insert(2, "-D".into());
        // Delete every copy (a crashed run may have left some).
        for _ in 0..10 {
            match Command::new("iptables").args(&args).output() {
                Ok(o) if o.status.success() => {}
                _ => break,
            }
        }
    }
}

/// The v1 hierarchies (or the v2 root) under `/sys/fs/cgroup`.
fn cgroup_mounts() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_owned()];
    }
    let Ok(entries) = fs::read_dir(base) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists() && p.file_name() != Some("unified".as_ref()))
        .collect()
}

/// Creates [`CGROUP_ROOT`] in every hierarchy (the kubelet requires its cgroup root to exist).
fn setup_cgroups() -> Result<(), Error> {
    for m in cgroup_mounts() {
        let dir = m.join(CGROUP_ROOT);
        fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        if m.ends_with("cpuset") {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = fs::read_to_string(m.join(f)) {
                    let _ = fs::write(dir.join(f), v.trim());
                }
            }
        }
    }
    Ok(())
}

/// Every cgroup directory under `dir`, deepest first.
fn cgroup_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(cgroup_dirs(&e.path()));
            }
        }
    }
    out.push(dir.to_owned());
    out
}

/// SIGKILLs every process in the pods' cgroups until none is left (or `timeout`).
fn kill_cgroup_tree(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut any = false;
        for m in cgroup_mounts() {
            for d in cgroup_dirs(&m.join(CGROUP_ROOT)) {
                let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    any = true;
                    // SAFETY: kill(2) of a process in the node's own pod cgroups.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if !any || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn remove_cgroups() {
    for m in cgroup_mounts() {
        for d in cgroup_dirs(&m.join(CGROUP_ROOT)) {
            let _ = fs::remove_dir(&d);
        }
    }
}

/// SIGKILLs the container shims serving the containerd at `socket` (prefix match, so a
/// directory sweeps the shims of every containerd under it).
fn kill_shims(socket: &Path) {
    let needle = socket.display().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_shim = args
            .first()
            .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"));
        if is_shim && args.iter().any(|a| a.starts_with(&needle)) {
            // SAFETY: kill(2) of a shim of the node's own containerd.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Lazily unmounts every mount point under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let prefix = dir.display().to_string();
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: umount2(2) with a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Removes what a crashed node run left: pods in the node's cgroups, shims of containerds under
/// dead plane dirs, their mounts, the bridge, the guard rules and kube-proxy's chains.
fn sweep_stale_node(bin_dir: &Path) {
    kill_cgroup_tree(Duration::from_secs(5));
    let base = std::env::temp_dir();
    if let Ok(entries) = fs::read_dir(&base) {
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("wso-envtest-"))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                kill_shims(&e.path());
                unmount_under(&e.path());
            }
        }
    }
    remove_cgroups();
    let _ = Command::new(bin_dir.join("kube-proxy"))
        .arg("--cleanup")
        .output();
    teardown_network();
    restore_sysctls(&saved_sysctls());
}

/// The node's log files that exist in `dir`, tails appended to `s`.
pub(crate) fn append_log_tails(dir: &Path, s: &mut String) {
    for name in NodeRuntime::log_names() {
        let log = dir.join(format!("{name}.log"));
        if log.is_file() {
            let _ = writeln!(s, "--- {name}.log ---\n{}", log_tail(&log, 30));
        }
    }
}

/// A mutex-guarded optional node, as the plane's guard holds it.
pub(crate) type NodeSlot = Mutex<Option<NodeRuntime>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_unescape() {
        assert_eq!(unescape_mount_path(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn kubelet_config_allows_cgroup_v1() {
        let c = kubelet_config(Path::new("/d"), 1, 2);
        assert!(c.contains("failCgroupV1: false"));
        assert!(c.contains("containerRuntimeEndpoint: unix:///d/containerd.sock"));
    }
}
