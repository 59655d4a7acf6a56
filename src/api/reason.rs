//! Why a request is where it is: the one list of condition reasons. CamelCase and stable (tools,
//! alerts and chat services match on them); `docs/api.md` has one row per reason, checked
//! against this list by a test.

use std::fmt;

/// Declares [`Reason`] with its wire strings, in one list.
macro_rules! reasons {
    ($( $(#[doc = $doc:expr])+ $name:ident = $wire:literal, )*) => {
        /// A condition reason.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $( $(#[doc = $doc])+ $name, )*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name),*];

            /// The reason as written into conditions and Events.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Reason::$name => $wire, )*
                }
            }
        }
    };
}

reasons! {
    /// Ready.
    Ready = "Ready",
    /// Ready, and the workspace has no agent to wait for.
    NoAgent = "NoAgent",
    /// Nothing observed yet.
    Pending = "Pending",
    /// A start build was requested.
    StartRequested = "StartRequested",
    /// Waiting for a start build to finish.
    BuildInProgress = "BuildInProgress",
    /// Waiting for a stop build to finish before starting.
    WaitingForStopBuild = "WaitingForStopBuild",
    /// Waiting for someone else's build to finish canceling before starting.
    WaitingForCanceledBuild = "WaitingForCanceledBuild",
    /// The build succeeded.
    BuildSucceeded = "BuildSucceeded",
    /// Waiting for the agent.
    WaitingForAgent = "WaitingForAgent",
    /// Coder could not be reached or failed; retrying.
    CoderUnavailable = "CoderUnavailable",
    /// Failure: the chat does not exist or is not visible.
    ChatNotFound = "ChatNotFound",
    /// Failure: the chat is not bound to a workspace.
    ChatHasNoWorkspace = "ChatHasNoWorkspace",
    /// Failure: the workspace was deleted (or is being deleted, or is not visible).
    WorkspaceDeleted = "WorkspaceDeleted",
    /// Failure: the workspace is dormant.
    WorkspaceDormant = "WorkspaceDormant",
    /// Failure: chat or workspace owner differs from spec.ownerId or from each other.
    OwnerMismatch = "OwnerMismatch",
    /// Failure: the chat owner is suspended, dormant or deleted (the chat tool's `asOwner`).
    OwnerInactive = "OwnerInactive",
    /// Failure: the build failed.
    BuildFailed = "BuildFailed",
    /// Failure: the build was canceled.
    BuildCanceled = "BuildCanceled",
    /// Failure: the build failed with INSUFFICIENT_QUOTA.
    InsufficientQuota = "InsufficientQuota",
    /// Failure: another build (stop/delete) replaced the one being waited on.
    BuildSuperseded = "BuildSuperseded",
    /// Failure: Coder refused the start build request (400/403/404).
    BuildRejected = "BuildRejected",
    /// Failure: the build did not finish within spec.timeouts.build.
    BuildTimeout = "BuildTimeout",
    /// Failure: spec.agentName names no agent of the workspace.
    AgentNotFound = "AgentNotFound",
    /// Failure: the chat-agent rule found no agent or several.
    AgentSelectionError = "AgentSelectionError",
    /// Failure: the agent's startup scripts failed.
    AgentStartError = "AgentStartError",
    /// Failure: the agent did not become ready in time.
    AgentTimeout = "AgentTimeout",
    /// Failure: the workspace's agent runs outside Coder (an external agent) and is not
    /// connected; Coder's own guidance is the message.
    ExternalAgentUnavailable = "ExternalAgentUnavailable",
    /// Failure: Coder rejected the token (401).
    CoderUnauthorized = "CoderUnauthorized",
    /// Failure: the token may not read or start this workspace (403).
    CoderForbidden = "CoderForbidden",
    /// Failure: no Coder connection is configured for this request.
    CoderNotConfigured = "CoderNotConfigured",
    /// Failure: spec.coderRef names a Secret that does not exist.
    SecretNotFound = "SecretNotFound",
    /// Failure: the Secret lacks `url`/`token` or they are invalid.
    SecretInvalid = "SecretInvalid",
    /// Failure: Coder refused a lookup as invalid (400), e.g. `workspace.owner` names no user.
    CoderRequestInvalid = "CoderRequestInvalid",
    /// Failure: Coder's answer was not the expected JSON, was larger than the limit, or had an
    /// unexpected status (such as a redirect).
    CoderResponseInvalid = "CoderResponseInvalid",
    /// Failure: the `coderRef` Secret's `url` is not in the operator's allowed URLs.
    CoderURLNotAllowed = "CoderURLNotAllowed",
    /// Failure: Coder's TLS certificate is not trusted (not the platform's CA store, nor the CA
    /// bundle the admin gave); never retried as an outage.
    CoderTLSUntrusted = "CoderTLSUntrusted",
    /// In progress: the `coderRef` Secret cannot be read right now (API server error); retrying.
    SecretUnreadable = "SecretUnreadable",
    /// Failure: the operator hit an internal error (a panic) while reconciling this request.
    InternalError = "InternalError",
    /// Failure: the request would act, through a shared Coder identity, for a Coder user its
    /// namespace is not bound to (no `WorkspaceStartPolicy` allows the owner, or none names the
    /// namespace).
    OwnerNotAllowed = "OwnerNotAllowed",
    /// Failure: the request passes a parameter its namespace's `WorkspaceStartPolicy` does not
    /// allow.
    ParameterNotAllowed = "ParameterNotAllowed",
    /// Failure: the shard the request is labelled for does not serve its namespace.
    ShardNotAllowed = "ShardNotAllowed",
    /// Failure: the `coderRef` Secret has not opted in (label `coder.com/coder-ref: "true"` or
    /// type `coder.com/coder-credentials`).
    SecretNotAllowed = "SecretNotAllowed",
    /// Failure: the namespace is chats-only and the request names a workspace instead of a chat.
    ChatRequired = "ChatRequired",
}

impl Reason {
    /// The reason written as `s`, if it is one.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<Reason> for String {
    fn eq(&self, other: &Reason) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Reason> for &str {
    fn eq(&self, other: &Reason) -> bool {
        *self == other.as_str()
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reasons in the `## Reasons` table of `docs/api.md`, in order.
    fn documented() -> Vec<String> {
        let doc = include_str!("../../docs/api.md");
        let table = doc
            .split("\n## Reasons\n")
            .nth(1)
            .and_then(|rest| rest.split("\n#").next())
            .expect("docs/api.md has a ## Reasons section");
        table
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_docs_reasons_table_lists_every_reason_once() {
        let listed: Vec<String> = Reason::ALL.iter().map(|r| r.to_string()).collect();
        let documented = documented();
        let missing: Vec<&String> = listed.iter().filter(|r| !documented.contains(r)).collect();
        let unknown: Vec<&String> = documented.iter().filter(|r| !listed.contains(r)).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "docs/api.md ## Reasons: missing rows {missing:?}, rows for no reason {unknown:?}"
        );
        assert_eq!(documented.len(), listed.len(), "a reason has two rows");
    }

    #[test]
    fn every_reason_reads_back_from_its_wire_string() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
        }
    }
}
