//! The pure state machine: from (spec, previous status, observed Coder state, now) to the next
//! status and one action. It mirrors Coder's `start_workspace` chat tool, with its bugs fixed
//! (a canceling build is waited on, not raced; one start attempt; deadlines from the spec).
//! No I/O happens here; every branch has a table test below.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use uuid::Uuid;

use crate::coder::types::{
    Agent, CreateWorkspaceBuildRequest, JobStatus, ParameterValue, Transition, Workspace,
    WorkspaceBuild,
};
use crate::conditions::{self, reasons, types};
use crate::crd::{
    AgentInfo, BuildInfo, Outcome, Phase, WorkspaceInfo, WorkspaceStartRequestSpec,
    WorkspaceStartRequestStatus,
};

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
        reason: &'static str,
        /// User-facing message (never a token).
        message: String,
    },
    /// Coder is down, slow, overloaded or returned 5xx/429: retry later.
    CoderUnavailable,
    /// Something other than Coder failed for now (e.g. the API server while reading the
    /// `coderRef` Secret): retry with backoff until the deadline, showing this reason.
    Retrying {
        /// A reason from [`reasons`] (in progress; also the failure reason at the deadline).
        reason: &'static str,
        /// User-facing message.
        message: String,
    },
    /// The chat does not exist (or is hidden from this token).
    ChatNotFound,
    /// The chat has no workspace.
    ChatHasNoWorkspace,
    /// The workspace answered 410, or 404.
    WorkspaceGone,
    /// The workspace, and the chat's owner when the request names a chat.
    Workspace {
        /// Owner of the chat, when the request names a chat.
        chat_owner: Option<Uuid>,
        /// The workspace with its latest build.
        workspace: Box<Workspace>,
    },
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
    /// Nothing to do until then (or until an event arrives).
    Requeue(Duration),
    /// Coder was unavailable: retry with the per-object backoff.
    Retry,
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

/// Parses a Go duration (`10m`, `90s`, `1h30m`, `1.5h`, `500ms`) as Go's `time.ParseDuration`
/// does for non-negative values: integer nanoseconds, fractions as Go rounds them, `None` for
/// anything malformed or beyond Go's limit (about 2562047h). Never panics, whatever the input.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let (part, after) = duration_part(rest)?;
        total = total.checked_add(part)?;
        rest = after;
    }
    // Go keeps durations in an i64 of nanoseconds.
    (total <= i64::MAX as u64).then(|| Duration::from_nanos(total))
}

/// One `[0-9]*(.[0-9]*)?unit` part of a Go duration, in nanoseconds, and what follows it.
fn duration_part(s: &str) -> Option<(u64, &str)> {
    let digits = |t: &str| t.bytes().take_while(u8::is_ascii_digit).count();
    let (int, rest) = s.split_at(digits(s));
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(r) => r.split_at(digits(r)),
        None => ("", rest),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let unit_len = rest
        .find(|c: char| c.is_ascii_digit() || c == '.')
        .unwrap_or(rest.len());
    let (unit, rest) = rest.split_at(unit_len);
    let unit: u64 = match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    };
    let whole: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut ns = whole.checked_mul(unit)?;
    if !frac.is_empty() {
        // As Go: the fraction's leading digits while they fit an i64, scaled in floating point.
        let (mut f, mut scale) = (0i64, 1f64);
        for d in frac.bytes() {
            let Some(next) = f
                .checked_mul(10)
                .and_then(|x| x.checked_add(i64::from(d - b'0')))
            else {
                break;
            };
            f = next;
            scale *= 10.0;
        }
        // Below one `unit` (at most 3.6e12 ns): the cast cannot overflow.
        ns = ns.checked_add((f as f64 * (unit as f64 / scale)) as u64)?;
    }
    Some((ns, rest))
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
    }
}

