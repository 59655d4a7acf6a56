//! Flags of `run`, the operator.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use super::port::{PortArgs, ProcessArgs};
use crate::api::policy::TenancyMode;
use crate::api::shard::Shard;

/// Flags of `run`. A flag given twice takes its last value (wrappers can append overrides).
#[derive(Parser, Debug, Clone)]
#[command(args_override_self = true)]
pub struct RunArgs {
    /// Operator-wide Coder URL (used by requests without spec.coderRef).
    #[arg(long, env = "CODER_URL")]
    pub coder_url: Option<String>,
    /// File holding the operator-wide Coder session token (re-read on every change).
    #[arg(long, env = "CODER_TOKEN_FILE")]
    pub coder_token_file: Option<PathBuf>,
    /// Reconcile only requests labelled `coder.com/shard=NAME` (selected by the API server);
    /// empty: the requests without that label. Each shard has its own Lease and metrics label.
    #[arg(
        long,
        env = "WSO_SHARD",
        default_value = "",
        hide_default_value = true,
        value_parser = Shard::parse
    )]
    pub shard: Shard,
    /// `bound` (default): a request served by the operator's (or a shard's) Coder token acts
    /// only for the Coder users a WorkspaceStartPolicy binds its namespace to, shards serve only
    /// namespaces bound to them, and only opted-in Secrets serve as coderRef. `open`: no policy
    /// is needed (the behaviour before tenancy; for single-tenant clusters).
    #[arg(
        long,
        env = "WSO_TENANCY",
        default_value = "bound",
        value_parser = |s: &str| s.parse::<TenancyMode>()
    )]
    pub tenancy: TenancyMode,
    /// Maximum concurrent reconciles of requests not yet started (reading Coder, requesting the
    /// start build).
    #[arg(long, env = "WSO_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Maximum concurrent reconciles of started requests (following build and agent); kept
    /// apart so a burst of new requests never delays the ones about to become Ready.
    #[arg(long, env = "WSO_FOLLOW_CONCURRENCY", default_value_t = 256)]
    pub follow_concurrency: u16,
    /// API writes in flight per namespace other than final (Ready/Failed) and first statuses:
    /// start records, progress and Events. Final statuses skip this limit, so they reach the API
    /// server first; progress finding no slot waits for a later pass.
    #[arg(long, env = "WSO_WRITE_SLOTS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub write_slots: u16,
    /// The same writes in flight over all namespaces (at least `--write-slots`): one namespace's
    /// burst never holds back another namespace's writes while this has room.
    #[arg(long, env = "WSO_WRITE_SLOTS_TOTAL", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub write_slots_total: u16,
    /// Elect a leader through a Lease; only the leader reconciles.
    #[arg(long, env = "WSO_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Lease name for leader election; a shard uses `<lease-name>-shard-<shard>`.
    #[arg(
        long,
        env = "WSO_LEASE_NAME",
        default_value = "workspace-start-operator"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Lease duration in seconds.
    #[arg(long, env = "WSO_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,
    /// Address for the build logs endpoint `/logs/{namespace}/{name}` (callers authenticated
    /// by TokenReview, authorised for `get workspacestartrequests/logs`); off when unset.
    #[arg(long, env = "WSO_LOGS_ADDR")]
    pub logs_addr: Option<SocketAddr>,
    /// Token audiences the logs endpoint accepts, comma-separated (default: the API server's).
    #[arg(long, env = "WSO_LOGS_AUDIENCES", value_delimiter = ',')]
    pub logs_audiences: Vec<String>,
    /// Limits of the logs port (the same flags as `mcp`'s port).
    #[command(flatten)]
    pub logs_port: PortArgs,
    /// Logging, metrics address, namespaces to watch.
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Coder requests per minute per endpoint (Coder allows 512 per user and endpoint).
    #[arg(long, env = "WSO_CODER_RPM", default_value_t = 400)]
    pub coder_requests_per_minute: u32,
    /// Follow in-flight workspaces with Coder's watch stream (false = poll only).
    #[arg(long, env = "WSO_CODER_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub coder_watch: bool,
    /// Maximum concurrent Coder watch streams (one per in-flight workspace); requests for
    /// further workspaces poll (--poll-ms) until a stream frees up. 0 = unlimited.
    #[arg(long, env = "WSO_MAX_WATCH_STREAMS", default_value_t = 2000)]
    pub max_watch_streams: usize,
    /// Poll interval while waiting without a live watch stream, in milliseconds.
    #[arg(long, env = "WSO_POLL_MS", default_value_t = 2000)]
    pub poll_ms: u64,
    /// Backstop poll interval while a watch stream is live, in milliseconds.
    #[arg(long, env = "WSO_BACKSTOP_POLL_MS", default_value_t = 30000)]
    pub backstop_poll_ms: u64,
    /// Per-request timeout for Coder calls, in milliseconds.
    #[arg(long, env = "WSO_CODER_TIMEOUT_MS", default_value_t = 15000)]
    pub coder_timeout_ms: u64,
    /// URL prefixes a `spec.coderRef` Secret's `url` must match, comma-separated (scheme, host
    /// and port exactly; path at a `/` boundary). Default: the scheme, host and port of
    /// --coder-url (none without it: every coderRef fails CoderURLNotAllowed).
    #[arg(
        long,
        env = "WSO_CODER_ALLOWED_URLS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub coder_allowed_urls: Vec<String>,
    /// Largest Coder response body accepted, in bytes; a larger answer fails the request
    /// with `CoderResponseInvalid`.
    #[arg(long, env = "WSO_CODER_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    pub coder_max_body_bytes: usize,
    /// Largest Coder watch stream frame, in bytes (also the most one stream buffers); a
    /// larger frame closes the stream and its workspace is polled.
    #[arg(long, env = "WSO_CODER_MAX_FRAME_BYTES", default_value_t = 1 << 20)]
    pub coder_max_frame_bytes: usize,
    /// A Coder watch stream that completes no frame (Coder pings every 15 s) for this many
    /// milliseconds is closed and its workspace polled.
    #[arg(long, env = "WSO_CODER_WATCH_IDLE_MS", default_value_t = 25000)]
    pub coder_watch_idle_ms: u64,
    /// PEM file of CA certificates trusted for Coder in addition to the platform's CA store
    /// (the image's bundle, `SSL_CERT_FILE`): for a Coder served with a certificate from a
    /// private CA. Read at start; used for every Coder connection.
    #[arg(long, env = "CODER_CA_FILE")]
    pub coder_ca_file: Option<PathBuf>,
    /// The most Coder clients kept (one per credential: URL, token and CA); beyond it the
    /// least useful is dropped.
    #[arg(long, env = "WSO_CODER_CLIENT_CACHE_SIZE", default_value_t = 1024)]
    pub coder_client_cache_size: u64,
    /// A Coder client no request used for this many milliseconds is dropped (its memory comes
    /// back once the requests and Secrets of a credential are gone).
    #[arg(long, env = "WSO_CODER_CLIENT_IDLE_MS", default_value_t = 600_000)]
    pub coder_client_idle_ms: u64,
    /// Test hook: the reconcile of the request with this name panics. Hidden; used by the
    /// end-to-end test of panic containment.
    #[arg(long, hide = true)]
    pub test_panic_on: Option<String>,
}

impl RunArgs {
    /// The namespaces to watch (empty = all).
    pub fn watched_namespaces(&self) -> Vec<String> {
        self.process.namespaces()
    }
}
