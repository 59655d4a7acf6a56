//! Builds and their clock-driven provisioner job and agent lifecycle.

use std::time::Duration;

use jiff::Timestamp;
use uuid::Uuid;

use super::agent::AgentView;
use super::seed::{BuildOutcome, BuildScript, Transition};

/// How long an explicitly canceled running job stays `canceling`.
pub(crate) const CANCEL_GRACE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub(crate) struct AgentRec {
    pub id: Uuid,
    pub name: String,
    pub parent_id: Option<Uuid>,
    /// `display_order` (from the template's `order`).
    pub display_order: i32,
    /// `connection_timeout_seconds` (0 = never times out).
    pub connection_timeout_secs: i64,
    /// Belongs to a `coder_external_agent` resource: never connects by itself.
    pub external: bool,
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
    /// The `coder_external_agent` resource holding the external agents, if any.
    pub external_resource_id: Uuid,
    pub script: BuildScript,
    pub agents: Vec<AgentRec>,
    pub parameters: Vec<(String, String)>,
    /// Explicit cancel: (requested at, completed at).
    pub cancel: Option<(Timestamp, Timestamp)>,
    /// When a newer build was created on the workspace.
    pub superseded_at: Option<Timestamp>,
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

/// `ts + d`, saturating.
pub(crate) fn add(ts: Timestamp, d: Duration) -> Timestamp {
    ts.saturating_add(d).unwrap_or(Timestamp::MAX)
}

/// `ts - d`, saturating.
pub(crate) fn sub(ts: Timestamp, d: Duration) -> Timestamp {
    ts.saturating_sub(d).unwrap_or(Timestamp::MIN)
}

impl BuildRec {
    /// Whether any agent of this build is managed outside Coder.
    pub fn has_external_agent(&self) -> bool {
        self.agents.iter().any(|a| a.external)
    }

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
                let connected = connect <= t && !rec.external;
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
                } else if rec.connection_timeout_secs > 0
                    && t.duration_since(created).as_secs() >= rec.connection_timeout_secs
                {
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

    /// Every instant at which something happens to this build that real Coder publishes as a
    /// workspace event (job picked up, job done, cancel, agent connected, agent lifecycle).
    /// Changes that only time causes (an agent passing its connection timeout) are not events:
    /// Coder sends no watch frame for them, and they show on the next read or event.
    pub(crate) fn change_points(&self) -> Vec<Timestamp> {
        let mut pts = vec![self.started(), self.done()];
        if let Some((c, cdone)) = self.cancel_window() {
            pts.push(c);
            pts.push(cdone);
        }
        if self.transition == Transition::Start && !self.agents.is_empty() {
            let (_, connect, ready) = self.agent_times();
            pts.push(connect);
            pts.push(ready);
        }
        pts
    }
}
