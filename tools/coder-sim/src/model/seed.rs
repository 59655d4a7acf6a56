//! The public description of what to simulate: seeds for users, workspaces,
//! chats and the scripted timing and outcome of builds.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A workspace transition (`WorkspaceTransition` in codersdk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// `start`
    Start,
    /// `stop`
    Stop,
    /// `delete`
    Delete,
}

impl Transition {
    /// The JSON string Coder uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Start => "start",
            Transition::Stop => "stop",
            Transition::Delete => "delete",
        }
    }

    /// Parses the JSON string Coder uses.
    pub fn parse(s: &str) -> Option<Transition> {
        match s {
            "start" => Some(Transition::Start),
            "stop" => Some(Transition::Stop),
            "delete" => Some(Transition::Delete),
            _ => None,
        }
    }
}

/// The state a seeded workspace starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialState {
    /// Latest build is a succeeded `stop` (build #2 after a start).
    #[default]
    Stopped,
    /// Latest build is a succeeded `start`; agents connected and `ready`.
    Running,
    /// Latest build is a succeeded `delete`: GET by id answers 410.
    Deleted,
    /// Latest build is a `start` whose job failed.
    Failed,
}

/// Final agent lifecycle state after the startup scripts ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleState {
    /// `ready`
    #[default]
    Ready,
    /// `start_error`
    StartError,
    /// `start_timeout`
    StartTimeout,
}

impl LifecycleState {
    /// The JSON string Coder uses.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleState::Ready => "ready",
            LifecycleState::StartError => "start_error",
            LifecycleState::StartTimeout => "start_timeout",
        }
    }
}

/// How a scripted provisioner job ends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BuildOutcome {
    /// Job `succeeded`.
    #[default]
    Succeeded,
    /// Job `failed` with `error` and optional `error_code`
    /// (e.g. `INSUFFICIENT_QUOTA`).
    Failed {
        /// `job.error_code`, e.g. `INSUFFICIENT_QUOTA`.
        error_code: Option<String>,
        /// `job.error` text.
        error: String,
    },
    /// Job is canceled half-way through `running`: it shows `canceling` for
    /// the second half of the running window, then `canceled`.
    Canceled,
}

/// Timing and outcome of one build. Durations are wall-clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildScript {
    /// Time the job stays `pending` (queued).
    pub pending: Duration,
    /// Time the job stays `running`.
    pub running: Duration,
    /// How the job ends.
    pub outcome: BuildOutcome,
    /// After a succeeded start job: time until agents are `connected`.
    pub agent_connect: Duration,
    /// After connecting: time in lifecycle `starting` before `agent_final`.
    pub agent_ready: Duration,
    /// Lifecycle state the agents end in.
    pub agent_final: LifecycleState,
}

impl Default for BuildScript {
    fn default() -> Self {
        BuildScript {
            pending: Duration::from_millis(200),
            running: Duration::from_millis(500),
            outcome: BuildOutcome::Succeeded,
            agent_connect: Duration::from_millis(100),
            agent_ready: Duration::from_millis(300),
            agent_final: LifecycleState::Ready,
        }
    }
}

impl BuildScript {
    /// A script where every phase takes `d`.
    pub fn uniform(d: Duration) -> BuildScript {
        BuildScript {
            pending: d,
            running: d,
            agent_connect: d,
            agent_ready: d,
            ..BuildScript::default()
        }
    }

    /// A script that completes (and whose agents are ready) immediately.
    pub fn instant() -> BuildScript {
        BuildScript::uniform(Duration::ZERO)
    }

    /// The default timings with a failed job.
    pub fn failed(error_code: Option<&str>, error: &str) -> BuildScript {
        BuildScript {
            outcome: BuildOutcome::Failed {
                error_code: error_code.map(str::to_owned),
                error: error.to_owned(),
            },
            ..BuildScript::default()
        }
    }

    /// The default timings with an `INSUFFICIENT_QUOTA` failure, as Coder
    /// reports it when the owner's quota is exhausted.
    pub fn insufficient_quota() -> BuildScript {
        BuildScript::failed(
            Some("INSUFFICIENT_QUOTA"),
            "insufficient quota: workspace quota exceeded (1 credits consumed of 0 budget)",
        )
    }

    /// The default timings with a canceled job.
    pub fn canceled() -> BuildScript {
        BuildScript {
            outcome: BuildOutcome::Canceled,
            ..BuildScript::default()
        }
    }

    /// Builder-style: replace the pending and running durations.
    pub fn with_job(mut self, pending: Duration, running: Duration) -> BuildScript {
        self.pending = pending;
        self.running = running;
        self
    }

    /// Builder-style: replace the agent timings and final lifecycle state.
    pub fn with_agent(
        mut self,
        connect: Duration,
        ready: Duration,
        last: LifecycleState,
    ) -> BuildScript {
        self.agent_connect = connect;
        self.agent_ready = ready;
        self.agent_final = last;
        self
    }
}

/// Coder's default agent `connection_timeout_seconds`.
pub const DEFAULT_CONNECTION_TIMEOUT_SECS: i64 = 120;

