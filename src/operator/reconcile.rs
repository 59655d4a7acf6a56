//! One reconcile pass of a request in flight, the protocol around [`decide`]: observe Coder,
//! decide, check the chat owner when `decide` asks, write the start record, request the start
//! build, decide once more on what Coder answered, and, for a request finishing after a build it
//! followed, read Coder's timings of that build for its stage timings.
//!
//! The pass owns the protocol and nothing else: it reaches Coder and the API server only through
//! the two small traits it declares, [`CoderPort`] and [`StartRecord`]. The controller drives it
//! with the real Coder client, the shared workspace cache and server-side apply
//! (`operator::controller`); `tests/decide_properties.rs` drives the same pass with a simulated
//! Coder history, so its properties hold for the code that runs.

use std::future::Future;
use std::time::Duration;

use crate::api::reason::Reason;

use jiff::Timestamp;
use uuid::Uuid;

use crate::api::crd::{WorkspaceStartRequestSpec, WorkspaceStartRequestStatus};
use crate::coder::logs::WorkspaceBuildTimings;
use crate::coder::types::{CreateWorkspaceBuildRequest, WorkspaceBuild};
use crate::operator::decide::{self, Action, Decision, Input, Observation, OwnerState};
use crate::operator::timings;

/// How many start build POSTs one pass makes at most: the first, and one more after a 409 whose
/// re-read found no active build to join.
const START_ROUNDS: usize = 2;

/// How Coder answered a start build POST.
#[derive(Debug)]
pub enum PostOutcome {
    /// 201: the build exists.
    Created(WorkspaceBuild),
    /// 409: no build was created, someone else's build is active.
    Conflict,
    /// Coder refused for good: fail with this reason and message.
    Refused {
        /// A reason from [`crate::api::reason::Reason`].
        reason: Reason,
        /// User-facing message (never a token).
        message: String,
    },
    /// Unknown whether Coder created the build (commit-then-fail, timeout, reset): the next pass
    /// re-reads the workspace and adopts a newer build, never POSTs blindly. `retry_after` is
    /// Coder's `Retry-After`, if any.
    Uncertain {
        /// Coder's `Retry-After`.
        retry_after: Option<Duration>,
    },
}

/// What the pass reads from and writes to Coder.
pub trait CoderPort {
    /// Reads the request's chat (first pass) and workspace. `fresh` skips every cache (after a
    /// 409, the cached read is older than the build that won).
    fn observe(
        &mut self,
        status: &WorkspaceStartRequestStatus,
        fresh: bool,
    ) -> impl Future<Output = Observation>;

    /// The chat owner's account as Coder's chat tool judges it (`asOwner`); `Err` with the
    /// observation to fail with when Coder refuses to say.
    fn owner_state(&mut self, owner: Uuid)
    -> impl Future<Output = Result<OwnerState, Observation>>;

    /// POSTs the start build.
    fn start_build(
        &mut self,
        workspace: Uuid,
        request: &CreateWorkspaceBuildRequest,
    ) -> impl Future<Output = PostOutcome>;

    /// Coder's timings of `build`, read once when a request that followed it finishes. `None`
    /// when Coder does not serve them (an older Coder answers 404), fails, or does not answer
    /// within a short bound: the request finishes all the same, its figures from the build's
    /// timestamps alone.
    fn build_timings(&mut self, build: Uuid)
    -> impl Future<Output = Option<WorkspaceBuildTimings>>;

    /// How long to wait before looking again while waiting (the backstop while a Coder stream
    /// delivers events for the workspace, the poll interval otherwise).
    fn poll(&self) -> Duration;

    /// The current time.
    fn now(&self) -> Timestamp;
}

/// Whether the start record reached the API server for this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Written: the POST may go out.
    Written,
    /// The request left this process's shard before the record was written: never POST here.
    Moved,
}

/// Writes the start record (`buildRequestedAt`) before the POST, so that after a crash the
/// operator re-reads Coder instead of requesting another build.
pub trait StartRecord {
    /// Why the record could not be written (the pass ends with it; the reconcile retries).
    type Error;

