//! The kube-runtime controller: observe Coder → [`decide`] → act (start build) → status by
//! server-side apply, with Events on every transition, per-object backoff and TTL cleanup.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, TryStreamExt};
use jiff::Timestamp;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::{self, Action as KubeAction, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use rand::Rng;
use tokio::sync::Semaphore;

use crate::api::conditions;
use crate::api::crd::{FIELD_MANAGER, Phase, WorkspaceStartRequest, WorkspaceStartRequestStatus};
use crate::api::reason::Reason;
use crate::api::shard::Shard;
use crate::operator::coder_health::{CoderHealth, ProbeSchedule, Wait};
use crate::operator::coder_port::{LiveCoder, PollIntervals};
use crate::operator::connect::{Connection, Connections, ResolveError};
use crate::operator::decide::{self, Action, Decision, Input, Observation};
use crate::operator::events::{EventPublisher, EventType};
use crate::operator::first_status::FirstStatus;
use crate::operator::metrics::{CONTROLLER, ControllerLabels, Metrics, PhaseLabels};
use crate::operator::reconcile::{self, PassEnd, Recorded, Request, StartRecord};
use crate::operator::start_queue::StartQueue;
use crate::operator::status::StatusWriter;
use crate::operator::streams::{Streams, WorkspaceKey};
use crate::operator::tenancy::{self, Tenancy};
use crate::operator::write_slots::{Limits, Permit, Priority, WriteSlots};
use crate::process::http::Health;

/// How long a progress write waits for spare write capacity (no required write waiting, a free
/// write slot) before it is left for a later pass: long enough for one write in flight on an idle
/// API server, short enough not to hold the request (and a final status right behind it) when
/// the API server is busy.
const PROGRESS_SLOT_WAIT: Duration = Duration::from_millis(25);

/// The longest a finished request with a TTL waits before its expiry is checked again.
const TTL_RECHECK: Duration = Duration::from_secs(24 * 3600);

/// The longest a request waiting for Coder to answer again goes without a look (it is
/// triggered when Coder answers; while Coder stays down such a look makes no Coder call).
const AWAIT_CODER_RECHECK: Duration = Duration::from_secs(60);

/// How often unused workspace entries are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Errors that make a reconcile retry with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Writing the status failed.
    #[error("patching status of {name}: {source}")]
    StatusPatch {
        /// Object name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// A namespaced object without a namespace.
    #[error("object {0} has no namespace")]
    MissingNamespace(String),
}

/// Timing settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Poll interval while waiting without a live watch stream.
    pub poll: Duration,
    /// Backstop poll interval while a watch stream is live.
    pub backstop_poll: Duration,
    /// Maximum concurrent reconciles of requests not yet started (reading Coder, requesting
    /// the build).
    pub concurrency: u16,
    /// Maximum concurrent reconciles of requests already started or finished (following the
    /// build and agent). Kept apart from `concurrency` so a burst of new requests never delays
    /// the ones about to become Ready.
    pub follow_concurrency: u16,
    /// API writes in flight other than final (Ready/Failed) and first statuses (start records,
    /// progress, Events), per namespace and in all. Final statuses skip the slots; progress
    /// finding no slot waits for a later pass.
    pub write_slots: Limits,
    /// Test hook: reconciling the request of this name panics (proves panic containment).
    pub panic_on: Option<String>,
    /// The requests this process reconciles (see [`Shard`]).
    pub shard: Shard,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            poll: Duration::from_secs(2),
            backstop_poll: Duration::from_secs(30),
            concurrency: 16,
            follow_concurrency: 256,
            write_slots: Limits {
                per_namespace: 1,
                total: 4,
            },
            panic_on: None,
            shard: Shard::unlabelled(),
        }
    }
}

