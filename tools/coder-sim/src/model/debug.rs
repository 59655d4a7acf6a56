//! What Coder records about a build for debugging, derived from the build's script and the
//! clock: its provisioner logs (`codersdk.ProvisionerJobLog`, as `GET
//! /api/v2/workspacebuilds/{id}/logs` answers) and its timings (`codersdk.WorkspaceBuildTimings`,
//! `GET /api/v2/workspacebuilds/{id}/timings`). Only what has happened by `now` is visible, as in
//! Coder, where both are written while the job and the agent run.
//!
//! The logs carry a secret on purpose ([`LOG_SECRET`]): Terraform output often does, and
//! whoever relays logs must keep them out of places that everyone can read.

use jiff::Timestamp;

use super::build::{BuildRec, JobStatus, add};
use super::seed::{LifecycleState, Transition};

/// A secret that every start build's logs print (as Terraform output may print one).
pub const LOG_SECRET: &str = "sim-secret-hunter2-9f8e7d";

/// One provisioner log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogLine {
    /// Increasing per build; `after` pages by it.
    pub id: i64,
    pub created_at: Timestamp,
    /// `provisioner_daemon` or `provisioner`.
    pub source: &'static str,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    pub stage: &'static str,
    pub output: String,
}

/// One timing entry: (started, ended, stage, source, action, resource).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProvisionerTiming {
    pub started_at: Timestamp,
    pub ended_at: Timestamp,
    pub stage: &'static str,
    pub source: &'static str,
    pub action: &'static str,
    pub resource: &'static str,
}

/// An agent's connection or startup-script timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentTiming {
    pub started_at: Timestamp,
    /// `None` for an agent that has not connected yet: Coder lists every agent of the build
    /// with its `first_connected_at`, Go's zero time when NULL (`buildTimings` in
    /// `coderd/workspacebuilds.go`).
    pub ended_at: Option<Timestamp>,
    pub agent_id: uuid::Uuid,
    pub agent_name: String,
    /// Exit code and status of the startup script (`ok` or `exit_failure`); `None` for a
    /// connection timing.
    pub script: Option<(i32, &'static str)>,
}

/// Every timing Coder has recorded for a build by some instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Timings {
    pub provisioner: Vec<ProvisionerTiming>,
    pub scripts: Vec<AgentTiming>,
    pub connections: Vec<AgentTiming>,
}

impl BuildRec {
    /// Log ids of build `n` start here, so ids grow across a workspace's builds as Coder's
    /// global sequence does.
    fn log_base(&self) -> i64 {
        self.number.saturating_mul(10_000)
    }

    /// The build's provisioner logs written by `now`.
    pub(crate) fn logs(&self, now: Timestamp) -> Vec<LogLine> {
        let job = self.job(now);
        let mut lines: Vec<(Timestamp, &'static str, &'static str, &'static str, String)> = vec![(
            self.created_at,
            "provisioner_daemon",
            "info",
            "Queued",
            String::new(),
        )];
        if let Some(started) = job.started_at {
            let running = self.script.running;
            let step = |num: u32| add(started, running / 8 * num);
            let verb = match self.transition {
                Transition::Start => "Starting workspace",
                Transition::Stop => "Stopping workspace",
                Transition::Delete => "Deleting workspace",
            };
            let planned: [(Timestamp, &'static str, &'static str, &'static str, String); 6] = [
                (
                    started,
                    "provisioner_daemon",
                    "info",
                    "Setting up",
                    String::new(),
                ),
                (
                    step(1),
                    "provisioner",
                    "info",
                    "Planning infrastructure",
                    "Terraform 1.9.8".into(),
                ),
                (
                    step(2),
                    "provisioner",
                    "info",
                    "Planning infrastructure",
                    "data.coder_workspace.me: Refreshing...".into(),
                ),
                (
                    step(3),
                    "provisioner",
                    "debug",
                    "Planning infrastructure",
                    format!("docker_container.workspace: env DB_PASSWORD={LOG_SECRET}"),
                ),
                (step(4), "provisioner_daemon", "info", verb, String::new()),
                (
                    step(5),
                    "provisioner",
                    "info",
                    verb,
                    "docker_container.workspace: Creating...".into(),
                ),
            ];
            lines.extend(planned.into_iter().filter(|l| l.0 <= now));
            if let (Some(done), true) = (job.completed_at, job.status != JobStatus::Canceled) {
                match &job.error {
                    Some(error) => {
                        lines.push((done, "provisioner", "error", verb, error.clone()));
                    }
                    None => lines.push((
                        done,
                        "provisioner",
                        "info",
                        verb,
                        "Apply complete! Resources: 1 added, 0 changed, 0 destroyed.".into(),
                    )),
                }
                lines.push((
                    done,
                    "provisioner_daemon",
                    "info",
                    "Cleaning Up",
                    String::new(),
                ));
            }
        }
        let base = self.log_base();
        lines
            .into_iter()
            .enumerate()
            .map(|(i, (created_at, source, level, stage, output))| LogLine {
                id: base + i as i64 + 1,
                created_at,
                source,
                level,
                stage,
                output,
            })
            .collect()
    }

    /// The build's timings recorded by `now`: Terraform stages once the job completed (each a
    /// whole-stage entry, resource `coder_stage_<stage>`, as `provisioner/terraform/timings.go`
    /// writes, and a resource action within it), every agent's connection once the agents
    /// exist (ending at the first connection, or never), startup scripts once they ended.
    pub(crate) fn timings(&self, now: Timestamp) -> Timings {
        let mut t = Timings::default();
        let job = self.job(now);
        if let (Some(started), Some(done)) = (job.started_at, job.completed_at) {
            let span = done.duration_since(started);
            let at = |tenths: i32| {
                started
                    .saturating_add(span * tenths / 10)
                    .unwrap_or(started)
            };
            for (from, to, stage, action) in [
                (0, 1, "init", "initializing terraform"),
                (1, 4, "plan", "read"),
                (4, 5, "graph", "building terraform dependency graph"),
                (5, 10, "apply", "create"),
            ] {
                t.provisioner.push(ProvisionerTiming {
                    started_at: at(from),
                    ended_at: at(to),
                    stage,
                    source: "coder",
                    action: "terraform",
                    resource: match stage {
                        "init" => "coder_stage_init",
                        "plan" => "coder_stage_plan",
                        "graph" => "coder_stage_graph",
                        _ => "coder_stage_apply",
                    },
                });
                t.provisioner.push(ProvisionerTiming {
                    started_at: at(from),
                    ended_at: at(to),
                    stage,
                    source: if stage == "apply" {
                        "docker"
                    } else {
                        "terraform"
                    },
                    action,
                    resource: if stage == "apply" {
                        "docker_container.workspace"
                    } else {
                        "state file"
                    },
                });
            }
        }
        for agent in self.agents(now) {
            t.connections.push(AgentTiming {
                started_at: agent.created_at,
                ended_at: agent.first_connected_at,
                agent_id: agent.rec.id,
                agent_name: agent.rec.name.clone(),
                script: None,
            });
            if let (Some(started), Some(ended)) = (agent.started_at, agent.ready_at) {
                let failed = self.script.agent_final != LifecycleState::Ready;
                t.scripts.push(AgentTiming {
                    started_at: started,
                    ended_at: Some(ended),
                    agent_id: agent.rec.id,
                    agent_name: agent.rec.name.clone(),
                    script: Some(if failed {
                        (1, "exit_failure")
                    } else {
                        (0, "ok")
                    }),
                });
            }
        }
        t
    }
}
