//! In-memory state of the simulated Coder deployment and the clock-driven
//! build lifecycle.
//!
//! Nothing here runs on a timer: every status (provisioner job, agent
//! connection, agent lifecycle) is computed from timestamps at read time, so
//! a read at time `t` always sees exactly what a real deployment would show at
//! `t`. [`State::next_event`] tells watchers when the next scheduled event is
//! due.

mod agent;
mod build;
pub(crate) mod debug;
mod records;
mod seed;
mod state;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;
use uuid::Uuid;

pub(crate) use agent::{AgentView, select_chat_agent};
pub(crate) use build::{BuildRec, CANCEL_GRACE, JobStatus, add, sub};
pub(crate) use records::{ChatRec, TemplateRec, UserRec, WorkspaceRec};
pub use seed::{
    AgentSeed, BuildOutcome, BuildScript, ChatSpec, DEFAULT_CONNECTION_TIMEOUT_SECS, DormantStart,
    InitialState, LifecycleState, SimUser, Transition, UserSpec, WorkspaceSeed,
};
pub(crate) use state::State;

use crate::config::{ChatEra, DEFAULT_VERSION, SimConfig};
use crate::faults::Fault;
use crate::ratelimit::RateLimiter;

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Per-workspace wake-ups for changes that concern one workspace only (a POSTed build), so
    /// N watchers do not all re-render on every build of N workspaces (Coder filters its
    /// owner-scoped pubsub events by workspace id too).
    changed_ws: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
    /// Every workspace named in a [`Sim::notify_workspace`] (for the state-change feed).
    touched: tokio::sync::broadcast::Sender<Uuid>,
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
                DEFAULT_VERSION.to_owned()
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
            dormant_start: DormantStart::default(),
            clock_offset: jiff::SignedDuration::ZERO,
        };
        Sim {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                changed_ws: Mutex::new(HashMap::new()),
                touched: tokio::sync::broadcast::channel(4096).0,
            }),
        }
    }

    /// Locks the state; a poisoned mutex is recovered (state stays usable).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a workspace event: the watch streams of `workspace` re-render it and send it
    /// (Coder publishes one on every change of a workspace's build, job or agents).
    pub(crate) fn notify_workspace(&self, workspace: Uuid) {
        let _ = self.shared.touched.send(workspace);
        let map = self
            .shared
            .changed_ws
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(&workspace) {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Workspaces named in [`Sim::notify_workspace`] from now on.
    pub(crate) fn subscribe_touched(&self) -> tokio::sync::broadcast::Receiver<Uuid> {
        self.shared.touched.subscribe()
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
            deleted: false,
        };
        let user = SimUser {
            id: rec.id,
            username: rec.username.clone(),
            token: rec.token.clone(),
        };
        let mut st = self.lock();
        st.tokens.insert(rec.token.clone(), rec.id);
        st.users.insert(rec.id, rec);
        user
    }

    /// Sets a user's status (`active`, `dormant`, `suspended`). As in Coder, a suspended
    /// user's token is rejected with 401 and a dormant user's first request activates them.
    pub fn set_user_status(&self, user: Uuid, status: &str) {
        if let Some(u) = self.lock().users.get_mut(&user) {
            u.status = status.to_owned();
        }
    }

    /// Deletes a user as Coder does: their tokens stop working, `GET /api/v2/users/{id}` still
    /// answers (a tombstone), and their username no longer resolves.
    pub fn delete_user(&self, user: Uuid) {
        let mut st = self.lock();
        if let Some(u) = st.users.get_mut(&user) {
            u.deleted = true;
        }
        st.tokens.retain(|_, id| *id != user);
    }

    /// Makes the workspace dormant (`dormant_at` = now) or wakes it.
    pub fn set_dormant(&self, workspace: Uuid, dormant: bool) {
        if let Some(ws) = self.lock().workspaces.get_mut(&workspace) {
            ws.dormant_at = dormant.then(Timestamp::now);
        }
        self.notify_workspace(workspace);
    }

    /// How a start build treats a dormant workspace: wake it (current Coder) or refuse with
    /// 403 (older versions).
    pub fn set_dormant_start(&self, behaviour: DormantStart) {
        self.lock().dormant_start = behaviour;
    }

    /// Sets how far the deployment's clock is off (positive: ahead): every timestamp in its
    /// answers is shifted by it, as a Coder host with a wrong clock reports them.
    pub fn set_clock_offset(&self, offset: jiff::SignedDuration) {
        self.lock().clock_offset = offset;
    }

    /// Upgrades (or downgrades) the running deployment: `buildinfo.version`,
    /// `X-Coder-Build-Version` and the chat API era change at once.
    pub fn set_server(&self, version: Option<&str>, chat_era: Option<ChatEra>) {
        let mut st = self.lock();
        if let Some(v) = version.filter(|v| !v.is_empty()) {
            st.version = v.to_owned();
        }
        if let Some(e) = chat_era {
            st.chat_era = e;
        }
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
            dormant_at: seed.dormant.then(|| sub(now, Duration::from_secs(3600))),
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
        self.notify_workspace(id);
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
        // Coder's watch also follows the template (to show `outdated`).
        self.notify_workspace(workspace);
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
            model_config_id: Uuid::new_v4(),
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
        self.notify_workspace(workspace);
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
        self.notify_workspace(ws);
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
        self.notify_workspace(workspace);
    }

    /// Sets (replaces) the fault for a route key such as
    /// `"POST /api/v2/workspaces/{id}/builds"`, or for every route ([`crate::ANY_ROUTE`]).
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

    /// Sends an `event: error` to every current watcher of the workspace; as in coderd, the
    /// streams stay open and go on with the next event.
    pub fn fail_watchers(&self, workspace: Uuid, message: &str) {
        let mut st = self.lock();
        let seq = st.watch_errors.get(&workspace).map_or(1, |(s, _)| s + 1);
        st.watch_errors.insert(workspace, (seq, message.to_owned()));
        drop(st);
        self.notify_workspace(workspace);
    }

    /// Ids of all workspaces.
    pub fn workspace_ids(&self) -> Vec<Uuid> {
        self.lock().workspaces.keys().copied().collect()
    }

    pub(crate) fn set_base_url(&self, url: &str) {
        self.lock().base_url = url.to_owned();
    }
}
