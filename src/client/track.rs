//! Following one request until it is Ready or Failed (or a wait times out), reporting each change
//! a person or a chat service cares about: phase, build number and job status, agent status and
//! lifecycle. The MCP tool turns the reports into progress notifications, the `start` command into
//! a progress display; both read the request through a watch, never by polling.

use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use crate::api::conditions::{self, types};
use crate::api::crd::{Phase, WorkspaceStartRequest};

/// The parts of a request's status that a follower reports when they change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// Phase (Pending until the operator wrote one).
    pub phase: Phase,
    /// The Ready condition's reason.
    pub reason: Option<String>,
    /// The Ready condition's message (the status message when the condition is missing).
    pub message: Option<String>,
    /// Workspace name.
    pub workspace: Option<String>,
    /// Build number, transition and job status of the latest build observed.
    pub build: Option<(i64, String, String)>,
    /// Agent name, connection status and lifecycle state.
    pub agent: Option<(Option<String>, String, Option<String>)>,
}

impl Progress {
    /// What `request` shows now.
    pub fn of(request: &WorkspaceStartRequest) -> Progress {
        let Some(st) = &request.status else {
            return Progress::default();
        };
        let ready = conditions::get(&st.conditions, types::READY);
        Progress {
            phase: st.phase.unwrap_or_default(),
            reason: ready.map(|c| c.reason.clone()).filter(|r| !r.is_empty()),
            message: ready
                .map(|c| c.message.clone())
                .filter(|m| !m.is_empty())
                .or_else(|| st.message.clone()),
            workspace: st.workspace.as_ref().map(|w| w.name.clone()),
            build: st
                .build
                .as_ref()
                .map(|b| (b.number, b.transition.clone(), b.job_status.clone())),
            agent: st
                .agent
                .as_ref()
                .map(|a| (a.name.clone(), a.status.clone(), a.lifecycle_state.clone())),
        }
    }

    /// Whether the request is Ready or Failed.
    pub fn is_terminal(&self) -> bool {
        self.phase.is_terminal()
    }

    /// One line: `Starting (BuildInProgress): workspace dev, build #3 start running`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(ws) = &self.workspace {
            parts.push(format!("workspace {ws}"));
        }
        if let Some((number, transition, job)) = &self.build {
            parts.push(format!("build #{number} {transition} {job}"));
        }
        if let Some((name, status, lifecycle)) = &self.agent {
            let name = name.as_deref().map(|n| format!(" {n}")).unwrap_or_default();
            match lifecycle {
                Some(l) => parts.push(format!("agent{name} {status}/{l}")),
                None => parts.push(format!("agent{name} {status}")),
            }
        }
        let phase = format!("{:?}", self.phase);
        let mut line = phase.clone();
        if let Some(reason) = self.reason.as_ref().filter(|r| **r != phase) {
            line.push_str(&format!(" ({reason})"));
        }
        if !parts.is_empty() {
            line.push_str(": ");
            line.push_str(&parts.join(", "));
        }
        line
    }
}

/// How following ended.
#[derive(Debug, Clone)]
pub enum Followed {
    /// The request is Ready or Failed.
    Finished(Box<WorkspaceStartRequest>),
    /// The wait ended first; the request as last seen (still in progress).
    TimedOut(Box<WorkspaceStartRequest>),
}

impl Followed {
    /// The request as last seen.
    pub fn request(&self) -> &WorkspaceStartRequest {
        match self {
            Followed::Finished(r) | Followed::TimedOut(r) => r,
        }
    }
}

/// Why a request could not be followed.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The request was deleted before it finished.
    #[error("request {namespace}/{name} was deleted before it finished")]
    Deleted {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The API server refused the watch (RBAC) or the request kind is unknown.
    #[error("cannot watch request {namespace}/{name}: {source}")]
    Refused {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Follows `initial` (as just created or read) until it is Ready or Failed or `timeout` passes,
/// calling `report` with the request and its progress first for the initial state and then on
/// every change of [`Progress`]. Transient watch errors are retried with backoff; a refused watch
/// (401/403/404) ends following at once.
pub async fn follow(
    api: Api<WorkspaceStartRequest>,
    initial: WorkspaceStartRequest,
    timeout: Duration,
    report: impl FnMut(&WorkspaceStartRequest, &Progress),
) -> Result<Followed, FollowError> {
    let mut tracker = Tracker::new(initial, report);
    if tracker.is_terminal() {
        return Ok(tracker.end());
    }
    let cfg = watcher::Config::default().fields(&format!("metadata.name={}", tracker.name()));
    let mut events = watcher::watcher(api, cfg).default_backoff().boxed();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut listed = false;
    loop {
        let event = match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) | Ok(None) => return Ok(tracker.end()),
            Ok(Some(event)) => event,
        };
        let obj = match event {
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => {
                listed = true;
                obj
            }
            Ok(Event::Init) => {
                listed = false;
                continue;
            }
            Ok(Event::InitDone) if listed => continue,
            Ok(Event::Delete(_) | Event::InitDone) => return Err(tracker.deleted()),
            Err(e) => match refusal(e) {
                Some(source) => return Err(tracker.refused(source)),
                None => continue,
            },
        };
        if tracker.observe(obj) {
            return Ok(tracker.end());
        }
    }
}

