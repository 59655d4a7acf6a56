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
//!   to them. An active owner is remembered for [`super::accounts::ACTIVE_FOR`]; concurrent checks of one owner
//!   share one lookup.

use std::time::Instant;

use uuid::Uuid;

use super::accounts::fresh;
use super::client::CoderClient;
use super::error::CoderError;

/// What the chat tool would conclude about the chat owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerAccount {
    /// Exists, not deleted, status `active`.
    Active,
    /// The chat tool refuses: the message says why (never a token).
    Inactive(String),
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
