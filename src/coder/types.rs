//! Typed JSON of the Coder REST API, limited to the fields the operator reads (unknown fields
//! are ignored, so newer Coder versions keep working). Field names follow `codersdk`.
//!
//! Every text field Coder sends is bounded here, as it is read ([`bounded`]): names, states and
//! codes reach the request's status, its Events and MCP results, and a Coder URL may answer
//! anything (a 1 MiB workspace name). This is the one place that bounds them.

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

/// The most characters kept of a name, state or code from Coder. Coder's names are at most 32
/// characters (agent names a little more); a longer value is cut, marked with an ellipsis.
pub const MAX_TEXT_CHARS: usize = 128;

/// `s` made safe to show: control characters replaced by spaces, at most `max` characters,
/// an ellipsis (`…`) marking a cut (so the result has at most `max + 1` characters). Returns
/// `s` itself when there is nothing to change.
pub fn bounded(s: String, max: usize) -> String {
    let needs_cut = s.chars().nth(max).is_some();
    if !needs_cut && !s.chars().any(char::is_control) {
        return s;
    }
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if needs_cut {
        out.push('…');
    }
    out
}

/// Deserializes a string bounded to [`MAX_TEXT_CHARS`].
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d).map(|s| bounded(s, MAX_TEXT_CHARS))
}

/// Deserializes an optional string bounded to [`MAX_TEXT_CHARS`].
fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d).map(|o| o.map(|s| bounded(s, MAX_TEXT_CHARS)))
}

/// `GET /api/v2/buildinfo`.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct CoderVersion {
    /// Coder version, e.g. `v2.37.0`.
    #[serde(deserialize_with = "text")]
    pub version: String,
    /// Deployment id.
    #[serde(default, deserialize_with = "opt_text")]
    pub deployment_id: Option<String>,
}

/// `GET /api/v2/users/me` and `/api/v2/users/{id}`.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct User {
    /// User id.
    pub id: Uuid,
    /// Username.
    #[serde(deserialize_with = "text")]
    pub username: String,
    /// `active`, `dormant` or `suspended`.
    #[serde(default, deserialize_with = "opt_text")]
    pub status: Option<String>,
}

/// A chat (`GET …/chats/{id}`), unwrapped from the early `{"chat": …}` shape if needed.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct Chat {
    /// Chat id.
    pub id: Uuid,
    /// Owner whose workspace and credentials are used.
    pub owner_id: Uuid,
    /// The workspace the chat is bound to.
    #[serde(default)]
    pub workspace_id: Option<Uuid>,
    /// Last build the chat bound to.
    #[serde(default)]
    pub build_id: Option<Uuid>,
}

/// Response of a chat GET in either era: bare `Chat` or `{"chat": Chat, "messages": …}`.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum ChatResponse {
    /// Early-2026 wrapped shape.
    Wrapped {
        /// The chat.
        chat: Chat,
    },
    /// Bare chat.
    Bare(Chat),
}

impl ChatResponse {
    /// The chat, whichever shape it came in.
    pub fn into_chat(self) -> Chat {
        match self {
            ChatResponse::Wrapped { chat } | ChatResponse::Bare(chat) => chat,
        }
    }
}

/// `GET /api/v2/workspaces/{id}`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
pub struct Workspace {
    /// Workspace id.
    pub id: Uuid,
    /// Workspace name.
    #[serde(deserialize_with = "text")]
    pub name: String,
    /// Owner id.
    pub owner_id: Uuid,
    /// Owner username.
    #[serde(default, deserialize_with = "text")]
    pub owner_name: String,
    /// Active template version.
    #[serde(default)]
    pub template_active_version_id: Option<Uuid>,
    /// When true, start builds must use the active template version.
    #[serde(default)]
    pub template_require_active_version: bool,
    /// Non-null when the workspace is dormant.
    #[serde(default)]
    pub dormant_at: Option<Timestamp>,
    /// The latest build, with its job and agents.
    pub latest_build: WorkspaceBuild,
}

/// `WorkspaceBuild`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
pub struct WorkspaceBuild {
    /// Build id.
    pub id: Uuid,
    /// Build number, starting at 1.
    pub build_number: i64,
    /// Transition.
    pub transition: Transition,
    /// Derived workspace status.
    #[serde(default, deserialize_with = "text")]
    pub status: String,
    /// Template version used.
    #[serde(default)]
    pub template_version_id: Option<Uuid>,
    /// When the build was created.
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    /// The provisioner job.
    pub job: ProvisionerJob,
    /// Resources with their agents.
    #[serde(default)]
    pub resources: Vec<Resource>,
}

impl WorkspaceBuild {
    /// All agents of all resources.
    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.resources.iter().flat_map(|r| r.agents.iter())
    }
}

/// Build transition.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transition {
    /// Start.
    Start,
    /// Stop.
    Stop,
    /// Delete.
    Delete,
}

impl Transition {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Start => "start",
            Transition::Stop => "stop",
            Transition::Delete => "delete",
        }
    }
}

