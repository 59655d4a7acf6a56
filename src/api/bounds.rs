//! Every bound on what a requester writes, in one place: the CRD schema, the `start` command and
//! the MCP tools all refuse past these, so a value the API server would refuse is refused before
//! anything is sent, with the same limit in the message.
//!
//! Bounds on what Coder answers (body and frame sizes, timeouts) are the operator's flags with
//! their defaults (`cli::run`); bounds on a Coder credential are in `coder::credentials`; the MCP
//! listener's bounds are the `mcp` flags (`cli::mcp`).

use std::time::Duration;

/// The longest `timeouts.build` / `timeouts.agent` accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The longest text of a `timeouts.*` duration.
pub const MAX_DURATION_TEXT: usize = 32;

/// The longest `ttlSecondsAfterFinished` accepted: 30 days.
pub const MAX_TTL_SECONDS: i64 = 30 * 24 * 3600;

/// The most rich parameters a request may carry.
pub const MAX_PARAMETERS: usize = 64;

/// The longest rich parameter name.
pub const MAX_PARAMETER_NAME: usize = 128;

/// The longest rich parameter value, in bytes.
pub const MAX_PARAMETER_VALUE: usize = 4096;

/// The longest workspace or user name Coder accepts (`codersdk.NameValid`, `UsernameValid`).
pub const MAX_CODER_NAME: usize = 32;

/// The longest `spec.workspace.owner`: a Coder username, `me`, or a user UUID (36 characters).
pub const MAX_CODER_USER: usize = 36;

/// The longest `spec.agentName`.
pub const MAX_AGENT_NAME: usize = 64;

/// The longest Kubernetes object name (a DNS-1123 subdomain: requests, Secrets).
pub const MAX_OBJECT_NAME: usize = 253;

/// The longest namespace name, label value or shard name (a DNS-1123 label).
pub const MAX_LABEL: usize = 63;