/// What a follower keeps between reads of its request: its namespace and name, the request as
/// last seen and the progress last reported, with the caller's `report`. [`follow`] and the MCP
/// server's shared watches feed it every read, so both report, fail and end alike.
pub struct Tracker<F> {
    namespace: String,
    name: String,
    latest: WorkspaceStartRequest,
    last: Progress,
    report: F,
}

impl<F: FnMut(&WorkspaceStartRequest, &Progress)> Tracker<F> {
    /// Starts from `initial`, reporting its progress at once.
    pub fn new(initial: WorkspaceStartRequest, mut report: F) -> Tracker<F> {
        let last = Progress::of(&initial);
        report(&initial, &last);
        Tracker {
            namespace: initial.metadata.namespace.clone().unwrap_or_default(),
            name: initial.metadata.name.clone().unwrap_or_default(),
            latest: initial,
            last,
            report,
        }
    }

    /// The request's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The request's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The error for a request deleted before it finished.
    pub fn deleted(&self) -> FollowError {
        FollowError::Deleted {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// The error for a read or watch of the request the API server refused with `source`.
    pub fn refused(&self, source: kube::Error) -> FollowError {
        FollowError::Refused {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    /// Whether the request as last seen is Ready or Failed.
    pub fn is_terminal(&self) -> bool {
        self.last.is_terminal()
    }

    /// Takes `request` as the latest read, reports it when its progress changed, and says whether
    /// it is now Ready or Failed.
    pub fn observe(&mut self, request: WorkspaceStartRequest) -> bool {
        let now = Progress::of(&request);
        self.latest = request;
        if now != self.last {
            (self.report)(&self.latest, &now);
            self.last = now;
        }
        self.is_terminal()
    }

    /// How following ended: finished when the request as last seen is Ready or Failed, else timed
    /// out with it.
    pub fn end(self) -> Followed {
        let latest = Box::new(self.latest);
        if self.last.is_terminal() {
            Followed::Finished(latest)
        } else {
            Followed::TimedOut(latest)
        }
    }
}

/// The API error of a watch that will not succeed by retrying.
fn refusal(e: watcher::Error) -> Option<kube::Error> {
    let err = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        _ => return None,
    };
    match &err {
        kube::Error::Api(s) if matches!(s.code, 401 | 403 | 404) => Some(err),
        _ => {
            tracing::debug!(error = %err, "watching the request failed; retrying");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::crd::{AgentInfo, BuildInfo, WorkspaceInfo, WorkspaceStartRequestStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn with_status(status: WorkspaceStartRequestStatus) -> WorkspaceStartRequest {
        let mut w = WorkspaceStartRequest::new("x", Default::default());
        w.status = Some(status);
        w
    }

    fn ready(reason: &str, message: &str) -> Condition {
        Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: None,
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn a_new_request_is_pending_with_nothing_known() {
        let p = Progress::of(&WorkspaceStartRequest::new("x", Default::default()));
        assert_eq!(p, Progress::default());
        assert_eq!(p.summary(), "Pending");
        assert!(!p.is_terminal());
    }

    #[test]
    fn summary_names_build_agent_and_reason() {
        let p = Progress::of(&with_status(WorkspaceStartRequestStatus {
            phase: Some(Phase::WaitingForAgent),
            conditions: vec![ready("WaitingForAgent", "waiting for agent \"main\"")],
            workspace: Some(WorkspaceInfo {
                id: "w".into(),
                name: "dev".into(),
                owner_name: None,
            }),
            build: Some(BuildInfo {
                id: "b".into(),
                number: 3,
                transition: "start".into(),
                job_status: "succeeded".into(),
                error_code: None,
                template_version_id: None,
            }),
            agent: Some(AgentInfo {
                id: None,
                name: Some("main".into()),
                status: "connecting".into(),
                lifecycle_state: Some("created".into()),
            }),
            ..Default::default()
        }));
        assert_eq!(
            p.summary(),
            "WaitingForAgent: workspace dev, build #3 start succeeded, agent main connecting/created"
        );
        assert_eq!(p.message.as_deref(), Some("waiting for agent \"main\""));
    }

    #[test]
    fn progress_changes_with_job_status_but_not_with_unrelated_fields() {
        let build = |job: &str| BuildInfo {
            id: "b".into(),
            number: 1,
            transition: "start".into(),
            job_status: job.into(),
            error_code: None,
            template_version_id: None,
        };
        let a = Progress::of(&with_status(WorkspaceStartRequestStatus {
            phase: Some(Phase::Starting),
            build: Some(build("pending")),
            ..Default::default()
        }));
        let b = Progress::of(&with_status(WorkspaceStartRequestStatus {
            phase: Some(Phase::Starting),
            build: Some(build("running")),
            ..Default::default()
        }));
        let a_again = Progress::of(&with_status(WorkspaceStartRequestStatus {
            phase: Some(Phase::Starting),
            build: Some(build("pending")),
            observed_generation: Some(7),
            ..Default::default()
        }));
        assert_ne!(a, b);
        assert_eq!(a, a_again);
    }
}
