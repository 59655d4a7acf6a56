//! Restart costs: an operator restarted with N finished requests present (time to /readyz, Coder
//! calls), and one killed with requests in flight (Coder reads per request to resume them).

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::Args;
use crate::measure::Operator;
use crate::report::{Restart, Resume};
use crate::run::{ReadyWatch, World, WorldSpec, coder_requests};

/// How long the restarted operator is watched for Coder calls.
const SETTLE: Duration = Duration::from_secs(3);
/// Build running time in the resume run: long enough that every request is in flight when the
/// operator is killed.
const RESUME_RUNNING_MS: u64 = 30_000;

/// Stops `op` and starts the operator again with the world's (finished) requests present.
pub async fn finished(world: &World, op: Operator) -> anyhow::Result<Restart> {
    op.stop().await;
    world.sim.reset_counters();
    let op = Operator::start(&world.launch).await?;
    let ready_after = op.ready_after;
    tokio::time::sleep(SETTLE).await;
    let coder_calls = world.sim.counters().values().sum();
    op.stop().await;
    Ok(Restart {
        requests: world.requests.len(),
        ready_after,
        coder_calls,
    })
}

/// Creates `args.resume_n` requests (one per workspace, builds running 30 s), waits until all
/// are in flight, SIGKILLs the operator, starts it again and counts the Coder requests until
/// every request is Ready.
pub async fn resume(
    args: &Args,
    plane: &envtest::ControlPlane,
    bin: &std::path::Path,
) -> anyhow::Result<Resume> {
    let n = args.resume_n;
    let spec = WorldSpec {
        label: "resume",
        n,
        per_ws: 1,
        running_ms: RESUME_RUNNING_MS,
        watch: true,
    };
    let world = World::new(args, plane, bin, &spec).await?;
    let op = Operator::start(&world.launch).await?;
    let watch = ReadyWatch::start(&world.api).await;
    world.create_all(args.create_concurrency).await?;
    let in_flight = watch
        .wait_started(n, Instant::now() + Duration::from_secs(120))
        .await;
    let ready_before = watch.seen.lock().expect("lock").ready.len();
    if !in_flight || ready_before > 0 {
        bail!("resume: not all {n} requests in flight before the kill ({ready_before} Ready)");
    }
    op.kill().await;
    world.sim.reset_counters();
    let op = Operator::start(&world.launch).await?;
    let restarted = op.ready_after;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    if !watch.wait_ready(n, deadline).await? {
        bail!("resume: not all {n} requests Ready after the restart");
    }
    let counters = world.sim.counters();
    op.stop().await;
    let (by_route, total) = coder_requests(&counters);
    let (duplicates, _) = world.duplicate_builds();
    drop(watch);
    world.clean_up().await?;
    Ok(Resume {
        requests: n,
        ready_after: restarted,
        by_route,
        coder_total: total,
        watch_streams: counters.get(crate::run::WATCH_ROUTE).copied().unwrap_or(0),
        duplicate_builds: duplicates,
    })
}
