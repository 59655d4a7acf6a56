//! Stored records of users, templates, workspaces and chats.

use std::collections::VecDeque;

use jiff::Timestamp;
use uuid::Uuid;

use super::seed::{AgentSeed, BuildScript};

#[derive(Debug, Clone)]
pub(crate) struct UserRec {
    pub id: Uuid,
    pub username: String,
    pub token: String,
    pub admin: bool,
    pub status: String,
    pub created_at: Timestamp,
    /// Deleted users stay readable by id (Coder keeps a tombstone), not by username.
    pub deleted: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct TemplateRec {
    pub id: Uuid,
    pub name: String,
    /// Versions, oldest first; the last one is active.
    pub versions: Vec<Uuid>,
    pub require_active_version: bool,
}

impl TemplateRec {
    pub fn active_version(&self) -> Uuid {
        self.versions.last().copied().unwrap_or_default()
    }

    pub fn version_name(&self, id: Uuid) -> String {
        match self.versions.iter().position(|v| *v == id) {
            Some(i) => format!("v{}", i + 1),
            None => "unknown".to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct WorkspaceRec {
    pub id: Uuid,
    pub name: String,
    pub owner: Uuid,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub template: TemplateRec,
    /// Build ids, oldest first.
    pub builds: Vec<Uuid>,
    pub agents: Vec<AgentSeed>,
    pub default_script: BuildScript,
    pub scripts: VecDeque<BuildScript>,
    /// Builds created after seeding (POST or admin).
    pub builds_created: usize,
    /// Builds created by `POST /api/v2/workspaces/{id}/builds`.
    pub builds_posted: usize,
    /// Set while the workspace is dormant.
    pub dormant_at: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub(crate) struct ChatRec {
    pub id: Uuid,
    pub owner: Uuid,
    /// `last_model_config_id`.
    pub model_config_id: Uuid,
    pub workspace_id: Option<Uuid>,
    pub title: String,
    pub status: String,
    pub created_at: Timestamp,
}
