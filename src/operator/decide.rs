//! The pure state machine: from (spec, previous status, observed Coder state, now) to the next
//! status and one action. It mirrors Coder's `start_workspace` chat tool, with its bugs fixed
//! (a canceling build is waited on, not raced; one start attempt; deadlines from the spec).
//! No I/O happens here; every branch has a table test below.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use uuid::Uuid;

use crate::api::conditions::{self, types};
use crate::api::crd::{
    AgentInfo, BuildInfo, Outcome, Phase, WorkspaceInfo, WorkspaceStartRequestSpec,
    WorkspaceStartRequestStatus,
};
use crate::api::duration::parse_duration;
use crate::api::reason::Reason;
use crate::coder::logs::WorkspaceBuildTimings;
use crate::coder::types::{
    Agent, CreateWorkspaceBuildRequest, JobStatus, ParameterValue, Transition, Workspace,
    WorkspaceBuild,
};
use crate::operator::timings;

/// Default build and agent timeouts (the chat tool's constants).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// The agent name suffix that marks the chat agent.
pub const CHAT_AGENT_SUFFIX: &str = "-coderd-chat";

/// What the operator saw when it looked at Coder for this request.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// The request cannot succeed: fail at once with this reason and message (a bad or
    /// missing Secret, no connection, a URL not allowed, or Coder's final answer such as 401,
    /// 403, 400 or an invalid or oversized response).
    Failed {
        /// A reason from [`reasons`].
        reason: Reason,
        /// User-facing message (never a token).
        message: String,
    },
    /// Coder is down, slow, overloaded or returned 5xx/429: retry later.
    CoderUnavailable {
        /// What failed, for the message (see `CoderError::transient_cause`; bounded, no
        /// token). Empty when unknown.
        cause: String,
    },
    /// Something other than Coder failed for now (e.g. the API server while reading the
    /// `coderRef` Secret): retry with backoff until the deadline, showing this reason. The
    /// message says what fails ("cannot read …"); `decide` adds "retrying" or the deadline.
    Retrying {
        /// A reason from [`reasons`] (in progress; also the failure reason at the deadline).
        reason: Reason,
        /// User-facing message.
        message: String,
    },
    /// The chat does not exist (or is hidden from this token).
    ChatNotFound,
    /// The chat has no workspace.
    ChatHasNoWorkspace,
    /// The workspace answered 410, or 404.
    WorkspaceGone,
    /// Coder created the start build this request asked for (201 on our POST).
    BuildCreated(Box<WorkspaceBuild>),
    /// The workspace, and the chat's owner when the request names a chat.
    Workspace {
        /// Owner of the chat, when it was read in this pass.
        chat_owner: Option<Uuid>,
        /// The workspace with its latest build.
        workspace: Box<Workspace>,
        /// The chat owner's account, once looked at (before a start build).
        owner: OwnerState,
    },
}

/// The chat owner's account as the operator found it before a start build: the chat tool
/// refuses unless the owner is active and not deleted (`asOwner` in `chattool/subject.go`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerState {
    /// Not looked at (yet): `decide` asks for it ([`Action::CheckOwner`]) before a start.
    Unchecked,
    /// Active and not deleted.
    Active,
    /// Suspended, dormant, deleted or unknown: nothing is started; the message says which.
    Inactive(String),
    /// Coder could not say (5xx, 429, timeout): retry. Holds the cause, as
    /// [`Observation::CoderUnavailable`] does.
    Unavailable(String),
}

/// Everything `decide` looks at.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// The request's spec.
    pub spec: &'a WorkspaceStartRequestSpec,
    /// The request's `metadata.generation`.
    pub generation: Option<i64>,
    /// The status as last written.
    pub status: &'a WorkspaceStartRequestStatus,
    /// What Coder said.
    pub observation: Observation,
    /// The current time.
    pub now: Timestamp,
    /// How often to look again while waiting (without an event stream).
    pub poll: Duration,
    /// Coder's timings of the build the request followed, when the reconcile pass read them
    /// for a request finishing now ([`timings::timings_wanted`]); they refine
    /// `status.timings`.
    pub build_timings: Option<&'a WorkspaceBuildTimings>,
}

