//! Who goes first at the API server. Every request needs three writes: its first status, the
//! start record before the POST (or the build it joined) and its final status. Those are
//! **required** writes. Progress statuses and Normal Events are **spare** writes: they go only
//! where they fit, in write capacity no required write is waiting for.
//!
//! Every status write and Event create needs a [`Permit`], and the only way to get one is to
//! choose its [`Priority`] ([`WriteSlots::permit`]): a write that skips the rule does not
//! compile.
//!
//! Required writes announce themselves ([`WriteSlots::require`]) from the moment they are known
//! until they are done; a spare write waits until none is announced (and, for Events, none was
//! for a quiet moment: [`EVENT_QUIET`]), then takes one of the write slots (shared by every write
//! but the final statuses, which never wait for a slot). Under load required writes follow each
//! other without pause, so spare writes give way; at low load they wait a few milliseconds and
//! every transition still gets its status write and Event.
//!
//! The slots are per namespace, within a total ([`Limits`]): each namespace may have
//! `per_namespace` writes in flight, and all namespaces together `total`. So one namespace's
//! hundreds of waiting start records never hold back another namespace's start record while
//! the total has room; one namespace alone (the common case) keeps the API server's queue as
//! short as `per_namespace`. When the total is reached, a freed slot goes to the waiting
//! required writes round-robin over their namespaces ([`RoundRobin`], arrival order within
//! one), passing over namespaces at their own limit, and only when none waits to the spare
//! writes, the same way.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::operator::round_robin::{Holdings, RoundRobin};

/// How long after the last required write was announced an Event may go: required writes
/// closer together than this are load, and Events do not fit in the gaps between them.
pub const EVENT_QUIET: Duration = Duration::from_millis(250);

/// Required writes announced and not done, and when the last one was announced.
#[derive(Clone, Copy, Default)]
struct Load {
    waiting: usize,
    last: Option<Instant>,
}

impl Load {
    /// When spare writes that need `quiet` may go: `None` while required writes wait.
    fn spare_from(&self, quiet: Duration) -> Option<Instant> {
        if self.waiting > 0 {
            return None;
        }
        Some(self.last.map_or_else(Instant::now, |l| l + quiet))
    }
}

/// Which waiters a freed slot goes to first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Required,
    Spare,
}

/// How many writes (other than final and first statuses) may be in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Per namespace (at least one).
    pub per_namespace: usize,
    /// Over all namespaces (at least `per_namespace`).
    pub total: usize,
}

impl Limits {
    /// One slot per namespace and `total` in all.
    pub fn one_each(total: usize) -> Limits {
        Limits {
            per_namespace: 1,
            total,
        }
    }

    /// `self` raised where needed to at least one slot per namespace and a total that holds a
    /// namespace's allowance.
    fn usable(self) -> Limits {
        let per_namespace = self.per_namespace.max(1);
        Limits {
            per_namespace,
            total: self.total.max(per_namespace),
        }
    }
}

/// One write waiting for a slot; the slot is handed over through `grant`.
struct Waiter {
    id: u64,
    namespace: String,
    grant: oneshot::Sender<()>,
}

/// The slots in flight and the writes waiting for one. A write waits only while the total is
/// reached or its namespace is at its own limit.
#[derive(Default)]
struct Queue {
    held: Holdings,
    required: RoundRobin<Waiter>,
    spare: RoundRobin<Waiter>,
    next_id: u64,
}

impl Queue {
    fn waiters(&mut self, class: Class) -> &mut RoundRobin<Waiter> {
        match class {
            Class::Required => &mut self.required,
            Class::Spare => &mut self.spare,
        }
    }

    /// Whether a write to `namespace` may take a slot now.
    fn has_room(&self, limits: Limits, namespace: &str) -> bool {
        self.held.total() < limits.total && self.held.of(namespace) < limits.per_namespace
    }

    /// Gives back `namespace`'s slot and hands the room to the next waiters (required writes
    /// before spare ones, each round-robin over the namespaces below their limit).
    fn release(&mut self, limits: Limits, namespace: &str) {
        self.held.give_back(namespace);
        while self.held.total() < limits.total {
            let held = &self.held;
            let below = |ns: &str| held.of(ns) < limits.per_namespace;
            let Some(next) = self
                .required
                .pop_where(below)
                .or_else(|| self.spare.pop_where(below))
            else {
                return;
            };
            if next.grant.send(()).is_ok() {
                self.held.take(&next.namespace);
            }
        }
    }
}

/// Write slots handed out fairly across namespaces (see the module doc).
struct FairSlots {
    limits: Limits,
    queue: Mutex<Queue>,
}

/// A write slot of a namespace; dropping it hands it to the next waiter.
struct Slot<'a> {
    slots: &'a FairSlots,
    namespace: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots
            .lock()
            .release(self.slots.limits, &self.namespace);
    }
}