/// Everything a reconcile needs.
pub struct Context {
    /// Kubernetes client.
    pub kube: kube::Client,
    /// Coder connections.
    pub connections: Connections,
    /// Shared watch streams and read cache.
    pub streams: Arc<Streams>,
    /// Event publisher.
    pub events: EventPublisher,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Timing.
    pub settings: Settings,
    failures: Mutex<HashMap<ObjectRef<WorkspaceStartRequest>, u32>>,
    phases: Mutex<HashMap<ObjectRef<WorkspaceStartRequest>, Phase>>,
    /// Status writes, and the last status this process wrote per request.
    status: Arc<StatusWriter>,
    /// First statuses of new requests, written before anything can block their reconcile.
    first_status: Arc<FirstStatus>,
    /// Slots for reconciles of requests not yet started, and the queue waiting for one.
    starts: Arc<StartQueue>,
    /// Slots for reconciles of requests already started or finished.
    follow_slots: Semaphore,
    /// Slots for API writes other than final statuses (status writes and Events), and the
    /// required writes spare ones give way to.
    write_slots: Arc<WriteSlots>,
    /// The watch caches of this shard's requests (one per watched namespace scope).
    held: Mutex<Vec<reflector::Store<WorkspaceStartRequest>>>,
    /// Which Coder users, parameters and shards each namespace may use.
    pub tenancy: Tenancy,
    /// Whether each Coder endpoint answers, and the requests waiting for it to.
    pub coder_health: Arc<CoderHealth>,
}

impl Context {
    /// Builds the context.
    pub fn new(
        kube: kube::Client,
        connections: Connections,
        streams: Arc<Streams>,
        metrics: Arc<Metrics>,
        settings: Settings,
        tenancy: Tenancy,
    ) -> Arc<Context> {
        let write_slots = WriteSlots::new(settings.write_slots);
        let events = EventPublisher::start(
            kube.clone(),
            FIELD_MANAGER,
            std::env::var("POD_NAME").ok(),
            metrics.events_dropped.clone(),
            Arc::clone(&write_slots),
        );
        let status = Arc::new(StatusWriter::default());
        let first_status = FirstStatus::start(
            kube.clone(),
            Arc::clone(&status),
            Arc::clone(&write_slots),
            settings.shard.clone(),
        );
        let coder_health = CoderHealth::new(Arc::clone(&metrics), ProbeSchedule::default());
        streams.reconnect_on(coder_health.recoveries());
        Arc::new(Context {
            kube,
            connections,
            streams,
            events,
            metrics,
            failures: Mutex::new(HashMap::new()),
            phases: Mutex::new(HashMap::new()),
            status,
            first_status,
            starts: StartQueue::new(usize::from(settings.concurrency)),
            follow_slots: Semaphore::new(usize::from(settings.follow_concurrency.max(1))),
            write_slots,
            held: Mutex::new(Vec::new()),
            settings,
            tenancy,
            coder_health,
        })
    }

    /// Exponential backoff with jitter for `obj` (1 s doubling to 5 min), at least `min`.
    fn backoff(&self, obj: &ObjectRef<WorkspaceStartRequest>, min: Option<Duration>) -> Duration {
        let n = {
            let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let n = f.entry(obj.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let base = Duration::from_secs(1u64 << (n - 1).min(8)).min(Duration::from_secs(300));
        let jitter = rand::rng().random_range(0.8..1.2);
        base.mul_f64(jitter).max(min.unwrap_or_default())
    }

    /// Forgets everything kept for a deleted request (status memory, watch subscription,
    /// backoff, phase gauge, wait for Coder).
    fn forget_request(&self, obj: &ObjectRef<WorkspaceStartRequest>) {
        self.first_status.cancel(obj);
        self.coder_health.forget(obj);
        self.starts.forget(obj);
        self.status.forget(obj);
        self.streams.detach(obj);
        self.reset_backoff(obj);
        self.track_phase(obj, None);
    }

    /// True while `obj` is in this shard's watch cache. A request whose shard label changed left
    /// it (the API server sends the old shard a delete), and this process no longer writes it.
    fn holds(&self, obj: &ObjectRef<WorkspaceStartRequest>) -> bool {
        let stores = self.held.lock().unwrap_or_else(|p| p.into_inner());
        stores.is_empty() || stores.iter().any(|s| s.get(obj).is_some())
    }

    /// Leaves a request that moved to another shard to that shard: forgets it and stops.
    fn hand_over(&self, obj: &ObjectRef<WorkspaceStartRequest>) -> KubeAction {
        tracing::info!(request = %obj, shard = %self.settings.shard, "request left this shard; its new shard resumes it from its status");
        self.forget_request(obj);
        KubeAction::await_change()
    }

    /// How many times in a row `obj`'s reconcile failed or retried.
    fn failure_count(&self, obj: &ObjectRef<WorkspaceStartRequest>) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(obj)
            .copied()
            .unwrap_or(0)
    }

    fn reset_backoff(&self, obj: &ObjectRef<WorkspaceStartRequest>) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(obj);
    }

