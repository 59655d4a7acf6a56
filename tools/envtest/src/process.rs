//! Child processes of the plane: spawned from one long-lived thread with
//! `PR_SET_PDEATHSIG=SIGKILL` ([`spawn_proc`]), stopped with SIGTERM then SIGKILL
//! ([`stop_proc`]), and checked for early exits ([`check_alive`]).

use std::{
    fs,
    io::{self, Read as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard, OnceLock, mpsc},
    time::{Duration, Instant},
};

use crate::Error;

/// A running control-plane process and its log file.
pub(crate) struct Proc {
    pub(crate) name: &'static str,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
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

/// Starts `bin args` in its own process group with stdout and stderr appended to `log`.
pub(crate) async fn spawn_proc(
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
pub(crate) fn stop_proc(p: &mut Proc, grace: Duration) {
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
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
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

/// Whether a process's log says it could not bind its port.
fn is_port_clash(log: &Path) -> bool {
    let t = log_tail(log, 60);
    t.contains("address already in use")
}

/// Locks `m`, ignoring poisoning (a panicking test must not wedge the teardown).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Errors if the process in `slot` has exited (a port clash becomes [`Error::PortInUse`]).
pub(crate) fn check_alive(slot: &Mutex<Option<Proc>>) -> Result<(), Error> {
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