/// A write waiting for a slot. Dropped before the slot came (the write gave up), it leaves the
/// queue; dropped after the slot was handed to it but before it took it, it passes the slot on.
struct Waiting<'a> {
    slots: &'a FairSlots,
    class: Class,
    namespace: String,
    id: u64,
    granted: oneshot::Receiver<()>,
    taken: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let mut q = self.slots.lock();
        let id = self.id;
        let queued = q
            .waiters(self.class)
            .remove(&self.namespace, |w| w.id == id);
        if !queued && self.granted.try_recv().is_ok() {
            q.release(self.slots.limits, &self.namespace);
        }
    }
}

impl FairSlots {
    fn new(limits: Limits) -> FairSlots {
        FairSlots {
            limits: limits.usable(),
            queue: Mutex::new(Queue::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a `class` write of `namespace`: at once if it has room, else when its turn
    /// comes. `None` only if the slot could not be handed over (never, while `self` lives).
    async fn acquire(&self, class: Class, namespace: &str) -> Option<Slot<'_>> {
        let slot = || Slot {
            slots: self,
            namespace: namespace.to_owned(),
        };
        let mut waiting = {
            let mut q = self.lock();
            if q.has_room(self.limits, namespace) {
                q.held.take(namespace);
                return Some(slot());
            }
            let id = q.next_id;
            q.next_id = id.wrapping_add(1);
            let (grant, granted) = oneshot::channel();
            q.waiters(class).push(
                namespace,
                Waiter {
                    id,
                    namespace: namespace.to_owned(),
                    grant,
                },
            );
            Waiting {
                slots: self,
                class,
                namespace: namespace.to_owned(),
                id,
                granted,
                taken: false,
            }
        };
        (&mut waiting.granted).await.ok()?;
        waiting.taken = true;
        Some(slot())
    }
}

/// The write slots and the required writes announced.
pub struct WriteSlots {
    slots: FairSlots,
    required: watch::Sender<Load>,
}

/// A required write announced; dropping it (when written, or no longer needed) lets spare
/// writes go once no other is announced.
pub struct Required {
    required: watch::Sender<Load>,
}

impl Drop for Required {
    fn drop(&mut self) {
        self.required
            .send_modify(|l| l.waiting = l.waiting.saturating_sub(1));
    }
}

/// The priority of one write, chosen by the code that makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A write the request cannot do without (the start record, a status that joins a build, a
    /// Warning Event): announced at once, then waits for a write slot.
    Required,
    /// A final (Ready/Failed) status: announced, and never waits for a slot, so it reaches the
    /// API server ahead of everything else.
    Final,
    /// A request's first status: announced from the moment it is queued (the first-status
    /// queue holds that announcement), written by its own writers without a slot.
    First,
    /// Progress or a Normal Event: only where it fits, once no required write is announced (and
    /// none was for `quiet`) and a slot is free, before `deadline`; else not at all.
    Spare {
        /// The latest moment the write may start.
        deadline: Instant,
        /// How long after the last required write was announced it may go.
        quiet: Duration,
    },
}

/// Permission for one write at the priority its caller chose; holds the write's slot (and its
/// announcement, for required and final writes) until dropped.
pub struct Permit<'a> {
    priority: Priority,
    _slot: Option<Slot<'a>>,
    _announced: Option<Required>,
}

impl Permit<'_> {
    /// The priority this permit was granted for.
    pub fn priority(&self) -> Priority {
        self.priority
    }
}

impl WriteSlots {
    /// Slots for writes other than final and first statuses, within `limits` (raised to at
    /// least one per namespace).
    pub fn new(limits: Limits) -> Arc<WriteSlots> {
        Arc::new(WriteSlots {
            slots: FairSlots::new(limits),
            required: watch::Sender::new(Load::default()),
        })
    }

