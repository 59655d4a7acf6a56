//! Table tests: one row per branch of the chat tool (and of the fixes we made to it).

use super::*;
use crate::api::crd::{BuildParameter, Timeouts};

const WS: &str = "e3f40000-0000-4000-8000-000000000001";
const OWNER: &str = "51aa0000-0000-4000-8000-000000000002";
const OTHER: &str = "51aa0000-0000-4000-8000-0000000000ff";
const ACTIVE_VERSION: &str = "0ba30000-0000-4000-8000-000000000009";

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).expect("uuid")
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_780_000_000 + secs).expect("ts")
}

fn agent(name: &str, status: &str, lifecycle: &str) -> Agent {
    Agent {
        id: Uuid::new_v4(),
        name: name.into(),
        parent_id: None,
        status: status.into(),
        lifecycle_state: lifecycle.into(),
        ready_at: None,
        first_connected_at: None,
    }
}

fn build(
    number: i64,
    transition: Transition,
    job: JobStatus,
    agents: Vec<Agent>,
) -> WorkspaceBuild {
    WorkspaceBuild {
        id: Uuid::from_u128(0xb000 + number as u128),
        build_number: number,
        transition,
        status: String::new(),
        template_version_id: None,
        created_at: None,
        job: crate::coder::types::ProvisionerJob {
            id: Uuid::from_u128(0xf000 + number as u128),
            status: job,
            error_code: None,
            started_at: None,
            completed_at: None,
        },
        resources: vec![crate::coder::types::Resource {
            agents,
            ..Default::default()
        }],
    }
}

fn workspace(b: WorkspaceBuild) -> Workspace {
    Workspace {
        id: uuid(WS),
        name: "dev".into(),
        owner_id: uuid(OWNER),
        owner_name: "alice".into(),
        template_active_version_id: Some(uuid(ACTIVE_VERSION)),
        template_require_active_version: false,
        dormant_at: None,
        latest_build: b,
    }
}

/// The workspace as read, the chat owner found active.
fn seen(b: WorkspaceBuild) -> Observation {
    seen_ws(workspace(b), OwnerState::Active)
}

fn seen_ws(ws: Workspace, owner: OwnerState) -> Observation {
    Observation::Workspace {
        chat_owner: Some(uuid(OWNER)),
        workspace: Box::new(ws),
        owner,
    }
}

fn stopped() -> WorkspaceBuild {
    build(1, Transition::Stop, JobStatus::Succeeded, vec![])
}

fn ready_agent() -> Vec<Agent> {
    vec![agent("main", "connected", "ready")]
}

fn spec() -> WorkspaceStartRequestSpec {
    WorkspaceStartRequestSpec {
        chat_id: Some("9d0c0000-0000-4000-8000-000000000003".into()),
        ..Default::default()
    }
}

fn status_started_at(secs: i64) -> WorkspaceStartRequestStatus {
    WorkspaceStartRequestStatus {
        start_time: Some(Time(t(secs))),
        phase: Some(Phase::Starting),
        ..Default::default()
    }
}

/// Status after we requested a start while build `base` was the latest.
fn requested_after(base: i64) -> WorkspaceStartRequestStatus {
    WorkspaceStartRequestStatus {
        build_requested_at: Some(Time(t(0))),
        build: Some(build_info(&build(
            base,
            Transition::Stop,
            JobStatus::Succeeded,
            vec![],
        ))),
        ..status_started_at(0)
    }
}

/// Status while following our own start build `n`.
fn following(n: i64) -> WorkspaceStartRequestStatus {
    WorkspaceStartRequestStatus {
        outcome: Some(Outcome::Queued),
        build: Some(build_info(&build(
            n,
            Transition::Start,
            JobStatus::Running,
            vec![],
        ))),
        ..requested_after(n - 1)
    }
}

/// Status after the build succeeded at t(succeeded_at).
fn waiting_for_agent(succeeded_at: i64) -> WorkspaceStartRequestStatus {
    let mut st = following(2);
    st.phase = Some(Phase::WaitingForAgent);
    conditions::set(
        &mut st.conditions,
        types::BUILD_SUCCEEDED,
        "True",
        Reason::BuildSucceeded,
        "ok",
        Some(1),
        &Time(t(succeeded_at)),
    );
    st
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    Start,
    CheckOwner,
    Requeue,
    Retry,
    AwaitCoder,
    Finish,
}

struct Case {
    name: &'static str,
    spec: WorkspaceStartRequestSpec,
    status: WorkspaceStartRequestStatus,
    obs: Observation,
    now: i64,
    phase: Phase,
    reason: &'static str,
    action: Act,
    outcome: Option<Outcome>,
}

