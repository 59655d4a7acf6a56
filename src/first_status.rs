//! The first status of a new request: `observedGeneration`, phase `Pending`, `Ready=False` and
//! `Reconciling=True` (reason `Pending`), written as soon as the controller sees the request,
//! before any Coder call (which can hang) and while the request waits in the start queue. Without
//! it kstatus, and every tool built on it, reads a request that has no status as Current (done).
//!
//! At most one API write per request, off the reconcile's path: a few writer tasks take requests
//! from a FIFO queue. They take none of the controller's write slots (final statuses never wait
//! behind them; progress deferral never postpones them). Each write carries the
//! `resourceVersion` the request had without a status as a precondition, so it can never replace
//! a status the reconcile wrote meanwhile: the API server answers 409 and the first status is
//! dropped. A request whose reconcile writes its own status first is taken off the queue
//! ([`FirstStatus::cancel`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tokio::sync::Notify;

use crate::conditions::{self, reasons, types};
use crate::crd::{FIELD_MANAGER, Phase, WorkspaceStartRequest, WorkspaceStartRequestStatus};
use crate::shard::Shard;
use crate::status::StatusWriter;

/// Concurrent first-status writes.
pub const WRITERS: usize = 2;

/// Message of a request waiting in the start queue.
pub const WAITING_FOR_SLOT: &str = "waiting for a start slot";

/// Message of a request whose reconcile is reading Coder.
pub const READING_CODER: &str = "reading the chat and workspace from Coder";

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
            reasons::PENDING,
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
}

enum Entry {
    /// In the queue.
    Queued(Job),
    /// A writer is writing it.
    Writing,
    /// Waiting to be queued again after a failed attempt.
    Retrying,
}

#[derive(Default)]
struct Queue {
    order: VecDeque<Obj>,
    /// Requests whose first status is not settled yet (neither written nor cancelled).
    entries: HashMap<Obj, Entry>,
}

impl Queue {
    /// Adds `job` for `obj` unless `obj` is already unsettled; true when added.
    fn push(&mut self, obj: Obj, job: Job) -> bool {
        if self.entries.contains_key(&obj) {
            return false;
        }
        self.entries.insert(obj.clone(), Entry::Queued(job));
        self.order.push_back(obj);
        true
    }

    /// Settles `obj` without writing (its reference left in `order` is skipped by `pop`).
    fn cancel(&mut self, obj: &Obj) {
        self.entries.remove(obj);
    }

    /// The oldest queued job, marked as being written.
    fn pop(&mut self) -> Option<(Obj, Job)> {
        while let Some(obj) = self.order.pop_front() {
            let Some(entry) = self.entries.get_mut(&obj) else {
                continue;
            };
            if matches!(entry, Entry::Queued(_))
                && let Entry::Queued(job) = std::mem::replace(entry, Entry::Writing)
            {
                return Some((obj, job));
            }
        }
        None
    }
}

/// The queue of first statuses and its writers.
pub struct FirstStatus {
    queue: Mutex<Queue>,
    wake: Notify,
    kube: kube::Client,
    status: Arc<StatusWriter>,
    /// This process's shard: a request that moved to another shard is left to it.
    shard: Shard,
}

/// What one write attempt came to.
enum Outcome {
    /// Written, or no longer needed (the request has a status or is gone).
    Settled,
    /// Try again, after this long, with this view of the request.
    Retry(Duration, Arc<WorkspaceStartRequest>),
}

