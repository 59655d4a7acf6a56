//! Faults during a run (`BENCH_CHAOS=1`): the operator is SIGKILLed every 5 s (the first time
//! 2.5 s into the run, while requests are being created and started) and restarted at once, and
//! the API server is restarted once, 4 s into the run (a clean N=1000 run takes about 10 s).

use std::time::Duration;

use tokio::sync::oneshot;

use crate::measure::{self, Launch, Operator};

/// Time between operator kills.
const KILL_EVERY: Duration = Duration::from_secs(5);
/// The first kill.
const FIRST_KILL: Duration = Duration::from_millis(2500);
/// When the API server is restarted.
const APISERVER_RESTART_AT: Duration = Duration::from_secs(4);

/// What the faults did (and what the killed processes had used).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Operator SIGKILLs.
    pub kills: u32,
    /// API server restarts.
    pub apiserver_restarts: u32,
    /// CPU seconds of the killed operator processes.
    pub cpu_s: f64,
    /// Largest peak RSS of the killed operator processes.
    pub rss_kib: u64,
}

/// Kills and restarts `op` every [`KILL_EVERY`] and restarts the API server once, until
/// `stop` fires; returns the operator running then.
pub async fn run(
    plane: &envtest::ControlPlane,
    launch: &Launch,
    mut op: Operator,
    mut stop: oneshot::Receiver<()>,
) -> (anyhow::Result<Operator>, Faults) {
    let mut f = Faults::default();
    let start = tokio::time::Instant::now();
    let mut next_kill = start + FIRST_KILL;
    let mut apiserver_at = Some(start + APISERVER_RESTART_AT);
    loop {
        let next = apiserver_at.map_or(next_kill, |a| a.min(next_kill));
        tokio::select! {
            _ = &mut stop => return (Ok(op), f),
            () = tokio::time::sleep_until(next) => {}
        }
        if apiserver_at.is_some_and(|a| a <= tokio::time::Instant::now()) {
            apiserver_at = None;
            eprintln!("bench:   chaos: restarting the API server");
            if let Err(e) = plane.restart_apiserver().await {
                return (Err(e.into()), f);
            }
            f.apiserver_restarts += 1;
            continue;
        }
        let (rss, cpu) = measure::proc_usage(op.pid);
        f.cpu_s += cpu;
        f.rss_kib = f.rss_kib.max(rss);
        op.kill().await;
        f.kills += 1;
        op = match Operator::start(launch).await {
            Ok(op) => op,
            Err(e) => return (Err(e), f),
        };
        next_kill = tokio::time::Instant::now() + KILL_EVERY;
    }
}