/// The one thing to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write the status (with `buildRequestedAt`), then POST this start build.
    StartBuild {
        /// Workspace to start.
        workspace: Uuid,
        /// Request body.
        request: CreateWorkspaceBuildRequest,
    },
    /// Look at the chat owner's account (`owner`), then decide again with it.
    CheckOwner {
        /// The chat owner (also the workspace's owner).
        owner: Uuid,
    },
    /// Nothing to do until then (or until an event arrives).
    Requeue(Duration),
    /// Something other than Coder failed for now: retry with the per-object backoff.
    Retry,
    /// Coder was unavailable: wait until its endpoint answers again (the operator's health
    /// signal, or the request's own backoff when only its path fails), and look again no
    /// later than `deadline` from now, when the request fails.
    AwaitCoder {
        /// Time left until the deadline of the current phase.
        deadline: Duration,
    },
    /// The request reached Ready or Failed.
    Finish,
}

/// The next status and action.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The full status to write.
    pub status: WorkspaceStartRequestStatus,
    /// What to do.
    pub action: Action,
}

fn timeout(v: Option<&String>) -> Duration {
    v.and_then(|s| parse_duration(s)).unwrap_or(DEFAULT_TIMEOUT)
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// When a request that finished at `done` expires after `ttl_seconds` (negative counts as 0);
/// `None` when that instant is out of range (a TTL the CRD's maximum now refuses).
pub fn ttl_expiry(done: Timestamp, ttl_seconds: i64) -> Option<Timestamp> {
    done.checked_add(jiff::SignedDuration::from_secs(ttl_seconds.max(0)))
        .ok()
}

/// The earliest instant a recorded time can stand for. Times written to the status (a
/// condition's `lastTransitionTime`, `startTime`) are kept to the whole second, so the instant
/// they record lies in `[t, t + 1s)`; counting a timeout from the end of that second means it
/// never fires before it has fully elapsed (and at most a second late).
pub fn no_earlier_than(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second().saturating_add(1)).unwrap_or(t)
}