    /// A permit for one write at `priority` to an object in `namespace` (whose turn among the
    /// namespaces a waiting write takes): `None` only for a spare write that found no room in
    /// time (and, in theory, if a slot could not be handed over, which never happens).
    pub async fn permit(&self, priority: Priority, namespace: &str) -> Option<Permit<'_>> {
        let (slot, announced) = match priority {
            Priority::Required => {
                let announced = self.require();
                let slot = self.slots.acquire(Class::Required, namespace).await?;
                (Some(slot), Some(announced))
            }
            Priority::Final => (None, Some(self.require())),
            Priority::First => (None, None),
            Priority::Spare { deadline, quiet } => (
                Some(self.spare_slot(namespace, deadline, quiet).await?),
                None,
            ),
        };
        Some(Permit {
            priority,
            _slot: slot,
            _announced: announced,
        })
    }

    /// Announces a required write until the returned guard is dropped.
    pub fn require(&self) -> Required {
        let now = Instant::now();
        self.required.send_modify(|l| {
            l.waiting = l.waiting.saturating_add(1);
            l.last = Some(now);
        });
        Required {
            required: self.required.clone(),
        }
    }

    /// Required writes announced and not done yet.
    pub fn required(&self) -> usize {
        self.required.borrow().waiting
    }

    /// A write slot for a spare write to `namespace`: once no required write is announced, none
    /// was for `quiet`, and a slot is free, before `deadline`; `None` when that moment does not
    /// come in time.
    async fn spare_slot(
        &self,
        namespace: &str,
        deadline: Instant,
        quiet: Duration,
    ) -> Option<Slot<'_>> {
        let until = tokio::time::Instant::from_std(deadline);
        let mut required = self.required.subscribe();
        loop {
            let load = *tokio::time::timeout_at(until, required.wait_for(|l| l.waiting == 0))
                .await
                .ok()?
                .ok()?;
            let from = load.spare_from(quiet).unwrap_or(deadline);
            if from > deadline {
                return None;
            }
            if from > Instant::now() {
                tokio::time::sleep_until(tokio::time::Instant::from_std(from)).await;
                continue;
            }
            let slot = tokio::time::timeout_at(until, self.slots.acquire(Class::Spare, namespace))
                .await
                .ok()??;
            // A required write may have been announced while this one waited for the slot.
            let now = *self.required.borrow();
            if now
                .spare_from(quiet)
                .is_some_and(|from| from <= Instant::now())
            {
                return Some(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;

    type PermitFuture<'a> = Pin<Box<dyn Future<Output = Option<Permit<'a>>> + 'a>>;

    /// Required writes to `namespace`, each polled once so it waits in arrival order.
    fn queued<'a>(w: &'a WriteSlots, namespace: &'a str, n: usize) -> Vec<PermitFuture<'a>> {
        (0..n)
            .map(|_| {
                let mut f: PermitFuture<'a> = Box::pin(w.permit(Priority::Required, namespace));
                assert!((&mut f).now_or_never().is_none(), "no slot is free");
                f
            })
            .collect()
    }

    /// The permit `f` holds now, if its turn has come.
    fn granted<'a>(f: &mut PermitFuture<'a>) -> Option<Permit<'a>> {
        f.now_or_never()
            .map(|p| p.expect("a required write always gets its slot"))
    }

    // Polled by hand outside a runtime: inside one, tokio's cooperative budget would make a
    // ready slot look pending after a hundred-odd polls in one task turn.
    #[test]
    fn with_one_slot_in_all_a_namespace_with_500_waiting_writes_lets_another_namespaces_write_in_within_two_slots()
     {
        let w = WriteSlots::new(Limits::one_each(1));
        let held = w.permit(Priority::Required, "a").now_or_never().flatten();
        assert!(held.is_some(), "the slot is free");
        let mut a = queued(&w, "a", 500);
        let mut b = queued(&w, "b", 1).remove(0);
        assert_eq!(w.required(), 502);
        drop(held);
        let a0 = granted(&mut a[0]).expect("a's first waiter was first");
        assert!(granted(&mut b).is_none(), "one slot, held by a-0");
        drop(a0);
        assert!(granted(&mut a[1]).is_none(), "b's turn before a's second");
        let b_permit = granted(&mut b).expect("b writes after one of a's 500");
        drop(b_permit);
        // a's writes go on in their order.
        for i in 1..500 {
            let permit = granted(&mut a[i]).expect("a's next in order");
            if let Some(next) = a.get_mut(i + 1) {
                assert!(granted(next).is_none(), "one slot at a time");
            }
            drop(permit);
        }
        assert_eq!(w.required(), 0);
        let q = w.slots.lock();
        assert!(q.held.is_empty() && q.required.is_empty() && q.spare.is_empty());
    }

    #[test]
    fn a_namespaces_write_goes_at_once_while_another_has_500_waiting_and_the_total_has_room() {
        let w = WriteSlots::new(Limits::one_each(4));
        let held = w.permit(Priority::Required, "a").now_or_never().flatten();
        assert!(held.is_some(), "a's slot is free");
        let mut a = queued(&w, "a", 500);
        let b = w.permit(Priority::Required, "b").now_or_never().flatten();
        assert!(b.is_some(), "b has a slot of its own");
        drop(b);
        assert!(granted(&mut a[0]).is_none(), "b's slot is not a's");
        drop(held);
        assert!(granted(&mut a[0]).is_some(), "a's next takes a's slot");
    }

    #[test]
    fn at_the_total_a_freed_slot_passes_over_a_namespace_at_its_own_limit() {
        let w = WriteSlots::new(Limits::one_each(2));
        let first = |ns| w.permit(Priority::Required, ns).now_or_never().flatten();
        let a = first("a").expect("a's slot is free");
        let b = first("b").expect("b's slot is free");
        let mut a_next = queued(&w, "a", 1).remove(0);
        let mut c = queued(&w, "c", 1).remove(0);
        drop(b);
        assert!(granted(&mut a_next).is_none(), "a still holds its one slot");
        let c_permit = granted(&mut c).expect("c takes b's slot, passing over a");
        drop(a);
        let a_permit = granted(&mut a_next).expect("a's next once a's slot is back");
        drop((c_permit, a_permit));
        let q = w.slots.lock();
        assert!(q.held.is_empty() && q.required.is_empty());
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_a_waiting_required_write_before_an_earlier_spare_one() {
        let w = WriteSlots::new(Limits::one_each(1));
        let held = w.slots.acquire(Class::Required, "a").await;
        let mut spare = Box::pin(w.slots.acquire(Class::Spare, "a"));
        assert!((&mut spare).now_or_never().is_none());
        let mut required = Box::pin(w.slots.acquire(Class::Required, "b"));
        assert!((&mut required).now_or_never().is_none());
        drop(held);
        assert!(
            (&mut spare).now_or_never().is_none(),
            "the spare write waits"
        );
        let slot = (&mut required).now_or_never().flatten();
        assert!(slot.is_some(), "the required write goes first");
        drop(slot);
        assert!((&mut spare).now_or_never().flatten().is_some());
    }

    #[tokio::test]
    async fn a_spare_write_that_gives_up_leaves_the_queue_and_loses_no_slot() {
        let w = WriteSlots::new(Limits::one_each(1));
        let held = w.slots.acquire(Class::Required, "a").await;
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(w.spare_slot("b", soon, Duration::ZERO).await.is_none());
        assert!(w.slots.lock().spare.is_empty(), "b gave up and left");
        drop(held);
        assert!(w.slots.lock().held.is_empty());
    }

    #[tokio::test]
    async fn a_slot_handed_to_a_write_that_gave_up_goes_to_the_next_waiter() {
        let w = WriteSlots::new(Limits::one_each(1));
        let held = w.permit(Priority::Required, "a").await;
        let mut waiters = queued(&w, "a", 1);
        let mut next = queued(&w, "b", 1).remove(0);
        drop(held);
        // a's waiter was handed the slot but is dropped before it takes it.
        drop(waiters.pop());
        assert!(granted(&mut next).is_some(), "the slot passed on to b");
        assert_eq!(w.required(), 0);
    }

    #[tokio::test]
    async fn spare_writes_give_way_to_required_ones() {
        let w = WriteSlots::new(Limits::one_each(1));
        let first = w.require();
        let second = w.require();
        assert_eq!(w.required(), 2);
        let soon = Instant::now() + Duration::from_millis(30);
        assert!(
            w.spare_slot("ns", soon, Duration::ZERO).await.is_none(),
            "a required write waits"
        );
        drop(first);
        let later = Instant::now() + Duration::from_millis(30);
        assert!(
            w.spare_slot("ns", later, Duration::ZERO).await.is_none(),
            "one is still waiting"
        );
        drop(second);
        assert_eq!(w.required(), 0);
        let free = Instant::now() + Duration::from_millis(30);
        assert!(
            w.spare_slot("ns", free, Duration::ZERO).await.is_some(),
            "idle capacity is spare"
        );
    }

    #[tokio::test]
    async fn a_spare_write_goes_as_soon_as_the_required_ones_are_done() {
        let w = WriteSlots::new(Limits::one_each(1));
        let req = w.require();
        let release = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(req);
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let (slot, ()) = tokio::join!(w.spare_slot("ns", deadline, Duration::ZERO), release);
        assert!(slot.is_some());
    }

    #[tokio::test]
    async fn a_spare_write_needs_a_free_slot_too() {
        let w = WriteSlots::new(Limits::one_each(1));
        let held = w.slots.acquire(Class::Required, "ns").await;
        let soon = Instant::now() + Duration::from_millis(30);
        assert!(w.spare_slot("ns", soon, Duration::ZERO).await.is_none());
        drop(held);
        assert!(
            w.spare_slot("ns", soon + Duration::from_secs(5), Duration::ZERO)
                .await
                .is_some()
        );
    }

    #[tokio::test]
    async fn events_wait_for_a_quiet_moment_after_the_last_required_write() {
        let w = WriteSlots::new(Limits::one_each(1));
        drop(w.require());
        let quiet = Duration::from_millis(50);
        let start = Instant::now();
        let early = start + Duration::from_millis(20);
        assert!(
            w.spare_slot("ns", early, quiet).await.is_none(),
            "required writes close together leave no room"
        );
        assert!(
            w.spare_slot("ns", start + Duration::from_secs(5), quiet)
                .await
                .is_some()
        );
        assert!(start.elapsed() >= quiet);
    }
}