/// One agent of a seeded workspace. Every start build creates fresh agent
/// ids for these names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSeed {
    /// Agent name (`-coderd-chat` suffix marks the chat agent).
    pub name: String,
    /// Name of the parent agent: this agent is a sub-agent (devcontainer),
    /// rendered with `parent_id` set.
    pub parent: Option<String>,
    /// The template's `coder_agent` `order` (`display_order`): Coder lists agents by it, then
    /// by name, and the chat tool picks by it (not rendered in the JSON, as in Coder).
    pub order: i32,
    /// `connection_timeout_seconds`: a never-connected agent shows `timeout` after it (0 =
    /// never). Coder's template default is 120.
    pub connection_timeout_secs: i64,
    /// Managed outside Coder (a `coder_external_agent` resource): Coder cannot start it, so it
    /// never connects here; its build reports `has_external_agent: true`.
    pub external: bool,
}

impl AgentSeed {
    /// A root agent.
    pub fn new(name: &str) -> AgentSeed {
        AgentSeed {
            name: name.to_owned(),
            parent: None,
            order: 0,
            connection_timeout_secs: DEFAULT_CONNECTION_TIMEOUT_SECS,
            external: false,
        }
    }

    /// A root agent managed outside Coder (`coder_external_agent`): it never connects.
    pub fn external(name: &str) -> AgentSeed {
        AgentSeed {
            external: true,
            ..AgentSeed::new(name)
        }
    }

    /// A sub-agent of `parent`.
    pub fn sub(name: &str, parent: &str) -> AgentSeed {
        AgentSeed {
            name: name.to_owned(),
            parent: Some(parent.to_owned()),
            order: 0,
            connection_timeout_secs: DEFAULT_CONNECTION_TIMEOUT_SECS,
            external: false,
        }
    }

    /// Builder-style: set the display order.
    pub fn order(mut self, order: i32) -> AgentSeed {
        self.order = order;
        self
    }

    /// Builder-style: set `connection_timeout_seconds`.
    pub fn connection_timeout(mut self, secs: i64) -> AgentSeed {
        self.connection_timeout_secs = secs;
        self
    }
}

/// Everything needed to create a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceSeed {
    /// Owner user id.
    pub owner: Uuid,
    /// Workspace name.
    pub name: String,
    /// Initial state (creates the matching build history in the past).
    pub state: InitialState,
    /// Agents of every start build.
    pub agents: Vec<AgentSeed>,
    /// `template_require_active_version`. When true the seeded workspace is
    /// also outdated (its builds use an older template version), so a start
    /// build visibly switches to the active version.
    pub require_active_version: bool,
    /// Script used for builds when no scripted build is queued.
    pub default_script: BuildScript,
    /// The workspace is dormant (`dormant_at` set an hour before seeding).
    pub dormant: bool,
}

impl Default for WorkspaceSeed {
    fn default() -> Self {
        WorkspaceSeed {
            owner: Uuid::nil(),
            name: "dev".to_owned(),
            state: InitialState::Stopped,
            agents: vec![AgentSeed::new("main")],
            require_active_version: false,
            default_script: BuildScript::default(),
            dormant: false,
        }
    }
}

impl WorkspaceSeed {
    /// A stopped workspace with one agent `main` and the default script.
    pub fn new(owner: Uuid, name: &str) -> WorkspaceSeed {
        WorkspaceSeed {
            owner,
            name: name.to_owned(),
            ..WorkspaceSeed::default()
        }
    }

    /// Builder-style: set the initial state.
    pub fn state(mut self, state: InitialState) -> WorkspaceSeed {
        self.state = state;
        self
    }

    /// Builder-style: replace the agents.
    pub fn agents(mut self, agents: Vec<AgentSeed>) -> WorkspaceSeed {
        self.agents = agents;
        self
    }

    /// Builder-style: set the default build script.
    pub fn script(mut self, script: BuildScript) -> WorkspaceSeed {
        self.default_script = script;
        self
    }

    /// Builder-style: make the workspace dormant.
    pub fn dormant(mut self, yes: bool) -> WorkspaceSeed {
        self.dormant = yes;
        self
    }

    /// Builder-style: set `template_require_active_version`.
    pub fn require_active_version(mut self, yes: bool) -> WorkspaceSeed {
        self.require_active_version = yes;
        self
    }
}

/// A user created in the simulator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimUser {
    /// User id.
    pub id: Uuid,
    /// Username (also `owner_name` of their workspaces).
    pub username: String,
    /// Session token for the `Coder-Session-Token` header.
    pub token: String,
}

/// Full description of a user for [`Sim::add_user_spec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserSpec {
    /// Username.
    pub username: String,
    /// Fixed id (random when `None`).
    pub id: Option<Uuid>,
    /// Fixed token (random Coder-style `id-secret` when `None`).
    pub token: Option<String>,
    /// Site role `owner`: may read and build everyone's workspaces.
    pub admin: bool,
    /// User status: `active` (default), `dormant` or `suspended`.
    pub status: Option<String>,
}

/// What a start build does to a dormant workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DormantStart {
    /// Current Coder: the start build clears `dormant_at` and starts the workspace.
    #[default]
    Wake,
    /// Older Coder: a start build on a dormant workspace is refused with 403.
    Refuse,
}

/// Full description of a chat for [`Sim::add_chat_spec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatSpec {
    /// Fixed id (random when `None`).
    pub id: Option<Uuid>,
    /// Owner user id.
    pub owner: Uuid,
    /// Bound workspace (`workspace_id`), if any.
    pub workspace_id: Option<Uuid>,
    /// Title (defaults to "Simulated chat").
    pub title: Option<String>,
    /// Chat status (defaults to `waiting`).
    pub status: Option<String>,
}