    fn track_phase(&self, obj: &ObjectRef<WorkspaceStartRequest>, phase: Option<Phase>) {
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        let old = match phase {
            Some(p) => phases.insert(obj.clone(), p),
            None => phases.remove(obj),
        };
        if old == phase {
            return;
        }
        if let Some(o) = old {
            self.metrics
                .requests_by_phase
                .get_or_create(&PhaseLabels {
                    phase: Phase::as_str(o),
                })
                .dec();
        }
        if let Some(p) = phase {
            self.metrics
                .requests_by_phase
                .get_or_create(&PhaseLabels {
                    phase: Phase::as_str(p),
                })
                .inc();
        }
    }
}

/// A short, user-facing summary of a Kubernetes API error (status code and reason, or the
/// kind of transport failure).
fn kube_error_summary(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("API server answered {} {}", s.code, s.reason),
        _ => "API server unreachable".to_owned(),
    }
}

/// Whether a request still belongs to this shard after a status write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ownership {
    /// It does: carry on.
    Kept,
    /// Its shard label moved: the write was skipped (it had left this shard's cache) or took
    /// effect after the move. Its new shard resumes it from status; this process stops here.
    Moved,
}

/// Writes the status through the context's [`StatusWriter`] under `permit` (`None`: nothing
/// to write, the shard check only), unless the request has left this shard.
async fn apply_status(
    ctx: &Context,
    permit: Option<&Permit<'_>>,
    api: &Api<WorkspaceStartRequest>,
    wsr: &WorkspaceStartRequest,
    old: &WorkspaceStartRequestStatus,
    new: &WorkspaceStartRequestStatus,
) -> Result<Ownership, Error> {
    if !ctx.holds(&ObjectRef::from_obj(wsr)) {
        return Ok(Ownership::Moved);
    }
    ctx.first_status.cancel(&ObjectRef::from_obj(wsr));
    let Some(permit) = permit else {
        return Ok(Ownership::Kept);
    };
    let labels = ctx
        .status
        .apply(permit, api, wsr, old, new)
        .await
        .map_err(|source| Error::StatusPatch {
            name: wsr.name_any(),
            source,
        })?;
    Ok(match labels {
        Some(l) if !ctx.settings.shard.owns(&l) => Ownership::Moved,
        _ => Ownership::Kept,
    })
}

/// Publishes an Event when the Ready reason changes (one per transition), and when the request
/// finishes.
fn publish_transition(
    ctx: &Context,
    wsr: &WorkspaceStartRequest,
    old: &WorkspaceStartRequestStatus,
    new: &WorkspaceStartRequestStatus,
) {
    let Some(new_reason) = conditions::ready_reason(&new.conditions) else {
        return;
    };
    // A retried error that reaches its deadline keeps its reason: its failure is news too.
    let finished = new.phase.is_some_and(Phase::is_terminal) && old.phase != new.phase;
    if conditions::ready_reason(&old.conditions) == Some(new_reason) && !finished {
        return;
    }
    let warning = new.phase == Some(Phase::Failed)
        || [Reason::CoderUnavailable, Reason::SecretUnreadable]
            .map(Reason::as_str)
            .contains(&new_reason);
    let type_ = if warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    let action = new.phase.map_or("Reconcile", Phase::as_str);
    ctx.events
        .publish_in_background(wsr, type_, new_reason, action, new.message.as_deref());
}

/// True while a request has neither requested nor joined a build and is not finished: its
/// reconcile reads Coder and may request the start build.
fn not_started(status: &WorkspaceStartRequestStatus) -> bool {
    !status.phase.is_some_and(Phase::is_terminal)
        && status.build.is_none()
        && status.build_requested_at.is_none()
}

