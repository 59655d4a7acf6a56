//! Flags of `mcp`, the MCP server for chat services.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::Args;

use super::port::{PortArgs, ProcessArgs};
use crate::api::shard::Shard;

/// Flags of `mcp`. Each also reads the environment variable shown, as the Helm chart sets them.
#[derive(Args, Debug, Clone)]
#[command(args_override_self = true)]
pub struct McpArgs {
    /// Address of the MCP endpoint (Streamable HTTP at /mcp).
    #[arg(long, env = "WSO_MCP_ADDR", default_value = "0.0.0.0:8090")]
    pub listen: SocketAddr,
    /// Audience callers' tokens must be issued for (TokenReview). Empty: the API server's own
    /// audiences, i.e. ordinary ServiceAccount tokens.
    #[arg(
        long,
        env = "WSO_MCP_AUDIENCE",
        default_value = "workspace-start-operator"
    )]
    pub audience: String,
    /// Operator shard the requests are sent to (label `coder.com/shard=NAME`); empty: the
    /// operator deployment without `--shard`.
    #[arg(
        long,
        env = "WSO_MCP_SHARD",
        default_value = "",
        hide_default_value = true,
        value_parser = Shard::parse
    )]
    pub shard: Shard,
    /// Tool calls per minute per caller (token bucket).
    #[arg(long, env = "WSO_MCP_CALLS_PER_MINUTE", default_value = "30")]
    pub calls_per_minute: NonZeroU32,
    /// Burst of tool calls per caller.
    #[arg(long, env = "WSO_MCP_CALL_BURST", default_value = "10")]
    pub call_burst: NonZeroU32,
    /// Tool calls one caller may have in flight at once; more get a `TooManyCalls` tool result.
    #[arg(long, env = "WSO_MCP_MAX_CALLS_PER_CALLER", default_value = "50")]
    pub max_calls_per_caller: NonZeroU32,
    /// Default wait of a tool call (Go duration).
    #[arg(long, env = "WSO_MCP_DEFAULT_WAIT", default_value = "10m", value_parser = super::positive_duration)]
    pub default_wait: Duration,
    /// Longest wait a caller may ask for (Go duration).
    #[arg(long, env = "WSO_MCP_MAX_WAIT", default_value = "30m", value_parser = super::positive_duration)]
    pub max_wait: Duration,
    /// Host names the server answers to (DNS-rebinding protection), comma-separated; empty
    /// accepts any Host (callers authenticate with a Bearer token either way).
    #[arg(
        long,
        env = "WSO_MCP_ALLOWED_HOSTS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub allowed_hosts: Vec<String>,
    /// Base URL of the operator's build logs endpoint (`http://OPERATOR:8081/logs`), for the
    /// tool get_workspace_build_logs; the caller's token is forwarded to it.
    #[arg(long, env = "WSO_MCP_LOGS_URL")]
    pub logs_url: Option<String>,
    /// PEM CA bundle trusted for an `https` --logs-url, besides the built-in roots (e.g. the
    /// `ca.crt` of the logs port's certificate Secret).
    #[arg(long, env = "WSO_MCP_LOGS_CA_FILE")]
    pub logs_ca_file: Option<std::path::PathBuf>,
    /// Logging, metrics address, namespaces.
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Limits of the MCP port.
    #[command(flatten)]
    pub port: PortArgs,
}
