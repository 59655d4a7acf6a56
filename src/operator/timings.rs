//! Stage timings of a finished request: how long it was queued here, how long Coder's
//! provisioner job was pending and running (with Terraform's init, plan, graph and apply within
//! it), how long the agent took to connect and to run its startup scripts, and the rest (the
//! operator's own latency), adding up to the request's total time to Ready or Failed.
//!
//! Several clocks are involved and they may disagree (by an hour, in a badly run cluster): the
//! cluster's (the request's `startTime`, `buildRequestedAt`, `completionTime`, written by the
//! operator), coderd's (build, job and agent connection timestamps), the provisioner's
//! (Terraform stage timings) and the workspace's (the agent's startup script timings and its
//! `ready_at`). A figure is only ever the difference of two instants on the same clock, never
//! across clocks, and each is clamped into what is left of the total, latest stage first (a
//! joined build may have been pending before the request existed). So skew can never make a
//! figure negative or larger than the total, and the figures always add up to the total
//! exactly. Pure: no I/O.
//!
//! Coder's build timings (`GET /api/v2/workspacebuilds/{id}/timings`), when the reconcile pass
//! could read them, refine the build's own timestamps: the startup scripts' span as the agent
//! timed them replaces connected → ready (which spans coderd's and the workspace's clocks), and
//! Terraform's stages break down the running job. Without them (an older Coder answers 404) the
//! figures come from the build alone.

use jiff::Timestamp;
use uuid::Uuid;

use crate::api::crd::{Outcome, ProvisionerStages, StageTimings, WorkspaceStartRequestStatus};
use crate::coder::logs::{STAGE_RESOURCE_PREFIX, WorkspaceBuildTimings};
use crate::coder::types::WorkspaceBuild;

/// The longest figure written (30 days): anything above is a broken clock, not a start.
pub const MAX_MS: i64 = 30 * 24 * 3600 * 1000;

/// Coder's Terraform stages, in the order they run.
const TERRAFORM_STAGES: [&str; 4] = ["init", "plan", "graph", "apply"];

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

/// What Coder's build timings say about the followed build and agent, as durations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Served {
    /// Terraform from its first start to its last end (the provisioner's clock).
    running: Option<i64>,
    /// Each of [`TERRAFORM_STAGES`] (the provisioner's clock).
    terraform: [Option<i64>; 4],
    /// The agent's creation to its first connection (coderd's clock).
    connecting: Option<i64>,
    /// The agent's startup scripts from the first start to the last end (the agent's clock).
    starting: Option<i64>,
}

/// From the earliest start to the latest end of `spans`, ignoring any that ends before it
/// starts or starts before 1970 (Coder's zero time marks one that never ended). `None` when
/// none is left.
fn span(spans: impl Iterator<Item = (Timestamp, Timestamp)>) -> Option<i64> {
    let (from, to) = spans
        .filter(|(s, e)| *s >= Timestamp::UNIX_EPOCH && s <= e)
        .reduce(|(a, b), (s, e)| (a.min(s), b.max(e)))?;
    Some(ms(from, to))
}

/// Whether the agent id `a` (Coder's text) is `agent`.
fn same_agent(a: &str, agent: Option<&str>) -> bool {
    let id = agent.and_then(|id| Uuid::parse_str(id).ok());
    id.is_some() && Uuid::parse_str(a).ok() == id
}

/// The durations in `t` for `agent` (the followed agent's id). A Terraform stage is its
/// whole-stage timing when Coder wrote one, else the span of its resource actions.
fn durations(t: &WorkspaceBuildTimings, agent: Option<&str>) -> Served {
    let rows = &t.provisioner_timings;
    let stage = |name: &str| {
        let whole = rows.iter().find(|p| {
            p.stage == name && p.resource.strip_prefix(STAGE_RESOURCE_PREFIX) == Some(name)
        });
        match whole {
            Some(p) => span(std::iter::once((p.started_at, p.ended_at))),
            None => span(
                rows.iter()
                    .filter(|p| p.stage == name)
                    .map(|p| (p.started_at, p.ended_at)),
            ),
        }
    };
    let connections = t.agent_connection_timings.iter();
    let scripts = t.agent_script_timings.iter();
    Served {
        running: span(rows.iter().map(|p| (p.started_at, p.ended_at))),
        terraform: TERRAFORM_STAGES.map(stage),
        connecting: span(
            connections
                .filter(|c| same_agent(&c.workspace_agent_id, agent))
                .map(|c| (c.started_at, c.ended_at)),
        ),
        starting: span(
            scripts
                .filter(|s| s.stage == "start" && same_agent(&s.workspace_agent_id, agent))
                .map(|s| (s.started_at, s.ended_at)),
        ),
    }
}

