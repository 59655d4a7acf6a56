//! A real Kubernetes control plane (etcd + kube-apiserver, no kubelet, scheduler or
//! controller-manager) on loopback, for integration tests, the demo and the benchmark.
//!
//! The model is controller-runtime's *envtest*: both processes run from prebuilt binaries (see
//! [`locate_bin_dir`]; `scripts/control-plane-bins.sh` builds them), on free loopback ports, in a
//! temporary directory under `$TMPDIR/wso-envtest-<pid>/`. The admin authenticates with a bearer
//! token from `--token-auth-file` in group `system:masters`; everyone else is authorized by RBAC
//! only. ServiceAccount tokens come from the TokenRequest API
//! ([`ControlPlane::service_account_client`]).
//!
//! Child processes are started from one long-lived thread with `PR_SET_PDEATHSIG=SIGKILL`, so they
//! die with the test process even when the plane lives in a `static` and is never dropped
//! ([`ControlPlane::shared`]).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    io::{self, Read as _},
    net::TcpListener,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::{Namespace, ServiceAccount},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config,
    api::{DynamicObject, ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::{GroupVersionKind, discovery::Scope},
    discovery,
    runtime::wait::{await_condition, conditions},
};
use tokio::sync::OnceCell;

/// Kubernetes version the binaries are built at (by `scripts/control-plane-bins.sh`).
pub const KUBERNETES_VERSION: &str = "v1.37.2";

/// Field manager used for every server-side apply made by this crate.
pub const FIELD_MANAGER: &str = "wso-envtest";

/// The build script that produces the binaries; named in errors.
pub const BUILD_SCRIPT: &str = "scripts/control-plane-bins.sh";

const ADMIN_USER: &str = "envtest-admin";
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
const CRD_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);
const START_ATTEMPTS: u32 = 3;

/// Everything that can go wrong while running the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required binary is missing from the binary directory.
    #[error(
        "control-plane binaries missing in {dir}: {missing:?}; build them with `{BUILD_SCRIPT}` \
         (or point $KUBEBUILDER_ASSETS at a directory holding kube-apiserver and etcd)"
    )]
    MissingBinaries {
        /// The directory that was searched.
        dir: PathBuf,
        /// Names of the binaries not found there.
        missing: Vec<String>,
    },
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A helper command (e.g. `openssl`) failed.
    #[error("command `{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status and stderr.
        detail: String,
    },
    /// A control-plane process exited while it should be running.
    #[error("{process} exited early ({status}); last log lines:\n{log_tail}")]
    ProcessExited {
        /// `etcd` or `kube-apiserver`.
        process: &'static str,
        /// Its exit status.
        status: String,
        /// The tail of its log.
        log_tail: String,
    },
    /// A port was taken between choosing it and the process binding it (retried internally).
    #[error("{process} could not bind its port (address already in use)")]
    PortInUse {
        /// `etcd` or `kube-apiserver`.
        process: &'static str,
    },
    /// Something did not become ready in time.
    #[error("timed out after {timeout:?} waiting for {what}; last log lines:\n{log_tail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
        /// Log tails of the processes (may be empty).
        log_tail: String,
    },
    /// A Kubernetes API call failed.
    #[error("kubernetes API call failed while {context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: Box<kube::Error>,
    },
    /// A kubeconfig could not be turned into a client configuration.
    #[error("invalid kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// A YAML/JSON manifest could not be parsed.
    #[error("invalid manifest{location}: {detail}")]
    Manifest {
        /// Where (file and/or document index), possibly empty.
        location: String,
        /// What is wrong.
        detail: String,
    },
    /// Discovery did not know a kind (and it did not appear within the wait).
    #[error("kind {gvk} is not served by the API server: {source}")]
    UnknownKind {
        /// `group/version/Kind`.
        gvk: String,
        /// The last discovery error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The readiness probe's HTTP client could not be built.
    #[error("HTTP client error: {0}")]
    Http(#[from] reqwest::Error),
    /// The child-process spawner thread is gone (should not happen).
    #[error("the process spawner thread is not running")]
    SpawnerGone,
}

impl Error {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    fn kube(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let context = context.into();
        move |source| Error::Kube {
            context,
            source: Box::new(source),
        }
    }
}

/// Returns the directory holding `kube-apiserver`, `etcd` (and, from the build script,
/// `kubectl` and `helm`).
///
/// Looked up in order: `$KUBEBUILDER_ASSETS`, `$WSO_CACHE/bin`,
/// `$HOME/.cache/workspace-start-operator/bin`. The first variable that is set decides; the
/// directory must contain `kube-apiserver` and `etcd`, otherwise [`Error::MissingBinaries`]
/// names `scripts/control-plane-bins.sh`.
pub fn locate_bin_dir() -> Result<PathBuf, Error> {
    let dir = if let Some(d) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|v| !v.is_empty()) {
        PathBuf::from(d)
    } else if let Some(c) = std::env::var_os("WSO_CACHE").filter(|v| !v.is_empty()) {
        PathBuf::from(c).join("bin")
    } else {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        home.join(".cache/workspace-start-operator/bin")
    };
    let missing: Vec<String> = ["kube-apiserver", "etcd"]
        .iter()
        .filter(|b| !dir.join(b).is_file())
        .map(|b| (*b).to_owned())
        .collect();
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(Error::MissingBinaries { dir, missing })
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A running control-plane process and its log file.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

type SpawnRequest = (Command, tokio::sync::oneshot::Sender<io::Result<Child>>);

/// Spawns children from one thread that never exits: `PR_SET_PDEATHSIG` fires when the
/// *thread* that forked the child exits, and test threads (or Tokio blocking threads) come and go.
fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let spawned = std::thread::Builder::new()
            .name("wso-envtest-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the envtest spawner thread: {e}");
        }
        tx
    })
}

