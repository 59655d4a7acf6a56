//! Flags of `mcp`, the MCP server for chat services.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::Args;

use crate::api::shard::Shard;
use crate::process::LogFormat;

/// Flags of `mcp`. Each also reads the environment variable shown, as the Helm chart sets them.
#[derive(Args, Debug, Clone)]
#[command(args_override_self = true)]
pub struct McpArgs {
    /// Address of the MCP endpoint (Streamable HTTP at /mcp).
    #[arg(long, env = "WSO_MCP_ADDR", default_value = "0.0.0.0:8090")]
    pub listen: SocketAddr,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "WSO_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Audience callers' tokens must be issued for (TokenReview). Empty: the API server's own
    /// audiences, i.e. ordinary ServiceAccount tokens.
    #[arg(
        long,
        env = "WSO_MCP_AUDIENCE",
        default_value = "workspace-start-operator"
    )]
    pub audience: String,
    /// Namespaces requests may be created in, comma-separated (the operator's watched
    /// namespaces); empty allows any namespace the caller may create requests in.
    #[arg(
        long,
        env = "WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub namespaces: Vec<String>,
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
    /// MCP requests (tool calls included) in flight at once over all callers; more get HTTP 503
    /// with Retry-After.
    #[arg(long, env = "WSO_MCP_MAX_CALLS", default_value = "1000")]
    pub max_calls: NonZeroU32,
    /// Open client connections at most; further ones are closed at once.
    #[arg(long, env = "WSO_MCP_MAX_CONNECTIONS", default_value = "1024")]
    pub max_connections: NonZeroU32,
    /// A connection that waits this long for a request (or for the rest of its headers) is closed
    /// (Go duration).
    #[arg(long, env = "WSO_MCP_IDLE_TIMEOUT", default_value = "30s", value_parser = super::positive_duration)]
    pub idle_timeout: Duration,
    /// A request body must arrive in full within this (Go duration); else HTTP 408.
    #[arg(long, env = "WSO_MCP_BODY_TIMEOUT", default_value = "30s", value_parser = super::positive_duration)]
    pub body_timeout: Duration,
    /// Largest request body in bytes (1 KiB to 16 MiB); larger ones get HTTP 413.
    #[arg(long, env = "WSO_MCP_MAX_BODY_BYTES", default_value = "65536", value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_body_bytes: u32,
    /// Longest a valid token's TokenReview is reused (shorter when the token expires sooner;
    /// refused tokens are remembered 10s) (Go duration).
    #[arg(long, env = "WSO_MCP_TOKEN_CACHE_TTL", default_value = "5m", value_parser = super::positive_duration)]
    pub token_cache_ttl: Duration,
    /// TokenReviews per minute that one source address may cause (tokens not in the cache);
    /// over it the caller gets HTTP 429.
    #[arg(
        long,
        env = "WSO_MCP_REVIEWS_PER_MINUTE_PER_ADDRESS",
        default_value = "30"
    )]
    pub reviews_per_minute_per_address: NonZeroU32,
    /// Burst of such TokenReviews per source address.
    #[arg(long, env = "WSO_MCP_REVIEW_BURST_PER_ADDRESS", default_value = "20")]
    pub review_burst_per_address: NonZeroU32,
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
    /// Log format.
    #[arg(long, env = "WSO_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Base URL of the operator's build logs endpoint (`http://OPERATOR:8081/logs`), for the
    /// tool get_workspace_build_logs; the caller's token is forwarded to it.
    #[arg(long, env = "WSO_MCP_LOGS_URL")]
    pub logs_url: Option<String>,
    /// Log level or tracing filter.
    #[arg(long, env = "WSO_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}
