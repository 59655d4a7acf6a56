//! Stage timings of a finished request: how long it was queued here, how long Coder's
//! provisioner job was pending and running, how long the agent took to connect and to run its
//! startup scripts, and the rest (the operator's own latency), adding up to the request's total
//! time to Ready or Failed.
//!
//! Two clocks are involved and they may disagree (by an hour, in a badly run cluster): the
//! cluster's (the request's `startTime`, `buildRequestedAt`, `completionTime`, written by the
//! operator) and Coder's (build, job and agent timestamps). A figure is only ever the difference
//! of two instants on the same clock, never across clocks, and each is clamped into what is left
//! of the total, latest stage first (a joined build may have been pending before the request
//! existed). So skew can never make a figure negative or larger than the total, and the figures
//! always add up to the total exactly. Pure: no I/O.

use jiff::Timestamp;

use crate::api::crd::{Outcome, StageTimings, WorkspaceStartRequestStatus};
use crate::coder::types::WorkspaceBuild;

/// The longest figure written (30 days): anything above is a broken clock, not a start.
pub const MAX_MS: i64 = 30 * 24 * 3600 * 1000;

/// Milliseconds from `from` to `to`, clamped to `0..=MAX_MS`.
fn ms(from: Timestamp, to: Timestamp) -> i64 {
    let d = to.duration_since(from).as_millis();
    i64::try_from(d.clamp(0, i128::from(MAX_MS))).unwrap_or(0)
}

/// Coder's own stage durations of `build` (each on Coder's clock): pending, running, agent
/// connecting, agent starting. `None` for a stage Coder did not reach or report.
pub fn coder_stages(build: &WorkspaceBuild, agent: Option<&str>) -> [Option<i64>; 4] {
    let job = &build.job;
    let pending = build.created_at.zip(job.started_at).map(|(c, s)| ms(c, s));
    let running = job.started_at.zip(job.completed_at).map(|(s, e)| ms(s, e));
    let agent = agent.and_then(|id| build.agents().find(|a| a.id.to_string() == id));
    let connected = agent.and_then(|a| a.first_connected_at);
    let connecting = job.completed_at.zip(connected).map(|(d, c)| ms(d, c));
    let starting = connected
        .zip(agent.and_then(|a| a.ready_at))
        .map(|(c, r)| ms(c, r));
    [pending, running, connecting, starting]
}

/// The timings of a request that just finished with `status`, from the latest build Coder
/// showed (`None` when the request never saw one). `None` when the status has no start or
/// completion time.
pub fn compute(
    status: &WorkspaceStartRequestStatus,
    build: Option<&WorkspaceBuild>,
) -> Option<StageTimings> {
    let start = status.start_time.as_ref()?.0;
    let done = status.completion_time.as_ref()?.0;
    let total = ms(start, done);
    let queued = status
        .build_requested_at
        .as_ref()
        .filter(|_| status.outcome == Some(Outcome::Queued))
        .map_or(0, |r| ms(start, r.0).min(total));
    // Only a build this request started or joined belongs to it; an already running
    // workspace's build finished before the request.
    let followed = build.filter(|b| {
        matches!(status.outcome, Some(Outcome::Queued | Outcome::InProgress))
            && status
                .build
                .as_ref()
                .is_some_and(|s| s.id == b.id.to_string())
    });
    let agent = status.agent.as_ref().and_then(|a| a.id.as_deref());
    // Without a followed build (an already running workspace) the time is all `other`.
    let mut stages = followed.map_or([None; 4], |b| coder_stages(b, agent));
    let mut left = total - queued;
    for v in stages.iter_mut().rev().flatten() {
        *v = (*v).min(left);
        left -= *v;
    }
    let [pending, running, connecting, starting] = stages;
    Some(StageTimings {
        queued_ms: queued,
        pending_ms: pending,
        running_ms: running,
        agent_connecting_ms: connecting,
        agent_starting_ms: starting,
        other_ms: left,
        total_ms: total,
        took: Some(format!("{:.1}s", total as f64 / 1000.0)),
    })
}

/// Fills in `status.timings` once the request is finished (and only once).
pub fn stamp(status: &mut WorkspaceStartRequestStatus, build: Option<&WorkspaceBuild>) {
    let finished = status.phase.is_some_and(|p| p.is_terminal());
    if finished && status.timings.is_none() {
        status.timings = compute(status, build);
    }
}