/// Reconciles one request once a slot of its kind is free (see [`Settings::follow_concurrency`]).
/// A request not yet started whose turn has not come joins the start queue and is triggered
/// again when a slot is reserved for it.
pub async fn reconcile(
    wsr: Arc<WorkspaceStartRequest>,
    ctx: Arc<Context>,
) -> Result<KubeAction, Error> {
    let oref = ObjectRef::from_obj(&*wsr);
    // Only this request's own reconciles change what `current` returns, and kube-runtime never
    // runs two of them at once: `prev` stays valid while waiting for a slot.
    let prev = ctx.status.current(&oref, &wsr);
    let starting = wsr.meta().deletion_timestamp.is_none() && not_started(&prev);
    let mut _start = None;
    let mut _follow = None;
    if starting {
        let permit = ctx.starts.try_start(&oref);
        ctx.metrics
            .waiting_to_start
            .set(i64::try_from(ctx.starts.waiting()).unwrap_or(i64::MAX));
        // Never status-less: the first status goes out before anything can block this request.
        if prev == WorkspaceStartRequestStatus::default() {
            ctx.first_status.enqueue(&wsr, permit.is_none());
        }
        match permit {
            Some(permit) => _start = Some(permit),
            None => return Ok(KubeAction::await_change()),
        }
    } else {
        ctx.starts.forget(&oref);
        // The semaphore is never closed; without a permit the reconcile just runs.
        _follow = ctx.follow_slots.acquire().await.ok();
    }
    let started = Instant::now();
    let labels = ControllerLabels {
        controller: CONTROLLER,
    };
    ctx.metrics.active_workers.get_or_create(&labels).inc();
    // Boxed: reconciles waiting for a follow slot stay small. A panic fails this request
    // only; every other request goes on.
    let inner = AssertUnwindSafe(Box::pin(reconcile_inner(&wsr, &ctx, &oref, prev.clone())));
    let res = match inner.catch_unwind().await {
        Ok(res) => res,
        Err(panic) => {
            let what = panic_message(panic.as_ref());
            contain_panic(&wsr, &ctx, &oref, &prev, &what).await
        }
    };
    ctx.metrics.active_workers.get_or_create(&labels).dec();
    let result = match &res {
        Err(_) => "error",
        Ok(a) if *a == KubeAction::await_change() => "success",
        Ok(_) => "requeue_after",
    };
    ctx.metrics.observe_reconcile(result, started.elapsed());
    res
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// After a reconcile of `wsr` panicked: logs and counts it, and fails the request with
/// `InternalError` (a finished request keeps its status) so it is not retried into the same
/// panic.
async fn contain_panic(
    wsr: &WorkspaceStartRequest,
    ctx: &Arc<Context>,
    oref: &ObjectRef<WorkspaceStartRequest>,
    prev: &WorkspaceStartRequestStatus,
    what: &str,
) -> Result<KubeAction, Error> {
    tracing::error!(request = %oref, panic = %what, "reconcile panicked; failing the request");
    ctx.metrics.reconcile_panics.inc();
    if prev.phase.is_some_and(Phase::is_terminal) {
        return Ok(KubeAction::await_change());
    }
    let ns = wsr
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(wsr.name_any()))?;
    let api: Api<WorkspaceStartRequest> = Api::namespaced(ctx.kube.clone(), &ns);
    let failed = Observation::Failed {
        reason: Reason::InternalError,
        message: "the operator hit an internal error while reconciling this request (details in the operator log); it is not retried".to_owned(),
    };
    let decision = decide::decide(&input_for(wsr, prev, failed, ctx.settings.poll));
    conclude(wsr, ctx, &api, oref, prev, decision, None, None).await
}