async fn spawn_proc(
    name: &'static str,
    bin: &Path,
    args: &[String],
    log: &Path,
) -> Result<Proc, Error> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(Error::io(format!("opening {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(Error::io("duplicating a log file handle"))?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) == -1
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other("parent exited before exec"));
            }
            Ok(())
        });
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner().send((cmd, tx)).map_err(|_| Error::SpawnerGone)?;
    let child = rx
        .await
        .map_err(|_| Error::SpawnerGone)?
        .map_err(Error::io(format!("starting {}", bin.display())))?;
    Ok(Proc {
        name,
        child,
        log: log.to_owned(),
    })
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILLs and reaps. Blocking.
fn stop_proc(p: &mut Proc, grace: Duration) {
    if matches!(p.child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pid = p.child.id() as libc::pid_t;
    // SAFETY: plain kill(2) on our own, not yet reaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(p.child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = p.child.kill();
    let _ = p.child.wait();
}

/// The last `n` lines of a log file (empty if unreadable).
fn log_tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn is_port_clash(log: &Path) -> bool {
    let t = log_tail(log, 60);
    t.contains("address already in use")
}

/// Processes + temp dir; dropping it tears both down.
struct Guard {
    dir: PathBuf,
    keep: bool,
    etcd: Mutex<Option<Proc>>,
    apiserver: Mutex<Option<Proc>>,
    torn_down: AtomicBool,
}

impl Guard {
    fn teardown(&self, grace: Duration, blocking_locks: bool) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        for m in [&self.apiserver, &self.etcd] {
            let guard = if blocking_locks {
                m.lock().ok()
            } else {
                m.try_lock().ok()
            };
            if let Some(mut g) = guard
                && let Some(p) = g.as_mut()
            {
                stop_proc(p, grace);
            }
        }
        if self.keep {
            eprintln!("envtest: KEEP_ENVTEST=1, keeping {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
            // Remove the per-process parent when it became empty.
            if let Some(parent) = self.dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }

    fn log_tails(&self) -> String {
        let mut s = String::new();
        for name in ["etcd", "kube-apiserver"] {
            let _ = writeln!(
                s,
                "--- {name}.log ---\n{}",
                log_tail(&self.dir.join(format!("{name}.log")), 30)
            );
        }
        s
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.teardown(STOP_GRACE, true);
    }
}

// ---------------------------------------------------------------------------------------------
// Temp dirs

fn temp_base() -> PathBuf {
    std::env::temp_dir()
}

/// Removes `wso-envtest-<pid>` dirs whose process is gone (left by `static` planes or crashes).
fn remove_stale_dirs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var("KEEP_ENVTEST").is_ok_and(|v| v == "1") {
            return;
        }
        let Ok(entries) = fs::read_dir(temp_base()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("wso-envtest-")) else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    });
}