impl FirstStatus {
    /// Starts [`WRITERS`] writers on the current tokio runtime for the requests of `shard`.
    /// Written statuses are remembered in `status` (so their watch echo needs no reconcile).
    pub fn start(kube: kube::Client, status: Arc<StatusWriter>, shard: Shard) -> Arc<FirstStatus> {
        let this = Arc::new(FirstStatus {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            kube,
            status,
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

    /// The next queued job, marked as being written.
    fn pop(&self) -> Option<(Obj, Job)> {
        self.lock().pop()
    }

    async fn write_loop(self: Arc<Self>) {
        loop {
            let Some((obj, job)) = self.pop() else {
                self.wake.notified().await;
                continue;
            };
            match self.write(&obj, &job).await {
                Outcome::Settled => {}
                Outcome::Retry(after, wsr) => self.retry(obj, job, after, wsr),
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
        let Some(entry) = q.entries.get_mut(&obj) else {
            return;
        };
        *entry = Entry::Retrying;
        drop(q);
        let job = Job {
            wsr,
            attempt,
            ..job
        };
        let this = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let mut q = this.lock();
            if let Some(entry @ Entry::Retrying) = q.entries.get_mut(&obj) {
                *entry = Entry::Queued(job);
                q.order.push_back(obj);
                drop(q);
                this.wake.notify_one();
            }
        });
    }

    /// One attempt: server-side apply of the first status with the request's resourceVersion as
    /// precondition.
    async fn write(&self, obj: &Obj, job: &Job) -> Outcome {
        let wsr = &job.wsr;
        let Some(ns) = wsr.namespace() else {
            self.cancel(obj);
            return Outcome::Settled;
        };
        let api: Api<WorkspaceStartRequest> = Api::namespaced(self.kube.clone(), &ns);
        let status = pending(wsr.meta().generation, job.message, Timestamp::now());
        let patch = serde_json::json!({
            "apiVersion": WorkspaceStartRequest::api_version(&()),
            "kind": WorkspaceStartRequest::kind(&()),
            "metadata": {"name": wsr.name_any(), "resourceVersion": wsr.resource_version()},
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(&wsr.name_any(), &params, &Patch::Apply(&patch))
            .await
        {
            Ok(written) => {
                self.settle(obj, Some((&written, &status)));
                Outcome::Settled
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                self.settle(obj, None);
                Outcome::Settled
            }
            // The request changed since it was seen: a status was written (done), or something
            // else changed (try again with the new version).
            Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&wsr.name_any()).await {
                Ok(Some(now))
                    if now.status.is_none()
                        && now.meta().deletion_timestamp.is_none()
                        && self.shard.owns(now.labels()) =>
                {
                    Outcome::Retry(Duration::ZERO, Arc::new(now))
                }
                Ok(_) => {
                    self.settle(obj, None);
                    Outcome::Settled
                }
                Err(e) => self.failed(obj, job, &e),
            },
            Err(e) => self.failed(obj, job, &e),
        }
    }

    fn failed(&self, obj: &Obj, job: &Job, e: &kube::Error) -> Outcome {
        tracing::warn!(request = %obj, error = %e, attempt = job.attempt, "writing the first status failed");
        let after = Duration::from_secs(u64::from(job.attempt) + 1);
        Outcome::Retry(after, Arc::clone(&job.wsr))
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
            Some(reasons::PENDING)
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

    fn job(name: &str) -> (Obj, Job) {
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
        };
        (ObjectRef::new(name).within("ns"), job)
    }

    #[test]
    fn queue_writes_each_request_once_in_arrival_order() {
        let mut q = Queue::default();
        let (a, ja) = job("a");
        let (b, jb) = job("b");
        assert!(q.push(a.clone(), ja.clone()));
        assert!(q.push(b.clone(), jb));
        assert!(!q.push(a.clone(), ja.clone()), "queued once");
        assert_eq!(q.pop().map(|(o, _)| o), Some(a.clone()));
        assert!(!q.push(a.clone(), ja), "being written: not queued again");
        assert_eq!(q.pop().map(|(o, _)| o), Some(b));
        assert!(q.pop().is_none());
    }

    #[test]
    fn a_cancelled_request_is_never_written() {
        let mut q = Queue::default();
        let (a, ja) = job("a");
        let (b, jb) = job("b");
        q.push(a.clone(), ja);
        q.push(b.clone(), jb);
        q.cancel(&a);
        assert_eq!(q.pop().map(|(o, _)| o), Some(b.clone()));
        q.cancel(&b);
        assert!(
            q.entries.is_empty(),
            "a write in flight is cancelled too (not remembered)"
        );
        assert!(q.pop().is_none());
    }
}
