//! The command line of every subcommand, parsed in one place: `run` (the operator, [`run`]),
//! `mcp` (the MCP server, [`mcp`]), `start` (create a request and track it, [`start`]), `logs` (a request's build logs,
//! [`logs`]) and `crd`
//! (print the CRD YAML). Every flag of `run` and `mcp` also reads an environment variable, as
//! the Helm chart sets them. Values are checked here, so each error names its own flag.

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::api::duration::parse_duration;

pub mod logs;
pub mod mcp;
pub mod port;
pub mod run;
pub mod start;

/// workspace-start-operator: starts Coder workspaces on request.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller.
    Run(Box<run::RunArgs>),
    /// Serve the MCP tools start_workspace and get_workspace_start (Streamable HTTP).
    Mcp(Box<mcp::McpArgs>),
    /// Start a workspace: create a WorkspaceStartRequest and, with --wait, follow it.
    Start(Box<start::StartArgs>),
    /// Print a request's build logs (from the operator's logs endpoint, with your token).
    Logs(Box<logs::LogsArgs>),
    /// Print a CustomResourceDefinition's YAML (default: workspacestartrequests).
    Crd {
        /// Which CRD: `workspacestartrequests` (default) or `workspacestartpolicies`.
        #[arg(value_enum, default_value_t = CrdName::Workspacestartrequests)]
        name: CrdName,
    },
}

/// The CRDs the `crd` subcommand prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrdName {
    /// `workspacestartrequests.coder.com` (namespaced requests).
    Workspacestartrequests,
    /// `workspacestartpolicies.coder.com` (cluster-scoped tenancy policies).
    Workspacestartpolicies,
}

/// The entries of a comma-separated flag, trimmed, without empty ones.
pub fn non_empty(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses the command line; invoked as `kubectl-wsr` (the kubectl plugin), help and errors say
/// `kubectl wsr`.
pub fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let invoked = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut command = Cli::command();
    if invoked.starts_with(start::PLUGIN_BINARY) {
        command = command.name("kubectl wsr").bin_name("kubectl wsr");
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Parses a wait: a positive Go duration (a clap value parser, so the error names the flag).
pub fn positive_duration(raw: &str) -> Result<Duration, String> {
    parse_duration(raw)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("must be a positive duration such as 10m or 90s, got {raw:?}"))
}