fn until(now: Timestamp, deadline: Timestamp) -> Duration {
    Duration::try_from(deadline.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// The status block for a Coder build (never its job's error text).
pub fn build_info(b: &WorkspaceBuild) -> BuildInfo {
    BuildInfo {
        id: b.id.to_string(),
        number: b.build_number,
        transition: b.transition.as_str().to_owned(),
        job_status: b.job.status.as_str().to_owned(),
        error_code: b.job.error_code.clone(),
        template_version_id: b.template_version_id.map(|v| v.to_string()),
    }
}

/// The agent the chat tool would pick: root agents in Coder's order; the one whose name ends in
/// `-coderd-chat`, else the first. `Ok(None)` = the build has no agents.
///
/// The chat tool sorts by display order, then name (`agentselect.go`). The REST answer does
/// not carry the display order, but `convertWorkspaceBuild` lists each resource's agents by
/// it (then name) and the resources by their lowest agent order, so the first root agent as
/// listed is the tool's pick whenever one resource holds the agents (the usual template).
pub fn select_agent<'a>(
    build: &'a WorkspaceBuild,
    wanted: Option<&str>,
) -> Result<Option<&'a Agent>, (Reason, String)> {
    let all: Vec<&Agent> = build.agents().collect();
    if all.is_empty() {
        return Ok(None);
    }
    if let Some(name) = wanted {
        return all.into_iter().find(|a| a.name == name).map(Some).ok_or((
            Reason::AgentNotFound,
            format!("the workspace has no agent named {name:?}"),
        ));
    }
    let roots: Vec<&Agent> = all.into_iter().filter(|a| a.parent_id.is_none()).collect();
    if roots.is_empty() {
        return Err((
            Reason::AgentSelectionError,
            "no eligible workspace agents found".into(),
        ));
    }
    let chat: Vec<&Agent> = roots
        .iter()
        .copied()
        .filter(|a| a.name.to_lowercase().ends_with(CHAT_AGENT_SUFFIX))
        .collect();
    match chat.as_slice() {
        [one] => Ok(Some(one)),
        [] => Ok(roots.first().copied()),
        many => Err((
            Reason::AgentSelectionError,
            format!(
                "multiple agents match the chat suffix {CHAT_AGENT_SUFFIX:?}: {}; only one agent should use this suffix",
                many.iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Builds the next status step by step.
struct Next<'a> {
    input: &'a Input<'a>,
    st: WorkspaceStartRequestStatus,
    now: Time,
}

impl<'a> Next<'a> {
    fn new(input: &'a Input<'a>) -> Next<'a> {
        let mut st = input.status.clone();
        let now = Time(input.now);
        st.observed_generation = input.generation;
        if st.start_time.is_none() {
            st.start_time = Some(now.clone());
        }
        Next { input, st, now }
    }

    fn cond(&mut self, type_: &str, status: &str, reason: Reason, message: &str) {
        conditions::set(
            &mut self.st.conditions,
            type_,
            status,
            reason,
            message,
            self.input.generation,
            &self.now,
        );
    }

    fn progressing(
        mut self,
        phase: Phase,
        reason: Reason,
        message: &str,
        action: Action,
    ) -> Decision {
        self.st.phase = Some(phase);
        self.st.message = Some(message.to_owned());
        self.cond(types::READY, "False", reason, message);
        self.cond(types::RECONCILING, "True", reason, message);
        self.cond(types::STALLED, "False", reason, message);
        // Not decided yet: they say what is happening now (a passing `CoderUnavailable` must
        // not stay on them once the build runs); once True or False they keep their verdict.
        for type_ in [types::BUILD_SUCCEEDED, types::AGENT_READY] {
            if conditions::get(&self.st.conditions, type_).is_none_or(|c| c.status == "Unknown") {
                self.cond(type_, "Unknown", reason, message);
            }
        }
        Decision {
            status: self.st,
            action,
        }
    }

    fn fail(mut self, reason: Reason, message: &str) -> Decision {
        self.st.phase = Some(Phase::Failed);
        self.st.message = Some(message.to_owned());
        self.st.completion_time = Some(self.now.clone());
        self.cond(types::READY, "False", reason, message);
        self.cond(types::RECONCILING, "False", reason, message);
        self.cond(types::STALLED, "True", reason, message);
        if !conditions::is_true(&self.st.conditions, types::BUILD_SUCCEEDED) {
            self.cond(types::BUILD_SUCCEEDED, "False", reason, message);
        }
        self.cond(types::AGENT_READY, "False", reason, message);
        Decision {
            status: self.st,
            action: Action::Finish,
        }
    }

    fn ready(mut self, reason: Reason, message: &str) -> Decision {
        self.st.phase = Some(Phase::Ready);
        self.st.message = Some(message.to_owned());
        self.st.completion_time = Some(self.now.clone());
        self.cond(types::READY, "True", reason, message);
        self.cond(types::RECONCILING, "False", reason, message);
        self.cond(types::STALLED, "False", reason, message);
        self.cond(types::AGENT_READY, "True", reason, message);
        Decision {
            status: self.st,
            action: Action::Finish,
        }
    }

    /// When the request started (see [`no_earlier_than`]).
    fn start_time(&self) -> Timestamp {
        self.st
            .start_time
            .as_ref()
            .map_or(self.input.now, |t| no_earlier_than(t.0))
    }

    /// True when the request follows `b` (its own or a joined start build).
    fn follows(&self, b: &WorkspaceBuild) -> bool {
        self.st.outcome.is_some()
            && self
                .st
                .build
                .as_ref()
                .is_some_and(|f| f.id == b.id.to_string())
    }

    /// Waits for a build (progress `reason`, `message`) until the build deadline.
    fn waiting_for_build(self, reason: Reason, message: &str) -> Decision {
        let deadline = self.build_deadline();
        if self.input.now >= deadline {
            return self.fail(
                Reason::BuildTimeout,
                "the build did not finish within spec.timeouts.build",
            );
        }
        let wait = self.wait(deadline);
        self.progressing(Phase::Starting, reason, message, wait)
    }

    fn build_deadline(&self) -> Timestamp {
        plus(
            self.start_time(),
            timeout(
                self.input
                    .spec
                    .timeouts
                    .as_ref()
                    .and_then(|t| t.build.as_ref()),
            ),
        )
    }

    /// Requeue after the poll interval, but no later than the deadline.
    fn wait(&self, deadline: Timestamp) -> Action {
        Action::Requeue(
            self.input
                .poll
                .min(until(self.input.now, deadline))
                .max(Duration::from_millis(100)),
        )
    }
}

/// Decides the next status and action. Pure: same input, same output.
pub fn decide(input: &Input<'_>) -> Decision {
    if input.status.phase.is_some_and(Phase::is_terminal) {
        return Decision {
            status: input.status.clone(),
            action: Action::Finish,
        };
    }
    let mut decision = decide_observation(input);
    // A request finishing now gets its stage timings, from the build it last saw and Coder's
    // timings of that build when the reconcile pass read them.
    let build = match &input.observation {
        Observation::Workspace { workspace, .. } => Some(&workspace.latest_build),
        Observation::BuildCreated(build) => Some(&**build),
        _ => None,
    };
    timings::stamp(&mut decision.status, build, input.build_timings);
    decision
}

/// [`decide`] for a request not finished yet.
fn decide_observation(input: &Input<'_>) -> Decision {
    let next = Next::new(input);
    match &input.observation {
        Observation::Failed { reason, message } => next.fail(*reason, message),
        Observation::ChatNotFound => next.fail(
            Reason::ChatNotFound,
            "chat not found, or not visible to this Coder token",
        ),
        Observation::ChatHasNoWorkspace => next.fail(
            Reason::ChatHasNoWorkspace,
            "chat has no workspace; create one first",
        ),
        Observation::WorkspaceGone => next.fail(
            Reason::WorkspaceDeleted,
            "workspace was deleted (or is not visible to this Coder token)",
        ),
        Observation::CoderUnavailable { cause } => unavailable(next, cause),
        Observation::BuildCreated(build) => queued(next, build),
        Observation::Retrying { reason, message } => {
            let now = format!("{message}; retrying with backoff");
            let last = format!("{message}, until the request's deadline");
            retrying(next, *reason, &now, &last, |_| Action::Retry)
        }
        Observation::Workspace {
            chat_owner,
            workspace,
            owner,
        } => decide_workspace(next, *chat_owner, workspace, owner),
    }
}

/// Coder is unavailable: waits for Coder until the deadline, then fails. Both messages name
/// the `cause` (the last error), so a request that times out says why.
fn unavailable(next: Next<'_>, cause: &str) -> Decision {
    let (message, last) = if cause.is_empty() {
        (
            "Coder is unavailable; retrying with backoff".to_owned(),
            "Coder stayed unavailable until the request's deadline".to_owned(),
        )
    } else {
        (
            format!("Coder is unavailable ({cause}); retrying with backoff"),
            format!("Coder stayed unavailable until the request's deadline: last error: {cause}"),
        )
    };
    retrying(
        next,
        Reason::CoderUnavailable,
        &message,
        &last,
        |deadline| Action::AwaitCoder { deadline },
    )
}

/// Retries, showing `reason` and `message`, until the deadline of the current phase; then
/// fails with `reason` and `last`. `wait` makes the action from the time left until then.
fn retrying(
    next: Next<'_>,
    reason: Reason,
    message: &str,
    last: &str,
    wait: fn(Duration) -> Action,
) -> Decision {
    let input = next.input;
    let deadline = match input.status.phase {
        Some(Phase::WaitingForAgent) => agent_deadline(&next),
        _ => next.build_deadline(),
    };
    if input.now >= deadline {
        return next.fail(reason, last);
    }
    let phase = input.status.phase.unwrap_or(Phase::Pending);
    let action = wait(until(input.now, deadline));
    next.progressing(phase, reason, message, action)
}

/// Records the start build Coder just created (201): Starting, outcome Queued, following it.
fn queued(mut next: Next<'_>, build: &WorkspaceBuild) -> Decision {
    next.st.build = Some(build_info(build));
    next.st.outcome = Some(Outcome::Queued);
    let msg = format!("start build #{} queued", build.build_number);
    let wait = Action::Requeue(next.input.poll);
    next.progressing(Phase::Starting, Reason::BuildInProgress, &msg, wait)
}

/// Decides on a workspace read: guards, which build the request follows, then what that
/// build's state asks for.
fn decide_workspace(
    mut next: Next<'_>,
    chat_owner: Option<Uuid>,
    ws: &Workspace,
    owner: &OwnerState,
) -> Decision {
    if owner_mismatch(next.input.spec, chat_owner, ws) {
        return next.fail(
            Reason::OwnerMismatch,
            "the chat's or workspace's owner does not match spec.ownerId (or each other); nothing was started",
        );
    }
    next.st.workspace = Some(WorkspaceInfo {
        id: ws.id.to_string(),
        name: ws.name.clone(),
        owner_name: Some(ws.owner_name.clone()).filter(|s| !s.is_empty()),
    });
    // The chat tool checks its owner first, whatever the workspace is doing (`asOwner` in
    // startworkspace.go runs before it looks at the build).
    let mut next = next;
    if chat_owner.is_some() {
        next = match owner_gate(next, ws, owner) {
            Ok(next) => next,
            Err(done) => return *done,
        };
    }
    let lb = &ws.latest_build;
    let next = match follow_latest(next, lb) {
        Ok(next) => next,
        Err(done) => return *done,
    };
    let following = next.follows(lb);
    let job = lb.job.status;
    match (job, lb.transition) {
        (_, Transition::Delete) if job.is_active() || job == JobStatus::Succeeded => next.fail(
            Reason::WorkspaceDeleted,
            "workspace is being deleted or was deleted",
        ),
        // A canceling build can only end canceled: never adopt it, wait, then start once.
        (JobStatus::Canceling, _) if !following => wait_for_cancel(next, lb),
        (j, _) if j.is_active() => wait_for_build(next, lb),
        (JobStatus::Unknown, _) if following => next.waiting_for_build(
            Reason::BuildInProgress,
            "waiting for the start build (job status unknown)",
        ),
        (JobStatus::Succeeded, Transition::Start) => build_succeeded(next, lb),
        (JobStatus::Failed | JobStatus::Canceled, _) if following => followed_build_ended(next, lb),
        // Stopped, failed, canceled or unknown, and not a build we are following: start.
        _ => start(next, ws, owner),
    }
}

/// True when the chat's or workspace's owner differs from `spec.ownerId`, or from each other.
fn owner_mismatch(
    spec: &WorkspaceStartRequestSpec,
    chat_owner: Option<Uuid>,
    ws: &Workspace,
) -> bool {
    let spec_owner = spec
        .owner_id
        .as_deref()
        .and_then(|s| Uuid::parse_str(s).ok());
    spec_owner.is_some_and(|o| ws.owner_id != o || chat_owner.is_some_and(|c| c != o))
        || chat_owner.is_some_and(|c| c != ws.owner_id)
}

/// Which build the request follows now that `lb` is the latest: adopts a start build our lost
/// POST may have created, follows a newer start build, or ends the request when a stop or
/// delete build replaced the one it followed.
fn follow_latest<'a>(mut next: Next<'a>, lb: &WorkspaceBuild) -> Result<Next<'a>, Box<Decision>> {
    let superseded = |next: Next<'_>| {
        Box::new(next.fail(
            Reason::BuildSuperseded,
            "another build (stop or delete) replaced the start build",
        ))
    };
    if next.st.build_requested_at.is_some() && next.st.outcome.is_none() {
        // A start build was requested but its result was never recorded (crash, timeout,
        // commit-then-fail). `status.build` still holds the build seen before the request.
        let base = next.st.build.as_ref().map_or(0, |b| b.number);
        if lb.build_number > base {
            next.st.build = Some(build_info(lb));
            if lb.transition == Transition::Start {
                next.st.outcome = Some(Outcome::Queued);
            } else if lb.build_number == base + 1 {
                // Someone else's stop/delete build took the next number: ours did not land.
                next.st.build_requested_at = None;
            } else {
                // Several builds since: ours may have landed and been stopped. Never POST a
                // second start build on a maybe.
                return Err(superseded(next));
            }
        }
    } else if next.st.outcome.is_some() && !next.follows(lb) {
        // A newer build replaced the one being followed.
        if lb.transition != Transition::Start {
            return Err(superseded(next));
        }
        next.st.build = Some(build_info(lb));
    }
    Ok(next)
}

