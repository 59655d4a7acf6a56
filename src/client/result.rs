//! What a chat service is told about a request: the result in the shape of Coder's own
//! `start_workspace` chat tool (`coderd/x/chatd/chattool/startworkspace.go`: `started`,
//! `workspace_name`, `build_id` or `no_build`, `agent_status`/`agent_error`,
//! `startup_scripts`/`lifecycle_state`, `error`, and for a quota failure `error_code`, `title` and
//! `next_steps`), plus the request's phase, Ready reason and message, namespace and name. The MCP
//! tools return it as structured content; `start -o json|yaml` prints it.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::crd::{Outcome, Phase, WorkspaceStartRequest};
use crate::api::reason::Reason;
use crate::client::track::Progress;

/// Coder's `title` for a quota failure (`quotaerror.go`).
const QUOTA_TITLE: &str = "Workspace quota reached";
/// Coder's `next_steps` for a quota failure (`quotaerror.go`).
const QUOTA_NEXT_STEPS: [&str; 2] = [
    "Delete a workspace you no longer need to free quota.",
    "Ask an administrator to raise your group quota allowance.",
];

/// The result of starting a workspace through a `WorkspaceStartRequest`.
/// Why a tool call or command was refused before it had a request's result: the client side's
/// own reasons, beside the request's condition reasons ([`crate::api::reason::Reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The caller may not create or read requests in the namespace.
    Forbidden,
    /// The caller sent calls faster than its rate allows.
    RateLimited,
    /// The caller has as many calls in flight as it may.
    TooManyCalls,
    /// The request does not exist (or was deleted while the call waited).
    NotFound,
}

impl Refusal {
    /// The reason as the result carries it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Forbidden => "Forbidden",
            Refusal::RateLimited => "RateLimited",
            Refusal::TooManyCalls => "TooManyCalls",
            Refusal::NotFound => "NotFound",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct StartResult {
    /// True once the workspace was started (Ready, or Failed only because of its agent), as in
    /// Coder's tool.
    pub started: bool,
    /// The workspace's name (bare, as Coder's `start_workspace` reports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_name: Option<String>,
    /// The start build followed, when the operator started or joined one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// True when no build was needed (the workspace was already running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_build: Option<bool>,
    /// `ready`, `no_agent`, `selection_error` or `not_ready` (Coder's values; `ready` is added
    /// here for a ready agent, where Coder leaves the key out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_status: Option<String>,
    /// Why the agent was not selected or not reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_error: Option<String>,
    /// `startup_scripts_failed` or `startup_scripts_timeout` when the agent's startup scripts did
    /// not finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_scripts: Option<String>,
    /// The agent's lifecycle state when its startup scripts failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_state: Option<String>,
    /// Set when the start failed or the wait timed out (Coder's consumers detect failure by this
    /// key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Coder's job error code, e.g. `INSUFFICIENT_QUOTA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Short summary of a quota failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// What a user can do about a quota failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_steps: Vec<String>,
    /// The request's phase: Pending, Starting, WaitingForAgent, Ready or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The Ready condition's reason (stable, CamelCase), or why the call was refused
    /// (`Forbidden`, `RateLimited`, `TooManyCalls`, `NotFound`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Namespace of the WorkspaceStartRequest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the WorkspaceStartRequest (pass it to `get_workspace_start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// True when the start moved the workspace to the template's active version (Coder's key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_to_active_version: Option<bool>,
    /// Why it was updated (Coder's text), with `updated_to_active_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_reason: Option<String>,
    /// How long each stage took, once the request finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<ResultTimings>,
}

/// Stage timings in seconds (the request's `status.timings`); they add up to `total_seconds`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ResultTimings {
    /// Queued in the operator before the start build was requested.
    pub queued_seconds: f64,
    /// Coder's provisioner job waiting for a provisioner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_seconds: Option<f64>,
    /// The provisioner job running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_seconds: Option<f64>,
    /// The agent connecting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_connecting_seconds: Option<f64>,
    /// The agent's startup scripts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_starting_seconds: Option<f64>,
    /// Coder's Terraform stages within `running_seconds`, when Coder served its build timings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioner_stages: Option<ResultProvisionerStages>,
    /// Everything else (operator and API server latency).
    pub other_seconds: f64,
    /// From the operator seeing the request to Ready or Failed.
    pub total_seconds: f64,
}