/// Reconciles `wsr` (`oref`), whose status to decide on is `prev`.
async fn reconcile_inner(
    wsr: &WorkspaceStartRequest,
    ctx: &Arc<Context>,
    oref: &ObjectRef<WorkspaceStartRequest>,
    prev: WorkspaceStartRequestStatus,
) -> Result<KubeAction, Error> {
    let ns = wsr
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(wsr.name_any()))?;
    let api: Api<WorkspaceStartRequest> = Api::namespaced(ctx.kube.clone(), &ns);
    if wsr.meta().deletion_timestamp.is_some() {
        ctx.forget_request(oref);
        return Ok(KubeAction::await_change());
    }
    if prev.phase.is_some_and(Phase::is_terminal) {
        return settled(wsr, ctx, oref, &api, &prev).await;
    }
    if ctx.settings.panic_on.as_deref() == Some(wsr.name_any().as_str()) {
        panic!("test hook: reconciling {oref} panics (--test-panic-on)");
    }
    // Tenancy: shard, chats-only and parameters are refused before any Coder call.
    if let Err(obs) = ctx.tenancy.admit(wsr) {
        let d = decide::decide(&input_for(wsr, &prev, obs, ctx.settings.poll));
        return conclude(wsr, ctx, &api, oref, &prev, d, None, None).await;
    }
    let conn = match connection(wsr, ctx, oref, &api, &prev).await {
        Ok(conn) => conn,
        Err(done) => return done,
    };
    // Coder is down and this request had its attempt: wait for it, without calling it.
    if let Some(cause) = ctx.coder_health.hold(conn.client.base_url(), oref) {
        let obs = Observation::CoderUnavailable { cause };
        let d = decide::decide(&input_for(wsr, &prev, obs, ctx.settings.poll));
        return conclude(wsr, ctx, &api, oref, &prev, d, None, None).await;
    }

    let coder = LiveCoder::new(
        &ctx.streams,
        &ctx.coder_health,
        wsr,
        oref,
        &conn,
        PollIntervals {
            poll: ctx.settings.poll,
            backstop: ctx.settings.backstop_poll,
        },
        &prev,
    )
    .await;
    // Tenancy: every observation's owner is checked before the pass may start a build.
    let mut coder = tenancy::Vetted::new(&ctx.tenancy, wsr, coder);
    let mut record = ApiStartRecord {
        ctx,
        api: &api,
        wsr,
        written: prev,
    };
    let request = Request {
        spec: &wsr.spec,
        generation: wsr.meta().generation,
    };
    let end = reconcile::pass(request, &record.written.clone(), &mut coder, &mut record).await?;
    // The start (if any) is recorded in the shared cache: let the next request for this
    // workspace decide while this one writes its status and Event.
    let read = coder.into_inner().finish();
    let written = record.written;
    match end {
        PassEnd::Decided(decision) => {
            conclude(wsr, ctx, &api, oref, &written, *decision, read, Some(&conn)).await
        }
        PassEnd::Uncertain { retry_after } => {
            Ok(KubeAction::requeue(ctx.backoff(oref, retry_after)))
        }
        PassEnd::Moved => Ok(ctx.hand_over(oref)),
    }
}

/// The start record written by server-side apply, with its Event, as a required write.
struct ApiStartRecord<'a> {
    ctx: &'a Arc<Context>,
    api: &'a Api<WorkspaceStartRequest>,
    wsr: &'a WorkspaceStartRequest,
    /// The status as last written in this pass.
    written: WorkspaceStartRequestStatus,
}

impl StartRecord for ApiStartRecord<'_> {
    type Error = Error;

    async fn record(&mut self, status: &WorkspaceStartRequestStatus) -> Result<Recorded, Error> {
        let ns = self.wsr.namespace().unwrap_or_default();
        let permit = self.ctx.write_slots.permit(Priority::Required, &ns).await;
        let ownership = apply_status(
            self.ctx,
            permit.as_ref(),
            self.api,
            self.wsr,
            &self.written,
            status,
        )
        .await?;
        drop(permit);
        if ownership == Ownership::Moved {
            // The label moved before the start record was written: the new shard decides on
            // its own (its watch shows the move before this record), so never POST here.
            return Ok(Recorded::Moved);
        }
        publish_transition(self.ctx, self.wsr, &self.written, status);
        self.written = status.clone();
        self.ctx.metrics.start_builds.inc();
        Ok(Recorded::Written)
    }
}