/// Someone else's build is being canceled: wait until it is canceled, then start.
fn wait_for_cancel(mut next: Next<'_>, lb: &WorkspaceBuild) -> Decision {
    if next.st.build_requested_at.is_none() {
        next.st.build = Some(build_info(lb));
    }
    let msg = format!(
        "waiting for build #{} to finish canceling before starting",
        lb.build_number
    );
    next.waiting_for_build(Reason::WaitingForCanceledBuild, &msg)
}

/// A build is pending, running or (ours) canceling: follow a start build, or wait for a stop
/// build to finish before starting.
fn wait_for_build(mut next: Next<'_>, lb: &WorkspaceBuild) -> Decision {
    let j = lb.job.status;
    if lb.transition == Transition::Start {
        next.st.outcome.get_or_insert(Outcome::InProgress);
        next.st.build = Some(build_info(lb));
        let msg = format!(
            "waiting for start build #{} ({})",
            lb.build_number,
            j.as_str()
        );
        return next.waiting_for_build(Reason::BuildInProgress, &msg);
    }
    if next.st.build_requested_at.is_none() {
        next.st.build = Some(build_info(lb));
    }
    let msg = format!(
        "waiting for {} build #{} ({}) to finish before starting",
        lb.transition.as_str(),
        lb.build_number,
        j.as_str()
    );
    next.waiting_for_build(Reason::WaitingForStopBuild, &msg)
}