/// Coder's Terraform stages in seconds (the request's `status.timings.provisionerStages`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ResultProvisionerStages {
    /// `terraform init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_seconds: Option<f64>,
    /// `terraform plan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_seconds: Option<f64>,
    /// Building Terraform's dependency graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_seconds: Option<f64>,
    /// `terraform apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_seconds: Option<f64>,
}

impl ResultTimings {
    fn of(t: &crate::api::crd::StageTimings) -> ResultTimings {
        let s = |ms: i64| ms as f64 / 1000.0;
        let provisioner_stages = t
            .provisioner_stages
            .as_ref()
            .map(|p| ResultProvisionerStages {
                init_seconds: p.init_ms.map(s),
                plan_seconds: p.plan_ms.map(s),
                graph_seconds: p.graph_ms.map(s),
                apply_seconds: p.apply_ms.map(s),
            });
        ResultTimings {
            queued_seconds: s(t.queued_ms),
            pending_seconds: t.pending_ms.map(s),
            running_seconds: t.running_ms.map(s),
            agent_connecting_seconds: t.agent_connecting_ms.map(s),
            agent_starting_seconds: t.agent_starting_ms.map(s),
            provisioner_stages,
            other_seconds: s(t.other_ms),
            total_seconds: s(t.total_ms),
        }
    }
}

/// Coder's `update_reason` when a start moved the workspace to the active version.
const UPDATE_REASON: &str = "template requires active versions";
/// Coder's `message` then.
const UPDATE_MESSAGE: &str = "Workspace started and was updated to the active template version because the template requires active versions.";

impl StartResult {
    /// The result for `request` as it is now (finished or still in progress).
    pub fn of(request: &WorkspaceStartRequest) -> StartResult {
        let progress = Progress::of(request);
        let mut r = StartResult {
            phase: Some(format!("{:?}", progress.phase)),
            reason: progress.reason.clone(),
            message: progress.message.clone(),
            workspace_name: progress.workspace.clone(),
            namespace: request.metadata.namespace.clone(),
            name: request.metadata.name.clone(),
            ..Default::default()
        };
        r.set_build(request);
        match progress.phase {
            Phase::Ready => r.ready(&progress),
            Phase::Failed => r.failed(request, &progress),
            _ => {}
        }
        r.set_version_update(request);
        r.timings = request
            .status
            .as_ref()
            .and_then(|s| s.timings.as_ref())
            .map(ResultTimings::of);
        r
    }

    /// Coder's tool annotates a start that updated the template version once it started.
    fn set_version_update(&mut self, request: &WorkspaceStartRequest) {
        let updated = request
            .status
            .as_ref()
            .and_then(|s| s.updated_to_active_version)
            .unwrap_or(false);
        let ours = request.status.as_ref().and_then(|s| s.outcome) == Some(Outcome::Queued);
        if updated && ours && self.started {
            self.updated_to_active_version = Some(true);
            self.update_reason = Some(UPDATE_REASON.into());
            self.message = Some(UPDATE_MESSAGE.into());
        }
    }

    /// The result for a request still in progress when the wait of `waited` ended.
    pub fn timed_out(request: &WorkspaceStartRequest, waited: Duration) -> StartResult {
        let mut r = StartResult::of(request);
        let phase = r.phase.clone().unwrap_or_default();
        r.error = Some(format!(
            "timed out after {} waiting for the workspace to start; the request is still {phase}",
            humanize(waited)
        ));
        r
    }

    /// A call refused before any request was created or read.
    pub fn refused(
        reason: Refusal,
        message: impl Into<String>,
        namespace: Option<&str>,
    ) -> StartResult {
        let message = message.into();
        StartResult {
            error: Some(message.clone()),
            reason: Some(reason.as_str().to_owned()),
            message: Some(message),
            namespace: namespace.map(str::to_owned),
            ..Default::default()
        }
    }

    /// Whether this result reports a failure (MCP `isError`, a non-zero exit).
    pub fn is_failure(&self) -> bool {
        self.error.is_some() || self.phase.as_deref() == Some("Failed")
    }

    fn set_build(&mut self, request: &WorkspaceStartRequest) {
        let Some(st) = &request.status else { return };
        if st.outcome == Some(Outcome::AlreadyRunning) {
            self.no_build = Some(true);
        } else if let Some(b) = &st.build {
            self.build_id = Some(b.id.clone());
        }
    }

    fn ready(&mut self, progress: &Progress) {
        self.started = true;
        let no_agent = progress.reason.as_deref() == Some(Reason::NoAgent.as_str());
        self.agent_status = Some(if no_agent { "no_agent" } else { "ready" }.to_owned());
    }

