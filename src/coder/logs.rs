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

/// One Terraform stage or resource timing (`codersdk.ProvisionerTiming`), on the provisioner's
/// clock. Coder writes one per resource action within a stage, and (newer Coder) one per whole
/// stage, whose resource is [`STAGE_RESOURCE_PREFIX`] and the stage.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct ProvisionerTiming {
    /// Start.
    pub started_at: Timestamp,
    /// End.
    pub ended_at: Timestamp,
    /// `init`, `plan`, `graph` or `apply`.
    #[serde(default)]
    pub stage: String,
    /// The Terraform provider, or `terraform`/`coder`.
    #[serde(default)]
    pub source: String,
    /// E.g. `create`, `read`, `terraform`.
    #[serde(default)]
    pub action: String,
    /// The resource, e.g. `docker_container.workspace`, or `coder_stage_plan` for a whole stage.
    #[serde(default)]
    pub resource: String,
}

/// The `resource` of a whole-stage provisioner timing (`coder_stage_` + stage; Coder's
/// `provisioner/terraform/timings.go`).
pub const STAGE_RESOURCE_PREFIX: &str = "coder_stage_";

/// One agent script run (`codersdk.AgentScriptTiming`), on the agent's clock.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct AgentScriptTiming {
    /// Start.
    pub started_at: Timestamp,
    /// End.
    pub ended_at: Timestamp,
    /// The script's exit code.
    #[serde(default)]
    pub exit_code: i32,
    /// `start` (startup scripts), `stop` or `cron`.
    #[serde(default)]
    pub stage: String,
    /// `ok`, `exit_failure`, `timed_out` or `pipes_left_open`.
    #[serde(default)]
    pub status: String,
    /// The script's name in the template.
    #[serde(default)]
    pub display_name: String,
    /// The agent's id.
    #[serde(default)]
    pub workspace_agent_id: String,
    /// The agent's name.
    #[serde(default)]
    pub workspace_agent_name: String,
}

/// An agent connecting (`codersdk.AgentConnectionTiming`, stage `connect`), on coderd's clock:
/// from the agent's creation to its first connection. Coder lists agents that never connected
/// too, with Go's zero time (`0001-01-01T00:00:00Z`) as the end.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct AgentConnectionTiming {
    /// Start (the agent's creation).
    pub started_at: Timestamp,
    /// End (its first connection), or Go's zero time.
    pub ended_at: Timestamp,
    /// `connect`.
    #[serde(default)]
    pub stage: String,
    /// The agent's id.
    #[serde(default)]
    pub workspace_agent_id: String,
    /// The agent's name.
    #[serde(default)]
    pub workspace_agent_name: String,
}

/// `codersdk.WorkspaceBuildTimings` (`GET /api/v2/workspacebuilds/{id}/timings`; an older
/// Coder without the endpoint answers 404).
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkspaceBuildTimings {
    /// Terraform stages and resource actions.
    #[serde(default)]
    pub provisioner_timings: Vec<ProvisionerTiming>,
    /// Agent scripts.
    #[serde(default)]
    pub agent_script_timings: Vec<AgentScriptTiming>,
    /// Agent connections.
    #[serde(default)]
    pub agent_connection_timings: Vec<AgentConnectionTiming>,
}

/// One log line as relayed (Coder's chat tool's keys).
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Log id; pass the last one as `after` for the next page.
    pub id: i64,
    /// Stage.
    pub stage: String,
    /// Level.
    pub level: String,
    /// The line, cut to [`MAX_LOG_OUTPUT`] bytes.
    pub output: String,
}

/// One page of logs.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct LogPage {
    /// The lines, oldest first.
    pub logs: Vec<LogLine>,
    /// More lines follow this page.
    pub has_more: bool,
    /// With `has_more`: the `after` of the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after_id: Option<i64>,
}

/// The first `limit` of `lines` (sorted by id, ids after the page's last are the rest).
pub fn page(mut lines: Vec<ProvisionerJobLog>, limit: usize) -> LogPage {
    lines.sort_by_key(|l| l.id);
    let has_more = lines.len() > limit;
    lines.truncate(limit);
    let next_after_id = has_more.then(|| lines.last().map(|l| l.id)).flatten();
    LogPage {
        logs: lines
            .into_iter()
            .map(|l| LogLine {
                id: l.id,
                stage: l.stage,
                level: l.log_level,
                output: bounded_output(&l.output),
            })
            .collect(),
        has_more,
        next_after_id,
    }
}

/// The parts of `GET /api/v2/workspacebuilds/{id}` the logs tool reports (with the job's
/// error text, which the operator otherwise never reads).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BuildJob {
    /// Build number.
    pub build_number: i64,
    /// Transition.
    pub transition: String,
    /// The job.
    pub job: JobError,
}

/// A job's status and error.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    /// Job status.
    pub status: String,
    /// Error text (may hold Terraform output).
    #[serde(default)]
    pub error: Option<String>,
    /// Error code.
    #[serde(default)]
    pub error_code: Option<String>,
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

    fn line(id: i64) -> ProvisionerJobLog {
        ProvisionerJobLog {
            id,
            created_at: Timestamp::UNIX_EPOCH,
            log_source: "provisioner".into(),
            log_level: "info".into(),
            stage: "Planning infrastructure".into(),
            output: format!("line {id}"),
        }
    }

    #[test]
    fn pages_say_whether_more_follow_and_where_to_go_on() {
        let full = page((1..=5).rev().map(line).collect(), 3);
        assert_eq!(
            full.logs.iter().map(|l| l.id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(full.has_more);
        assert_eq!(full.next_after_id, Some(3));
        let last = page((4..=5).map(line).collect(), 3);
        assert!(!last.has_more);
        assert_eq!(last.next_after_id, None);
    }

    #[test]
    fn long_log_lines_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_LOG_OUTPUT);
        let cut = bounded_output(&long);
        assert!(cut.len() < long.len() && cut.ends_with("bytes]"));
        assert_eq!(bounded_output("short"), "short");
    }
}