/// A finished request: keeps our record until the cache shows the terminal status itself (so
/// a lagging, older version of the object cannot be mistaken for an unfinished request), and
/// deletes it after its TTL. No Coder calls.
async fn settled(
    wsr: &WorkspaceStartRequest,
    ctx: &Context,
    oref: &ObjectRef<WorkspaceStartRequest>,
    api: &Api<WorkspaceStartRequest>,
    prev: &WorkspaceStartRequestStatus,
) -> Result<KubeAction, Error> {
    if wsr
        .status
        .as_ref()
        .and_then(|st| st.phase)
        .is_some_and(Phase::is_terminal)
    {
        ctx.status.forget(oref);
    }
    ctx.streams.detach(oref);
    ctx.reset_backoff(oref);
    ctx.track_phase(oref, prev.phase);
    finished(wsr, api, prev).await
}

/// The request's Coder connection; when there is none, the pass ends here (`Err`) with the
/// failure decided and written (or, the first time the API server fails, a quiet retry).
async fn connection(
    wsr: &WorkspaceStartRequest,
    ctx: &Arc<Context>,
    oref: &ObjectRef<WorkspaceStartRequest>,
    api: &Api<WorkspaceStartRequest>,
    prev: &WorkspaceStartRequestStatus,
) -> Result<Connection, Result<KubeAction, Error>> {
    let obs = match ctx.connections.resolve(wsr).await {
        Ok(c) => return Ok(c),
        // The first failure is retried quietly; one that lasts is shown on the request.
        Err(ResolveError::Kube(e)) if ctx.failure_count(oref) == 0 => {
            return Err(Err(Error::Kube(e)));
        }
        Err(ResolveError::Kube(e)) => {
            tracing::warn!(request = %oref, error = %e, "cannot read the coderRef Secret");
            Observation::Retrying {
                reason: Reason::SecretUnreadable,
                message: format!(
                    "cannot read Secret {:?} named by spec.coderRef ({})",
                    wsr.spec
                        .coder_ref
                        .as_ref()
                        .map(|r| r.name.as_str())
                        .unwrap_or_default(),
                    kube_error_summary(&e)
                ),
            }
        }
        Err(ResolveError::Request(obs)) => obs,
    };
    let d = decide::decide(&input_for(wsr, prev, obs, ctx.settings.poll));
    Err(conclude(wsr, ctx, api, oref, prev, d, None, None).await)
}

/// The [`decide`] input for `wsr` with `status`, at the current time.
fn input_for<'a>(
    wsr: &'a WorkspaceStartRequest,
    status: &'a WorkspaceStartRequestStatus,
    observation: Observation,
    poll: Duration,
) -> Input<'a> {
    Input {
        spec: &wsr.spec,
        generation: wsr.meta().generation,
        status,
        observation,
        now: Timestamp::now(),
        poll,
        build_timings: None,
    }
}

