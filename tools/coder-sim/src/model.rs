//! In-memory state of the simulated Coder deployment and the clock-driven
//! build lifecycle.
//!
//! Nothing here runs on a timer: every status (provisioner job, agent
//! connection, agent lifecycle) is computed from timestamps at read time, so
//! a read at time `t` always sees exactly what a real deployment would show at
//! `t`. [`next_change`] tells watchers when the next timer-based transition is
//! due.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::faults::Fault;
use crate::ratelimit::RateLimiter;
use crate::{ChatEra, SimConfig};

/// How long an explicitly canceled running job stays `canceling`.
pub(crate) const CANCEL_GRACE: Duration = Duration::from_millis(250);
/// Agent `connection_timeout_seconds` (Coder's template default).
pub(crate) const AGENT_CONNECTION_TIMEOUT_SECS: i64 = 120;

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

/// One agent of a seeded workspace. Every start build creates fresh agent
/// ids for these names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSeed {
    /// Agent name (`-coderd-chat` suffix marks the chat agent).
    pub name: String,
    /// Name of the parent agent: this agent is a sub-agent (devcontainer),
    /// rendered with `parent_id` set.
    pub parent: Option<String>,
}

impl AgentSeed {
    /// A root agent.
    pub fn new(name: &str) -> AgentSeed {
        AgentSeed {
            name: name.to_owned(),
            parent: None,
        }
    }

    /// A sub-agent of `parent`.
    pub fn sub(name: &str, parent: &str) -> AgentSeed {
        AgentSeed {
            name: name.to_owned(),
            parent: Some(parent.to_owned()),
        }
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

// ---------------------------------------------------------------------------
// Records

#[derive(Debug, Clone)]
pub(crate) struct UserRec {
    pub id: Uuid,
    pub username: String,
    pub token: String,
    pub admin: bool,
    pub status: String,
    pub created_at: Timestamp,
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
}

#[derive(Debug, Clone)]
pub(crate) struct AgentRec {
    pub id: Uuid,
    pub name: String,
    pub parent_id: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub(crate) struct BuildRec {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub number: i64,
    pub transition: Transition,
    pub reason: String,
    pub initiator: Uuid,
    pub template_version_id: Uuid,
    pub created_at: Timestamp,
    pub job_id: Uuid,
    pub worker_id: Uuid,
    pub file_id: Uuid,
    pub resource_id: Uuid,
    pub script: BuildScript,
    pub agents: Vec<AgentRec>,
    pub parameters: Vec<(String, String)>,
    /// Explicit cancel: (requested at, completed at).
    pub cancel: Option<(Timestamp, Timestamp)>,
    /// When a newer build was created on the workspace.
    pub superseded_at: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub(crate) struct ChatRec {
    pub id: Uuid,
    pub owner: Uuid,
    pub workspace_id: Option<Uuid>,
    pub title: String,
    pub status: String,
    pub created_at: Timestamp,
}

/// Provisioner job status (`ProvisionerJobStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobStatus {
    Pending,
    Running,
    Succeeded,
    Canceling,
    Canceled,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Canceling => "canceling",
            JobStatus::Canceled => "canceled",
            JobStatus::Failed => "failed",
        }
    }

    /// Pending, running or canceling: blocks a new build.
    pub fn active(self) -> bool {
        matches!(
            self,
            JobStatus::Pending | JobStatus::Running | JobStatus::Canceling
        )
    }
}

/// The provisioner job of a build as seen at one instant.
#[derive(Debug, Clone)]
pub(crate) struct JobView {
    pub status: JobStatus,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    pub canceled_at: Option<Timestamp>,
    pub error: Option<String>,
    pub error_code: Option<String>,
}

/// An agent as seen at one instant.
#[derive(Debug, Clone)]
pub(crate) struct AgentView {
    pub rec: AgentRec,
    pub created_at: Timestamp,
    pub status: &'static str,
    pub lifecycle: &'static str,
    pub first_connected_at: Option<Timestamp>,
    pub last_connected_at: Option<Timestamp>,
    pub disconnected_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub ready_at: Option<Timestamp>,
}

impl AgentView {
    /// `health` as computed by Coder's db2sdk: (healthy, reason).
    pub fn health(&self) -> (bool, Option<&'static str>) {
        if self.status != "connected" && self.lifecycle == "off" {
            return (false, Some("agent is not running"));
        }
        match self.status {
            "connecting" => return (false, Some("agent has not yet connected")),
            "timeout" => return (false, Some("agent is taking too long to connect")),
            "disconnected" => return (false, Some("agent has lost connection")),
            _ => {}
        }
        if self.lifecycle == "start_error" {
            return (false, Some("agent startup script exited with an error"));
        }
        if self.lifecycle.starts_with("shutting_down") || self.lifecycle.starts_with("shutdown") {
            return (false, Some("agent is shutting down"));
        }
        (true, None)
    }
}

pub(crate) fn add(ts: Timestamp, d: Duration) -> Timestamp {
    ts.saturating_add(d).unwrap_or(Timestamp::MAX)
}

pub(crate) fn sub(ts: Timestamp, d: Duration) -> Timestamp {
    ts.saturating_sub(d).unwrap_or(Timestamp::MIN)
}

impl BuildRec {
    fn started(&self) -> Timestamp {
        add(self.created_at, self.script.pending)
    }