fn new_run_dir() -> Result<PathBuf, Error> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    remove_stale_dirs();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = temp_base()
        .join(format!("wso-envtest-{}", std::process::id()))
        .join(format!("plane-{n}"));
    if dir.exists() {
        let _ = fs::remove_dir_all(&dir);
    }
    fs::create_dir_all(dir.join("pki"))
        .map_err(Error::io(format!("creating {}", dir.display())))?;
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn random_bytes(n: usize) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(Error::io("reading /dev/urandom"))?;
    Ok(buf)
}

fn random_token() -> Result<String, Error> {
    Ok(random_bytes(24)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// `n` random characters from `[a-z0-9]` (DNS-label safe).
fn random_suffix(n: usize) -> Result<String, Error> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    Ok(random_bytes(n)?
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}

fn free_ports<const N: usize>() -> Result<[u16; N], Error> {
    // Keep all listeners open until every port is chosen so the N ports are distinct.
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for p in &mut ports {
        let l =
            TcpListener::bind("127.0.0.1:0").map_err(Error::io("binding a free loopback port"))?;
        *p = l
            .local_addr()
            .map_err(Error::io("reading a bound port"))?
            .port();
        listeners.push(l);
    }
    Ok(ports)
}

fn run_checked(cmd: &mut Command) -> Result<(), Error> {
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(Error::io(format!("running {line}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: line,
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)),
        })
    }
}

fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A kubeconfig with one cluster, one bearer-token user and one context.
fn kubeconfig_yaml(server: &str, ca_pem: &str, user: &str, token: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: \"{token}\"\n\
         contexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: {user}\n    namespace: {namespace}\n\
         current-context: envtest\n",
        ca = base64(ca_pem.as_bytes()),
    )
}

async fn config_from_kubeconfig(yaml: &str) -> Result<Config, Error> {
    let kc = Kubeconfig::from_yaml(yaml)?;
    Ok(Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)
}

fn client_from_config(config: Config) -> Result<Client, Error> {
    Client::try_from(config).map_err(Error::kube("building a client"))
}

// ---------------------------------------------------------------------------------------------
// The control plane

/// A running etcd + kube-apiserver pair on loopback, with its temp dir.
///
/// Dropping it stops kube-apiserver, then etcd (SIGTERM, SIGKILL after 10 s) and removes the
/// temp dir unless `KEEP_ENVTEST=1`. The children also receive SIGKILL when the test process
/// dies (`PR_SET_PDEATHSIG`), so a `static` plane ([`ControlPlane::shared`]) leaks nothing.
///
/// Clients are created fresh by every call to [`ControlPlane::admin_client`], so they are bound
/// to the caller's Tokio runtime (each `#[tokio::test]` has its own).
pub struct ControlPlane {
    guard: Guard,
    bin_dir: PathBuf,
    apiserver_port: u16,
    etcd_port: u16,
    admin_token: String,
    ca_pem: String,
    admin_kubeconfig: PathBuf,
    admin_config: Config,
    startup: Duration,
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
            match Self::start_once(&bin_dir).await {
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

    async fn start_once(bin_dir: &Path) -> Result<ControlPlane, Error> {
        let t0 = Instant::now();
        let dir = new_run_dir()?;
        let keep = std::env::var("KEEP_ENVTEST").is_ok_and(|v| v == "1");
        let guard = Guard {
            dir: dir.clone(),
            keep,
            etcd: Mutex::new(None),
            apiserver: Mutex::new(None),
            torn_down: AtomicBool::new(false),
        };

        // Service-account signing key and the admin's token.
        run_checked(
            Command::new("openssl")
                .args([
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                ])
                .arg(dir.join("sa.key")),
        )?;
        let admin_token = random_token()?;
        fs::write(
            dir.join("tokens.csv"),
            format!("{admin_token},{ADMIN_USER},{ADMIN_USER},system:masters\n"),
        )
        .map_err(Error::io("writing tokens.csv"))?;

        let [etcd_port, peer_port, apiserver_port] = free_ports::<3>()?;

        // etcd
        let etcd_log = dir.join("etcd.log");
        let etcd_args = etcd_args(&dir, etcd_port, peer_port);
        let etcd = spawn_proc("etcd", &bin_dir.join("etcd"), &etcd_args, &etcd_log).await?;
        *lock(&guard.etcd) = Some(etcd);
        wait_etcd(&guard, etcd_port).await?;

        // kube-apiserver
        let mut cp = ControlPlane {
            guard,
            bin_dir: bin_dir.to_owned(),
            apiserver_port,
            etcd_port,
            admin_token,
            ca_pem: String::new(),
            admin_kubeconfig: dir.join("kubeconfig"),
            admin_config: Config::new(
                format!("https://127.0.0.1:{apiserver_port}")
                    .parse()
                    .map_err(|e| Error::Manifest {
                        location: String::new(),
                        detail: format!("bad server url: {e}"),
                    })?,
            ),
            startup: Duration::ZERO,
        };
        cp.spawn_apiserver().await?;
        cp.wait_apiserver_ready().await?;

        // Trust the generated serving cert (its file holds the cert and the signing CA).
        let crt = dir.join("pki/apiserver.crt");
        cp.ca_pem =
            fs::read_to_string(&crt).map_err(Error::io(format!("reading {}", crt.display())))?;
        let yaml = kubeconfig_yaml(
            &cp.server_url(),
            &cp.ca_pem,
            ADMIN_USER,
            &cp.admin_token,
            "default",
        );
        fs::write(&cp.admin_kubeconfig, &yaml)
            .map_err(Error::io("writing the admin kubeconfig"))?;
        cp.admin_config = config_from_kubeconfig(&yaml).await?;

        cp.wait_default_namespace().await?;
        cp.startup = t0.elapsed();
        tracing::info!(server = %cp.server_url(), startup = ?cp.startup, "envtest control plane ready");
        Ok(cp)
    }

    fn apiserver_args(&self) -> Vec<String> {
        let d = &self.guard.dir;
        let p = self.apiserver_port;
        let path = |f: &str| d.join(f).display().to_string();
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
            "--v=1".into(),
        ]
    }