/// The agent the chat tool would pick: root agents, sorted by name (case-insensitive); the one
/// whose name ends in `-coderd-chat`, else the first. `Ok(None)` = the build has no agents.
pub fn select_agent<'a>(
    build: &'a WorkspaceBuild,
    wanted: Option<&str>,
) -> Result<Option<&'a Agent>, (&'static str, String)> {
    let all: Vec<&Agent> = build.agents().collect();
    if all.is_empty() {
        return Ok(None);
    }
    if let Some(name) = wanted {
        return all.into_iter().find(|a| a.name == name).map(Some).ok_or((
            reasons::AGENT_NOT_FOUND,
            format!("the workspace has no agent named {name:?}"),
        ));
    }
    let mut roots: Vec<&Agent> = all.into_iter().filter(|a| a.parent_id.is_none()).collect();
    if roots.is_empty() {
        return Err((
            reasons::AGENT_SELECTION_ERROR,
            "no eligible workspace agents found".into(),
        ));
    }
    roots.sort_by(|a, b| {
        a.name
            .to_lowercase()
            .cmp(&b.name.to_lowercase())
            .then(a.name.cmp(&b.name))
    });
    let chat: Vec<&Agent> = roots
        .iter()
        .copied()
        .filter(|a| a.name.to_lowercase().ends_with(CHAT_AGENT_SUFFIX))
        .collect();
    match chat.as_slice() {
        [one] => Ok(Some(one)),
        [] => Ok(roots.first().copied()),
        many => Err((
            reasons::AGENT_SELECTION_ERROR,
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

    fn cond(&mut self, type_: &str, status: &str, reason: &str, message: &str) {
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
        reason: &str,
        message: &str,
        action: Action,
    ) -> Decision {
        self.st.phase = Some(phase);
        self.st.message = Some(message.to_owned());
        self.cond(types::READY, "False", reason, message);
        self.cond(types::RECONCILING, "True", reason, message);
        self.cond(types::STALLED, "False", reason, message);
        if conditions::get(&self.st.conditions, types::BUILD_SUCCEEDED).is_none() {
            self.cond(types::BUILD_SUCCEEDED, "Unknown", reason, message);
        }
        if conditions::get(&self.st.conditions, types::AGENT_READY).is_none() {
            self.cond(types::AGENT_READY, "Unknown", reason, message);
        }
        Decision {
            status: self.st,
            action,
        }
    }

    fn fail(mut self, reason: &str, message: &str) -> Decision {
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

    fn ready(mut self, reason: &str, message: &str) -> Decision {
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

    fn start_time(&self) -> Timestamp {
        self.st.start_time.as_ref().map_or(self.input.now, |t| t.0)
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
    let next = Next::new(input);
    if input.status.phase.is_some_and(Phase::is_terminal) {
        return Decision {
            status: input.status.clone(),
            action: Action::Finish,
        };
    }
    match &input.observation {
        Observation::Failed { reason, message } => next.fail(reason, message),
        Observation::ChatNotFound => next.fail(
            reasons::CHAT_NOT_FOUND,
            "chat not found, or not visible to this Coder token",
        ),
        Observation::ChatHasNoWorkspace => next.fail(
            reasons::CHAT_HAS_NO_WORKSPACE,
            "chat has no workspace; create one first",
        ),
        Observation::WorkspaceGone => next.fail(
            reasons::WORKSPACE_DELETED,
            "workspace was deleted (or is not visible to this Coder token)",
        ),
        Observation::CoderUnavailable => retrying(
            next,
            reasons::CODER_UNAVAILABLE,
            "Coder is unavailable; retrying with backoff",
            "Coder stayed unavailable until the request's deadline",
        ),
        Observation::Retrying { reason, message } => {
            let last = format!("{message} (until the request's deadline)");
            retrying(next, reason, message, &last)
        }
        Observation::Workspace {
            chat_owner,
            workspace,
        } => decide_workspace(next, *chat_owner, workspace),
    }
}

/// Retries with backoff, showing `reason` and `message`, until the deadline of the current
/// phase; then fails with `reason` and `last`.
fn retrying(next: Next<'_>, reason: &str, message: &str, last: &str) -> Decision {
    let input = next.input;
    let deadline = match input.status.phase {
        Some(Phase::WaitingForAgent) => agent_deadline(&next),
        _ => next.build_deadline(),
    };
    if input.now >= deadline {
        return next.fail(reason, last);
    }
    let phase = input.status.phase.unwrap_or(Phase::Pending);
    next.progressing(phase, reason, message, Action::Retry)
}

/// Records the start build Coder just created (201): Starting, outcome Queued, following it.
/// The input's observation is not used.
pub fn queued(input: &Input<'_>, build: &WorkspaceBuild) -> Decision {
    let mut next = Next::new(input);
    next.st.build = Some(build_info(build));
    next.st.outcome = Some(Outcome::Queued);
    let msg = format!("start build #{} queued", build.build_number);
    let wait = Action::Requeue(input.poll);
    next.progressing(Phase::Starting, reasons::BUILD_IN_PROGRESS, &msg, wait)
}

/// Fails the request with `reason` and a fixed message (used when Coder refuses the start
/// build request itself). The input's observation is not used.
pub fn reject(input: &Input<'_>, reason: &str, message: &str) -> Decision {
    Next::new(input).fail(reason, message)
}

fn decide_workspace(mut next: Next<'_>, chat_owner: Option<Uuid>, ws: &Workspace) -> Decision {
    let input = next.input;
    let spec_owner = input
        .spec
        .owner_id
        .as_deref()
        .and_then(|s| Uuid::parse_str(s).ok());
    let owner_mismatch = spec_owner
        .is_some_and(|o| ws.owner_id != o || chat_owner.is_some_and(|c| c != o))
        || chat_owner.is_some_and(|c| c != ws.owner_id);
    if owner_mismatch {
        return next.fail(
            reasons::OWNER_MISMATCH,
            "the chat's or workspace's owner does not match spec.ownerId (or each other); nothing was started",
        );
    }
    next.st.workspace = Some(WorkspaceInfo {
        id: ws.id.to_string(),
        name: ws.name.clone(),
        owner_name: Some(ws.owner_name.clone()).filter(|s| !s.is_empty()),
    });
    let lb = &ws.latest_build;
    let followed_id = next.st.build.as_ref().map(|b| b.id.clone());
    let lb_id = lb.id.to_string();

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
                return next.fail(
                    reasons::BUILD_SUPERSEDED,
                    "another build (stop or delete) replaced the start build",
                );
            }
        }
    } else if next.st.outcome.is_some() && followed_id.as_deref() != Some(lb_id.as_str()) {
        // A newer build replaced the one being followed.
        if lb.transition != Transition::Start {
            return next.fail(
                reasons::BUILD_SUPERSEDED,
                "another build (stop or delete) replaced the start build",
            );
        }
        next.st.build = Some(build_info(lb));
    }

    let requested = next.st.build_requested_at.is_some();
    let following =
        next.st.outcome.is_some() && next.st.build.as_ref().is_some_and(|b| b.id == lb_id);
    if ws.dormant_at.is_some() && !following {
        return next.fail(
            reasons::WORKSPACE_DORMANT,
            "workspace is dormant; an administrator must wake it first",
        );
    }

    let build_deadline = next.build_deadline();
    let job = lb.job.status;
    match (job, lb.transition) {
        (_, Transition::Delete) if job.is_active() || job == JobStatus::Succeeded => next.fail(
            reasons::WORKSPACE_DELETED,
            "workspace is being deleted or was deleted",
        ),
        (j, t) if j.is_active() => {
            if input.now >= build_deadline {
                return next.fail(
                    reasons::BUILD_TIMEOUT,
                    "the build did not finish within spec.timeouts.build",
                );
            }
            let wait = next.wait(build_deadline);
            if t == Transition::Start {
                next.st.outcome.get_or_insert(Outcome::InProgress);
                next.st.build = Some(build_info(lb));
                let msg = format!(
                    "waiting for start build #{} ({})",
                    lb.build_number,
                    j.as_str()
                );
                next.progressing(Phase::Starting, reasons::BUILD_IN_PROGRESS, &msg, wait)
            } else {
                if !requested {
                    next.st.build = Some(build_info(lb));
                }
                let msg = format!(
                    "waiting for stop build #{} ({}) to finish before starting",
                    lb.build_number,
                    j.as_str()
                );
                next.progressing(Phase::Starting, reasons::WAITING_FOR_STOP, &msg, wait)
            }
        }
        (JobStatus::Unknown, _) if following => {
            if input.now >= build_deadline {
                return next.fail(
                    reasons::BUILD_TIMEOUT,
                    "the build did not finish within spec.timeouts.build",
                );
            }
            let wait = next.wait(build_deadline);
            next.progressing(
                Phase::Starting,
                reasons::BUILD_IN_PROGRESS,
                "waiting for the start build (job status unknown)",
                wait,
            )
        }
        (JobStatus::Succeeded, Transition::Start) => {
            next.st.outcome.get_or_insert(Outcome::AlreadyRunning);
            next.st.build = Some(build_info(lb));
            let msg = format!("build #{} succeeded", lb.build_number);
            next.cond(
                types::BUILD_SUCCEEDED,
                "True",
                reasons::BUILD_SUCCEEDED,
                &msg,
            );
            decide_agent(next, lb)
        }
        (j @ (JobStatus::Failed | JobStatus::Canceled), _) if following => {
            next.st.build = Some(build_info(lb));
            let (reason, msg) = if j == JobStatus::Canceled {
                (reasons::BUILD_CANCELED, "build was canceled")
            } else if lb.job.error_code.as_deref() == Some("INSUFFICIENT_QUOTA") {
                (
                    reasons::INSUFFICIENT_QUOTA,
                    "Coder could not start this workspace because the owner's workspace quota is full",
                )
            } else {
                (
                    reasons::BUILD_FAILED,
                    "workspace start build failed; see the build logs in Coder",
                )
            };
            next.fail(reason, msg)
        }
        _ => {
            // Stopped, failed, canceled or unknown, and not a build we are following: start.
            if input.now >= build_deadline {
                return next.fail(
                    reasons::BUILD_TIMEOUT,
                    "the workspace could not be started within spec.timeouts.build",
                );
            }
            if !requested || next.st.outcome.is_none() {
                if !requested {
                    next.st.build = Some(build_info(lb));
                }
                next.st.build_requested_at = Some(next.now.clone());
                next.st.outcome = None;
            }
            let template_version_id = if ws.template_require_active_version {
                ws.template_active_version_id
            } else {
                None
            };
            let request = CreateWorkspaceBuildRequest {
                transition: Transition::Start,
                template_version_id,
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
            next.progressing(
                Phase::Starting,
                reasons::START_REQUESTED,
                "requesting a start build",
                Action::StartBuild {
                    workspace: ws.id,
                    request,
                },
            )
        }
    }
}

fn agent_deadline(next: &Next<'_>) -> Timestamp {
    let since = conditions::get(&next.st.conditions, types::BUILD_SUCCEEDED)
        .filter(|c| c.status == "True")
        .map_or(next.input.now, |c| c.last_transition_time.0);
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
            return next.ready(reasons::NO_AGENT, "workspace is running; it has no agent");
        }
        Ok(Some(a)) => a,
    };
    next.st.agent = Some(AgentInfo {
        id: Some(agent.id.to_string()),
        name: Some(agent.name.clone()),
        status: agent.status.clone(),
        lifecycle_state: Some(agent.lifecycle_state.clone()),
    });
    match agent.lifecycle_state.as_str() {
        "ready" if agent.status == "connected" => {
            let msg = format!("workspace is running and agent {:?} is ready", agent.name);
            next.ready(reasons::READY, &msg)
        }
        "start_error" => next.fail(
            reasons::AGENT_START_ERROR,
            "the agent's startup scripts failed (lifecycle start_error)",
        ),
        "start_timeout" => next.fail(
            reasons::AGENT_TIMEOUT,
            "the agent's startup scripts timed out (lifecycle start_timeout)",
        ),
        "created" | "starting" | "ready" => {
            let deadline = agent_deadline(&next);
            if input.now >= deadline {
                return next.fail(
                    reasons::AGENT_TIMEOUT,
                    "the agent did not become ready within spec.timeouts.agent",
                );
            }
            let msg = format!(
                "waiting for agent {:?} (status {}, lifecycle {})",
                agent.name, agent.status, agent.lifecycle_state
            );
            let wait = next.wait(deadline);
            next.progressing(
                Phase::WaitingForAgent,
                reasons::WAITING_FOR_AGENT,
                &msg,
                wait,
            )
        }
        other => {
            let msg = format!("the agent is not starting (lifecycle {other})");
            next.fail(reasons::AGENT_START_ERROR, &msg)
        }
    }
}

#[cfg(test)]
mod tests;
