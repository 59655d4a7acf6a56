//! Flags of `start` (also `kubectl wsr start`): what to start, where, and how to wait.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, ValueEnum};

use crate::api::shard::Shard;

/// Name under which the binary acts as the kubectl plugin `kubectl wsr`.
pub const PLUGIN_BINARY: &str = "kubectl-wsr";

/// Output format of `start`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// One line for people.
    Text,
    /// The result object as JSON (the MCP tool's result).
    Json,
    /// The result object as YAML.
    Yaml,
}

/// Flags of `start`.
#[derive(Args, Debug, Clone)]
#[command(group(ArgGroup::new("target").required(true).args(["chat", "workspace"])))]
pub struct StartArgs {
    /// Start the workspace bound to this Coder chat (UUID).
    #[arg(long, value_name = "ID")]
    pub chat: Option<String>,
    /// Start this workspace: its UUID, or OWNER/NAME.
    #[arg(long, value_name = "ID|OWNER/NAME")]
    pub workspace: Option<String>,
    /// Rich parameter for the start build, NAME=VALUE (repeatable).
    #[arg(short = 'p', long = "parameter", value_name = "NAME=VALUE")]
    pub parameters: Vec<String>,
    /// Namespace of the request (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Wait until the request is Ready or Failed, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (Go duration such as 10m or 90s).
    #[arg(long, default_value = "10m", value_parser = super::positive_duration)]
    pub timeout: Duration,
    /// Idempotency key (1 to 128 visible ASCII characters): running `start` again with the same
    /// key, as the same user in the same namespace, follows the request the first run created
    /// instead of creating another.
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
    /// Output format of the result (progress goes to stderr).
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
    /// Send the request to this operator shard (label `coder.com/shard=NAME`); default: the
    /// operator deployment without `--shard`.
    #[arg(long, value_name = "NAME", default_value = "", hide_default_value = true, value_parser = Shard::parse)]
    pub shard: Shard,
    /// Path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
}
