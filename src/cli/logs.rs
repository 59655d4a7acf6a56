//! Flags of `logs` (also `kubectl wsr logs`): which request's build logs, from where, how many.

use std::path::PathBuf;

use clap::Args;

/// Flags of `logs`.
#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// Name of the WorkspaceStartRequest.
    pub name: String,
    /// Namespace of the request (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Keep printing new lines until the build's job has ended.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Print only the last N lines (before following).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub tail: Option<u32>,
    /// Base URL of the operator's logs endpoint, e.g. http://wso.wso-system:8081/logs.
    #[arg(long, env = "WSO_LOGS_URL")]
    pub logs_url: String,
    /// PEM CA bundle trusted for an `https` --logs-url, besides the built-in roots.
    #[arg(long, env = "WSO_LOGS_CA_FILE")]
    pub logs_ca_file: Option<PathBuf>,
    /// File holding the bearer token to send (default: the kubeconfig user's token).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
}