fn case(
    name: &'static str,
    obs: Observation,
    phase: Phase,
    reason: &'static str,
    action: Act,
) -> Case {
    Case {
        name,
        spec: spec(),
        status: WorkspaceStartRequestStatus::default(),
        obs,
        now: 0,
        phase,
        reason,
        action,
        outcome: None,
    }
}

impl Case {
    fn status(mut self, s: WorkspaceStartRequestStatus) -> Case {
        self.status = s;
        self
    }
    fn spec(mut self, s: WorkspaceStartRequestSpec) -> Case {
        self.spec = s;
        self
    }
    fn at(mut self, now: i64) -> Case {
        self.now = now;
        self
    }
    fn outcome(mut self, o: Outcome) -> Case {
        self.outcome = Some(o);
        self
    }
}

fn run(c: &Case) -> Decision {
    decide(&Input {
        spec: &c.spec,
        generation: Some(1),
        status: &c.status,
        observation: c.obs.clone(),
        now: t(c.now),
        poll: Duration::from_secs(2),
        build_timings: None,
    })
}

fn ready_reason(d: &Decision) -> String {
    conditions::get(&d.status.conditions, types::READY)
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

fn act(a: &Action) -> Act {
    match a {
        Action::StartBuild { .. } => Act::Start,
        Action::CheckOwner { .. } => Act::CheckOwner,
        Action::Requeue(_) => Act::Requeue,
        Action::Retry => Act::Retry,
        Action::AwaitCoder { .. } => Act::AwaitCoder,
        Action::Finish => Act::Finish,
    }
}

/// Coder unavailable with a 503.
fn down() -> Observation {
    Observation::CoderUnavailable {
        cause: "HTTP 503 from /api/v2/workspaces/{id}: db down".into(),
    }
}

fn with_agents(agents: Vec<Agent>) -> Observation {
    seen(build(2, Transition::Start, JobStatus::Succeeded, agents))
}

/// A succeeded start whose only agent is managed outside Coder (`coder_external_agent`).
fn with_external_agent(status: &str) -> Observation {
    let mut b = build(
        2,
        Transition::Start,
        JobStatus::Succeeded,
        vec![agent("main", status, "created")],
    );
    b.resources[0].resource_type = crate::coder::external::EXTERNAL_AGENT_RESOURCE_TYPE.into();
    seen(b)
}

fn failed_with(code: Option<&str>) -> Observation {
    let mut b = build(2, Transition::Start, JobStatus::Failed, vec![]);
    b.job.error_code = code.map(str::to_owned);
    seen(b)
}

#[test]
fn every_branch() {
    use Act::*;
    use JobStatus as J;
    use Phase::*;
    use Transition as T;
    let owner_spec = WorkspaceStartRequestSpec {
        owner_id: Some(OTHER.into()),
        ..spec()
    };
    let mut dormant = workspace(build(1, T::Stop, J::Succeeded, vec![]));
    dormant.dormant_at = Some(t(-100));
    let mut sub = agent("devcontainer", "connected", "ready");
    sub.parent_id = Some(Uuid::new_v4());
    let cases = vec![
        // Coder answers that end the request.
        case(
            "chat_not_found",
            Observation::ChatNotFound,
            Failed,
            Reason::ChatNotFound.as_str(),
            Finish,
        ),
        case(
            "chat_without_workspace",
            Observation::ChatHasNoWorkspace,
            Failed,
            Reason::ChatHasNoWorkspace.as_str(),
            Finish,
        ),
        case(
            "workspace_deleted",
            Observation::WorkspaceGone,
            Failed,
            Reason::WorkspaceDeleted.as_str(),
            Finish,
        ),
        case(
            "bad_token",
            Observation::Failed {
                reason: Reason::CoderUnauthorized,
                message: "Coder rejected the session token (401): x".into(),
            },
            Failed,
            Reason::CoderUnauthorized.as_str(),
            Finish,
        ),
        case(
            "missing_secret",
            Observation::Failed {
                reason: Reason::SecretNotFound,
                message: "x".into(),
            },
            Failed,
            Reason::SecretNotFound.as_str(),
            Finish,
        ),
        case(
            "invalid_coder_answer_fails_at_once",
            Observation::Failed {
                reason: Reason::CoderResponseInvalid,
                message: "x".into(),
            },
            Failed,
            Reason::CoderResponseInvalid.as_str(),
            Finish,
        )
        .status(status_started_at(0))
        .at(1),
        case(
            "secret_unreadable_retries",
            Observation::Retrying {
                reason: Reason::SecretUnreadable,
                message: "x".into(),
            },
            Pending,
            Reason::SecretUnreadable.as_str(),
            Retry,
        ),
        case(
            "secret_unreadable_past_deadline",
            Observation::Retrying {
                reason: Reason::SecretUnreadable,
                message: "x".into(),
            },
            Failed,
            Reason::SecretUnreadable.as_str(),
            Finish,
        )
        .status(status_started_at(0))
        .at(601),
        // Coder unavailable: retry until the deadline, then fail.
        case(
            "coder_down_retries",
            down(),
            Pending,
            Reason::CoderUnavailable.as_str(),
            AwaitCoder,
        ),
        case(
            "coder_down_past_deadline",
            down(),
            Failed,
            Reason::CoderUnavailable.as_str(),
            Finish,
        )
        .status(status_started_at(0))
        .at(601),
        case(
            "coder_down_while_waiting_for_agent",
            down(),
            WaitingForAgent,
            Reason::CoderUnavailable.as_str(),
            AwaitCoder,
        )
        .status(waiting_for_agent(500))
        .at(900),
        // Confused deputy guards.
        case(
            "owner_mismatch_spec",
            seen(build(1, T::Stop, J::Succeeded, vec![])),
            Failed,
            Reason::OwnerMismatch.as_str(),
            Finish,
        )
        .spec(owner_spec),
        case(
            "owner_mismatch_chat_vs_workspace",
            Observation::Workspace {
                chat_owner: Some(uuid(OTHER)),
                workspace: Box::new(workspace(build(1, T::Stop, J::Succeeded, vec![]))),
                owner: OwnerState::Unchecked,
            },
            Failed,
            Reason::OwnerMismatch.as_str(),
            Finish,
        ),
        // Current Coder wakes a dormant workspace on a start build (older: 403, see the
        // controller's start_refusal).
        case(
            "dormant_workspace_is_started",
            seen_ws(dormant, OwnerState::Active),
            Starting,
            Reason::StartRequested.as_str(),
            Start,
        ),
        // The chat tool acts only for an active chat owner (asOwner), checked before a start.
        case(
            "chat_owner_checked_first",
            seen_ws(workspace(stopped()), OwnerState::Unchecked),
            Pending,
            Reason::Pending.as_str(),
            CheckOwner,
        ),
        // The newest tool checks the owner before it looks at the build at all.
        case(
            "chat_owner_checked_first_even_when_a_build_runs",
            seen_ws(
                workspace(build(2, T::Start, J::Running, vec![])),
                OwnerState::Unchecked,
            ),
            Pending,
            Reason::Pending.as_str(),
            CheckOwner,
        ),
        case(
            "inactive_owner_of_a_running_workspace_is_refused",
            seen_ws(
                workspace(build(2, T::Start, J::Succeeded, ready_agent())),
                OwnerState::Inactive("suspended".into()),
            ),
            Failed,
            Reason::OwnerInactive.as_str(),
            Finish,
        ),
        // A later pass (the chat read once) checks again only before a start build.
        case(
            "chat_owner_checked_again_before_a_later_start",
            Observation::Workspace {
                chat_owner: None,
                workspace: Box::new(workspace(stopped())),
                owner: OwnerState::Unchecked,
            },
            Starting,
            Reason::Pending.as_str(),
            CheckOwner,
        )
        .status(WorkspaceStartRequestStatus {
            build: Some(build_info(&build(1, T::Stop, J::Running, vec![]))),
            ..status_started_at(0)
        }),
        case(
            "inactive_chat_owner_is_refused",
            seen_ws(
                workspace(stopped()),
                OwnerState::Inactive("the chat owner \"bob\" is not active".into()),
            ),
            Failed,
            Reason::OwnerInactive.as_str(),
            Finish,
        ),
        case(
            "chat_owner_unknown_for_now_retries",
            seen_ws(
                workspace(stopped()),
                OwnerState::Unavailable("HTTP 503 from /api/v2/users/{user}".into()),
            ),
            Pending,
            Reason::CoderUnavailable.as_str(),
            AwaitCoder,
        ),
        case(
            "no_owner_check_on_a_later_pass_without_a_start",
            Observation::Workspace {
                chat_owner: None,
                workspace: Box::new(workspace(build(2, T::Start, J::Running, vec![]))),
                owner: OwnerState::Unchecked,
            },
            Starting,
            Reason::BuildInProgress.as_str(),
            Requeue,
        )
        .status(following(2)),
        case(
            "workspace_request_needs_no_chat_owner",
            Observation::Workspace {
                chat_owner: None,
                workspace: Box::new(workspace(stopped())),
                owner: OwnerState::Unchecked,
            },
            Starting,
            Reason::StartRequested.as_str(),
            Start,
        )
        .spec(WorkspaceStartRequestSpec {
            workspace: Some(crate::api::crd::WorkspaceSelector {
                id: Some(WS.into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        // Latest build states.
        case(
            "stopped_starts",
            seen(build(1, T::Stop, J::Succeeded, vec![])),
            Starting,
            Reason::StartRequested.as_str(),
            Start,
        ),
        case(
            "failed_build_starts",
            seen(build(1, T::Start, J::Failed, vec![])),
            Starting,
            Reason::StartRequested.as_str(),
            Start,
        ),
        case(
            "canceled_build_starts",
            seen(build(1, T::Start, J::Canceled, vec![])),
            Starting,
            Reason::StartRequested.as_str(),
            Start,
        ),
        case(
            "unknown_job_starts",
            seen(build(1, T::Start, J::Unknown, vec![])),
            Starting,
            Reason::StartRequested.as_str(),
            Start,
        ),
        case(
            "failed_delete_starts",
            seen(build(1, T::Delete, J::Failed, vec![])),
            Starting,
            Reason::StartRequested.as_str(),
            Start,
        ),
        case(
            "pending_start_joins",
            seen(build(3, T::Start, J::Pending, vec![])),
            Starting,
            Reason::BuildInProgress.as_str(),
            Requeue,
        )
        .outcome(Outcome::InProgress),
        case(
            "running_start_joins",
            seen(build(3, T::Start, J::Running, vec![])),
            Starting,
            Reason::BuildInProgress.as_str(),
            Requeue,
        )
        .outcome(Outcome::InProgress),
        // A canceling build can only end canceled: wait for it, never adopt it, then start.
        case(
            "canceling_build_is_awaited_not_adopted",
            seen(build(3, T::Start, J::Canceling, vec![])),
            Starting,
            Reason::WaitingForCanceledBuild.as_str(),
            Requeue,
        ),
        case(
            "canceling_build_past_deadline",
            seen(build(3, T::Start, J::Canceling, vec![])),
            Failed,
            Reason::BuildTimeout.as_str(),
            Finish,
        )
        .status(status_started_at(0))
        .at(601),
        case(
            "canceled_after_waiting_starts_once",
            seen(build(3, T::Start, J::Canceled, vec![])),
            Starting,
            Reason::StartRequested.as_str(),
            Start,
        )
        .status(WorkspaceStartRequestStatus {
            build: Some(build_info(&build(3, T::Start, J::Canceling, vec![]))),
            ..status_started_at(0)
        }),
        case(
            "our_build_being_canceled_is_followed_to_its_end",
            seen(build(2, T::Start, J::Canceling, vec![])),
            Starting,
            Reason::BuildInProgress.as_str(),
            Requeue,
        )
        .status(following(2))
        .outcome(Outcome::Queued),
        // After a 409 the start record is cleared: the build someone else started is joined.
        case(
            "joined_after_a_conflict_is_in_progress",
            seen(build(2, T::Start, J::Pending, vec![])),
            Starting,
            Reason::BuildInProgress.as_str(),
            Requeue,
        )
        .status(WorkspaceStartRequestStatus {
            build_requested_at: None,
            ..requested_after(1)
        })
        .outcome(Outcome::InProgress),
        case(
            "running_stop_waits_then_starts",
            seen(build(3, T::Stop, J::Running, vec![])),
            Starting,
            Reason::WaitingForStopBuild.as_str(),
            Requeue,
        ),
        case(
            "deleting_workspace_fails",
            seen(build(3, T::Delete, J::Running, vec![])),
            Failed,
            Reason::WorkspaceDeleted.as_str(),
            Finish,
        ),
        case(
            "deleted_build_fails",
            seen(build(3, T::Delete, J::Succeeded, vec![])),
            Failed,
            Reason::WorkspaceDeleted.as_str(),
            Finish,
        ),
        case(
            "already_running_ready",
            with_agents(ready_agent()),
            Ready,
            Reason::Ready.as_str(),
            Finish,
        )
        .outcome(Outcome::AlreadyRunning),
        case(
            "build_timeout",
            seen(build(3, T::Start, J::Running, vec![])),
            Failed,
            Reason::BuildTimeout.as_str(),
            Finish,
        )
        .status(following(3))
        .at(601),
        // startTime is kept to the whole second: the timeout counts from the end of it.
        case(
            "build_timeout_never_early",
            seen(build(3, T::Start, J::Running, vec![])),
            Starting,
            Reason::BuildInProgress.as_str(),
            Requeue,
        )
        .status(following(3))
        .at(600),
        case(
            "stopped_after_deadline_fails",
            seen(build(1, T::Stop, J::Succeeded, vec![])),
            Failed,
            Reason::BuildTimeout.as_str(),
            Finish,
        )
        .status(status_started_at(0))
        .at(700),
        // Our build ends badly: one attempt only.
        case(
            "our_build_failed",
            failed_with(None),
            Failed,
            Reason::BuildFailed.as_str(),
            Finish,
        )
        .status(following(2)),
        case(
            "our_build_quota",
            failed_with(Some("INSUFFICIENT_QUOTA")),
            Failed,
            Reason::InsufficientQuota.as_str(),
            Finish,
        )
        .status(following(2)),
        case(
            "our_build_canceled",
            seen(build(2, T::Start, J::Canceled, vec![])),
            Failed,
            Reason::BuildCanceled.as_str(),
            Finish,
        )
        .status(following(2)),
        case(
            "joined_build_failed",
            failed_with(None),
            Failed,
            Reason::BuildFailed.as_str(),
            Finish,
        )
        .status(WorkspaceStartRequestStatus {
            outcome: Some(Outcome::InProgress),
            build_requested_at: None,
            ..following(2)
        }),
        case(
            "our_build_job_unknown_waits",
            seen(build(2, T::Start, J::Unknown, vec![])),
            Starting,
            Reason::BuildInProgress.as_str(),
            Requeue,
        )
        .status(following(2)),
        case(
            "superseded_by_stop",
            seen(build(3, T::Stop, J::Pending, vec![])),
            Failed,
            Reason::BuildSuperseded.as_str(),
            Finish,
        )
        .status(following(2)),
        case(
            "newer_start_build_is_followed",
            seen(build(3, T::Start, J::Running, vec![])),
            Starting,
            Reason::BuildInProgress.as_str(),
            Requeue,
        )
        .status(following(2))
        .outcome(Outcome::Queued),
        // Crash recovery around the POST.
        case(
            "crash_after_post_adopts_build",
            seen(build(2, T::Start, J::Running, vec![])),
            Starting,
            Reason::BuildInProgress.as_str(),
            Requeue,
        )
        .status(requested_after(1))
        .outcome(Outcome::Queued),
        case(
            "crash_after_post_build_done",
            with_agents(ready_agent()),
            Ready,
            Reason::Ready.as_str(),
            Finish,
        )
        .status(requested_after(1))
        .outcome(Outcome::Queued),
        case(
            "crash_before_post_requests_again",
            seen(build(1, T::Stop, J::Succeeded, vec![])),
            Starting,
            Reason::StartRequested.as_str(),
            Start,
        )
        .status(requested_after(1)),
        case(
            "stop_build_won_race_waits",
            seen(build(2, T::Stop, J::Running, vec![])),
            Starting,
            Reason::WaitingForStopBuild.as_str(),
            Requeue,
        )
        .status(requested_after(1)),
        case(
            "stop_build_won_race_then_starts",
            seen(build(2, T::Stop, J::Succeeded, vec![])),
            Starting,
            Reason::StartRequested.as_str(),
            Start,
        )
        .status(requested_after(1)),
        // Result lost and two builds since (ours may be the first): never POST on a maybe.
        case(
            "lost_post_then_stopped_fails",
            seen(build(3, T::Stop, J::Succeeded, vec![])),
            Failed,
            Reason::BuildSuperseded.as_str(),
            Finish,
        )
        .status(requested_after(1)),
        // Agents.
        case(
            "agent_connecting_waits",
            with_agents(vec![agent("main", "connecting", "created")]),
            WaitingForAgent,
            Reason::WaitingForAgent.as_str(),
            Requeue,
        ),
        case(
            "agent_starting_waits",
            with_agents(vec![agent("main", "connected", "starting")]),
            WaitingForAgent,
            Reason::WaitingForAgent.as_str(),
            Requeue,
        ),
        case(
            "agent_ready_but_disconnected_waits",
            with_agents(vec![agent("main", "disconnected", "ready")]),
            WaitingForAgent,
            Reason::WaitingForAgent.as_str(),
            Requeue,
        ),
        // An external agent Coder cannot start: fail at once when unreachable, as Coder does.
        case(
            "external_agent_connecting_waits",
            with_external_agent("connecting"),
            WaitingForAgent,
            Reason::WaitingForAgent.as_str(),
            Requeue,
        ),
        case(
            "external_agent_timed_out_fails_fast",
            with_external_agent("timeout"),
            Failed,
            Reason::ExternalAgentUnavailable.as_str(),
            Finish,
        ),
        case(
            "external_agent_offline_fails_fast",
            with_external_agent("disconnected"),
            Failed,
            Reason::ExternalAgentUnavailable.as_str(),
            Finish,
        ),
        case(
            "agent_start_error",
            with_agents(vec![agent("main", "connected", "start_error")]),
            Failed,
            Reason::AgentStartError.as_str(),
            Finish,
        ),
        case(
            "agent_start_timeout",
            with_agents(vec![agent("main", "connected", "start_timeout")]),
            Failed,
            Reason::AgentTimeout.as_str(),
            Finish,
        ),
        case(
            "agent_shutting_down",
            with_agents(vec![agent("main", "connected", "shutting_down")]),
            Failed,
            Reason::AgentStartError.as_str(),
            Finish,
        ),
        case(
            "agent_deadline",
            with_agents(vec![agent("main", "connecting", "created")]),
            Failed,
            Reason::AgentTimeout.as_str(),
            Finish,
        )
        .status(waiting_for_agent(100))
        .at(701),
        // BuildSucceeded's lastTransitionTime is kept to the whole second.
        case(
            "agent_timeout_never_early",
            with_agents(vec![agent("main", "connecting", "created")]),
            WaitingForAgent,
            Reason::WaitingForAgent.as_str(),
            Requeue,
        )
        .status(waiting_for_agent(100))
        .at(700),
        case(
            "no_agent_is_ready",
            with_agents(vec![]),
            Ready,
            Reason::NoAgent.as_str(),
            Finish,
        ),
        case(
            "only_sub_agents",
            with_agents(vec![sub.clone()]),
            Failed,
            Reason::AgentSelectionError.as_str(),
            Finish,
        ),
        case(
            "two_chat_agents",
            with_agents(vec![
                agent("a-coderd-chat", "connected", "ready"),
                agent("b-coderd-chat", "connected", "ready"),
            ]),
            Failed,
            Reason::AgentSelectionError.as_str(),
            Finish,
        ),
        case(
            "agent_name_not_found",
            with_agents(ready_agent()),
            Failed,
            Reason::AgentNotFound.as_str(),
            Finish,
        )
        .spec(WorkspaceStartRequestSpec {
            agent_name: Some("gpu".into()),
            ..spec()
        }),
        // Terminal requests cost nothing and never change.
        case("terminal_is_final", down(), Ready, "", Finish).status(WorkspaceStartRequestStatus {
            phase: Some(Ready),
            ..Default::default()
        }),
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let d = run(c);
        let got = (d.status.phase, ready_reason(&d), act(&d.action));
        let want = (Some(c.phase), c.reason.to_string(), c.action);
        if got != want || (c.outcome.is_some() && d.status.outcome != c.outcome) {
            failures.push(format!(
                "{}: got {:?} outcome {:?}, want {:?} outcome {:?}",
                c.name, got, d.status.outcome, want, c.outcome
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "failing rows:\n{}",
        failures.join("\n")
    );
}

fn names_selected(agents: Vec<Agent>) -> Option<String> {
    let b = build(1, Transition::Start, JobStatus::Succeeded, agents);
    select_agent(&b, None)
        .ok()
        .flatten()
        .map(|a| a.name.clone())
}

#[test]
fn agent_selection_follows_the_chat_tool() {
    let a = |n: &str| agent(n, "connected", "ready");
    // Coder lists agents by display order, then name: the first listed root agent is the
    // chat tool's pick, whatever its name.
    assert_eq!(
        names_selected(vec![a("zeta"), a("Alpha"), a("beta")]),
        Some("zeta".into())
    );
    assert_eq!(
        names_selected(vec![a("zeta"), a("Alpha"), a("beta-coderd-chat")]),
        Some("beta-coderd-chat".into())
    );
    assert_eq!(
        names_selected(vec![a("alpha"), a("main-CODERD-chat")]),
        Some("main-CODERD-chat".into())
    );
    let mut child = a("child-coderd-chat");
    child.parent_id = Some(Uuid::new_v4());
    assert_eq!(names_selected(vec![a("root"), child]), Some("root".into()));
}

#[test]
fn start_request_carries_parameters_and_active_version() {
    let mut ws = workspace(build(1, Transition::Stop, JobStatus::Succeeded, vec![]));
    ws.template_require_active_version = true;
    let spec = WorkspaceStartRequestSpec {
        parameters: vec![BuildParameter {
            name: "region".into(),
            value: "eu".into(),
        }],
        ..spec()
    };
    let status = WorkspaceStartRequestStatus::default();
    let d = decide(&Input {
        spec: &spec,
        generation: Some(1),
        status: &status,
        observation: Observation::Workspace {
            chat_owner: None,
            workspace: Box::new(ws),
            owner: OwnerState::Active,
        },
        now: t(0),
        poll: Duration::from_secs(2),
        build_timings: None,
    });
    let Action::StartBuild { workspace, request } = d.action else {
        panic!("want StartBuild, got {:?}", d.action)
    };
    assert_eq!(workspace, uuid(WS));
    assert_eq!(request.transition, Transition::Start);
    assert_eq!(request.template_version_id, Some(uuid(ACTIVE_VERSION)));
    assert_eq!(
        request.rich_parameter_values,
        vec![ParameterValue {
            name: "region".into(),
            value: "eu".into()
        }]
    );
    // The status remembers the build seen before the request and when it was made.
    assert_eq!(d.status.build.as_ref().map(|b| b.number), Some(1));
    assert_eq!(d.status.build_requested_at, Some(Time(t(0))));
    assert_eq!(d.status.outcome, None);
    // The previous build ran another version: the start moves to the active one.
    assert_eq!(d.status.updated_to_active_version, Some(true));
}

#[test]
fn requeue_never_sleeps_past_the_deadline() {
    let spec = WorkspaceStartRequestSpec {
        timeouts: Some(Timeouts {
            build: Some("30s".into()),
            agent: None,
        }),
        ..spec()
    };
    let status = status_started_at(0);
    let d = decide(&Input {
        spec: &spec,
        generation: Some(1),
        status: &status,
        observation: seen(build(1, Transition::Start, JobStatus::Running, vec![])),
        now: t(30),
        poll: Duration::from_secs(30),
        build_timings: None,
    });
    // startTime t(0) stands for an instant in [0 s, 1 s): the 30 s run out at t(31) at the
    // latest, never before.
    assert_eq!(d.action, Action::Requeue(Duration::from_secs(1)));
}

#[test]
fn conditions_follow_kstatus() {
    let c = case(
        "x",
        with_agents(ready_agent()),
        Phase::Ready,
        Reason::Ready.as_str(),
        Act::Finish,
    );
    let d = run(&c);
    let st = |ty| conditions::get(&d.status.conditions, ty).map(|c| c.status.clone());
    assert_eq!(st(types::READY).as_deref(), Some("True"));
    assert_eq!(st(types::RECONCILING).as_deref(), Some("False"));
    assert_eq!(st(types::STALLED).as_deref(), Some("False"));
    assert_eq!(st(types::BUILD_SUCCEEDED).as_deref(), Some("True"));
    assert_eq!(st(types::AGENT_READY).as_deref(), Some("True"));
    assert!(d.status.completion_time.is_some());
    assert_eq!(d.status.observed_generation, Some(1));

    let c = case(
        "y",
        failed_with(Some("INSUFFICIENT_QUOTA")),
        Phase::Failed,
        Reason::InsufficientQuota.as_str(),
        Act::Finish,
    )
    .status(following(2));
    let d = run(&c);
    let st = |ty| conditions::get(&d.status.conditions, ty).map(|c| c.status.clone());
    assert_eq!(st(types::STALLED).as_deref(), Some("True"));
    assert_eq!(st(types::BUILD_SUCCEEDED).as_deref(), Some("False"));
    assert_eq!(
        d.status
            .build
            .as_ref()
            .and_then(|b| b.error_code.as_deref()),
        Some("INSUFFICIENT_QUOTA")
    );
}

#[test]
fn undecided_conditions_say_what_happens_now_and_drop_a_passing_outage() {
    let input = |st: &WorkspaceStartRequestStatus, obs: Observation, now: i64| {
        decide(&Input {
            spec: &spec(),
            generation: Some(1),
            status: st,
            observation: obs,
            now: t(now),
            poll: Duration::from_secs(2),
            build_timings: None,
        })
        .status
    };
    let reason = |st: &WorkspaceStartRequestStatus, ty| {
        conditions::get(&st.conditions, ty).map(|c| (c.status.clone(), c.reason.clone()))
    };
    let unknown = |r: Reason| Some(("Unknown".to_owned(), r.as_str().to_owned()));
    // Coder is unavailable on the first look: both undecided conditions say so ...
    let waiting = input(&status_started_at(0), down(), 1);
    assert_eq!(
        reason(&waiting, types::BUILD_SUCCEEDED),
        unknown(Reason::CoderUnavailable)
    );
    // ... and once Coder answers and the build runs, they follow it.
    let running = seen(build(2, Transition::Start, JobStatus::Running, vec![]));
    let building = input(&waiting, running, 5);
    assert_ne!(
        reason(&building, types::BUILD_SUCCEEDED),
        unknown(Reason::CoderUnavailable)
    );
    assert_ne!(
        reason(&building, types::AGENT_READY),
        unknown(Reason::CoderUnavailable)
    );
    // A decided condition keeps its verdict while the agent is awaited.
    let connecting = vec![agent("main", "connecting", "created")];
    let succeeded = seen(build(
        2,
        Transition::Start,
        JobStatus::Succeeded,
        connecting,
    ));
    let awaiting = input(&building, succeeded, 9);
    let done = reason(&awaiting, types::BUILD_SUCCEEDED);
    assert_eq!(done.as_ref().map(|(s, _)| s.as_str()), Some("True"));
    let later = input(&awaiting, down(), 10);
    assert_eq!(reason(&later, types::BUILD_SUCCEEDED), done);
    assert_eq!(
        reason(&later, types::AGENT_READY),
        unknown(Reason::CoderUnavailable)
    );
}

#[test]
fn coder_unavailable_names_the_last_error_while_retrying_and_at_the_deadline() {
    let st = status_started_at(0);
    let at = |now: i64, obs: Observation| {
        decide(&Input {
            spec: &spec(),
            generation: Some(1),
            status: &st,
            observation: obs,
            now: t(now),
            poll: Duration::from_secs(2),
            build_timings: None,
        })
        .status
        .message
        .unwrap_or_default()
    };
    assert_eq!(
        at(10, down()),
        "Coder is unavailable (HTTP 503 from /api/v2/workspaces/{id}: db down); retrying with backoff"
    );
    assert_eq!(
        at(601, down()),
        "Coder stayed unavailable until the request's deadline: last error: HTTP 503 from /api/v2/workspaces/{id}: db down"
    );
    let owner = seen_ws(
        workspace(stopped()),
        OwnerState::Unavailable(
            "/api/v2/users/{user}: cannot connect to Coder: connection refused".into(),
        ),
    );
    assert_eq!(
        at(601, owner),
        "Coder stayed unavailable until the request's deadline: last error: /api/v2/users/{user}: cannot connect to Coder: connection refused"
    );
}

#[test]
fn coder_unavailable_waits_no_later_than_the_deadline() {
    let at = |status: &WorkspaceStartRequestStatus, now: i64| {
        decide(&Input {
            spec: &spec(),
            generation: Some(1),
            status,
            observation: down(),
            now: t(now),
            poll: Duration::from_secs(2),
            build_timings: None,
        })
        .action
    };
    // startTime t(0): the build deadline (600 s) runs out at t(601).
    let deadline = |secs| Action::AwaitCoder {
        deadline: Duration::from_secs(secs),
    };
    assert_eq!(at(&status_started_at(0), 10), deadline(591));
    assert_eq!(at(&status_started_at(0), 600), deadline(1));
    // Waiting for the agent: its own deadline, from the build's success at t(500).
    assert_eq!(at(&waiting_for_agent(500), 900), deadline(201));
}

#[test]
fn queued_build_is_followed_as_our_own() {
    let st = requested_after(1);
    let input = Input {
        spec: &spec(),
        generation: Some(1),
        status: &st,
        observation: Observation::BuildCreated(Box::new(build(
            2,
            Transition::Start,
            JobStatus::Pending,
            vec![],
        ))),
        now: t(1),
        poll: Duration::from_secs(2),
        build_timings: None,
    };
    let d = decide(&input);
    assert_eq!(d.action, Action::Requeue(Duration::from_secs(2)));
    assert_eq!(d.status.phase, Some(Phase::Starting));
    assert_eq!(d.status.outcome, Some(Outcome::Queued));
    assert_eq!(d.status.build.as_ref().map(|b| b.number), Some(2));
    assert_eq!(d.status.build_requested_at, st.build_requested_at);
    assert_eq!(ready_reason(&d), Reason::BuildInProgress);
    assert!(conditions::is_true(
        &d.status.conditions,
        types::RECONCILING
    ));
}

#[test]
fn recorded_times_count_from_the_end_of_their_second() {
    let whole = t(5);
    assert_eq!(no_earlier_than(whole), t(6));
    let precise = whole
        .checked_add(jiff::SignedDuration::from_millis(999))
        .expect("ts");
    assert_eq!(no_earlier_than(precise), t(6));
}
