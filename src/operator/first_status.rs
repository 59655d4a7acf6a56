//! The first status of a new request: `observedGeneration`, phase `Pending`, `Ready=False` and
//! `Reconciling=True` (reason `Pending`), written [`GRACE`] after the controller sees the
//! request, whatever its Coder calls (which can hang) do, also while it waits in the start
//! queue. Without it kstatus, and every tool built on it, reads a request that has no status as
//! Current (done).
//!
//! At most one API write per request, off the reconcile's path: a few writer tasks take requests
//! from a FIFO queue, each [`GRACE`] after the operator saw it, so a request whose reconcile
//! writes its start record (or any status) within that time needs no first status at all.
//! They take none of the controller's write slots (final statuses never wait behind them), and
//! each first status not yet settled is a required write
//! ([`WriteSlots::require`]): progress and Normal Events give way to it. Each write carries the
//! `resourceVersion` the request had without a status as a precondition, so it can never replace
//! a status the reconcile wrote meanwhile: the API server answers 409 and the first status is
//! dropped. A request whose reconcile writes its own status first is taken off the queue
//! ([`FirstStatus::cancel`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tokio::sync::Notify;

use crate::api::conditions::{self, types};
use crate::api::crd::{Phase, WorkspaceStartRequest, WorkspaceStartRequestStatus};
use crate::api::reason::Reason;
use crate::api::shard::Shard;
use crate::operator::status::StatusWriter;
use crate::operator::write_slots::{Priority, Required, WriteSlots};

/// Concurrent first-status writes. The kube client speaks HTTP/2, so they share one connection;
/// with 16 the first statuses keep pace with a burst of creates (the bench's N=1000 at about
/// 300 creates/s on 2 cores), and the API server is the bound.
pub const WRITERS: usize = 16;

/// Message of a request waiting in the start queue.
pub const WAITING_FOR_SLOT: &str = "waiting for a start slot";

/// Message of a request whose reconcile is reading Coder.
pub const READING_CODER: &str = "reading the chat and workspace from Coder";

/// How long after the operator saw a request its first status is written (unless the reconcile
/// wrote a status by then): a start record written within this time makes it needless. Well
/// within the 2 s a request may go without status.
pub const GRACE: Duration = Duration::from_millis(250);

/// Attempts per request (API errors other than 404 and 409 are retried this often).
const ATTEMPTS: u32 = 5;

type Obj = ObjectRef<WorkspaceStartRequest>;

/// The first status of a request of `generation`: Pending with `message`. Pure.
pub fn pending(
    generation: Option<i64>,
    message: &str,
    now: Timestamp,
) -> WorkspaceStartRequestStatus {
    let now = Time(now);
    let mut st = WorkspaceStartRequestStatus {
        observed_generation: generation,
        phase: Some(Phase::Pending),
        message: Some(message.to_owned()),
        ..WorkspaceStartRequestStatus::default()
    };
    for (type_, status) in [
        (types::READY, "False"),
        (types::RECONCILING, "True"),
        (types::STALLED, "False"),
    ] {
        conditions::set(
            &mut st.conditions,
            type_,
            status,
            Reason::Pending,
            message,
            generation,
            &now,
        );
    }
    st
}

/// One request's first status to write.
#[derive(Clone)]
struct Job {
    /// The request as seen without a status (its `resourceVersion` is the precondition).
    wsr: Arc<WorkspaceStartRequest>,
    message: &'static str,
    attempt: u32,
    /// Not written before this moment.
    due: Instant,
}

enum Entry {
    /// In the queue.
    Queued(Job),
    /// A writer is writing it.
    Writing,
    /// Waiting to be queued again after a failed attempt.
    Retrying,
}

/// A request whose first status is not settled yet; announced as a required write from the
/// moment a writer takes it (a request within its grace is not waiting for the API server).
struct Unsettled {
    entry: Entry,
    required: Option<Required>,
}

#[derive(Default)]
struct Queue {
    order: VecDeque<Obj>,
    /// Requests whose first status is not settled yet (neither written nor cancelled).
    entries: HashMap<Obj, Unsettled>,
}

