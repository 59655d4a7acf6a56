//! Scenario files (YAML or JSON) that seed the simulator, and the
//! serializable specs shared with the admin API.
//!
//! ```yaml
//! server: { version: v2.37.0, chat_era: v2, rate_limit_per_minute: 512 }
//! users:
//!   - { username: alice, token: alice-token, id: 5d0b7a4e-0000-4000-8000-000000000001 }
//! workspaces:
//!   - id: 7c1e0000-0000-4000-8000-000000000001
//!     owner: alice
//!     name: dev
//!     state: stopped
//!     agents: [main, { name: devcontainer, parent: main }]
//!     script: { pending: 200ms, running: 2s }
//! chats:
//!   - { id: c4a70000-0000-4000-8000-000000000001, owner: alice, workspace: dev }
//! ```

use std::path::Path;

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{ChatEra, SimConfig};
pub use crate::duration::{DurationSpec, parse_duration};
use crate::faults::Fault;
use crate::model::{
    AgentSeed, BuildOutcome, BuildScript, ChatSpec, DEFAULT_CONNECTION_TIMEOUT_SECS, DormantStart,
    InitialState, LifecycleState, Sim, UserSpec, WorkspaceSeed,
};

/// Server settings a scenario may carry (CLI flags override them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerDoc {
    /// `buildinfo.version` and `X-Coder-Build-Version`.
    pub version: Option<String>,
    /// `v2`, `experimental` or `experimental_wrapped`.
    pub chat_era: Option<ChatEra>,
    /// Requests per user per URL path per minute; `<= 0` disables.
    pub rate_limit_per_minute: Option<i64>,
    /// What a start build does to a dormant workspace: `wake` (current Coder, default) or
    /// `refuse` (older versions answer 403).
    #[serde(default)]
    pub dormant_start: Option<DormantStart>,
}

impl ServerDoc {
    /// Applies the settings present to `cfg`.
    pub fn apply_to(&self, cfg: &mut SimConfig) {
        if let Some(v) = &self.version {
            cfg.version = v.clone();
        }
        if let Some(e) = self.chat_era {
            cfg.chat_era = e;
        }
        if let Some(r) = self.rate_limit_per_minute {
            cfg.rate_limit_per_minute = r;
        }
    }
}

/// A user entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDoc {
    /// Username.
    pub username: String,
    /// Fixed id.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Fixed session token.
    #[serde(default)]
    pub token: Option<String>,
    /// Site owner role.
    #[serde(default)]
    pub admin: bool,
    /// `active` (default), `dormant` or `suspended`.
    #[serde(default)]
    pub status: Option<String>,
}

impl From<UserDoc> for UserSpec {
    fn from(u: UserDoc) -> UserSpec {
        UserSpec {
            username: u.username,
            id: u.id,
            token: u.token,
            admin: u.admin,
            status: u.status,
        }
    }
}

/// An agent entry: a bare name, or `{name, parent}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AgentDoc {
    /// Root agent by name.
    Name(String),
    /// Agent with optional parent (sub-agent) and display order.
    Full {
        /// Agent name.
        name: String,
        /// Parent agent name.
        #[serde(default)]
        parent: Option<String>,
        /// The template's `order` for the agent (Coder lists agents by it, then by name).
        #[serde(default)]
        order: i32,
        /// `connection_timeout_seconds` (default 120).
        #[serde(default)]
        connection_timeout_seconds: Option<i64>,
    },
}

impl From<AgentDoc> for AgentSeed {
    fn from(a: AgentDoc) -> AgentSeed {
        match a {
            AgentDoc::Name(name) => AgentSeed::new(&name),
            AgentDoc::Full {
                name,
                parent,
                order,
                connection_timeout_seconds,
            } => AgentSeed {
                parent,
                order,
                connection_timeout_secs: connection_timeout_seconds
                    .unwrap_or(DEFAULT_CONNECTION_TIMEOUT_SECS),
                ..AgentSeed::new(&name)
            },
        }
    }
}

/// Job outcome in a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeDoc {
    /// Job succeeds.
    #[default]
    Succeeded,
    /// Job fails with `error` / `error_code`.
    Failed,
    /// Job is canceled half-way.
    Canceled,
}