/// `ProvisionerJob`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
pub struct ProvisionerJob {
    /// Job id.
    pub id: Uuid,
    /// Job status.
    pub status: JobStatus,
    /// Error code such as `INSUFFICIENT_QUOTA`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_text"
    )]
    pub error_code: Option<String>,
    /// When a provisioner picked the job up.
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    /// When the job completed.
    #[serde(default)]
    pub completed_at: Option<Timestamp>,
}

/// Provisioner job status; unknown strings map to `Unknown`.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Queued.
    Pending,
    /// Running.
    Running,
    /// Done.
    Succeeded,
    /// Being canceled.
    Canceling,
    /// Canceled.
    Canceled,
    /// Failed.
    Failed,
    /// Unknown or unrecognised.
    #[serde(other)]
    Unknown,
}

impl JobStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Canceling => "canceling",
            JobStatus::Canceled => "canceled",
            JobStatus::Failed => "failed",
            JobStatus::Unknown => "unknown",
        }
    }

    /// Pending, running or canceling: a new build would get 409.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobStatus::Pending | JobStatus::Running | JobStatus::Canceling
        )
    }
}

/// A workspace resource.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Default)]
pub struct Resource {
    /// Terraform resource type, e.g. `docker_container` or `coder_external_agent`.
    #[serde(default, rename = "type")]
    pub resource_type: String,
    /// Agents of this resource.
    #[serde(default)]
    pub agents: Vec<Agent>,
}

/// `WorkspaceAgent`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
pub struct Agent {
    /// Agent id.
    pub id: Uuid,
    /// Agent name.
    #[serde(deserialize_with = "text")]
    pub name: String,
    /// Non-null for sub-agents (devcontainers); ignored by agent selection.
    #[serde(default)]
    pub parent_id: Option<Uuid>,
    /// connecting, connected, disconnected, timeout.
    #[serde(deserialize_with = "text")]
    pub status: String,
    /// created, starting, ready, start_error, start_timeout, shutting_down, …
    #[serde(deserialize_with = "text")]
    pub lifecycle_state: String,
    /// When the agent became ready.
    #[serde(default)]
    pub ready_at: Option<Timestamp>,
    /// When the agent first connected (null: never).
    #[serde(default)]
    pub first_connected_at: Option<Timestamp>,
}

/// Body of `POST /api/v2/workspaces/{id}/builds`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct CreateWorkspaceBuildRequest {
    /// Always `start` for this operator.
    pub transition: Transition,
    /// Forced to the active version when the template requires it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_version_id: Option<Uuid>,
    /// Rich parameter overrides.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rich_parameter_values: Vec<ParameterValue>,
}

/// A rich parameter value.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ParameterValue {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// Coder's error body (`codersdk.Response`).
#[derive(Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ErrorBody {
    /// Always present.
    #[serde(default)]
    pub message: String,
    /// Optional detail (may contain internal text; never copied into status).
    #[serde(default)]
    pub detail: Option<String>,
    /// Field validations.
    #[serde(default)]
    pub validations: Vec<Validation>,
}

/// One field validation error.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct Validation {
    /// Field name.
    pub field: String,
    /// What is wrong.
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_megabyte_name_from_coder_is_cut_as_it_is_read() {
        let huge = "n".repeat(1 << 20);
        let json = format!(
            r#"{{"id":"e3f4c0de-0000-4000-8000-000000000001","name":"{huge}","owner_id":"51aa0000-0000-4000-8000-000000000002","owner_name":"al\u0007ice","latest_build":{{"id":"6f1c0000-0000-4000-8000-000000000003","build_number":1,"transition":"start","status":"{huge}","job":{{"id":"7a000000-0000-4000-8000-000000000004","status":"running","error_code":"{huge}"}},"resources":[{{"agents":[{{"id":"8b000000-0000-4000-8000-000000000005","name":"{huge}","status":"{huge}","lifecycle_state":"{huge}"}}]}}]}}}}"#
        );
        let ws: Workspace = serde_json::from_str(&json).expect("workspace");
        let cut = format!("{}…", "n".repeat(MAX_TEXT_CHARS));
        assert_eq!(ws.name, cut);
        assert_eq!(ws.owner_name, "al ice", "control characters become spaces");
        assert_eq!(ws.latest_build.status, cut);
        assert_eq!(
            ws.latest_build.job.error_code.as_deref(),
            Some(cut.as_str())
        );
        let agent = ws.latest_build.agents().next().expect("agent");
        assert_eq!(
            (&agent.name, &agent.status, &agent.lifecycle_state),
            (&cut, &cut, &cut)
        );
    }

    #[test]
    fn bounded_text_cuts_at_a_character_boundary() {
        assert_eq!(bounded("dev".into(), 3), "dev");
        assert_eq!(bounded("ééééé".into(), 3), "ééé…");
        assert_eq!(bounded("a\nb".into(), 10), "a b");
        assert_eq!(bounded(String::new(), 0), "");
    }
}