/// Writes the decided status, emits the Event, follows or unfollows the watch of `read` (the
/// workspace and the cache sequence number decided on), and returns the requeue.
#[allow(clippy::too_many_arguments)]
async fn conclude(
    wsr: &WorkspaceStartRequest,
    ctx: &Arc<Context>,
    api: &Api<WorkspaceStartRequest>,
    oref: &ObjectRef<WorkspaceStartRequest>,
    prev: &WorkspaceStartRequestStatus,
    decision: Decision,
    read: Option<(WorkspaceKey, u64)>,
    conn: Option<&Connection>,
) -> Result<KubeAction, Error> {
    // Final statuses go to the API server at once. Every other write takes a write slot (shared
    // with Events), so at most `write_slots` of them (per namespace, and in all) are in flight
    // ahead of a final status.
    // Progress (a started request's status that is not final) is a spare write: it waits briefly
    // for a moment when no required write (first status, start record, final status) is waiting
    // and a slot is free; when the API server is busy it is left to a later pass (the next watch
    // event or poll), where newer progress replaces it. Progress detail alone is also written at
    // most once a second.
    // A start record cleared after a 409 (someone else's build is joined) is never postponed:
    // a later pass deciding on the old record would take that build for ours.
    let cleared = prev.build_requested_at.is_some() && decision.status.build_requested_at.is_none();
    let progress = matches!(decision.action, Action::Requeue(_)) && !not_started(prev) && !cleared;
    let changed = prev != &decision.status;
    let mut defer = None;
    let ns = wsr.namespace().unwrap_or_default();
    let permit = if !changed {
        None
    } else if matches!(decision.action, Action::Finish) {
        ctx.write_slots.permit(Priority::Final, &ns).await
    } else if !progress {
        ctx.write_slots.permit(Priority::Required, &ns).await
    } else if let Some(wait) = ctx.status.defer(oref, prev, &decision.status) {
        defer = Some(wait);
        None
    } else {
        let spare = Priority::Spare {
            deadline: Instant::now() + PROGRESS_SLOT_WAIT,
            quiet: Duration::ZERO,
        };
        let permit = ctx.write_slots.permit(spare, &ns).await;
        if permit.is_none() {
            ctx.metrics.progress_writes_postponed.inc();
            defer = Some(Duration::MAX);
        }
        permit
    };
    if defer.is_none() {
        if apply_status(ctx, permit.as_ref(), api, wsr, prev, &decision.status).await?
            == Ownership::Moved
        {
            return Ok(ctx.hand_over(oref));
        }
        publish_transition(ctx, wsr, prev, &decision.status);
    }
    drop(permit);
    ctx.track_phase(oref, decision.status.phase);
    if !matches!(decision.action, Action::AwaitCoder { .. }) {
        ctx.coder_health.forget(oref);
    }
    match decision.action {
        Action::Finish => {
            ctx.streams.detach(oref);
            ctx.reset_backoff(oref);
            let failed = decision.status.phase == Some(Phase::Failed);
            if failed {
                let reason = conditions::ready_reason(&decision.status.conditions)
                    .unwrap_or_default()
                    .to_owned();
                ctx.metrics
                    .failures
                    .get_or_create(&crate::operator::metrics::ReasonLabels { reason })
                    .inc();
            } else if let Some(created) = wsr.meta().creation_timestamp.as_ref() {
                let secs = Timestamp::now().duration_since(created.0).as_secs_f64();
                ctx.metrics.time_to_ready.observe(secs.max(0.0));
            }
            ctx.metrics.observe_stages(decision.status.timings.as_ref());
            tracing::info!(request = %oref, phase = ?decision.status.phase, "request finished");
            finished(wsr, api, &decision.status).await
        }
        Action::Requeue(d) => {
            ctx.reset_backoff(oref);
            if let (Some((k, seen)), Some(c)) = (&read, conn) {
                ctx.streams.attach(k, &c.client, oref.clone(), *seen);
            }
            Ok(KubeAction::requeue(defer.map_or(d, |w| w.min(d))))
        }
        Action::Retry => Ok(KubeAction::requeue(ctx.backoff(oref, None))),
        // Triggered when Coder answers again; its own backoff when only its path fails.
        Action::AwaitCoder { deadline } => {
            let wait = match ctx.coder_health.wait_of(oref) {
                Wait::Signal => AWAIT_CODER_RECHECK,
                Wait::Backoff => ctx.backoff(oref, None),
            };
            Ok(KubeAction::requeue(
                wait.min(deadline).max(Duration::from_millis(100)),
            ))
        }
        // A start decided outside the POST loop (second 409 round): try again shortly.
        Action::StartBuild { .. } | Action::CheckOwner { .. } => {
            Ok(KubeAction::requeue(ctx.backoff(oref, None)))
        }
    }
}