    async fn spawn_apiserver(&self) -> Result<(), Error> {
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

    /// Polls `/readyz` with the admin token until 200, failing fast if a process exits.
    async fn wait_apiserver_ready(&self) -> Result<(), Error> {
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(5))
            .build()?;
        let url = format!("{}/readyz", self.server_url());
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no response yet");
        while Instant::now() < deadline {
            check_alive(&self.guard.etcd)?;
            check_alive(&self.guard.apiserver)?;
            match http.get(&url).bearer_auth(&self.admin_token).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    last = format!(
                        "HTTP {}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(Error::Timeout {
            what: format!("kube-apiserver {url} (last: {last})"),
            timeout: READY_TIMEOUT,
            log_tail: self.guard.log_tails(),
        })
    }

    async fn wait_default_namespace(&self) -> Result<(), Error> {
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

    fn admin_client_checked(&self) -> Result<Client, Error> {
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

    /// `https://127.0.0.1:<port>` of kube-apiserver.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// PEM of the certificate(s) to trust for [`ControlPlane::server_url`].
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Directory of the binaries (`kube-apiserver`, `etcd`, and `kubectl`/`helm` when built by
    /// the script).
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

    /// Writes a kubeconfig for this server with the given bearer token into the plane's dir and
    /// returns its path and a client using it.
    pub async fn token_client(
        &self,
        name: &str,
        token: &str,
        namespace: &str,
    ) -> Result<(Client, PathBuf), Error> {
        let yaml = kubeconfig_yaml(&self.server_url(), &self.ca_pem, name, token, namespace);
        let path = self.guard.dir.join(format!("kubeconfig-{name}"));
        fs::write(&path, &yaml).map_err(Error::io(format!("writing {}", path.display())))?;
        let client = client_from_config(config_from_kubeconfig(&yaml).await?)?;
        Ok((client, path))
    }

    /// Applies every `*.yaml`/`*.yml` file of `dir` (sorted by name; server-side apply, forced),
    /// then waits until each CustomResourceDefinition among them is `Established` and all its
    /// served versions appear in discovery.
    pub async fn install_crds(&self, dir: &Path) -> Result<(), Error> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(Error::io(format!("reading {}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        let mut crds = Vec::new();
        for f in &files {
            let text =
                fs::read_to_string(f).map_err(Error::io(format!("reading {}", f.display())))?;
            let objs = parse_documents(&text).map_err(|e| match e {
                Error::Manifest { location, detail } => Error::Manifest {
                    location: format!(" {}{location}", f.display()),
                    detail,
                },
                other => other,
            })?;
            for o in &objs {
                if o.types
                    .as_ref()
                    .is_some_and(|t| t.kind == "CustomResourceDefinition")
                {
                    let crd: CustomResourceDefinition =
                        serde_json::from_value(serde_json::to_value(o).map_err(|e| {
                            Error::Manifest {
                                location: format!(" {}", f.display()),
                                detail: e.to_string(),
                            }
                        })?)
                        .map_err(|e| Error::Manifest {
                            location: format!(" {}", f.display()),
                            detail: e.to_string(),
                        })?;
                    crds.push(crd);
                }
            }
            self.apply_objects(objs, "default").await?;
        }
        for crd in &crds {
            self.wait_crd(crd).await?;
        }
        Ok(())
    }

    async fn wait_crd(&self, crd: &CustomResourceDefinition) -> Result<(), Error> {
        let client = self.admin_client_checked()?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let established = tokio::time::timeout(
            CRD_TIMEOUT,
            await_condition(api, &name, conditions::is_crd_established()),
        );
        match established.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(Error::Timeout {
                    what: format!("CRD {name} to become Established ({e})"),
                    timeout: CRD_TIMEOUT,
                    log_tail: String::new(),
                });
            }
            Err(_) => {
                return Err(Error::Timeout {
                    what: format!("CRD {name} to become Established"),
                    timeout: CRD_TIMEOUT,
                    log_tail: String::new(),
                });
            }
        }
        let group = &crd.spec.group;
        let plural = &crd.spec.names.plural;
        let deadline = Instant::now() + CRD_TIMEOUT;
        for v in crd.spec.versions.iter().filter(|v| v.served) {
            let gv = format!("{group}/{}", v.name);
            loop {
                let found = client
                    .list_api_group_resources(&gv)
                    .await
                    .is_ok_and(|l| l.resources.iter().any(|r| &r.name == plural));
                if found {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(Error::Timeout {
                        what: format!("{plural}.{gv} to appear in discovery"),
                        timeout: CRD_TIMEOUT,
                        log_tail: String::new(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Server-side applies (forced, field manager [`FIELD_MANAGER`]) every document of a
    /// multi-document YAML string, resolving each kind through discovery. Namespaced objects
    /// without `metadata.namespace` go to `default_namespace`. Empty documents are skipped; kinds
    /// not yet in discovery (e.g. of a CRD applied just before) are waited for up to 30 s.
    pub async fn apply_yaml(&self, yaml: &str, default_namespace: &str) -> Result<(), Error> {
        let objs = parse_documents(yaml)?;
        self.apply_objects(objs, default_namespace).await
    }

    async fn apply_objects(
        &self,
        objs: Vec<DynamicObject>,
        default_namespace: &str,
    ) -> Result<(), Error> {
        let client = self.admin_client_checked()?;
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        for (i, obj) in objs.into_iter().enumerate() {
            let bad = |detail: String| Error::Manifest {
                location: format!(" (document {i})"),
                detail,
            };
            let types = obj
                .types
                .clone()
                .ok_or_else(|| bad("missing apiVersion/kind".into()))?;
            let gvk = GroupVersionKind::try_from(&types).map_err(|e| bad(e.to_string()))?;
            let name = obj
                .metadata
                .name
                .clone()
                .ok_or_else(|| bad("missing metadata.name".into()))?;
            let (ar, caps) = resolve_kind(&client, &gvk).await?;
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Namespaced => {
                    let ns = obj
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| default_namespace.to_owned());
                    Api::namespaced_with(client.clone(), &ns, &ar)
                }
                Scope::Cluster => Api::all_with(client.clone(), &ar),
            };
            api.patch(&name, &pp, &Patch::Apply(&obj))
                .await
                .map_err(Error::kube(format!("applying {} {name}", gvk.kind)))?;
        }
        Ok(())
    }

    /// Creates a namespace named `<prefix>-<5 random [a-z0-9]>` and returns its name.
    pub async fn create_namespace(&self, prefix: &str) -> Result<String, Error> {
        let api: Api<Namespace> = Api::all(self.admin_client_checked()?);
        loop {
            let name = format!("{prefix}-{}", random_suffix(5)?);
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match api.create(&PostParams::default(), &ns).await {
                Ok(_) => return Ok(name),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(Error::kube(format!("creating namespace {name}"))(e)),
            }
        }
    }

    /// Creates ServiceAccount `namespace/sa` if missing, mints a 24 h token for it through the
    /// TokenRequest API, and returns a client using that bearer token plus the path of a
    /// kubeconfig file holding it (for running the operator binary as that ServiceAccount).
    pub async fn service_account_client(
        &self,
        namespace: &str,
        sa: &str,
    ) -> Result<(Client, PathBuf), Error> {
        let api: Api<ServiceAccount> = Api::namespaced(self.admin_client_checked()?, namespace);
        let obj = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(sa.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(Error::kube(format!(
                    "creating ServiceAccount {namespace}/{sa}"
                ))(e));
            }
        }
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(24 * 3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let tr = api
            .create_token_request(sa, &PostParams::default(), &req)
            .await
            .map_err(Error::kube(format!(
                "requesting a token for {namespace}/{sa}"
            )))?;
        let token = tr.status.and_then(|s| s.token).unwrap_or_default();
        self.token_client(&format!("sa-{namespace}-{sa}"), &token, namespace)
            .await
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

    /// Stops both processes and removes the temp dir now (what `Drop` does).
    pub fn stop(self) {
        drop(self);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Errors if the process in `slot` has exited (a port clash becomes [`Error::PortInUse`]).
fn check_alive(slot: &Mutex<Option<Proc>>) -> Result<(), Error> {
    let mut g = lock(slot);
    let Some(p) = g.as_mut() else { return Ok(()) };
    match p.child.try_wait() {
        Ok(Some(status)) => {
            let name = p.name;
            let log = p.log.clone();
            *g = None;
            if is_port_clash(&log) {
                Err(Error::PortInUse { process: name })
            } else {
                Err(Error::ProcessExited {
                    process: name,
                    status: status.to_string(),
                    log_tail: log_tail(&log, 40),
                })
            }
        }
        _ => Ok(()),
    }
}

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

/// Discovery for one kind, waiting up to 30 s for kinds that are about to be served.
async fn resolve_kind(
    client: &Client,
    gvk: &GroupVersionKind,
) -> Result<(kube::api::ApiResource, kube::discovery::ApiCapabilities), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match discovery::pinned_kind(client, gvk).await {
            Ok(found) => return Ok(found),
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::UnknownKind {
                    gvk: format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind),
                    source: Box::new(e),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Parses a multi-document YAML string into objects, skipping empty documents.
fn parse_documents(yaml: &str) -> Result<Vec<DynamicObject>, Error> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let bad = |detail: String| Error::Manifest {
            location: format!(" (document {i})"),
            detail,
        };
        let value = serde_json::Value::deserialize(doc).map_err(|e| bad(e.to_string()))?;
        if value.is_null() || value.as_object().is_some_and(|m| m.is_empty()) {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        out.push(obj);
    }
    Ok(out)
}

/// The names of all custom resources defined in `dir` (`<plural>.<group>`), for callers that want
/// to check what [`ControlPlane::install_crds`] will install.
pub fn crd_names_in(dir: &Path) -> Result<BTreeSet<String>, Error> {
    let mut names = BTreeSet::new();
    for e in fs::read_dir(dir)
        .map_err(Error::io(format!("reading {}", dir.display())))?
        .flatten()
    {
        let p = e.path();
        if !p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            continue;
        }
        let text = fs::read_to_string(&p).map_err(Error::io(format!("reading {}", p.display())))?;
        for o in parse_documents(&text)? {
            if o.types
                .as_ref()
                .is_some_and(|t| t.kind == "CustomResourceDefinition")
                && let Some(n) = o.metadata.name
            {
                names.insert(n);
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_yaml() {
        let docs = parse_documents(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n---\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].metadata.name.as_deref(), Some("a"));
    }

    #[test]
    fn kubeconfig_parses() {
        let y = kubeconfig_yaml("https://127.0.0.1:1", "PEM", "u", "t.o-k_en", "ns");
        let kc = Kubeconfig::from_yaml(&y).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("envtest"));
        assert_eq!(
            kc.contexts[0]
                .context
                .as_ref()
                .unwrap()
                .namespace
                .as_deref(),
            Some("ns")
        );
    }

    #[test]
    fn suffix_is_dns_safe() {
        let s = random_suffix(5).unwrap();
        assert_eq!(s.len(), 5);
        assert!(
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }
}
