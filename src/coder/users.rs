//! The chat owner's account, checked before a start build as Coder's chat tool does
//! (`asOwner` in `chattool/subject.go`: the owner must exist, not be deleted and be `active`),
//! with as few Coder calls as the happy path allows.
//!
//! - When the owner is the token's own user, every request this client makes proves the owner
//!   active: Coder refuses the keys of suspended and deleted users with 401 and activates a
//!   dormant user on their first request. The token's identity is read once, when a
//!   request first needs it (a restarted operator with only finished requests calls nothing).
//! - Otherwise `GET /api/v2/users/{id}` gives the status. Coder keeps deleted users readable by
//!   id (a tombstone), so the username is looked up too: a deleted user's no longer resolves
//!   to them. An active owner is remembered for [`ACTIVE_FOR`]; concurrent checks of one owner
//!   share one lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::client::CoderClient;
use super::error::CoderError;

/// How long an owner found active is trusted without asking Coder again.
pub const ACTIVE_FOR: Duration = Duration::from_secs(30);

/// What the chat tool would conclude about the chat owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerAccount {
    /// Exists, not deleted, status `active`.
    Active,
    /// The chat tool refuses: the message says why (never a token).
    Inactive(String),
}

/// Per-client memory: the token's own user and owners recently found active.
#[derive(Default)]
pub(crate) struct Accounts {
    me: tokio::sync::Mutex<Option<Uuid>>,
    owners: Mutex<Owners>,
}

/// When an owner was last found active (`None`: not yet, or not active).
type OwnerSlot = Arc<tokio::sync::Mutex<Option<Instant>>>;

/// Smallest size at which the owner map is swept.
const SWEEP_MIN: usize = 64;

/// One slot per owner checked lately; entries nobody uses whose answer is stale are swept when
/// the map has doubled since the last sweep, so a check costs O(1) amortised, not a scan.
#[derive(Default)]
struct Owners {
    slots: HashMap<Uuid, OwnerSlot>,
    sweep_at: usize,
}

impl Owners {
    /// The slot of `owner`, created if needed.
    fn slot(&mut self, owner: Uuid) -> OwnerSlot {
        if self.slots.len() >= self.sweep_at {
            self.slots
                .retain(|_, s| Arc::strong_count(s) > 1 || s.try_lock().is_ok_and(|a| fresh(*a)));
            self.sweep_at = self.slots.len().saturating_mul(2).max(SWEEP_MIN);
        }
        Arc::clone(self.slots.entry(owner).or_default())
    }
}

impl CoderClient {
    /// The id of the token's user (`GET /api/v2/users/me`, read once per client).
    pub async fn identity(&self) -> Result<Uuid, CoderError> {
        let mut me = self.accounts().me.lock().await;
        if let Some(id) = *me {
            return Ok(id);
        }
        let user = self.me().await?;
        *me = Some(user.id);
        Ok(user.id)
    }

    /// Whether the chat tool would act for `owner` (see the module documentation).
    pub async fn owner_account(&self, owner: Uuid) -> Result<OwnerAccount, CoderError> {
        if self.identity().await? == owner {
            return Ok(OwnerAccount::Active);
        }
        let slot = self
            .accounts()
            .owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .slot(owner);
        let mut active_at = slot.lock().await;
        if fresh(*active_at) {
            return Ok(OwnerAccount::Active);
        }
        let account = self.look_up_owner(owner).await?;
        *active_at = (account == OwnerAccount::Active).then(Instant::now);
        Ok(account)
    }

    async fn look_up_owner(&self, owner: Uuid) -> Result<OwnerAccount, CoderError> {
        let user = match self.get_user(&owner.to_string()).await {
            Ok(u) => u,
            Err(CoderError::Invalid { status: 400, .. } | CoderError::NotFound { .. }) => {
                return Ok(OwnerAccount::Inactive(format!(
                    "the chat owner ({owner}) does not exist in Coder; nothing was started"
                )));
            }
            Err(e) => return Err(e),
        };
        let status = user.status.as_deref().unwrap_or("");
        if status != "active" {
            return Ok(OwnerAccount::Inactive(format!(
                "the chat owner {:?} is not active (status {status:?}); Coder's chat tool would not act for them, so nothing was started",
                user.username
            )));
        }
        let deleted = match self.get_user(&user.username).await {
            Ok(by_name) => by_name.id != owner,
            Err(CoderError::Invalid { status: 400, .. } | CoderError::NotFound { .. }) => true,
            Err(e) => return Err(e),
        };
        Ok(if deleted {
            OwnerAccount::Inactive(format!(
                "the chat owner {:?} was deleted; nothing was started",
                user.username
            ))
        } else {
            OwnerAccount::Active
        })
    }
}

fn fresh(active_at: Option<Instant>) -> bool {
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
