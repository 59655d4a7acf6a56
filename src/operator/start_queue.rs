//! Admission of requests not yet started (reading Coder and requesting the build).
//!
//! At most `limit` start reconciles run at once. The others are not parked as waiting
//! reconciles (thousands of those cost megabytes): the request's reference joins a queue and
//! the reconcile ends; when a slot frees up, the next request in the queue is triggered again
//! (`reconcile_on`) with the slot reserved for it.
//!
//! The queue is fair across namespaces: a free slot goes to the waiting namespace that holds the
//! fewest slots, round-robin among those that hold equally few ([`RoundRobin`]), in arrival
//! order within one. So a namespace that arrives while another's burst holds every slot gets
//! each slot that frees until it holds as many, instead of every other one: a slot can be held
//! for a while (its start record waits for the namespace's write slot), and slots then free
//! slowly.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api::crd::WorkspaceStartRequest;
use crate::operator::round_robin::{Holdings, RoundRobin};
use crate::operator::triggers::Triggers;

type Obj = ObjectRef<WorkspaceStartRequest>;

/// A reserved slot nobody claimed within this time (the request vanished) is reclaimed.
const INVITE_EXPIRY: Duration = Duration::from_secs(60);

/// The waiting requests, each once, served round-robin over their namespaces.
#[derive(Default)]
struct Lanes {
    order: RoundRobin<Obj>,
    /// Every waiting request (to queue each once).
    queued: HashSet<Obj>,
}

fn namespace(obj: &Obj) -> &str {
    obj.namespace.as_deref().unwrap_or_default()
}

impl Lanes {
    /// Queues `obj` unless it waits already.
    fn push(&mut self, obj: &Obj) {
        if self.queued.insert(obj.clone()) {
            self.order.push(namespace(obj), obj.clone());
        }
    }

    /// The next request: of the waiting namespaces holding the fewest slots (`held`), the one
    /// whose turn comes first.
    fn pop(&mut self, held: &Holdings) -> Option<Obj> {
        let fewest = self.order.turns().map(|ns| held.of(ns)).min()?;
        let next = self.order.pop_where(|ns| held.of(ns) == fewest)?;
        self.queued.remove(&next);
        Some(next)
    }

    /// Takes `obj` out of the queue, if it waits there.
    fn remove(&mut self, obj: &Obj) {
        if self.queued.remove(obj) {
            self.order.remove(namespace(obj), |o| o == obj);
        }
    }

    fn len(&self) -> usize {
        self.queued.len()
    }
}

#[derive(Default)]
struct State {
    /// Slots held (running or reserved).
    held: Holdings,
    waiting: Lanes,
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
    namespace: String,
}