    /// Failed: agent failures keep `started: true` as in Coder's tool; everything else is an
    /// `error`, prefixed for build failures as Coder prefixes them.
    fn failed(&mut self, request: &WorkspaceStartRequest, progress: &Progress) {
        let message = progress.message.clone().unwrap_or_default();
        let status = request.status.as_ref();
        let agent = status.and_then(|s| s.agent.as_ref());
        match progress.reason.as_deref().and_then(Reason::parse) {
            Some(Reason::AgentStartError) => {
                self.started = true;
                self.startup_scripts = Some("startup_scripts_failed".into());
                self.lifecycle_state = agent.and_then(|a| a.lifecycle_state.clone());
            }
            Some(Reason::AgentTimeout) => {
                self.started = true;
                if agent.is_some_and(|a| a.status == "connected") {
                    self.startup_scripts = Some("startup_scripts_timeout".into());
                } else {
                    self.agent_status = Some("not_ready".into());
                    self.agent_error = Some(message);
                }
            }
            // Coder's tool reports an unreachable external agent as not ready, with its guidance.
            Some(Reason::ExternalAgentUnavailable) => {
                self.started = true;
                self.agent_status = Some("not_ready".into());
                self.agent_error = Some(message);
            }
            Some(Reason::AgentSelectionError | Reason::AgentNotFound) => {
                self.started = true;
                self.agent_status = Some("selection_error".into());
                self.agent_error = Some(message);
            }
            Some(
                reason @ (Reason::BuildFailed
                | Reason::BuildCanceled
                | Reason::BuildTimeout
                | Reason::BuildSuperseded
                | Reason::InsufficientQuota),
            ) => {
                let joined = status.and_then(|s| s.outcome) == Some(Outcome::InProgress);
                let prefix = if joined {
                    "waiting for in-progress build"
                } else {
                    "workspace start build failed"
                };
                self.error = Some(format!("{prefix}: {message}"));
                self.error_code = status
                    .and_then(|s| s.build.as_ref())
                    .and_then(|b| b.error_code.clone());
                if reason == Reason::InsufficientQuota {
                    self.error_code
                        .get_or_insert_with(|| "INSUFFICIENT_QUOTA".into());
                    self.title = Some(QUOTA_TITLE.into());
                    self.next_steps = QUOTA_NEXT_STEPS.iter().map(|s| (*s).to_owned()).collect();
                }
            }
            _ => self.error = Some(message),
        }
    }
}

