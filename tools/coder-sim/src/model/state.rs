//! All mutable simulator state and the build creation that changes it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jiff::Timestamp;
use uuid::Uuid;

use super::build::{AgentRec, BuildRec, JobStatus, sub};
use super::records::{ChatRec, UserRec, WorkspaceRec};
use super::seed::{
    BuildOutcome, BuildScript, DormantStart, InitialState, LifecycleState, Transition,
};
use crate::config::ChatEra;
use crate::faults::Fault;
use crate::ratelimit::RateLimiter;

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
    /// What a start build does to a dormant workspace (this Coder version's behaviour).
    pub dormant_start: DormantStart,
    /// How far this deployment's clock is off: every timestamp it reports is shifted by it.
    pub clock_offset: jiff::SignedDuration,
}

impl State {
    /// A user by id (deleted ones too: Coder keeps a tombstone that `GetUserByID` returns) or
    /// by username (live users only, as `GetUserByEmailOrUsername`).
    pub fn user_by_ref(&self, user: &str) -> Option<&UserRec> {
        if let Ok(id) = Uuid::parse_str(user) {
            return self.users.get(&id);
        }
        self.users
            .values()
            .find(|u| !u.deleted && u.username.eq_ignore_ascii_case(user))
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

    /// Earliest instant after `now` at which a scheduled event of the workspace's latest
    /// build happens (see [`BuildRec::change_points`]).
    pub fn next_event(&self, ws: &WorkspaceRec, now: Timestamp) -> Option<Timestamp> {
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
                    display_order: seed.order,
                    connection_timeout_secs: seed.connection_timeout_secs,
                    external: seed.external,
                });
            }
            for (i, seed) in ws.agents.iter().enumerate() {
                if let Some(parent) = &seed.parent {
                    let pid = agents.iter().find(|a| &a.name == parent).map(|a| a.id);
                    agents[i].parent_id = pid;
                }
            }
            // Coder lists a resource's agents by display order, then name (case-sensitive).
            agents.sort_by(|a, b| (a.display_order, &a.name).cmp(&(b.display_order, &b.name)));
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
            external_resource_id: Uuid::new_v4(),
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
    pub(crate) fn seed_history(&mut self, ws_id: Uuid, state: InitialState, now: Timestamp) {
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