/// The latest build is a succeeded start: on to the agent.
fn build_succeeded(mut next: Next<'_>, lb: &WorkspaceBuild) -> Decision {
    next.st.outcome.get_or_insert(Outcome::AlreadyRunning);
    next.st.build = Some(build_info(lb));
    let msg = format!("build #{} succeeded", lb.build_number);
    next.cond(types::BUILD_SUCCEEDED, "True", Reason::BuildSucceeded, &msg);
    decide_agent(next, lb)
}

/// The build the request followed failed or was canceled: one attempt only.
fn followed_build_ended(mut next: Next<'_>, lb: &WorkspaceBuild) -> Decision {
    next.st.build = Some(build_info(lb));
    let (reason, msg) = if lb.job.status == JobStatus::Canceled {
        (Reason::BuildCanceled, "build was canceled")
    } else if lb.job.error_code.as_deref() == Some("INSUFFICIENT_QUOTA") {
        (
            Reason::InsufficientQuota,
            "Coder could not start this workspace because the owner's workspace quota is full",
        )
    } else {
        (
            Reason::BuildFailed,
            "workspace start build failed; see the build logs in Coder",
        )
    };
    next.fail(reason, msg)
}

/// The chat tool acts only for an active chat owner (`asOwner`): `Ok` when the owner is known
/// active, else the decision (ask for the owner, fail, or retry).
fn owner_gate<'a>(
    next: Next<'a>,
    ws: &Workspace,
    owner: &OwnerState,
) -> Result<Next<'a>, Box<Decision>> {
    match owner {
        OwnerState::Active => Ok(next),
        OwnerState::Unchecked => {
            let phase = next.input.status.phase.unwrap_or(Phase::Pending);
            let check = Action::CheckOwner { owner: ws.owner_id };
            Err(Box::new(next.progressing(
                phase,
                Reason::Pending,
                "checking that the chat owner is active",
                check,
            )))
        }
        OwnerState::Inactive(message) => Err(Box::new(next.fail(Reason::OwnerInactive, message))),
        OwnerState::Unavailable(cause) => Err(Box::new(unavailable(next, cause))),
    }
}