/// `10m0s`-style text for a wait.
pub fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs / 3600, (secs % 3600) / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::crd::{AgentInfo, BuildInfo, WorkspaceInfo, WorkspaceStartRequestStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use serde_json::json;

    /// A request in `phase` with Ready reason `reason`, a workspace, build #2 and an agent.
    fn request(phase: Phase, reason: &str, outcome: Option<Outcome>) -> WorkspaceStartRequest {
        let mut w = WorkspaceStartRequest::new("chat-x1", Default::default());
        w.metadata.namespace = Some("team-a".into());
        w.status = Some(WorkspaceStartRequestStatus {
            phase: Some(phase),
            outcome,
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: if phase == Phase::Ready {
                    "True"
                } else {
                    "False"
                }
                .into(),
                reason: reason.into(),
                message: format!("message for {reason}"),
                observed_generation: Some(1),
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            }],
            workspace: Some(WorkspaceInfo {
                id: "w1".into(),
                name: "dev".into(),
                owner_name: Some("alice".into()),
            }),
            build: Some(BuildInfo {
                id: "b2".into(),
                number: 2,
                transition: "start".into(),
                job_status: "succeeded".into(),
                error_code: None,
                template_version_id: None,
            }),
            agent: Some(AgentInfo {
                id: Some("a1".into()),
                name: Some("main".into()),
                status: "connected".into(),
                lifecycle_state: Some("start_error".into()),
            }),
            ..Default::default()
        });
        w
    }

    fn json_of(r: &StartResult) -> serde_json::Value {
        serde_json::to_value(r).expect("json")
    }

    #[test]
    fn results_take_the_shape_of_coders_tool() {
        let cases = [
            (
                "ready after our build",
                request(Phase::Ready, "Ready", Some(Outcome::Queued)),
                json!({"started": true, "workspace_name": "dev", "build_id": "b2", "agent_status": "ready",
                       "phase": "Ready", "reason": "Ready", "message": "message for Ready",
                       "namespace": "team-a", "name": "chat-x1"}),
            ),
            (
                "already running, no agent",
                request(Phase::Ready, "NoAgent", Some(Outcome::AlreadyRunning)),
                json!({"started": true, "workspace_name": "dev", "no_build": true, "agent_status": "no_agent",
                       "phase": "Ready", "reason": "NoAgent", "message": "message for NoAgent",
                       "namespace": "team-a", "name": "chat-x1"}),
            ),
            (
                "startup scripts failed",
                request(Phase::Failed, "AgentStartError", Some(Outcome::Queued)),
                json!({"started": true, "workspace_name": "dev", "build_id": "b2",
                       "startup_scripts": "startup_scripts_failed", "lifecycle_state": "start_error",
                       "phase": "Failed", "reason": "AgentStartError", "message": "message for AgentStartError",
                       "namespace": "team-a", "name": "chat-x1"}),
            ),
            (
                "joined build failed",
                request(Phase::Failed, "BuildFailed", Some(Outcome::InProgress)),
                json!({"started": false, "workspace_name": "dev", "build_id": "b2",
                       "error": "waiting for in-progress build: message for BuildFailed",
                       "phase": "Failed", "reason": "BuildFailed", "message": "message for BuildFailed",
                       "namespace": "team-a", "name": "chat-x1"}),
            ),
            (
                "chat without workspace",
                request(Phase::Failed, "ChatHasNoWorkspace", None),
                json!({"started": false, "workspace_name": "dev", "build_id": "b2",
                       "error": "message for ChatHasNoWorkspace",
                       "phase": "Failed", "reason": "ChatHasNoWorkspace", "message": "message for ChatHasNoWorkspace",
                       "namespace": "team-a", "name": "chat-x1"}),
            ),
        ];
        for (name, req, want) in cases {
            assert_eq!(json_of(&StartResult::of(&req)), want, "{name}");
        }
    }

    #[test]
    fn quota_failure_carries_coders_quota_fields() {
        let mut req = request(Phase::Failed, "InsufficientQuota", Some(Outcome::Queued));
        if let Some(b) = req.status.as_mut().and_then(|s| s.build.as_mut()) {
            b.error_code = Some("INSUFFICIENT_QUOTA".into());
            b.job_status = "failed".into();
        }
        let r = StartResult::of(&req);
        assert!(!r.started);
        assert!(r.is_failure());
        assert_eq!(r.error_code.as_deref(), Some("INSUFFICIENT_QUOTA"));
        assert_eq!(r.title.as_deref(), Some("Workspace quota reached"));
        assert_eq!(r.next_steps.len(), 2);
        assert_eq!(
            r.error.as_deref(),
            Some("workspace start build failed: message for InsufficientQuota")
        );
    }

    #[test]
    fn agent_timeout_says_whether_the_agent_ever_connected() {
        let connected = StartResult::of(&request(Phase::Failed, "AgentTimeout", None));
        assert_eq!(
            connected.startup_scripts.as_deref(),
            Some("startup_scripts_timeout")
        );
        assert!(connected.started);
        let mut req = request(Phase::Failed, "AgentTimeout", None);
        if let Some(a) = req.status.as_mut().and_then(|s| s.agent.as_mut()) {
            a.status = "connecting".into();
        }
        let never = StartResult::of(&req);
        assert_eq!(never.agent_status.as_deref(), Some("not_ready"));
        assert_eq!(
            never.agent_error.as_deref(),
            Some("message for AgentTimeout")
        );
    }

    #[test]
    fn in_progress_and_timed_out_requests() {
        let req = request(Phase::Starting, "BuildInProgress", Some(Outcome::Queued));
        let now = StartResult::of(&req);
        assert!(!now.started && !now.is_failure());
        assert_eq!(now.phase.as_deref(), Some("Starting"));
        let late = StartResult::timed_out(&req, Duration::from_secs(600));
        assert!(late.is_failure());
        assert_eq!(
            late.error.as_deref(),
            Some(
                "timed out after 10m0s waiting for the workspace to start; the request is still Starting"
            )
        );
        let fresh = StartResult::of(&WorkspaceStartRequest::new("n", Default::default()));
        assert_eq!(fresh.phase.as_deref(), Some("Pending"));
    }

    #[test]
    fn refusals_name_the_reason_and_create_nothing() {
        let r = StartResult::refused(Refusal::Forbidden, "may not create", Some("team-a"));
        assert!(r.is_failure() && !r.started && r.name.is_none());
        assert_eq!(json_of(&r)["reason"], "Forbidden");
    }
}