/// `(stage, seconds)` of each timed stage, for the per-stage histogram.
pub fn stages(t: &StageTimings) -> Vec<(&'static str, f64)> {
    let secs = |v: i64| v as f64 / 1000.0;
    let mut out = vec![("queued", secs(t.queued_ms))];
    for (name, v) in [
        ("pending", t.pending_ms),
        ("running", t.running_ms),
        ("agent_connecting", t.agent_connecting_ms),
        ("agent_starting", t.agent_starting_ms),
    ] {
        if let Some(v) = v {
            out.push((name, secs(v)));
        }
    }
    out.push(("other", secs(t.other_ms)));
    out.push(("total", secs(t.total_ms)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::crd::{AgentInfo, BuildInfo, Phase};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const BUILD: &str = "b0000000-0000-4000-8000-000000000001";
    const AGENT: &str = "a0000000-0000-4000-8000-000000000002";

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(1_780_000_000_000 + ms).expect("ts")
    }

    /// A build on Coder's clock, `skew_ms` off the cluster's: created at 1s, job 1.5s..4s,
    /// agent connected at 5s and ready at 8s (cluster time).
    fn build(skew_ms: i64) -> WorkspaceBuild {
        let c = |ms: i64| t(ms + skew_ms).to_string();
        serde_json::from_value(serde_json::json!({
            "id": BUILD,
            "build_number": 2,
            "transition": "start",
            "created_at": c(1000),
            "job": {"id": BUILD, "status": "succeeded", "started_at": c(1500), "completed_at": c(4000)},
            "resources": [{"type": "docker_container", "agents": [{
                "id": AGENT, "name": "main", "status": "connected", "lifecycle_state": "ready",
                "first_connected_at": c(5000), "ready_at": c(8000),
            }]}],
        }))
        .expect("build")
    }

    fn status(outcome: Outcome, requested_ms: i64, done_ms: i64) -> WorkspaceStartRequestStatus {
        WorkspaceStartRequestStatus {
            phase: Some(Phase::Ready),
            outcome: Some(outcome),
            start_time: Some(Time(t(0))),
            build_requested_at: Some(Time(t(requested_ms))),
            completion_time: Some(Time(t(done_ms))),
            build: Some(BuildInfo {
                id: BUILD.into(),
                ..Default::default()
            }),
            agent: Some(AgentInfo {
                id: Some(AGENT.into()),
                status: "connected".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sum(t: &StageTimings) -> i64 {
        t.queued_ms
            + [
                t.pending_ms,
                t.running_ms,
                t.agent_connecting_ms,
                t.agent_starting_ms,
            ]
            .iter()
            .flatten()
            .sum::<i64>()
            + t.other_ms
    }

    #[test]
    fn stages_add_up_to_the_total_whatever_coders_clock_says() {
        let hour = 3_600_000;
        for skew in [0, hour, -hour, 7 * 24 * hour] {
            let s = status(Outcome::Queued, 900, 8200);
            let got = compute(&s, Some(&build(skew))).expect("timings");
            assert_eq!(got.total_ms, 8200, "skew {skew}");
            assert_eq!(sum(&got), got.total_ms, "skew {skew}: {got:?}");
            assert_eq!(got.queued_ms, 900);
            assert_eq!(got.pending_ms, Some(500));
            assert_eq!(got.running_ms, Some(2500));
            assert_eq!(got.agent_connecting_ms, Some(1000));
            assert_eq!(got.agent_starting_ms, Some(3000));
            assert_eq!(got.other_ms, 300);
        }
    }

    #[test]
    fn figures_are_clamped_into_the_total_never_negative() {
        // A joined build pending long before the request: its early stages are cut.
        let s = status(Outcome::InProgress, 0, 4000);
        let got = compute(&s, Some(&build(0))).expect("timings");
        assert_eq!(sum(&got), 4000, "{got:?}");
        assert_eq!(got.agent_starting_ms, Some(3000));
        assert_eq!(got.agent_connecting_ms, Some(1000));
        assert_eq!(got.running_ms, Some(0));
        assert_eq!(got.queued_ms, 0);
        // Completion before start (a clock step on the cluster): all zero.
        let mut s = status(Outcome::Queued, 500, 0);
        s.start_time = Some(Time(t(1000)));
        let got = compute(&s, Some(&build(0))).expect("timings");
        assert_eq!((got.total_ms, sum(&got)), (0, 0), "{got:?}");
    }

    #[test]
    fn an_already_running_workspace_has_no_build_stages() {
        let s = status(Outcome::AlreadyRunning, 0, 300);
        let got = compute(&s, Some(&build(0))).expect("timings");
        assert_eq!(got.pending_ms, None);
        assert_eq!(got.agent_starting_ms, None);
        assert_eq!((got.other_ms, got.total_ms), (300, 300));
    }

    #[test]
    fn only_finished_requests_are_stamped_once() {
        let mut s = status(Outcome::Queued, 900, 8200);
        s.phase = Some(Phase::Starting);
        stamp(&mut s, Some(&build(0)));
        assert!(s.timings.is_none());
        s.phase = Some(Phase::Ready);
        stamp(&mut s, Some(&build(0)));
        let first = s.timings.clone().expect("stamped");
        s.completion_time = Some(Time(t(99_000)));
        stamp(&mut s, Some(&build(0)));
        assert_eq!(s.timings, Some(first));
    }
}