/// Nothing runs and nothing is followed: start the workspace, as the chat tool does once the
/// chat owner is active (`asOwner`). A dormant workspace is started too: current Coder wakes
/// it in the start build's transaction.
fn start(mut next: Next<'_>, ws: &Workspace, owner: &OwnerState) -> Decision {
    let input = next.input;
    if input.now >= next.build_deadline() {
        return next.fail(
            Reason::BuildTimeout,
            "the workspace could not be started within spec.timeouts.build",
        );
    }
    if input.spec.chat_id.is_some() {
        next = match owner_gate(next, ws, owner) {
            Ok(next) => next,
            Err(done) => return *done,
        };
    }
    let requested = next.st.build_requested_at.is_some();
    if !requested || next.st.outcome.is_none() {
        if !requested {
            next.st.build = Some(build_info(&ws.latest_build));
        }
        next.st.build_requested_at = Some(next.now.clone());
        next.st.outcome = None;
    }
    let request = CreateWorkspaceBuildRequest {
        transition: Transition::Start,
        // REST keeps the previous build's version; a template that requires the active one
        // refuses that, so send it (what the chat tool's chatStartWorkspace does server side).
        template_version_id: ws
            .template_require_active_version
            .then_some(ws.template_active_version_id)
            .flatten(),
        rich_parameter_values: input
            .spec
            .parameters
            .iter()
            .map(|p| ParameterValue {
                name: p.name.clone(),
                value: p.value.clone(),
            })
            .collect(),
    };
    // The start moves the workspace to the active version when it is sent and differs from
    // the previous build's (what Coder's tool reports as updated_to_active_version).
    if request.template_version_id.is_some()
        && request.template_version_id != ws.latest_build.template_version_id
    {
        next.st.updated_to_active_version = Some(true);
    }
    next.progressing(
        Phase::Starting,
        Reason::StartRequested,
        "requesting a start build",
        Action::StartBuild {
            workspace: ws.id,
            request,
        },
    )
}