    fn done(&self) -> Timestamp {
        add(self.started(), self.script.running)
    }

    /// Effective cancel window: explicit cancel, else a scripted one.
    fn cancel_window(&self) -> Option<(Timestamp, Timestamp)> {
        if self.cancel.is_some() {
            return self.cancel;
        }
        if self.script.outcome == BuildOutcome::Canceled {
            let c = add(self.started(), self.script.running / 2);
            return Some((c, self.done()));
        }
        None
    }

    pub fn job(&self, now: Timestamp) -> JobView {
        let started = self.started();
        let done = self.done();
        if let Some((c, cdone)) = self.cancel_window()
            && c <= now
        {
            let finished = cdone <= now;
            return JobView {
                status: if finished {
                    JobStatus::Canceled
                } else {
                    JobStatus::Canceling
                },
                started_at: (started <= c).then_some(started),
                completed_at: finished.then_some(cdone),
                canceled_at: Some(c),
                error: None,
                error_code: None,
            };
        }
        if now < started {
            return JobView {
                status: JobStatus::Pending,
                started_at: None,
                completed_at: None,
                canceled_at: None,
                error: None,
                error_code: None,
            };
        }
        if now < done {
            return JobView {
                status: JobStatus::Running,
                started_at: Some(started),
                completed_at: None,
                canceled_at: None,
                error: None,
                error_code: None,
            };
        }
        let (status, error, error_code) = match &self.script.outcome {
            BuildOutcome::Failed { error_code, error } => {
                (JobStatus::Failed, Some(error.clone()), error_code.clone())
            }
            _ => (JobStatus::Succeeded, None, None),
        };
        JobView {
            status,
            started_at: Some(started),
            completed_at: Some(done),
            canceled_at: None,
            error,
            error_code,
        }
    }

    /// Workspace status derived from job status × transition (§2.6).
    pub fn status(&self, now: Timestamp) -> &'static str {
        let job = self.job(now);
        match (job.status, self.transition) {
            (JobStatus::Pending, _) => "pending",
            (JobStatus::Running, Transition::Start) => "starting",
            (JobStatus::Running, Transition::Stop) => "stopping",
            (JobStatus::Running, Transition::Delete) => "deleting",
            (JobStatus::Succeeded, Transition::Start) => "running",
            (JobStatus::Succeeded, Transition::Stop) => "stopped",
            (JobStatus::Succeeded, Transition::Delete) => "deleted",
            (JobStatus::Canceling, _) => "canceling",
            (JobStatus::Canceled, _) => "canceled",
            (JobStatus::Failed, _) => "failed",
        }
    }

    /// Agents are present once a start job succeeded.
    fn has_agents(&self, now: Timestamp) -> bool {
        self.transition == Transition::Start && self.job(now).status == JobStatus::Succeeded
    }

    fn agent_times(&self) -> (Timestamp, Timestamp, Timestamp) {
        let created = self.done();
        let connect = add(created, self.script.agent_connect);
        let ready = add(connect, self.script.agent_ready);
        (created, connect, ready)
    }