/// A build script; every field is optional and defaults to
/// [`BuildScript::default`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptDoc {
    /// Time the job is `pending`.
    #[serde(default)]
    pub pending: Option<DurationSpec>,
    /// Time the job is `running`.
    #[serde(default)]
    pub running: Option<DurationSpec>,
    /// `succeeded` (default), `failed` or `canceled`.
    #[serde(default)]
    pub outcome: Option<OutcomeDoc>,
    /// `job.error_code` for failed jobs (e.g. `INSUFFICIENT_QUOTA`).
    #[serde(default)]
    pub error_code: Option<String>,
    /// `job.error` for failed jobs.
    #[serde(default)]
    pub error: Option<String>,
    /// Time from job success to agents `connected`.
    #[serde(default)]
    pub agent_connect: Option<DurationSpec>,
    /// Time from connected to the final lifecycle state.
    #[serde(default)]
    pub agent_ready: Option<DurationSpec>,
    /// `ready` (default), `start_error` or `start_timeout`.
    #[serde(default)]
    pub agent_final: Option<LifecycleState>,
}

impl From<ScriptDoc> for BuildScript {
    fn from(s: ScriptDoc) -> BuildScript {
        let d = BuildScript::default();
        let outcome = match s.outcome {
            None if s.error_code.is_some() || s.error.is_some() => OutcomeDoc::Failed,
            None => OutcomeDoc::Succeeded,
            Some(o) => o,
        };
        let outcome = match outcome {
            OutcomeDoc::Succeeded => BuildOutcome::Succeeded,
            OutcomeDoc::Canceled => BuildOutcome::Canceled,
            OutcomeDoc::Failed => {
                let error = match (&s.error, s.error_code.as_deref()) {
                    (Some(e), _) => e.clone(),
                    (None, Some("INSUFFICIENT_QUOTA")) => {
                        "insufficient quota: workspace quota exceeded (1 credits consumed of 0 budget)".to_owned()
                    }
                    (None, _) => "terraform apply: exit status 1".to_owned(),
                };
                BuildOutcome::Failed {
                    error_code: s.error_code.clone(),
                    error,
                }
            }
        };
        BuildScript {
            pending: s.pending.map_or(d.pending, |x| x.0),
            running: s.running.map_or(d.running, |x| x.0),
            outcome,
            agent_connect: s.agent_connect.map_or(d.agent_connect, |x| x.0),
            agent_ready: s.agent_ready.map_or(d.agent_ready, |x| x.0),
            agent_final: s.agent_final.unwrap_or(d.agent_final),
        }
    }
}

/// A workspace entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceDoc {
    /// Fixed id.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Owner username or id.
    pub owner: String,
    /// Workspace name.
    pub name: String,
    /// `stopped` (default), `running`, `failed` or `deleted`.
    #[serde(default)]
    pub state: InitialState,
    /// Agents (default: one agent `main`).
    #[serde(default)]
    pub agents: Option<Vec<AgentDoc>>,
    /// `template_require_active_version` (also makes the workspace outdated).
    #[serde(default)]
    pub require_active_version: bool,
    /// The workspace is dormant.
    #[serde(default)]
    pub dormant: bool,
    /// Default script for builds of this workspace.
    #[serde(default)]
    pub script: Option<ScriptDoc>,
    /// Scripts for the next builds, in order (then `script` applies).
    #[serde(default)]
    pub next_builds: Vec<ScriptDoc>,
}

/// A chat entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatDoc {
    /// Fixed id.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Owner username or id.
    pub owner: String,
    /// Bound workspace: id, or name of one of the owner's workspaces.
    #[serde(default)]
    pub workspace: Option<String>,
    /// Chat title.
    #[serde(default)]
    pub title: Option<String>,
    /// Chat status (default `waiting`).
    #[serde(default)]
    pub status: Option<String>,
}

/// A fault entry (route key + fault).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDoc {
    /// Route key, e.g. `POST /api/v2/workspaces/{id}/builds`.
    pub route: String,
    /// The fault.
    pub fault: Fault,
}

