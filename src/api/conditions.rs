//! Status conditions (kstatus-shaped) and the stable reason strings written into them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types.
pub mod types {
    /// The workspace is running and the agent is ready (the one `kubectl wait` watches).
    pub const READY: &str = "Ready";
    /// The operator is still working on the request (kstatus).
    pub const RECONCILING: &str = "Reconciling";
    /// The request failed and will not make progress (kstatus).
    pub const STALLED: &str = "Stalled";
    /// The start build succeeded.
    pub const BUILD_SUCCEEDED: &str = "BuildSucceeded";
    /// The selected agent is connected and ready.
    pub const AGENT_READY: &str = "AgentReady";
}

/// Condition reasons: CamelCase and stable; tools may match on them.
pub mod reasons {
    /// Ready.
    pub const READY: &str = "Ready";
    /// Ready, and the workspace has no agent to wait for.
    pub const NO_AGENT: &str = "NoAgent";
    /// Nothing observed yet.
    pub const PENDING: &str = "Pending";
    /// A start build was requested.
    pub const START_REQUESTED: &str = "StartRequested";
    /// Waiting for a start build to finish.
    pub const BUILD_IN_PROGRESS: &str = "BuildInProgress";
    /// Waiting for a stop build to finish before starting.
    pub const WAITING_FOR_STOP: &str = "WaitingForStopBuild";
    /// Waiting for someone else's build to finish canceling before starting.
    pub const WAITING_FOR_CANCEL: &str = "WaitingForCanceledBuild";
    /// The build succeeded.
    pub const BUILD_SUCCEEDED: &str = "BuildSucceeded";
    /// Waiting for the agent.
    pub const WAITING_FOR_AGENT: &str = "WaitingForAgent";
    /// Coder could not be reached or failed; retrying.
    pub const CODER_UNAVAILABLE: &str = "CoderUnavailable";
    /// Failure: the chat does not exist or is not visible.
    pub const CHAT_NOT_FOUND: &str = "ChatNotFound";
    /// Failure: the chat is not bound to a workspace.
    pub const CHAT_HAS_NO_WORKSPACE: &str = "ChatHasNoWorkspace";
    /// Failure: the workspace was deleted (or is being deleted, or is not visible).
    pub const WORKSPACE_DELETED: &str = "WorkspaceDeleted";
    /// Failure: the workspace is dormant.
    pub const WORKSPACE_DORMANT: &str = "WorkspaceDormant";
    /// Failure: chat or workspace owner differs from spec.ownerId or from each other.
    pub const OWNER_MISMATCH: &str = "OwnerMismatch";
    /// Failure: the chat owner is suspended, dormant or deleted (the chat tool's `asOwner`).
    pub const OWNER_INACTIVE: &str = "OwnerInactive";
    /// Failure: the build failed.
    pub const BUILD_FAILED: &str = "BuildFailed";
    /// Failure: the build was canceled.
    pub const BUILD_CANCELED: &str = "BuildCanceled";
    /// Failure: the build failed with INSUFFICIENT_QUOTA.
    pub const INSUFFICIENT_QUOTA: &str = "InsufficientQuota";
    /// Failure: another build (stop/delete) replaced the one being waited on.
    pub const BUILD_SUPERSEDED: &str = "BuildSuperseded";
    /// Failure: Coder refused the start build request (400/403/404).
    pub const BUILD_REJECTED: &str = "BuildRejected";
    /// Failure: the build did not finish within spec.timeouts.build.
    pub const BUILD_TIMEOUT: &str = "BuildTimeout";
    /// Failure: spec.agentName names no agent of the workspace.
    pub const AGENT_NOT_FOUND: &str = "AgentNotFound";
    /// Failure: the chat-agent rule found no agent or several.
    pub const AGENT_SELECTION_ERROR: &str = "AgentSelectionError";
    /// Failure: the agent's startup scripts failed.
    pub const AGENT_START_ERROR: &str = "AgentStartError";
    /// Failure: the agent did not become ready in time.
    pub const AGENT_TIMEOUT: &str = "AgentTimeout";
    /// Failure: Coder rejected the token (401).
    pub const CODER_UNAUTHORIZED: &str = "CoderUnauthorized";
    /// Failure: the token may not read or start this workspace (403).
    pub const CODER_FORBIDDEN: &str = "CoderForbidden";
    /// Failure: no Coder connection is configured for this request.
    pub const CODER_NOT_CONFIGURED: &str = "CoderNotConfigured";
    /// Failure: spec.coderRef names a Secret that does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// Failure: the Secret lacks `url`/`token` or they are invalid.
    pub const SECRET_INVALID: &str = "SecretInvalid";
    /// Failure: Coder refused a lookup as invalid (400), e.g. `workspace.owner` names no user.
    pub const CODER_REQUEST_INVALID: &str = "CoderRequestInvalid";
    /// Failure: Coder's answer was not the expected JSON, was larger than the limit, or had an
    /// unexpected status (such as a redirect).
    pub const CODER_RESPONSE_INVALID: &str = "CoderResponseInvalid";
    /// Failure: the `coderRef` Secret's `url` is not in the operator's allowed URLs.
    pub const CODER_URL_NOT_ALLOWED: &str = "CoderURLNotAllowed";
    /// In progress: the `coderRef` Secret cannot be read right now (API server error); retrying.
    pub const SECRET_UNREADABLE: &str = "SecretUnreadable";
    /// Failure: the operator hit an internal error (a panic) while reconciling this request.
    pub const INTERNAL_ERROR: &str = "InternalError";
    /// Failure: the agent is managed outside Coder (a `coder_external_agent` resource) and
    /// timed out connecting or is offline; Coder cannot start it, so waiting is pointless. The
    /// message is Coder's own guidance (`chattool/external_agents.go`).
    pub const EXTERNAL_AGENT_UNAVAILABLE: &str = "ExternalAgentUnavailable";
}

/// Sets (or replaces) a condition by type, keeping `lastTransitionTime` when the status did not
/// change.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) {
    let new = Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: now.clone(),
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let ltt = if c.status == status {
                c.last_transition_time.clone()
            } else {
                now.clone()
            };
            *c = Condition {
                last_transition_time: ltt,
                ..new
            };
        }
        None => conditions.push(new),
    }
}

/// Finds a condition by type.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The `Ready` condition's reason, if the condition is set.
pub fn ready_reason(conditions: &[Condition]) -> Option<&str> {
    get(conditions, types::READY).map(|c| c.reason.as_str())
}

/// True when the condition is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_changes_only_with_status() {
        let t0 = Time(jiff::Timestamp::from_second(1).expect("ts"));
        let t1 = Time(jiff::Timestamp::from_second(2).expect("ts"));
        let mut c = Vec::new();
        set(&mut c, "Ready", "False", "A", "m", Some(1), &t0);
        set(&mut c, "Ready", "False", "B", "m2", Some(1), &t1);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].reason, "B");
        assert_eq!(c[0].last_transition_time, t0);
        set(&mut c, "Ready", "True", "Ready", "ok", Some(1), &t1);
        assert_eq!(c[0].last_transition_time, t1);
        assert!(is_true(&c, "Ready"));
    }
}