    pub fn agents(&self, now: Timestamp) -> Vec<AgentView> {
        if !self.has_agents(now) {
            return Vec::new();
        }
        let (created, connect, ready) = self.agent_times();
        let superseded = self.superseded_at.filter(|s| *s <= now);
        // The agent's view of time stops when a newer build replaced it.
        let t = superseded.map_or(now, |s| s.min(now));
        self.agents
            .iter()
            .map(|rec| {
                let connected = connect <= t;
                let mut view = AgentView {
                    rec: rec.clone(),
                    created_at: created,
                    status: "connecting",
                    lifecycle: "created",
                    first_connected_at: None,
                    last_connected_at: None,
                    disconnected_at: None,
                    started_at: None,
                    ready_at: None,
                };
                if connected {
                    view.status = "connected";
                    view.first_connected_at = Some(connect);
                    view.last_connected_at = Some(connect);
                    view.lifecycle = "starting";
                    view.started_at = Some(connect);
                    if ready <= t {
                        view.lifecycle = self.script.agent_final.as_str();
                        view.ready_at = Some(ready);
                    }
                } else if t.duration_since(created).as_secs() > AGENT_CONNECTION_TIMEOUT_SECS {
                    view.status = "timeout";
                }
                if let Some(s) = superseded {
                    view.status = "disconnected";
                    view.lifecycle = "off";
                    view.disconnected_at = Some(s);
                }
                view
            })
            .collect()
    }

    /// Every instant at which this build's rendered JSON changes by itself.
    fn change_points(&self) -> Vec<Timestamp> {
        let mut pts = vec![self.started(), self.done()];
        if let Some((c, cdone)) = self.cancel_window() {
            pts.push(c);
            pts.push(cdone);
        }
        if self.transition == Transition::Start && !self.agents.is_empty() {
            let (created, connect, ready) = self.agent_times();
            pts.push(connect);
            pts.push(ready);
            pts.push(add(
                created,
                Duration::from_secs(AGENT_CONNECTION_TIMEOUT_SECS as u64 + 1),
            ));
        }
        pts
    }
}