/// A whole scenario file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Server settings.
    #[serde(default)]
    pub server: Option<ServerDoc>,
    /// Users, created first.
    #[serde(default)]
    pub users: Vec<UserDoc>,
    /// Workspaces, created after users.
    #[serde(default)]
    pub workspaces: Vec<WorkspaceDoc>,
    /// Chats, created last.
    #[serde(default)]
    pub chats: Vec<ChatDoc>,
    /// Faults active from the start.
    #[serde(default)]
    pub faults: Vec<FaultDoc>,
}

impl Scenario {
    /// Reads a scenario; `.json` files are parsed as JSON, others as YAML.
    pub fn from_path(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read scenario {}", path.display()))?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        Scenario::parse(&text, is_json)
            .with_context(|| format!("parse scenario {}", path.display()))
    }

    /// Parses scenario text (JSON or YAML).
    pub fn parse(text: &str, json: bool) -> anyhow::Result<Scenario> {
        if json {
            Ok(serde_json::from_str(text)?)
        } else {
            Ok(serde_yaml::from_str(text)?)
        }
    }

    /// Creates everything in `sim`.
    pub fn apply(&self, sim: &Sim) -> anyhow::Result<()> {
        if let Some(d) = self.server.as_ref().and_then(|s| s.dormant_start) {
            sim.set_dormant_start(d);
        }
        for u in &self.users {
            sim.add_user_spec(u.clone().into());
        }
        for w in &self.workspaces {
            add_workspace_doc(sim, w)?;
        }
        for c in &self.chats {
            add_chat_doc(sim, c)?;
        }
        for f in &self.faults {
            sim.set_fault(&f.route, f.fault.clone());
        }
        Ok(())
    }
}

/// Resolves a username or id to a user id.
pub(crate) fn resolve_user(sim: &Sim, who: &str) -> anyhow::Result<Uuid> {
    sim.lock()
        .user_by_ref(who)
        .map(|u| u.id)
        .ok_or_else(|| anyhow!("unknown user {who:?}"))
}

/// Creates a workspace from its scenario entry; returns its id.
pub fn add_workspace_doc(sim: &Sim, w: &WorkspaceDoc) -> anyhow::Result<Uuid> {
    let owner = resolve_user(sim, &w.owner)?;
    let mut seed = WorkspaceSeed::new(owner, &w.name)
        .state(w.state)
        .require_active_version(w.require_active_version)
        .dormant(w.dormant);
    if let Some(agents) = &w.agents {
        seed.agents = agents.iter().cloned().map(AgentSeed::from).collect();
    }
    if let Some(s) = &w.script {
        seed.default_script = s.clone().into();
    }
    let id = sim.add_workspace_with_id(w.id.unwrap_or_else(Uuid::new_v4), seed);
    for s in &w.next_builds {
        sim.script_next_build(id, s.clone().into());
    }
    Ok(id)
}

/// Creates a chat from its scenario entry; returns its id.
pub fn add_chat_doc(sim: &Sim, c: &ChatDoc) -> anyhow::Result<Uuid> {
    let owner = resolve_user(sim, &c.owner)?;
    let workspace_id = match &c.workspace {
        None => None,
        Some(w) => Some(match Uuid::parse_str(w) {
            Ok(id) => id,
            Err(_) => {
                let st = sim.lock();
                st.workspaces
                    .values()
                    .find(|x| x.owner == owner && &x.name == w)
                    .map(|x| x.id)
                    .ok_or_else(|| {
                        anyhow!("chat {:?}: unknown workspace {w:?} of {:?}", c.id, c.owner)
                    })?
            }
        }),
    };
    Ok(sim.add_chat_spec(ChatSpec {
        id: c.id,
        owner,
        workspace_id,
        title: c.title.clone(),
        status: c.status.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_script_defaults() {
        let s: BuildScript = ScriptDoc {
            error_code: Some("INSUFFICIENT_QUOTA".into()),
            ..ScriptDoc::default()
        }
        .into();
        assert!(
            matches!(s.outcome, BuildOutcome::Failed { ref error_code, .. } if error_code.as_deref() == Some("INSUFFICIENT_QUOTA"))
        );
    }
}
