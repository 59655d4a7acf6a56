//! The plane's temp dir (`$TMPDIR/wso-envtest-<pid>/plane-<n>`) and [`Guard`], which owns the
//! plane's processes and tears them and the dir down.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use crate::{
    Error,
    process::{Proc, log_tail, stop_proc},
};

/// How long a stopped process gets between SIGTERM and SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// The plane's processes and temp dir; dropping it tears both down.
pub(crate) struct Guard {
    pub(crate) dir: PathBuf,
    keep: bool,
    pub(crate) etcd: Mutex<Option<Proc>>,
    pub(crate) apiserver: Mutex<Option<Proc>>,
    pub(crate) controller_manager: Mutex<Option<Proc>>,
    /// The node, on a plane started with [`crate::ControlPlane::start_with_node`].
    pub(crate) node: crate::node::NodeSlot,
    torn_down: AtomicBool,
}

impl Guard {
    /// A guard of `dir` without processes yet; `KEEP_ENVTEST=1` keeps the dir at teardown.
    pub(crate) fn new(dir: PathBuf) -> Guard {
        Guard {
            dir,
            keep: std::env::var("KEEP_ENVTEST").is_ok_and(|v| v == "1"),
            etcd: Mutex::new(None),
            apiserver: Mutex::new(None),
            controller_manager: Mutex::new(None),
            node: Mutex::new(None),
            torn_down: AtomicBool::new(false),
        }
    }

    /// Stops the processes (clients of the API server first, etcd last) and removes the dir.
    /// With `blocking_locks == false` a process whose slot is locked elsewhere is left to
    /// `PR_SET_PDEATHSIG` (used at exit, where blocking could hang).
    pub(crate) fn teardown(&self, grace: Duration, blocking_locks: bool) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        // The node first: its kubelet and kube-proxy are clients of the API server, and its pods
        // are not children of this process.
        let node = if blocking_locks {
            self.node.lock().ok()
        } else {
            self.node.try_lock().ok()
        };
        if let Some(mut g) = node
            && let Some(n) = g.as_mut()
        {
            n.teardown(grace);
        }
        for m in [&self.controller_manager, &self.apiserver, &self.etcd] {
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

    /// The last lines of every process log in the dir, for error messages.
    pub(crate) fn log_tails(&self) -> String {
        let mut s = String::new();
        for name in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            let log = self.dir.join(format!("{name}.log"));
            if log.is_file() {
                let _ = writeln!(s, "--- {name}.log ---\n{}", log_tail(&log, 30));
            }
        }
        crate::node::append_log_tails(&self.dir, &mut s);
        s
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.teardown(STOP_GRACE, true);
    }
}

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

/// Creates a fresh `plane-<n>` dir (with `pki/`) for this process.
pub(crate) fn new_run_dir() -> Result<PathBuf, Error> {
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