impl Drop for StartPermit {
    fn drop(&mut self) {
        let mut st = self.queue.lock();
        st.held.give_back(&self.namespace);
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
            st.waiting.push(obj);
            self.admit_waiting(&mut st, Some(obj))
        };
        admitted.then(|| StartPermit {
            queue: Arc::clone(self),
            namespace: namespace(obj).to_owned(),
        })
    }

    /// Forgets `obj` (deleted, or started after all): leaves the queue and releases a slot
    /// reserved for it.
    pub fn forget(&self, obj: &Obj) {
        let mut st = self.lock();
        st.waiting.remove(obj);
        if st.invited.remove(obj).is_some() {
            st.held.give_back(namespace(obj));
            self.admit_waiting(&mut st, None);
        }
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Fills free slots, each to the waiting namespace holding the fewest: `caller` is admitted
    /// directly (returns true), every other request gets a reserved slot and a trigger.
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
            st.held.give_back(namespace(&o));
        }
        let mut admitted = false;
        let mut wake = Vec::new();
        while st.held.total() < self.limit {
            let Some(next) = st.waiting.pop(&st.held) else {
                break;
            };
            st.held.take(namespace(&next));
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

    /// `a-3` is request `a-3` in namespace `a`.
    fn in_ns(name: &str) -> Obj {
        let ns = name.split('-').next().unwrap_or_default();
        ObjectRef::new(name).within(ns)
    }

    #[test]
    fn a_request_queued_twice_waits_once_in_its_namespaces_turn() {
        let mut lanes = Lanes::default();
        for name in ["a-1", "a-1", "b-1", "a-2", "b-1"] {
            lanes.push(&in_ns(name));
        }
        assert_eq!(lanes.len(), 3);
        let order: Vec<String> = std::iter::from_fn(|| lanes.pop(&Holdings::default()))
            .map(|o| o.name)
            .collect();
        assert_eq!(order, ["a-1", "b-1", "a-2"]);
        assert!(lanes.order.is_empty() && lanes.queued.is_empty());
    }

    /// Frees `permit`'s slot and claims the reserved slot for the request it went to.
    async fn pass_on(
        q: &Arc<StartQueue>,
        woken: &mut UnboundedReceiverStream<Obj>,
        permit: StartPermit,
    ) -> (Obj, StartPermit) {
        drop(permit);
        let next = woken.next().await.expect("a request woken");
        let permit = q
            .try_start(&next)
            .expect("the woken request holds its slot");
        (next, permit)
    }

    #[tokio::test]
    async fn a_burst_of_100_in_one_namespace_lets_another_namespaces_request_in_within_two_slots() {
        let q = StartQueue::new(1);
        let mut woken = q.subscribe();
        let mut permit = q.try_start(&in_ns("a-first")).expect("the slot is free");
        for i in 0..100 {
            assert!(q.try_start(&in_ns(&format!("a-{i}"))).is_none());
        }
        assert!(q.try_start(&in_ns("b-only")).is_none());
        let mut served = Vec::new();
        for _ in 0..2 {
            let next;
            (next, permit) = pass_on(&q, &mut woken, permit).await;
            served.push(next.name);
        }
        assert_eq!(
            served,
            ["a-0", "b-only"],
            "b waits behind one of a's, not 100"
        );
        // a's requests go on in their order.
        for i in 1..100 {
            let next;
            (next, permit) = pass_on(&q, &mut woken, permit).await;
            assert_eq!(next.name, format!("a-{i}"));
        }
        assert_eq!(q.waiting(), 0);
        assert!(q.lock().waiting.order.is_empty());
    }

    #[tokio::test]
    async fn a_namespace_arriving_while_another_holds_every_slot_gets_freed_slots_until_it_holds_as_many()
     {
        let q = StartQueue::new(4);
        let mut woken = q.subscribe();
        let mut a: Vec<StartPermit> = (0..4)
            .map(|i| q.try_start(&in_ns(&format!("a-{i}"))).expect("free"))
            .collect();
        for name in ["a-4", "a-5", "b-0", "b-1", "b-2"] {
            assert!(q.try_start(&in_ns(name)).is_none(), "{name} waits");
        }
        let mut served = Vec::new();
        let mut holding = Vec::new();
        for _ in 0..3 {
            drop(a.remove(0));
            let next = woken.next().await.expect("a request woken");
            holding.push(q.try_start(&next).expect("its slot is reserved"));
            served.push(next.name);
        }
        // Round-robin alone would give b every other slot (b-0, a-4, b-1).
        assert_eq!(
            served,
            ["b-0", "b-1", "a-4"],
            "b first, until it holds as many as a"
        );
        assert_eq!(q.lock().held.of("b"), 2);
    }

    #[tokio::test]
    async fn a_forgotten_waiter_gives_up_its_namespaces_turn() {
        let q = StartQueue::new(1);
        let mut woken = q.subscribe();
        let permit = q.try_start(&in_ns("a-0")).expect("the slot is free");
        assert!(q.try_start(&in_ns("a-1")).is_none());
        assert!(q.try_start(&in_ns("b-1")).is_none());
        assert!(q.try_start(&in_ns("a-2")).is_none());
        q.forget(&in_ns("b-1"));
        assert_eq!(q.waiting(), 2);
        assert_eq!(
            q.lock().waiting.order.turns().collect::<Vec<_>>(),
            ["a"],
            "b has no turn without a waiter"
        );
        let (next, permit) = pass_on(&q, &mut woken, permit).await;
        assert_eq!(next, in_ns("a-1"));
        let (next, _permit) = pass_on(&q, &mut woken, permit).await;
        assert_eq!(next, in_ns("a-2"));
    }

    #[tokio::test]
    async fn an_unclaimed_invitation_expires_and_its_slot_goes_to_the_next_turn() {
        let q = StartQueue::new(1);
        let mut woken = q.subscribe();
        let permit = q.try_start(&in_ns("a-0")).expect("the slot is free");
        for name in ["a-1", "a-2", "b-1"] {
            assert!(q.try_start(&in_ns(name)).is_none());
        }
        drop(permit);
        assert_eq!(woken.next().await, Some(in_ns("a-1")));
        // a-1 never comes back (its trigger was lost): once the invitation is older than the
        // expiry, the next admission reclaims the slot for the next namespace's turn.
        let long_ago = Instant::now()
            .checked_sub(INVITE_EXPIRY + Duration::from_secs(1))
            .expect("the clock is past the expiry");
        q.lock().invited.insert(in_ns("a-1"), long_ago);
        assert!(q.try_start(&in_ns("c-1")).is_none(), "c-1 waits its turn");
        assert_eq!(woken.next().await, Some(in_ns("b-1")), "b's turn, then a's");
        let _b = q
            .try_start(&in_ns("b-1"))
            .expect("b-1 holds the reclaimed slot");
        assert_eq!(q.waiting(), 2, "a-2 and c-1 wait");
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