/// Clamps each of `figures` into what is left of `total`, latest first; returns what is left.
fn clamp_into(total: i64, figures: &mut [Option<i64>]) -> i64 {
    let mut left = total;
    for v in figures.iter_mut().rev().flatten() {
        *v = (*v).min(left);
        left -= *v;
    }
    left
}

/// The id of the build whose stages a finished `status` reports: the build this request
/// started or joined. An already running workspace's build finished before the request.
fn followed_build(status: &WorkspaceStartRequestStatus) -> Option<&str> {
    matches!(status.outcome, Some(Outcome::Queued | Outcome::InProgress))
        .then_some(status.build.as_ref()?.id.as_str())
}

/// The build whose Coder timings the request finishing from `prev` to `next` would use: `Some`
/// only when `next` just became Ready or Failed after a build this request followed. The
/// reconcile pass reads them then (once) and decides again with them.
pub fn timings_wanted(
    prev: &WorkspaceStartRequestStatus,
    next: &WorkspaceStartRequestStatus,
) -> Option<Uuid> {
    let finishing = next.phase.is_some_and(|p| p.is_terminal())
        && !prev.phase.is_some_and(|p| p.is_terminal())
        && prev.timings.is_none();
    finishing
        .then(|| followed_build(next))
        .flatten()
        .and_then(|id| Uuid::parse_str(id).ok())
}

/// The timings of a request that just finished with `status`, from the latest build Coder
/// showed (`None` when the request never saw one) and Coder's timings of that build (`None`
/// when not read or not served). `None` when the status has no start or completion time.
pub fn compute(
    status: &WorkspaceStartRequestStatus,
    build: Option<&WorkspaceBuild>,
    coder: Option<&WorkspaceBuildTimings>,
) -> Option<StageTimings> {
    let start = status.start_time.as_ref()?.0;
    let done = status.completion_time.as_ref()?.0;
    let total = ms(start, done);
    let queued = status
        .build_requested_at
        .as_ref()
        .filter(|_| status.outcome == Some(Outcome::Queued))
        .map_or(0, |r| ms(start, r.0).min(total));
    let followed = build.filter(|b| followed_build(status) == Some(b.id.to_string().as_str()));
    let agent = status.agent.as_ref().and_then(|a| a.id.as_deref());
    // Without a followed build (an already running workspace) the time is all `other`.
    let mut stages = followed.map_or([None; 4], |b| coder_stages(b, agent));
    let served = followed.and(coder).map(|t| durations(t, agent));
    if let Some(s) = &served {
        stages[1] = stages[1].or(s.running);
        stages[2] = stages[2].or(s.connecting);
        stages[3] = s.starting.or(stages[3]);
    }
    let other = clamp_into(total - queued, &mut stages);
    let [pending, running, connecting, starting] = stages;
    let provisioner_stages = served
        .filter(|s| s.terraform.iter().any(Option::is_some))
        .map(|s| {
            let mut t = s.terraform;
            clamp_into(running.unwrap_or(0), &mut t);
            let [init_ms, plan_ms, graph_ms, apply_ms] = t;
            ProvisionerStages {
                init_ms,
                plan_ms,
                graph_ms,
                apply_ms,
            }
        });
    Some(StageTimings {
        queued_ms: queued,
        pending_ms: pending,
        running_ms: running,
        agent_connecting_ms: connecting,
        agent_starting_ms: starting,
        provisioner_stages,
        other_ms: other,
        total_ms: total,
        took: Some(format!("{:.1}s", total as f64 / 1000.0)),
    })
}

/// Fills in `status.timings` once the request is finished (and only once); see [`compute`].
pub fn stamp(
    status: &mut WorkspaceStartRequestStatus,
    build: Option<&WorkspaceBuild>,
    coder: Option<&WorkspaceBuildTimings>,
) {
    let finished = status.phase.is_some_and(|p| p.is_terminal());
    if finished && status.timings.is_none() {
        status.timings = compute(status, build, coder);
    }
}

