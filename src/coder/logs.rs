//! A build's provisioner logs and timings as Coder serves them (`codersdk.ProvisionerJobLog`,
//! `codersdk.WorkspaceBuildTimings`). Logs may hold Terraform output with secrets: they are
//! relayed only to callers allowed to see the request, never written to status, Events or the
//! operator's own logs.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Most log lines one page holds (Coder's chat tool pages 400 at a time).
pub const LOG_PAGE_LINES: usize = 400;
/// Longest output of one log line relayed; longer ones are cut (with a marker).
pub const MAX_LOG_OUTPUT: usize = 16 * 1024;

/// `codersdk.ProvisionerJobLog`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct ProvisionerJobLog {
    /// Increasing id; page with `after`.
    pub id: i64,
    /// When it was written (Coder's clock).
    pub created_at: Timestamp,
    /// `provisioner_daemon` or `provisioner`.
    #[serde(default)]
    pub log_source: String,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    #[serde(default)]
    pub log_level: String,
    /// Stage, e.g. `Planning infrastructure`.
    #[serde(default)]
    pub stage: String,
    /// The line (may hold secrets).
    #[serde(default)]
    pub output: String,
}

/// One Terraform stage or resource timing (`codersdk.ProvisionerTiming`).
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct ProvisionerTiming {
    /// Start (Coder's clock).
    pub started_at: Timestamp,
    /// End (Coder's clock).
    pub ended_at: Timestamp,
    /// `init`, `plan`, `graph` or `apply`.
    #[serde(default)]
    pub stage: String,
}

/// A startup script's or a connection's timing (`codersdk.AgentScriptTiming`,
/// `codersdk.AgentConnectionTiming`).
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct AgentTiming {
    /// Start (Coder's clock).
    pub started_at: Timestamp,
    /// End (Coder's clock).
    pub ended_at: Timestamp,
    /// `start`, `stop`, `cron` or `connect`.
    #[serde(default)]
    pub stage: String,
    /// The agent.
    #[serde(default)]
    pub workspace_agent_name: String,
}

/// `codersdk.WorkspaceBuildTimings`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkspaceBuildTimings {
    /// Terraform stages.
    #[serde(default)]
    pub provisioner_timings: Vec<ProvisionerTiming>,
    /// Startup scripts.
    #[serde(default)]
    pub agent_script_timings: Vec<AgentTiming>,
    /// Agent connections.
    #[serde(default)]
    pub agent_connection_timings: Vec<AgentTiming>,
}

/// Cuts `output` to [`MAX_LOG_OUTPUT`] bytes at a character boundary, saying so.
pub fn bounded_output(output: &str) -> String {
    if output.len() <= MAX_LOG_OUTPUT {
        return output.to_owned();
    }
    let mut end = MAX_LOG_OUTPUT;
    while !output.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [cut at {MAX_LOG_OUTPUT} bytes]", &output[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_log_lines_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_LOG_OUTPUT);
        let cut = bounded_output(&long);
        assert!(cut.len() < long.len() && cut.ends_with("bytes]"));
        assert_eq!(bounded_output("short"), "short");
    }
}