/// Selects the chat agent like `agentselect.FindChatAgent`: root agents,
/// sorted by name case-insensitively; the single `-coderd-chat` agent, else
/// the first; `None` when none or several match the suffix.
pub(crate) fn select_chat_agent(agents: &[AgentView]) -> Option<&AgentView> {
    let mut roots: Vec<&AgentView> = agents
        .iter()
        .filter(|a| a.rec.parent_id.is_none())
        .collect();
    roots.sort_by_key(|a| a.rec.name.to_lowercase());
    let suffixed: Vec<&&AgentView> = roots
        .iter()
        .filter(|a| a.rec.name.to_lowercase().ends_with("-coderd-chat"))
        .collect();
    match suffixed.len() {
        0 => roots.first().copied(),
        1 => Some(*suffixed[0]),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// State

/// All mutable simulator state, behind one mutex.
pub(crate) struct State {
    pub version: String,
    pub chat_era: ChatEra,
    pub org_id: Uuid,
    pub deployment_id: Uuid,
    pub base_url: String,
    pub users: BTreeMap<Uuid, UserRec>,
    pub tokens: HashMap<String, Uuid>,
    pub workspaces: BTreeMap<Uuid, WorkspaceRec>,
    pub builds: HashMap<Uuid, BuildRec>,
    pub chats: BTreeMap<Uuid, ChatRec>,
    pub faults: HashMap<String, Fault>,
    pub counters: BTreeMap<String, u64>,
    pub ratelimit: RateLimiter,
    /// Per workspace: (sequence, message) of the last injected watch error.
    pub watch_errors: HashMap<Uuid, (u64, String)>,
}

impl State {
    pub fn user_by_ref(&self, user: &str) -> Option<&UserRec> {
        if let Ok(id) = Uuid::parse_str(user) {
            return self.users.get(&id);
        }
        self.users
            .values()
            .find(|u| u.username.eq_ignore_ascii_case(user))
    }

    pub fn latest_build(&self, ws: &WorkspaceRec) -> Option<&BuildRec> {
        ws.builds.last().and_then(|id| self.builds.get(id))
    }

    /// Latest build is a succeeded delete.
    pub fn is_deleted(&self, ws: &WorkspaceRec, now: Timestamp) -> bool {
        self.latest_build(ws).is_some_and(|b| {
            b.transition == Transition::Delete && b.job(now).status == JobStatus::Succeeded
        })
    }

    /// Earliest instant after `now` at which the workspace's JSON changes by
    /// itself (timer-driven transitions).
    pub fn next_change(&self, ws: &WorkspaceRec, now: Timestamp) -> Option<Timestamp> {
        let b = self.latest_build(ws)?;
        b.change_points().into_iter().filter(|t| *t > now).min()
    }

    /// Creates a build on `ws_id`, consuming the next scripted build.
    #[allow(clippy::too_many_arguments)]
    pub fn create_build(
        &mut self,
        ws_id: Uuid,
        transition: Transition,
        initiator: Uuid,
        reason: &str,
        version: Option<Uuid>,
        parameters: Vec<(String, String)>,
        now: Timestamp,
        counted: bool,
    ) -> Option<Uuid> {
        let ws = self.workspaces.get_mut(&ws_id)?;
        let script = ws
            .scripts
            .pop_front()
            .unwrap_or_else(|| ws.default_script.clone());
        let prev = ws.builds.last().and_then(|id| self.builds.get_mut(id));
        let (number, prev_version) = match prev {
            Some(p) => {
                p.superseded_at = Some(now);
                (p.number + 1, p.template_version_id)
            }
            None => (1, ws.template.active_version()),
        };
        let mut agents = Vec::new();
        if transition == Transition::Start {
            for seed in &ws.agents {
                agents.push(AgentRec {
                    id: Uuid::new_v4(),
                    name: seed.name.clone(),
                    parent_id: None,
                });
            }
            for (i, seed) in ws.agents.iter().enumerate() {
                if let Some(parent) = &seed.parent {
                    let pid = agents.iter().find(|a| &a.name == parent).map(|a| a.id);
                    agents[i].parent_id = pid;
                }
            }
        }
        let id = Uuid::new_v4();
        let build = BuildRec {
            id,
            workspace_id: ws_id,
            number,
            transition,
            reason: reason.to_owned(),
            initiator,
            template_version_id: version.unwrap_or(prev_version),
            created_at: now,
            job_id: Uuid::new_v4(),
            worker_id: Uuid::new_v4(),
            file_id: Uuid::new_v4(),
            resource_id: Uuid::new_v4(),
            script,
            agents,
            parameters,
            cancel: None,
            superseded_at: None,
        };
        ws.builds.push(id);
        ws.updated_at = now;
        if counted {
            ws.builds_created += 1;
        }
        self.builds.insert(id, build);
        Some(id)
    }

    /// Creates the seeded build history of a new workspace.
    fn seed_history(&mut self, ws_id: Uuid, state: InitialState, now: Timestamp) {
        let hist = BuildScript {
            pending: Duration::from_secs(1),
            running: Duration::from_secs(60),
            outcome: BuildOutcome::Succeeded,
            agent_connect: Duration::from_secs(5),
            agent_ready: Duration::from_secs(20),
            agent_final: LifecycleState::Ready,
        };
        let owner = self
            .workspaces
            .get(&ws_id)
            .map(|w| w.owner)
            .unwrap_or_default();
        let mut plan: Vec<(Transition, BuildScript)> = vec![(Transition::Start, hist.clone())];
        match state {
            InitialState::Running => {}
            InitialState::Stopped => plan.push((Transition::Stop, hist.clone())),
            InitialState::Deleted => plan.push((Transition::Delete, hist.clone())),
            InitialState::Failed => {
                plan[0].1 = BuildScript {
                    outcome: BuildOutcome::Failed {
                        error_code: None,
                        error: "terraform apply: exit status 1".to_owned(),
                    },
                    ..hist.clone()
                }
            }
        }
        let n = plan.len() as u32;
        for (i, (transition, script)) in plan.into_iter().enumerate() {
            let at = sub(now, Duration::from_secs(3600) * (n - i as u32));
            if let Some(ws) = self.workspaces.get_mut(&ws_id) {
                ws.scripts.push_front(script);
            }
            self.create_build(
                ws_id,
                transition,
                owner,
                "initiator",
                None,
                Vec::new(),
                at,
                false,
            );
        }
        if let Some(ws) = self.workspaces.get_mut(&ws_id) {
            ws.updated_at = now;
        }
    }
}

// ---------------------------------------------------------------------------
// Sim handle

pub(crate) struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    /// Per-workspace wake-ups for changes that concern one workspace only (a POSTed build), so
    /// N watchers do not all re-render on every build of N workspaces (Coder filters its
    /// owner-scoped pubsub events by workspace id too).
    changed_ws: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
}

/// Handle to the simulator state. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Sim {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").finish_non_exhaustive()
    }
}

