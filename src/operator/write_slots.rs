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

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit, watch};

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

/// The write slots and the required writes announced.
pub struct WriteSlots {
    slots: Semaphore,
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
    _slot: Option<SemaphorePermit<'a>>,
    _announced: Option<Required>,
}

impl Permit<'_> {
    /// The priority this permit was granted for.
    pub fn priority(&self) -> Priority {
        self.priority
    }
}

impl WriteSlots {
    /// `slots` concurrent writes other than final statuses (at least one).
    pub fn new(slots: usize) -> Arc<WriteSlots> {
        Arc::new(WriteSlots {
            slots: Semaphore::new(slots.max(1)),
            required: watch::Sender::new(Load::default()),
        })
    }

    /// A permit for one write at `priority`: `None` only for a spare write that found no room in
    /// time (and, in theory, if the slots were closed, which they never are).
    pub async fn permit(&self, priority: Priority) -> Option<Permit<'_>> {
        let (slot, announced) = match priority {
            Priority::Required => {
                let announced = self.require();
                (Some(self.slots.acquire().await.ok()?), Some(announced))
            }
            Priority::Final => (None, Some(self.require())),
            Priority::First => (None, None),
            Priority::Spare { deadline, quiet } => {
                (Some(self.spare_slot(deadline, quiet).await?), None)
            }
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

    /// A write slot for a spare write: once no required write is announced, none was for
    /// `quiet`, and a slot is free, before `deadline`; `None` when that moment does not come in
    /// time.
    async fn spare_slot(&self, deadline: Instant, quiet: Duration) -> Option<SemaphorePermit<'_>> {
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
            let slot = tokio::time::timeout_at(until, self.slots.acquire())
                .await
                .ok()?
                .ok()?;
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
    use std::time::Duration;

    #[tokio::test]
    async fn spare_writes_give_way_to_required_ones() {
        let w = WriteSlots::new(1);
        let first = w.require();
        let second = w.require();
        assert_eq!(w.required(), 2);
        let soon = Instant::now() + Duration::from_millis(30);
        assert!(
            w.spare_slot(soon, Duration::ZERO).await.is_none(),
            "a required write waits"
        );
        drop(first);
        let later = Instant::now() + Duration::from_millis(30);
        assert!(
            w.spare_slot(later, Duration::ZERO).await.is_none(),
            "one is still waiting"
        );
        drop(second);
        assert_eq!(w.required(), 0);
        let free = Instant::now() + Duration::from_millis(30);
        assert!(
            w.spare_slot(free, Duration::ZERO).await.is_some(),
            "idle capacity is spare"
        );
    }

    #[tokio::test]
    async fn a_spare_write_goes_as_soon_as_the_required_ones_are_done() {
        let w = WriteSlots::new(1);
        let req = w.require();
        let release = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(req);
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let (slot, ()) = tokio::join!(w.spare_slot(deadline, Duration::ZERO), release);
        assert!(slot.is_some());
    }

    #[tokio::test]
    async fn a_spare_write_needs_a_free_slot_too() {
        let w = WriteSlots::new(1);
        let held = w.slots.acquire().await.ok();
        let soon = Instant::now() + Duration::from_millis(30);
        assert!(w.spare_slot(soon, Duration::ZERO).await.is_none());
        drop(held);
        assert!(
            w.spare_slot(soon + Duration::from_secs(5), Duration::ZERO)
                .await
                .is_some()
        );
    }

    #[tokio::test]
    async fn events_wait_for_a_quiet_moment_after_the_last_required_write() {
        let w = WriteSlots::new(1);
        drop(w.require());
        let quiet = Duration::from_millis(50);
        let start = Instant::now();
        let early = start + Duration::from_millis(20);
        assert!(
            w.spare_slot(early, quiet).await.is_none(),
            "required writes close together leave no room"
        );
        assert!(
            w.spare_slot(start + Duration::from_secs(5), quiet)
                .await
                .is_some()
        );
        assert!(start.elapsed() >= quiet);
    }
}