impl Queue {
    /// Adds `job` for `obj` unless `obj` is already unsettled; true when added. Jobs are pushed
    /// in the order of their `due` time.
    fn push(&mut self, obj: Obj, job: Job) -> bool {
        if self.entries.contains_key(&obj) {
            return false;
        }
        let entry = Unsettled {
            entry: Entry::Queued(job),
            required: None,
        };
        self.entries.insert(obj.clone(), entry);
        self.order.push_back(obj);
        true
    }

    /// Settles `obj` without writing (its reference left in `order` is skipped by `pop`).
    fn cancel(&mut self, obj: &Obj) {
        self.entries.remove(obj);
    }

    /// The oldest queued job when it is due at `now`, marked as being written and announced by
    /// `required`; otherwise when the next one is due (`None`: the queue is empty).
    fn pop(
        &mut self,
        now: Instant,
        required: impl FnOnce() -> Required,
    ) -> Result<(Obj, Job), Option<Instant>> {
        while let Some(obj) = self.order.pop_front() {
            let Some(Unsettled { entry, required: r }) = self.entries.get_mut(&obj) else {
                continue;
            };
            match entry {
                Entry::Queued(job) if job.due > now => {
                    let due = job.due;
                    self.order.push_front(obj);
                    return Err(Some(due));
                }
                Entry::Queued(_) => {
                    if let Entry::Queued(job) = std::mem::replace(entry, Entry::Writing) {
                        r.get_or_insert_with(required);
                        return Ok((obj, job));
                    }
                }
                Entry::Writing | Entry::Retrying => {}
            }
        }
        Err(None)
    }
}

/// The queue of first statuses and its writers.
pub struct FirstStatus {
    queue: Mutex<Queue>,
    wake: Notify,
    kube: kube::Client,
    status: Arc<StatusWriter>,
    /// Where first statuses are announced as required writes.
    slots: Arc<WriteSlots>,
    /// This process's shard: a request that moved to another shard is left to it.
    shard: Shard,
}

/// What one write attempt came to.
enum Attempt {
    /// Written, or no longer needed (the request has a status or is gone).
    Settled,
    /// Try again, after this long, with this view of the request.
    Retry(Duration, Arc<WorkspaceStartRequest>),
}

