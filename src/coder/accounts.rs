//! What one Coder client remembers about users: the token's own user and the owners recently
//! found active (see [`super::users`] for how they are looked up).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// How long an owner found active is trusted without asking Coder again.
pub const ACTIVE_FOR: Duration = Duration::from_secs(30);

/// Per-client memory: the token's own user and owners recently found active.
#[derive(Default)]
pub(crate) struct Accounts {
    pub(super) me: tokio::sync::Mutex<Option<Uuid>>,
    pub(super) owners: Mutex<Owners>,
}

/// When an owner was last found active (`None`: not yet, or not active).
type OwnerSlot = Arc<tokio::sync::Mutex<Option<Instant>>>;

/// Smallest size at which the owner map is swept.
const SWEEP_MIN: usize = 64;

/// One slot per owner checked lately; entries nobody uses whose answer is stale are swept when
/// the map has doubled since the last sweep, so a check costs O(1) amortised, not a scan.
#[derive(Default)]
pub(super) struct Owners {
    slots: HashMap<Uuid, OwnerSlot>,
    sweep_at: usize,
}

impl Owners {
    /// The slot of `owner`, created if needed.
    pub(super) fn slot(&mut self, owner: Uuid) -> OwnerSlot {
        if self.slots.len() >= self.sweep_at {
            self.slots
                .retain(|_, s| Arc::strong_count(s) > 1 || s.try_lock().is_ok_and(|a| fresh(*a)));
            self.sweep_at = self.slots.len().saturating_mul(2).max(SWEEP_MIN);
        }
        Arc::clone(self.slots.entry(owner).or_default())
    }
}

/// Whether an owner found active at `active_at` is still trusted.
pub(super) fn fresh(active_at: Option<Instant>) -> bool {
    active_at.is_some_and(|at| at.elapsed() < ACTIVE_FOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_stale_owners_are_swept_once_the_map_has_grown() {
        let mut owners = Owners::default();
        let held = owners.slot(Uuid::new_v4());
        let fresh_owner = Uuid::new_v4();
        *owners.slot(fresh_owner).try_lock().expect("free") = Some(Instant::now());
        for _ in 0..SWEEP_MIN {
            owners.slot(Uuid::new_v4());
        }
        // The sweep ran when the map reached SWEEP_MIN: only the held slot, the fresh answer
        // and the owner asked for then remain, and the rest accumulate until it doubles.
        assert!(owners.slots.len() < SWEEP_MIN, "{}", owners.slots.len());
        assert!(owners.slots.contains_key(&fresh_owner));
        assert!(owners.slots.values().any(|s| Arc::ptr_eq(s, &held)));
        assert_eq!(owners.sweep_at, SWEEP_MIN);
    }
}