fn random_token() -> String {
    let a = Uuid::new_v4().simple().to_string();
    let b = Uuid::new_v4().simple().to_string();
    format!("{}-{}", &a[..10], &b[..22])
}

impl Sim {
    /// A fresh simulator without a server (see [`crate::SimServer::start`]).
    pub fn new(cfg: &SimConfig) -> Sim {
        let state = State {
            version: if cfg.version.is_empty() {
                crate::DEFAULT_VERSION.to_owned()
            } else {
                cfg.version.clone()
            },
            chat_era: cfg.chat_era,
            org_id: Uuid::new_v4(),
            deployment_id: Uuid::new_v4(),
            base_url: String::new(),
            users: BTreeMap::new(),
            tokens: HashMap::new(),
            workspaces: BTreeMap::new(),
            builds: HashMap::new(),
            chats: BTreeMap::new(),
            faults: HashMap::new(),
            counters: BTreeMap::new(),
            ratelimit: RateLimiter::new(cfg.rate_limit_per_minute),
            watch_errors: HashMap::new(),
        };
        let (changed, _) = watch::channel(0);
        Sim {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                changed,
                changed_ws: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Locks the state; a poisoned mutex is recovered (state stays usable).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every watch stream (they re-render and send on change).
    pub(crate) fn notify(&self) {
        self.shared.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Wakes only the watch streams of `workspace`.
    pub(crate) fn notify_workspace(&self, workspace: Uuid) {
        let map = self
            .shared
            .changed_ws
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(&workspace) {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Subscribes to [`Sim::notify_workspace`] wake-ups of `workspace`.
    pub(crate) fn subscribe_workspace(&self, workspace: Uuid) -> watch::Receiver<u64> {
        let mut map = self
            .shared
            .changed_ws
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.retain(|_, tx| tx.receiver_count() > 0);
        map.entry(workspace)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Adds an active member with a random id and token.
    pub fn add_user(&self, username: &str) -> SimUser {
        self.add_user_spec(UserSpec {
            username: username.to_owned(),
            ..UserSpec::default()
        })
    }

    /// Adds an active site owner (role `owner`): may read and build every
    /// workspace and read every chat.
    pub fn add_admin(&self, username: &str) -> SimUser {
        self.add_user_spec(UserSpec {
            username: username.to_owned(),
            admin: true,
            ..UserSpec::default()
        })
    }

    /// Adds a user with optional fixed id, token and status.
    pub fn add_user_spec(&self, spec: UserSpec) -> SimUser {
        let rec = UserRec {
            id: spec.id.unwrap_or_else(Uuid::new_v4),
            username: spec.username,
            token: spec.token.unwrap_or_else(random_token),
            admin: spec.admin,
            status: spec.status.unwrap_or_else(|| "active".to_owned()),
            created_at: Timestamp::now(),
        };
        let user = SimUser {
            id: rec.id,
            username: rec.username.clone(),
            token: rec.token.clone(),
        };
        let mut st = self.lock();
        st.tokens.insert(rec.token.clone(), rec.id);
        st.users.insert(rec.id, rec);
        drop(st);
        self.notify();
        user
    }

    /// Sets a user's status (`active`, `dormant`, `suspended`). Suspended
    /// users' tokens are rejected with 401.
    pub fn set_user_status(&self, user: Uuid, status: &str) {
        if let Some(u) = self.lock().users.get_mut(&user) {
            u.status = status.to_owned();
        }
        self.notify();
    }

    /// Adds a workspace with a random id.
    pub fn add_workspace(&self, seed: WorkspaceSeed) -> Uuid {
        self.add_workspace_with_id(Uuid::new_v4(), seed)
    }

    /// Adds a workspace with a fixed id (replacing any workspace with it).
    pub fn add_workspace_with_id(&self, id: Uuid, seed: WorkspaceSeed) -> Uuid {
        let now = Timestamp::now();
        let mut versions = vec![Uuid::new_v4()];
        if seed.require_active_version {
            versions.insert(0, Uuid::new_v4());
        }
        let template = TemplateRec {
            id: Uuid::new_v4(),
            name: "docker".to_owned(),
            versions,
            require_active_version: seed.require_active_version,
        };
        let first_version = template.versions[0];
        let rec = WorkspaceRec {
            id,
            name: seed.name,
            owner: seed.owner,
            created_at: sub(now, Duration::from_secs(4 * 3600)),
            updated_at: now,
            template,
            builds: Vec::new(),
            agents: seed.agents,
            default_script: seed.default_script,
            scripts: VecDeque::new(),
            builds_created: 0,
            builds_posted: 0,
        };
        let mut st = self.lock();
        st.workspaces.insert(id, rec);
        st.seed_history(id, seed.state, now);
        // Seeded builds use the first (possibly outdated) version.
        let ids = st
            .workspaces
            .get(&id)
            .map(|w| w.builds.clone())
            .unwrap_or_default();
        for b in ids {
            if let Some(b) = st.builds.get_mut(&b) {
                b.template_version_id = first_version;
            }
        }
        drop(st);
        self.notify();
        id
    }

    /// Publishes a new active template version for the workspace's template
    /// (making the workspace `outdated`); returns the new version id.
    pub fn publish_template_version(&self, workspace: Uuid) -> Option<Uuid> {
        let v = Uuid::new_v4();
        let mut st = self.lock();
        let ws = st.workspaces.get_mut(&workspace)?;
        ws.template.versions.push(v);
        drop(st);
        self.notify();
        Some(v)
    }

    /// Adds a chat with a random id, bound to `workspace_id`.
    pub fn add_chat(&self, owner: Uuid, workspace_id: Option<Uuid>) -> Uuid {
        self.add_chat_spec(ChatSpec {
            owner,
            workspace_id,
            ..ChatSpec::default()
        })
    }

    /// Adds a chat with optional fixed id, title and status.
    pub fn add_chat_spec(&self, spec: ChatSpec) -> Uuid {
        let rec = ChatRec {
            id: spec.id.unwrap_or_else(Uuid::new_v4),
            owner: spec.owner,
            workspace_id: spec.workspace_id,
            title: spec.title.unwrap_or_else(|| "Simulated chat".to_owned()),
            status: spec.status.unwrap_or_else(|| "waiting".to_owned()),
            created_at: Timestamp::now(),
        };
        let id = rec.id;
        self.lock().chats.insert(id, rec);
        id
    }

    /// Queues `script` for the next build created on `workspace` (FIFO).
    pub fn script_next_build(&self, workspace: Uuid, script: BuildScript) {
        if let Some(ws) = self.lock().workspaces.get_mut(&workspace) {
            ws.scripts.push_back(script);
        }
    }

    /// Someone else (the owner) creates a build now, regardless of any
    /// active build. Returns the build id (nil if the workspace is unknown).
    pub fn start_build(&self, workspace: Uuid, transition: Transition) -> Uuid {
        let now = Timestamp::now();
        let mut st = self.lock();
        let owner = st
            .workspaces
            .get(&workspace)
            .map(|w| w.owner)
            .unwrap_or_default();
        let id = st.create_build(
            workspace,
            transition,
            owner,
            "initiator",
            None,
            Vec::new(),
            now,
            true,
        );
        drop(st);
        self.notify();
        id.unwrap_or_default()
    }

    /// Cancels a build whose job is pending (→ `canceled` at once) or
    /// running (→ `canceling`, then `canceled`). Returns false when the job
    /// is not active.
    pub fn cancel_build(&self, build: Uuid) -> bool {
        let now = Timestamp::now();
        let mut st = self.lock();
        let Some(b) = st.builds.get_mut(&build) else {
            return false;
        };
        let job = b.job(now);
        let done = match job.status {
            JobStatus::Pending => now,
            JobStatus::Running => add(now, CANCEL_GRACE),
            _ => return false,
        };
        b.cancel = Some((now, done));
        let ws = b.workspace_id;
        if let Some(w) = st.workspaces.get_mut(&ws) {
            w.updated_at = now;
        }
        drop(st);
        self.notify();
        true
    }

    /// Deletes the workspace now (an instant, succeeded `delete` build).
    pub fn delete_workspace(&self, workspace: Uuid) {
        let now = Timestamp::now();
        let mut st = self.lock();
        if let Some(ws) = st.workspaces.get_mut(&workspace) {
            ws.scripts.push_front(BuildScript::instant());
            let owner = ws.owner;
            st.create_build(
                workspace,
                Transition::Delete,
                owner,
                "initiator",
                None,
                Vec::new(),
                now,
                false,
            );
        }
        drop(st);
        self.notify();
    }

    /// Sets (replaces) the fault for a route key such as
    /// `"POST /api/v2/workspaces/{id}/builds"`.
    pub fn set_fault(&self, route: &str, fault: Fault) {
        self.lock().faults.insert(route.to_owned(), fault);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Requests per route key (`METHOD /route/{pattern}`), all users.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.lock().counters.clone()
    }

    /// Requests so far for one route key (0 if none).
    pub fn count(&self, route: &str) -> u64 {
        self.lock().counters.get(route).copied().unwrap_or(0)
    }

    /// Resets all request counters.
    pub fn reset_counters(&self) {
        self.lock().counters.clear();
    }

    /// Builds created on the workspace after seeding: POSTed ones plus
    /// [`Sim::start_build`] ones (not `delete_workspace`).
    pub fn builds_created(&self, workspace: Uuid) -> usize {
        self.lock()
            .workspaces
            .get(&workspace)
            .map_or(0, |w| w.builds_created)
    }

    /// Builds created through `POST /api/v2/workspaces/{id}/builds` only.
    pub fn builds_posted(&self, workspace: Uuid) -> usize {
        self.lock()
            .workspaces
            .get(&workspace)
            .map_or(0, |w| w.builds_posted)
    }

    /// Id of the workspace's latest build.
    pub fn latest_build_id(&self, workspace: Uuid) -> Option<Uuid> {
        self.lock()
            .workspaces
            .get(&workspace)
            .and_then(|w| w.builds.last().copied())
    }

    /// Rich parameter values sent with a build (`rich_parameter_values`).
    pub fn build_parameters(&self, build: Uuid) -> Vec<(String, String)> {
        self.lock()
            .builds
            .get(&build)
            .map(|b| b.parameters.clone())
            .unwrap_or_default()
    }

    /// The workspace as `GET /api/v2/workspaces/{id}?include_deleted=true`
    /// renders it now (`Value::Null` if unknown).
    pub fn workspace_json(&self, workspace: Uuid) -> serde_json::Value {
        let st = self.lock();
        match st.workspaces.get(&workspace) {
            Some(ws) => crate::json::workspace(&st, ws, Timestamp::now()),
            None => serde_json::Value::Null,
        }
    }

    /// The chat as `GET` renders it in the configured era (`Null` if unknown).
    pub fn chat_json(&self, chat: Uuid) -> serde_json::Value {
        let st = self.lock();
        match st.chats.get(&chat) {
            Some(c) => crate::json::chat(&st, c, Timestamp::now()),
            None => serde_json::Value::Null,
        }
    }

    /// When the latest build's chat agent (selection rule of the chat tool)
    /// reached lifecycle `ready`; `None` if it has not (yet).
    pub fn agent_ready_at(&self, workspace: Uuid) -> Option<Timestamp> {
        let now = Timestamp::now();
        let st = self.lock();
        let ws = st.workspaces.get(&workspace)?;
        let b = st.latest_build(ws)?;
        let agents = b.agents(now);
        let a = select_chat_agent(&agents)?;
        if a.lifecycle == "ready" {
            a.ready_at
        } else {
            None
        }
    }

    /// Sends an `event: error` to every current watcher of the workspace,
    /// which then ends its stream.
    pub fn fail_watchers(&self, workspace: Uuid, message: &str) {
        let mut st = self.lock();
        let seq = st.watch_errors.get(&workspace).map_or(1, |(s, _)| s + 1);
        st.watch_errors.insert(workspace, (seq, message.to_owned()));
        drop(st);
        self.notify();
    }

    /// Ids of all workspaces.
    pub fn workspace_ids(&self) -> Vec<Uuid> {
        self.lock().workspaces.keys().copied().collect()
    }

    pub(crate) fn set_base_url(&self, url: &str) {
        self.lock().base_url = url.to_owned();
    }
}