impl FirstStatus {
    /// Starts [`WRITERS`] writers on the current tokio runtime for the requests of `shard`.
    /// Written statuses are remembered in `status` (so their watch echo needs no reconcile);
    /// unsettled ones are announced as required writes in `slots`.
    pub fn start(
        kube: kube::Client,
        status: Arc<StatusWriter>,
        slots: Arc<WriteSlots>,
        shard: Shard,
    ) -> Arc<FirstStatus> {
        let this = Arc::new(FirstStatus {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            kube,
            status,
            slots,
            shard,
        });
        for _ in 0..WRITERS {
            tokio::spawn(Arc::clone(&this).write_loop());
        }
        this
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the first status of `wsr`, which has none yet (once per request). `waiting`: the
    /// request waits for a start slot (else its reconcile is reading Coder).
    pub fn enqueue(&self, wsr: &Arc<WorkspaceStartRequest>, waiting: bool) {
        let obj = ObjectRef::from_obj(&**wsr);
        let message = if waiting {
            WAITING_FOR_SLOT
        } else {
            READING_CODER
        };
        let job = Job {
            wsr: Arc::clone(wsr),
            message,
            attempt: 0,
            due: Instant::now() + GRACE,
        };
        if self.lock().push(obj, job) {
            self.wake.notify_one();
        }
    }

    /// Takes `obj` off the queue: its reconcile is about to write a status (or it was deleted).
    /// Call before writing any other status of `obj`.
    pub fn cancel(&self, obj: &Obj) {
        self.lock().cancel(obj);
    }

    /// Requests whose first status is not written yet.
    pub fn unsettled(&self) -> usize {
        self.lock().entries.len()
    }

    /// The next queued job when it is due, marked as being written.
    fn pop(&self) -> Result<(Obj, Job), Option<Instant>> {
        self.lock().pop(Instant::now(), || self.slots.require())
    }

    async fn write_loop(self: Arc<Self>) {
        loop {
            let (obj, job) = match self.pop() {
                Ok(next) => next,
                Err(None) => {
                    self.wake.notified().await;
                    continue;
                }
                Err(Some(due)) => {
                    let due = tokio::time::Instant::from_std(due);
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                    continue;
                }
            };
            match self.write(&obj, &job).await {
                Attempt::Settled => {}
                Attempt::Retry(after, wsr) => self.retry(obj, job, after, wsr),
            }
        }
    }

    /// Queues `job` again after `after`, unless it was cancelled meanwhile or out of attempts.
    fn retry(
        self: &Arc<Self>,
        obj: Obj,
        job: Job,
        after: Duration,
        wsr: Arc<WorkspaceStartRequest>,
    ) {
        let attempt = job.attempt.saturating_add(1);
        let mut q = self.lock();
        if attempt >= ATTEMPTS {
            tracing::warn!(request = %obj, "giving up writing the first status");
            q.entries.remove(&obj);
            return;
        }
        let Some(Unsettled { entry, .. }) = q.entries.get_mut(&obj) else {
            return;
        };
        *entry = Entry::Retrying;
        drop(q);
        let job = Job {
            wsr,
            attempt,
            due: Instant::now(),
            ..job
        };
        let this = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let mut q = this.lock();
            if let Some(Unsettled {
                entry: entry @ Entry::Retrying,
                ..
            }) = q.entries.get_mut(&obj)
            {
                *entry = Entry::Queued(job);
                // Overdue: ahead of the requests still within their grace.
                q.order.push_front(obj);
                drop(q);
                this.wake.notify_one();
            }
        });
    }

    /// One attempt: server-side apply of the first status with the request's resourceVersion as
    /// precondition.
    async fn write(&self, obj: &Obj, job: &Job) -> Attempt {
        let wsr = &job.wsr;
        let Some(ns) = wsr.namespace() else {
            self.cancel(obj);
            return Attempt::Settled;
        };
        let api: Api<WorkspaceStartRequest> = Api::namespaced(self.kube.clone(), &ns);
        let status = pending(wsr.meta().generation, job.message, Timestamp::now());
        let Some(permit) = self.slots.permit(Priority::First, &ns).await else {
            return Attempt::Retry(Duration::ZERO, Arc::clone(wsr));
        };
        match self.status.apply_first(&permit, &api, wsr, &status).await {
            Ok(written) => {
                self.settle(obj, Some((&written, &status)));
                Attempt::Settled
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                self.settle(obj, None);
                Attempt::Settled
            }
            // The request changed since it was seen: a status was written (done), or something
            // else changed (try again with the new version).
            Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&wsr.name_any()).await {
                Ok(Some(now))
                    if now.status.is_none()
                        && now.meta().deletion_timestamp.is_none()
                        && self.shard.owns(now.labels()) =>
                {
                    Attempt::Retry(Duration::ZERO, Arc::new(now))
                }
                Ok(_) => {
                    self.settle(obj, None);
                    Attempt::Settled
                }
                Err(e) => self.failed(obj, job, &e),
            },
            Err(e) => self.failed(obj, job, &e),
        }
    }

    fn failed(&self, obj: &Obj, job: &Job, e: &kube::Error) -> Attempt {
        tracing::warn!(request = %obj, error = %e, attempt = job.attempt, "writing the first status failed");
        let after = Duration::from_secs(u64::from(job.attempt) + 1);
        Attempt::Retry(after, Arc::clone(&job.wsr))
    }

    /// Marks `obj` settled and remembers what was written, unless the reconcile took over
    /// meanwhile ([`FirstStatus::cancel`], called before its own write).
    fn settle(
        &self,
        obj: &Obj,
        written: Option<(&WorkspaceStartRequest, &WorkspaceStartRequestStatus)>,
    ) {
        let mut q = self.lock();
        if q.entries.remove(obj).is_some()
            && let Some((w, st)) = written
        {
            self.status.remember(obj, w, st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::write_slots::Limits;

    #[test]
    fn first_status_is_pending_and_reconciling_for_the_generation() {
        let now = Timestamp::from_second(1_700_000_000).expect("ts");
        let st = pending(Some(3), WAITING_FOR_SLOT, now);
        assert_eq!(st.observed_generation, Some(3));
        assert_eq!(st.phase, Some(Phase::Pending));
        assert_eq!(st.message.as_deref(), Some(WAITING_FOR_SLOT));
        assert!(conditions::is_true(&st.conditions, types::RECONCILING));
        assert!(!conditions::is_true(&st.conditions, types::READY));
        assert!(!conditions::is_true(&st.conditions, types::STALLED));
        assert_eq!(
            conditions::ready_reason(&st.conditions),
            Some(Reason::Pending.as_str())
        );
        assert!(
            st.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
        assert!(
            st.start_time.is_none(),
            "timeouts count from the first decision"
        );
        assert!(st.build_requested_at.is_none());
    }

    fn job(name: &str, due: Instant) -> (Obj, Job) {
        let wsr: WorkspaceStartRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "coder.com/v1alpha1",
            "kind": "WorkspaceStartRequest",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"},
            "spec": {"chatId": "9d0c2f5e-1b7a-4c1e-9a51-3f0f6b2d8e11"},
        }))
        .expect("request");
        let job = Job {
            wsr: Arc::new(wsr),
            message: WAITING_FOR_SLOT,
            attempt: 0,
            due,
        };
        (ObjectRef::new(name).within("ns"), job)
    }

    fn popped(q: &mut Queue, now: Instant, slots: &WriteSlots) -> Option<Obj> {
        q.pop(now, || slots.require()).ok().map(|(o, _)| o)
    }

    #[test]
    fn queue_writes_each_request_once_in_arrival_order() {
        let slots = WriteSlots::new(Limits::one_each(1));
        let now = Instant::now();
        let mut q = Queue::default();
        let (a, ja) = job("a", now);
        let (b, jb) = job("b", now);
        assert!(q.push(a.clone(), ja.clone()));
        assert!(q.push(b.clone(), jb));
        assert!(!q.push(a.clone(), ja.clone()), "queued once");
        assert_eq!(popped(&mut q, now, &slots), Some(a.clone()));
        assert!(!q.push(a.clone(), ja), "being written: not queued again");
        assert_eq!(popped(&mut q, now, &slots), Some(b));
        assert!(matches!(q.pop(now, || slots.require()), Err(None)));
    }

    #[test]
    fn a_request_is_written_only_after_its_grace() {
        let slots = WriteSlots::new(Limits::one_each(1));
        let now = Instant::now();
        let mut q = Queue::default();
        let (a, ja) = job("a", now + GRACE);
        q.push(a.clone(), ja);
        assert!(
            matches!(q.pop(now, || slots.require()), Err(Some(due)) if due == now + GRACE),
            "not yet due: the writers wait until then"
        );
        assert_eq!(
            slots.required(),
            0,
            "within its grace it holds back nothing"
        );
        assert_eq!(popped(&mut q, now + GRACE, &slots), Some(a));
        assert_eq!(slots.required(), 1, "being written: spare writes give way");
    }

    #[test]
    fn a_request_that_wrote_its_own_status_within_its_grace_gets_no_first_status() {
        let slots = WriteSlots::new(Limits::one_each(1));
        let now = Instant::now();
        let mut q = Queue::default();
        let (a, ja) = job("a", now + GRACE);
        let (b, jb) = job("b", now + GRACE);
        q.push(a.clone(), ja);
        q.push(b.clone(), jb);
        // a's reconcile wrote its start record first.
        q.cancel(&a);
        assert_eq!(popped(&mut q, now + GRACE, &slots), Some(b.clone()));
        assert_eq!(slots.required(), 1, "b is being written");
        q.cancel(&b);
        assert!(
            q.entries.is_empty(),
            "a write in flight is cancelled too (not remembered)"
        );
        assert_eq!(slots.required(), 0, "settled: spare writes may go");
        assert!(matches!(q.pop(now + GRACE, || slots.require()), Err(None)));
    }
}