/// Terminal requests: no Coder calls; delete after `ttlSecondsAfterFinished`.
async fn finished(
    wsr: &WorkspaceStartRequest,
    api: &Api<WorkspaceStartRequest>,
    status: &WorkspaceStartRequestStatus,
) -> Result<KubeAction, Error> {
    let (Some(ttl), Some(done)) = (
        wsr.spec.ttl_seconds_after_finished,
        status.completion_time.as_ref(),
    ) else {
        return Ok(KubeAction::await_change());
    };
    let Some(expires) = decide::ttl_expiry(done.0, ttl) else {
        // Only objects admitted before the CRD's maximum can get here: never delete them.
        tracing::warn!(request = %wsr.name_any(), ttl, "ttlSecondsAfterFinished is out of range; not deleting");
        return Ok(KubeAction::await_change());
    };
    let now = Timestamp::now();
    if now >= expires {
        tracing::info!(request = %wsr.name_any(), "deleting finished request (ttlSecondsAfterFinished)");
        match api
            .delete(&wsr.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(KubeAction::await_change());
    }
    let left = Duration::try_from(expires.duration_since(now)).unwrap_or(Duration::ZERO);
    // Look again at least daily (a long wait is re-armed then).
    Ok(KubeAction::requeue(
        left.min(TTL_RECHECK)
            .saturating_add(Duration::from_millis(100)),
    ))
}

/// Retry policy for errors returned by `reconcile`.
pub fn error_policy(wsr: Arc<WorkspaceStartRequest>, err: &Error, ctx: Arc<Context>) -> KubeAction {
    tracing::warn!(request = %wsr.name_any(), error = %err, "reconcile failed");
    KubeAction::requeue(ctx.backoff(&ObjectRef::from_obj(&*wsr), None))
}

/// Runs one controller per watched namespace (or one for all) until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespaces: Vec<String>,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    ctx.metrics
        .max_concurrent
        .get_or_create(&ControllerLabels {
            controller: CONTROLLER,
        })
        .set(i64::from(ctx.settings.concurrency) + i64::from(ctx.settings.follow_concurrency));
    // Unused workspace entries (requests that finished without following a stream).
    let sweeper = tokio::spawn({
        let streams = Arc::downgrade(&ctx.streams);
        async move {
            let mut every = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                every.tick().await;
                let Some(w) = streams.upgrade() else { return };
                w.sweep();
            }
        }
    });
    let mut controllers = Vec::new();
    // Ready once every scope's watcher finished its initial list (caches synced).
    let pending_syncs = Arc::new(std::sync::atomic::AtomicUsize::new(scopes.len()));
    for scope in scopes {
        let api: Api<WorkspaceStartRequest> = match &scope {
            Some(ns) => Api::namespaced(ctx.kube.clone(), ns),
            None => Api::all(ctx.kube.clone()),
        };
        let (reader, writer) = reflector::store();
        ctx.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(reader.clone());
        let synced = Arc::clone(&pending_syncs);
        let health = health.clone();
        let mut counted = false;
        let gone = Arc::clone(&ctx);
        // Server-side: this shard never lists or caches other shards' requests.
        let selector = ctx.settings.shard.label_selector();
        let config = watcher::Config::default().page_size(500).labels(&selector);
        let stream = watcher(api, config)
            .default_backoff()
            .inspect(move |ev| match ev {
                Ok(watcher::Event::InitDone) if !counted => {
                    counted = true;
                    if synced.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                        tracing::info!("caches synced; ready");
                        health.set_ready(true);
                    }
                }
                // Deleted requests are never reconciled again: drop what we keep for them.
                Ok(watcher::Event::Delete(obj)) => gone.forget_request(&ObjectRef::from_obj(obj)),
                Err(e) => {
                    tracing::warn!(error = %e, "watching WorkspaceStartRequests failed; retrying")
                }
                _ => {}
            })
            .modify(|o: &mut WorkspaceStartRequest| {
                o.managed_fields_mut().clear();
                o.annotations_mut()
                    .remove("kubectl.kubernetes.io/last-applied-configuration");
            })
            .reflect(writer)
            .applied_objects()
            // The echo of our own status write carries nothing to act on (the reconcile that
            // wrote it already requeued); skipping it halves the reconciles.
            .try_filter({
                let ctx = Arc::clone(&ctx);
                move |o| futures::future::ready(!ctx.status.is_echo(o))
            });
        let scope_ns = scope.clone();
        let triggers = futures::stream::select(
            futures::stream::select(ctx.streams.subscribe(), ctx.starts.subscribe()),
            ctx.coder_health.subscribe(),
        );
        let triggers = triggers.filter(move |o| {
            let keep = scope_ns.is_none() || o.namespace.as_deref() == scope_ns.as_deref();
            futures::future::ready(keep)
        });
        let c = Controller::for_stream(stream, reader)
            // Unbounded here: `reconcile` takes a start or follow slot instead, so reconciles of
            // started requests never queue behind a burst of new ones.
            .with_config(controller::Config::default().concurrency(0))
            .reconcile_on(triggers)
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, error_policy, Arc::clone(&ctx))
            .for_each(|res| async move {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "controller event");
                }
            });
        controllers.push(c);
    }
    futures::future::join_all(controllers).await;
    sweeper.abort();
}