/// `timeouts.agent` counts from the build's success, as the `BuildSucceeded` condition
/// recorded it (see [`no_earlier_than`]).
fn agent_deadline(next: &Next<'_>) -> Timestamp {
    let since = conditions::get(&next.st.conditions, types::BUILD_SUCCEEDED)
        .filter(|c| c.status == "True")
        .map_or(next.input.now, |c| {
            no_earlier_than(c.last_transition_time.0)
        });
    plus(
        since,
        timeout(
            next.input
                .spec
                .timeouts
                .as_ref()
                .and_then(|t| t.agent.as_ref()),
        ),
    )
}

fn decide_agent(mut next: Next<'_>, lb: &WorkspaceBuild) -> Decision {
    let input = next.input;
    let agent = match select_agent(lb, input.spec.agent_name.as_deref()) {
        Err((reason, msg)) => return next.fail(reason, &msg),
        Ok(None) => {
            next.st.agent = Some(AgentInfo {
                status: "no_agent".into(),
                ..AgentInfo::default()
            });
            return next.ready(Reason::NoAgent, "workspace is running; it has no agent");
        }
        Ok(Some(a)) => a,
    };
    next.st.agent = Some(AgentInfo {
        id: Some(agent.id.to_string()),
        name: Some(agent.name.clone()),
        status: agent.status.clone(),
        lifecycle_state: Some(agent.lifecycle_state.clone()),
    });
    if let Some(guidance) = crate::coder::external::unavailable_message(lb, agent) {
        return next.fail(Reason::ExternalAgentUnavailable, guidance);
    }
    match agent.lifecycle_state.as_str() {
        "ready" if agent.status == "connected" => {
            let msg = format!("workspace is running and agent {:?} is ready", agent.name);
            next.ready(Reason::Ready, &msg)
        }
        "start_error" => next.fail(
            Reason::AgentStartError,
            "the agent's startup scripts failed (lifecycle start_error)",
        ),
        "start_timeout" => next.fail(
            Reason::AgentTimeout,
            "the agent's startup scripts timed out (lifecycle start_timeout)",
        ),
        "created" | "starting" | "ready" => {
            let deadline = agent_deadline(&next);
            if input.now >= deadline {
                return next.fail(
                    Reason::AgentTimeout,
                    "the agent did not become ready within spec.timeouts.agent",
                );
            }
            let msg = format!(
                "waiting for agent {:?} (status {}, lifecycle {})",
                agent.name, agent.status, agent.lifecycle_state
            );
            let wait = next.wait(deadline);
            next.progressing(Phase::WaitingForAgent, Reason::WaitingForAgent, &msg, wait)
        }
        other => {
            let msg = format!("the agent is not starting (lifecycle {other})");
            next.fail(Reason::AgentStartError, &msg)
        }
    }
}

#[cfg(test)]
mod tests;