/// `(stage, seconds)` of each timed stage, for the per-stage histogram. Coder's Terraform
/// stages (`terraform_init`, `terraform_plan`, `terraform_graph`, `terraform_apply`) lie within
/// `running`, so they are not added to the others.
pub fn stages(t: &StageTimings) -> Vec<(&'static str, f64)> {
    const PARTS: [&str; 6] = [
        "queued",
        "pending",
        "running",
        "agent_connecting",
        "agent_starting",
        "other",
    ];
    const TERRAFORM: [&str; 4] = [
        "terraform_init",
        "terraform_plan",
        "terraform_graph",
        "terraform_apply",
    ];
    let tf = t.provisioner_stages.as_ref().map(ProvisionerStages::parts);
    PARTS
        .into_iter()
        .zip(t.parts())
        .chain(TERRAFORM.into_iter().zip(tf.unwrap_or_default()))
        .chain([("total", Some(t.total_ms))])
        .filter_map(|(name, ms)| Some((name, ms? as f64 / 1000.0)))
        .collect()
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

    /// Coder's timings of [`build`]: Terraform on a provisioner clock `prov_skew_ms` off the
    /// cluster's (init 1.6s..1.8s, plan ..2.6s, graph ..2.7s, apply ..3.9s, with a resource
    /// action inside apply), the agent's connection on coderd's (4s..5s) and its startup scripts
    /// on the workspace's clock `agent_skew_ms` off (5.2s..7.7s, two scripts), plus another
    /// agent that never connected (Coder's zero time) and a cron script.
    fn coder_timings(prov_skew_ms: i64, agent_skew_ms: i64) -> WorkspaceBuildTimings {
        let p = |ms: i64| t(ms + prov_skew_ms).to_string();
        let a = |ms: i64| t(ms + agent_skew_ms).to_string();
        let stage = |name: &str, from: i64, to: i64| {
            serde_json::json!({"job_id": BUILD, "started_at": p(from), "ended_at": p(to),
                "stage": name, "source": "coder", "action": "terraform",
                "resource": format!("coder_stage_{name}")})
        };
        let script = |stage: &str, agent: &str, from: i64, to: i64| {
            serde_json::json!({"started_at": a(from), "ended_at": a(to), "exit_code": 0,
                "stage": stage, "status": "ok", "display_name": "s",
                "workspace_agent_id": agent, "workspace_agent_name": "main"})
        };
        let other = "c0000000-0000-4000-8000-000000000003";
        serde_json::from_value(serde_json::json!({
            "provisioner_timings": [
                stage("init", 1600, 1800), stage("plan", 1800, 2600),
                stage("graph", 2600, 2700), stage("apply", 2700, 3900),
                {"job_id": BUILD, "started_at": p(3000), "ended_at": p(3100), "stage": "apply",
                 "source": "docker", "action": "create", "resource": "docker_container.ws"},
            ],
            "agent_script_timings": [
                script("start", AGENT, 5200, 7000), script("start", AGENT, 5300, 7700),
                script("cron", AGENT, 1000, 60_000), script("start", other, 0, 60_000),
            ],
            "agent_connection_timings": [
                {"started_at": t(4000).to_string(), "ended_at": t(5000).to_string(),
                 "stage": "connect", "workspace_agent_id": AGENT, "workspace_agent_name": "main"},
                {"started_at": t(4000).to_string(), "ended_at": "0001-01-01T00:00:00Z",
                 "stage": "connect", "workspace_agent_id": other, "workspace_agent_name": "x"},
            ],
        }))
        .expect("timings")
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
        t.parts().iter().flatten().sum()
    }

    #[test]
    fn stages_add_up_to_the_total_whatever_coders_clock_says() {
        let hour = 3_600_000;
        for skew in [0, hour, -hour, 7 * 24 * hour] {
            let s = status(Outcome::Queued, 900, 8200);
            let got = compute(&s, Some(&build(skew)), None).expect("timings");
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
        let got = compute(&s, Some(&build(0)), None).expect("timings");
        assert_eq!(sum(&got), 4000, "{got:?}");
        assert_eq!(got.agent_starting_ms, Some(3000));
        assert_eq!(got.agent_connecting_ms, Some(1000));
        assert_eq!(got.running_ms, Some(0));
        assert_eq!(got.queued_ms, 0);
        // Completion before start (a clock step on the cluster): all zero.
        let mut s = status(Outcome::Queued, 500, 0);
        s.start_time = Some(Time(t(1000)));
        let got = compute(&s, Some(&build(0)), None).expect("timings");
        assert_eq!((got.total_ms, sum(&got)), (0, 0), "{got:?}");
    }

    #[test]
    fn an_already_running_workspace_has_no_build_stages() {
        let s = status(Outcome::AlreadyRunning, 0, 300);
        let got = compute(&s, Some(&build(0)), None).expect("timings");
        assert_eq!(got.pending_ms, None);
        assert_eq!(got.agent_starting_ms, None);
        assert_eq!((got.other_ms, got.total_ms), (300, 300));
    }

    #[test]
    fn only_finished_requests_are_stamped_once() {
        let mut s = status(Outcome::Queued, 900, 8200);
        s.phase = Some(Phase::Starting);
        stamp(&mut s, Some(&build(0)), None);
        assert!(s.timings.is_none());
        s.phase = Some(Phase::Ready);
        stamp(&mut s, Some(&build(0)), None);
        let first = s.timings.clone().expect("stamped");
        s.completion_time = Some(Time(t(99_000)));
        stamp(&mut s, Some(&build(0)), None);
        assert_eq!(s.timings, Some(first));
    }

    #[test]
    fn coders_build_timings_time_the_scripts_and_break_down_terraform_whatever_the_clocks() {
        let hour = 3_600_000;
        for (prov, agent) in [(0, 0), (hour, -hour), (-7 * hour, 3 * hour)] {
            let s = status(Outcome::Queued, 900, 8200);
            let got =
                compute(&s, Some(&build(hour)), Some(&coder_timings(prov, agent))).expect("t");
            assert_eq!(sum(&got), got.total_ms, "{got:?}");
            // The job's own figures stay; the scripts' span replaces connected → ready.
            assert_eq!(got.pending_ms, Some(500));
            assert_eq!(got.running_ms, Some(2500));
            assert_eq!(got.agent_connecting_ms, Some(1000));
            assert_eq!(got.agent_starting_ms, Some(2500));
            assert_eq!(got.other_ms, 800);
            let stages = got.provisioner_stages.expect("terraform stages");
            assert_eq!(
                (
                    stages.init_ms,
                    stages.plan_ms,
                    stages.graph_ms,
                    stages.apply_ms
                ),
                (Some(200), Some(800), Some(100), Some(1200)),
                "prov skew {prov}, agent skew {agent}"
            );
        }
    }

    #[test]
    fn without_whole_stage_timings_a_stage_is_the_span_of_its_resource_actions() {
        let mut t = coder_timings(0, 0);
        // An older Coder: no coder_stage_* rows, only resource actions.
        t.provisioner_timings
            .retain(|p| !p.resource.starts_with(STAGE_RESOURCE_PREFIX));
        let got = compute(
            &status(Outcome::Queued, 900, 8200),
            Some(&build(0)),
            Some(&t),
        )
        .expect("t");
        let stages = got.provisioner_stages.expect("stages");
        assert_eq!(stages.apply_ms, Some(100));
        assert_eq!(stages.init_ms, None);
    }

    #[test]
    fn coders_timings_fill_stages_the_build_did_not_show_and_stay_within_them() {
        // The build as last seen had no timestamps: Terraform's span stands for the job.
        let mut b = build(0);
        b.created_at = None;
        b.job.started_at = None;
        b.job.completed_at = None;
        let s = status(Outcome::Queued, 900, 8200);
        let got = compute(&s, Some(&b), Some(&coder_timings(0, 0))).expect("t");
        assert_eq!(got.running_ms, Some(2300));
        assert_eq!(got.agent_connecting_ms, Some(1000));
        assert_eq!(sum(&got), 8200, "{got:?}");
        // Terraform stages longer than the job (a provisioner clock running fast) are cut to
        // it, latest first.
        let mut t = coder_timings(0, 0);
        for p in &mut t.provisioner_timings {
            p.ended_at += jiff::SignedDuration::from_secs(5);
        }
        let got = compute(&s, Some(&build(0)), Some(&t)).expect("t");
        let st = got.provisioner_stages.clone().expect("stages");
        let within = st.parts();
        assert_eq!(within.iter().flatten().sum::<i64>(), 2500, "{st:?}");
        assert_eq!(st.init_ms, Some(0));
        assert_eq!(sum(&got), 8200, "{got:?}");
    }

    #[test]
    fn coders_timings_of_a_build_the_request_did_not_follow_are_ignored() {
        let s = status(Outcome::AlreadyRunning, 0, 300);
        let got = compute(&s, Some(&build(0)), Some(&coder_timings(0, 0))).expect("t");
        assert_eq!(got.provisioner_stages, None);
        assert_eq!((got.other_ms, got.total_ms), (300, 300));
    }

    #[test]
    fn timings_are_wanted_once_when_a_followed_build_finishes() {
        let mut prev = status(Outcome::Queued, 900, 8200);
        prev.phase = Some(Phase::WaitingForAgent);
        let next = status(Outcome::Queued, 900, 8200);
        assert_eq!(timings_wanted(&prev, &next), Uuid::parse_str(BUILD).ok());
        // Not while in progress, not once finished, not for an already running workspace.
        assert_eq!(timings_wanted(&prev, &prev), None);
        assert_eq!(timings_wanted(&next, &next), None);
        let running = status(Outcome::AlreadyRunning, 0, 300);
        assert_eq!(timings_wanted(&prev, &running), None);
    }
}