    /// Writes `status` (which holds the start record).
    fn record(
        &mut self,
        status: &WorkspaceStartRequestStatus,
    ) -> impl Future<Output = Result<Recorded, Self::Error>>;
}

/// The request a pass is about.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Its spec.
    pub spec: &'a WorkspaceStartRequestSpec,
    /// Its `metadata.generation`.
    pub generation: Option<i64>,
}

/// How a pass ended.
#[derive(Debug)]
pub enum PassEnd {
    /// With this decision, for the caller to write and act on.
    Decided(Box<Decision>),
    /// A start build POST may or may not have landed: requeue with backoff (at least
    /// `retry_after`) and re-read.
    Uncertain {
        /// Coder's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The request left this shard; its new owner resumes it from status.
    Moved,
}

/// Runs one pass for `request`, whose status as last written is `prev`.
pub async fn pass<C: CoderPort, R: StartRecord>(
    request: Request<'_>,
    prev: &WorkspaceStartRequestStatus,
    coder: &mut C,
    record: &mut R,
) -> Result<PassEnd, R::Error> {
    let obs = coder.observe(prev, false).await;
    let mut decision = decide_checking_owner(request, prev, obs, coder).await;
    for _round in 0..START_ROUNDS {
        let Action::StartBuild {
            workspace,
            request: body,
        } = decision.action.clone()
        else {
            break;
        };
        if record.record(&decision.status).await? == Recorded::Moved {
            return Ok(PassEnd::Moved);
        }
        let obs = match coder.start_build(workspace, &body).await {
            PostOutcome::Created(build) => Observation::BuildCreated(Box::new(build)),
            PostOutcome::Refused { reason, message } => Observation::Failed { reason, message },
            PostOutcome::Uncertain { retry_after } => {
                return Ok(PassEnd::Uncertain { retry_after });
            }
            PostOutcome::Conflict => {
                // Someone else's build is active: drop our start record and join it.
                let mut joined = decision.status.clone();
                joined.build_requested_at = None;
                let obs = coder.observe(&joined, true).await;
                decision = decide_checking_owner(request, &joined, obs, coder).await;
                continue;
            }
        };
        return Ok(PassEnd::Decided(Box::new(
            decide_once(request, &decision.status, obs, coder).await,
        )));
    }
    Ok(PassEnd::Decided(Box::new(decision)))
}

/// Decides on `obs`; when `decide` asks about the chat owner, looks and decides again with the
/// answer.
async fn decide_checking_owner<C: CoderPort>(
    request: Request<'_>,
    status: &WorkspaceStartRequestStatus,
    obs: Observation,
    coder: &mut C,
) -> Decision {
    let d = decide_once(request, status, obs.clone(), coder).await;
    let Action::CheckOwner { owner } = d.action else {
        return d;
    };
    let obs = match (obs, coder.owner_state(owner).await) {
        (
            Observation::Workspace {
                chat_owner,
                workspace,
                ..
            },
            Ok(owner),
        ) => Observation::Workspace {
            chat_owner,
            workspace,
            owner,
        },
        (_, Err(failed)) => failed,
        (obs, Ok(_)) => obs,
    };
    decide_once(request, status, obs, coder).await
}

/// One call of [`decide::decide`] at the port's time and poll interval. When it finishes a
/// request that followed a build, reads Coder's timings of that build and decides once more
/// with them (same input otherwise), so `status.timings` uses them.
async fn decide_once<C: CoderPort>(
    request: Request<'_>,
    status: &WorkspaceStartRequestStatus,
    observation: Observation,
    coder: &mut C,
) -> Decision {
    let input = Input {
        spec: request.spec,
        generation: request.generation,
        status,
        observation,
        now: coder.now(),
        poll: coder.poll(),
        build_timings: None,
    };
    let decision = decide::decide(&input);
    let Some(build) = timings::timings_wanted(status, &decision.status) else {
        return decision;
    };
    let Some(served) = coder.build_timings(build).await else {
        return decision;
    };
    decide::decide(&Input {
        build_timings: Some(&served),
        ..input
    })
}
