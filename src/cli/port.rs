//! Flags `run` and `mcp` share: the process's own ([`ProcessArgs`]: logging, metrics address,
//! namespaces) and the limits of a port that serves callers with bearer tokens ([`PortArgs`]: the
//! MCP endpoint of `mcp`, the build logs endpoint of `run`).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio_rustls::TlsAcceptor;

use crate::process::LogFormat;
use crate::process::listener::Limits;
use crate::process::tls::{self, TlsError};

/// Logging, the metrics address and the namespaces, as both long-running commands take them.
#[derive(Args, Debug, Clone)]
pub struct ProcessArgs {
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "WSO_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Namespaces, comma-separated: `run` watches them, `mcp` creates requests only there; empty
    /// means all namespaces (for `mcp`: any the caller may create requests in).
    #[arg(
        long,
        env = "WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub namespaces: Vec<String>,
    /// Log format.
    #[arg(long, env = "WSO_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log level or tracing filter (e.g. `info`, `debug`, `workspace_start_operator=debug`).
    #[arg(long, env = "WSO_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl ProcessArgs {
    /// The namespaces given (empty = all).
    pub fn namespaces(&self) -> Vec<String> {
        super::non_empty(&self.namespaces)
    }
}

/// Limits of a port whose callers send Kubernetes bearer tokens (`mcp`: the MCP endpoint; `run`:
/// the build logs endpoint, when `--logs-addr` is set).
#[derive(Args, Debug, Clone)]
pub struct PortArgs {
    /// Requests in flight at once over all callers (MCP: tool calls included); more get HTTP 503
    /// with Retry-After.
    #[arg(long, env = "WSO_MAX_CALLS", default_value = "1000")]
    pub max_calls: NonZeroU32,
    /// Open client connections at most; further ones are closed at once.
    #[arg(long, env = "WSO_MAX_CONNECTIONS", default_value = "1024")]
    pub max_connections: NonZeroU32,
    /// A connection that waits this long for a request (or for the rest of its headers) is closed
    /// (Go duration).
    #[arg(long, env = "WSO_IDLE_TIMEOUT", default_value = "30s", value_parser = super::positive_duration)]
    pub idle_timeout: Duration,
    /// A request body must arrive in full within this (Go duration); else HTTP 408.
    #[arg(long, env = "WSO_BODY_TIMEOUT", default_value = "30s", value_parser = super::positive_duration)]
    pub body_timeout: Duration,
    /// Largest request body in bytes (1 KiB to 16 MiB); larger ones get HTTP 413.
    #[arg(long, env = "WSO_MAX_BODY_BYTES", default_value = "65536", value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_body_bytes: u32,
    /// Longest a valid token's TokenReview is reused (shorter when the token expires sooner;
    /// refused tokens are remembered 10s) (Go duration).
    #[arg(long, env = "WSO_TOKEN_CACHE_TTL", default_value = "5m", value_parser = super::positive_duration)]
    pub token_cache_ttl: Duration,
    /// TokenReviews per minute that one source address may cause (tokens not in the cache);
    /// over it the caller gets HTTP 429.
    #[arg(long, env = "WSO_REVIEWS_PER_MINUTE_PER_ADDRESS", default_value = "30")]
    pub reviews_per_minute_per_address: NonZeroU32,
    /// Burst of such TokenReviews per source address.
    #[arg(long, env = "WSO_REVIEW_BURST_PER_ADDRESS", default_value = "20")]
    pub review_burst_per_address: NonZeroU32,
    /// PEM certificate (chain) the port serves TLS with, so bearer tokens do not cross the
    /// network in clear; needs --tls-key-file. Unset: plain HTTP. Read at start.
    #[arg(long, env = "WSO_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "WSO_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
}

impl PortArgs {
    /// The listener's limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections.get() as usize,
            idle_timeout: self.idle_timeout,
            body_timeout: self.body_timeout,
            max_body_bytes: self.max_body_bytes as usize,
            max_calls: self.max_calls.get() as usize,
        }
    }

    /// The port's TLS acceptor, when --tls-cert-file and --tls-key-file are given.
    pub fn tls(&self) -> Result<Option<TlsAcceptor>, TlsError> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => tls::acceptor(cert, key).map(Some),
            _ => Ok(None),
        }
    }

    /// How tokens are checked, for `audiences` (empty: the API server's own).
    pub fn auth(&self, audiences: Vec<String>) -> crate::process::auth::AuthSettings {
        crate::process::auth::AuthSettings {
            audiences,
            valid_ttl: self.token_cache_ttl,
            reviews_per_minute: self.reviews_per_minute_per_address,
            review_burst: self.review_burst_per_address,
        }
    }
}
