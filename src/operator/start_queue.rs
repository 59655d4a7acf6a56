//! Admission of requests not yet started (reading Coder and requesting the build).
//!
//! At most `limit` start reconciles run at once. The others are not parked as waiting
//! reconciles (thousands of those cost megabytes): the request's reference joins a FIFO queue and
//! the reconcile ends; when a slot frees up, the next request in the queue is triggered again
//! (`reconcile_on`) with the slot reserved for it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api::crd::WorkspaceStartRequest;
use crate::operator::triggers::Triggers;

type Obj = ObjectRef<WorkspaceStartRequest>;

/// A reserved slot nobody claimed within this time (the request vanished) is reclaimed.
const INVITE_EXPIRY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    running: usize,
    waiting: VecDeque<Obj>,
    queued: HashSet<Obj>,
    /// Requests triggered with a slot reserved for them, and since when.
    invited: HashMap<Obj, Instant>,
}

/// The start slots and the queue of requests waiting for one.
pub struct StartQueue {
    limit: usize,
    state: Mutex<State>,
    wake: Triggers,
}

/// A start slot; dropping it admits the next waiting request.
pub struct StartPermit {
    queue: Arc<StartQueue>,
}

impl Drop for StartPermit {
    fn drop(&mut self) {
        let mut st = self.queue.lock();
        st.running = st.running.saturating_sub(1);
        self.queue.admit_waiting(&mut st, None);
    }
}

impl StartQueue {
    /// A queue with `limit` slots (at least one).
    pub fn new(limit: usize) -> Arc<StartQueue> {
        Arc::new(StartQueue {
            limit: limit.max(1),
            state: Mutex::new(State::default()),
            wake: Triggers::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Triggers for the controller (`reconcile_on`): requests whose slot is reserved.
    pub fn subscribe(&self) -> UnboundedReceiverStream<Obj> {
        self.wake.subscribe()
    }

    /// A slot for `obj` if its turn has come; otherwise `obj` waits in the queue (once) and will
    /// be triggered when a slot is reserved for it.
    pub fn try_start(self: &Arc<Self>, obj: &Obj) -> Option<StartPermit> {
        let mut st = self.lock();
        let admitted = st.invited.remove(obj).is_some() || {
            if st.queued.insert(obj.clone()) {
                st.waiting.push_back(obj.clone());
            }
            self.admit_waiting(&mut st, Some(obj))
        };
        admitted.then(|| StartPermit {
            queue: Arc::clone(self),
        })
    }

    /// Forgets `obj` (deleted, or started after all): leaves the queue and releases a slot
    /// reserved for it.
    pub fn forget(&self, obj: &Obj) {
        let mut st = self.lock();
        if st.queued.remove(obj) {
            st.waiting.retain(|o| o != obj);
        }
        if st.invited.remove(obj).is_some() {
            st.running = st.running.saturating_sub(1);
            self.admit_waiting(&mut st, None);
        }
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Fills free slots from the front of the queue: `caller` is admitted directly (returns
    /// true), every other request gets a reserved slot and a trigger.
    fn admit_waiting(&self, st: &mut State, caller: Option<&Obj>) -> bool {
        let now = Instant::now();
        let expired: Vec<Obj> = st
            .invited
            .iter()
            .filter(|(_, at)| now.duration_since(**at) > INVITE_EXPIRY)
            .map(|(o, _)| o.clone())
            .collect();
        for o in expired {
            st.invited.remove(&o);
            st.running = st.running.saturating_sub(1);
        }
        let mut admitted = false;
        let mut wake = Vec::new();
        while st.running < self.limit {
            let Some(next) = st.waiting.pop_front() else {
                break;
            };
            st.queued.remove(&next);
            st.running += 1;
            if Some(&next) == caller {
                admitted = true;
            } else {
                st.invited.insert(next.clone(), now);
                wake.push(next);
            }
        }
        if !wake.is_empty() {
            self.wake.send(&wake);
        }
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn obj(name: &str) -> Obj {
        ObjectRef::new(name).within("ns")
    }

    #[tokio::test]
    async fn admits_up_to_the_limit_then_queues_in_order() {
        let q = StartQueue::new(2);
        let mut woken = q.subscribe();
        let a = q.try_start(&obj("a")).expect("a admitted");
        let _b = q.try_start(&obj("b")).expect("b admitted");
        assert!(q.try_start(&obj("c")).is_none());
        assert!(q.try_start(&obj("d")).is_none());
        assert!(q.try_start(&obj("c")).is_none(), "queued once");
        assert_eq!(q.waiting(), 2);
        drop(a);
        assert_eq!(woken.next().await, Some(obj("c")), "first in, first woken");
        // d came before c's reconcile returned: its turn has not come.
        assert!(q.try_start(&obj("d")).is_none());
        let _c = q.try_start(&obj("c")).expect("c holds the reserved slot");
        assert_eq!(q.waiting(), 1);
    }

    #[tokio::test]
    async fn a_forgotten_invitation_frees_its_slot() {
        let q = StartQueue::new(1);
        let mut woken = q.subscribe();
        let a = q.try_start(&obj("a")).expect("a admitted");
        assert!(q.try_start(&obj("b")).is_none());
        assert!(q.try_start(&obj("c")).is_none());
        drop(a);
        assert_eq!(woken.next().await, Some(obj("b")));
        q.forget(&obj("b"));
        assert_eq!(woken.next().await, Some(obj("c")), "b's slot goes to c");
        assert!(q.try_start(&obj("c")).is_some());
    }

    #[test]
    fn a_free_slot_serves_the_queue_front_first() {
        let q = StartQueue::new(1);
        let a = q.try_start(&obj("a")).expect("a admitted");
        assert!(q.try_start(&obj("b")).is_none());
        // No attached request (e.g. between two leadership terms): the slot is still reserved for b.
        drop(a);
        assert!(q.try_start(&obj("x")).is_none(), "x waits behind b");
        assert!(q.try_start(&obj("b")).is_some());
    }
}
