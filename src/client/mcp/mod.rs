//! `workspace-start-operator mcp`: a Model Context Protocol server over Streamable HTTP (the
//! official Rust SDK, `rmcp`) that gives chat services Coder's `start_workspace` tool without
//! Kubernetes code. Every start is a WorkspaceStartRequest created for the caller, so it shows in
//! `kubectl get wsr`, is covered by RBAC and audited. Stateless (no MCP sessions), so replicas
//! behind one Service need no affinity.
//!
//! Layout: the port's defences are shared with the operator's build logs endpoint
//! ([`crate::process::listener`]: connection cap, timeouts, body limit, cap of calls in flight;
//! [`crate::process::auth`]: TokenReview middleware with its cache and per-address limit);
//! [`auth`] adds what is the MCP server's own (JSON-RPC refusals, SubjectAccessReview on
//! requests, per-caller rate limit and call cap), [`watches`] (one shared watch per namespace for
//! waiting calls), [`tools`] (the tools), [`metrics`] (what `/metrics` serves).

pub mod annotations;
pub mod auth;
mod idempotent;
pub mod logs;
pub mod metrics;
pub mod tools;
pub mod watches;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use futures::FutureExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use tokio_util::sync::CancellationToken;

use self::auth::{CallLimit, CallSlots, Caller};
use self::metrics::McpMetrics;
use self::watches::Watches;

use crate::cli::mcp::McpArgs;
use crate::client::result::{Refusal, StartResult};
use crate::process::auth::Authenticator;
use crate::process::http::Health;
use crate::process::listener::{self, Refusals};

/// Path of the MCP endpoint.
pub const ENDPOINT: &str = "/mcp";

/// Settings the tools read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces requests may be created in (empty: any).
    pub namespaces: Vec<String>,
    /// Wait when a call names none.
    pub default_wait: Duration,
    /// Longest wait.
    pub max_wait: Duration,
    /// The shard requests are labelled for.
    pub shard: crate::api::shard::Shard,
    /// Base URL of the operator's logs endpoint (`…/logs`), for `get_workspace_build_logs`.
    pub logs_url: Option<String>,
}

/// Why the MCP server stopped.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// A flag was invalid.
    #[error(transparent)]
    Argument(#[from] crate::client::submit::ArgError),
    /// No Kubernetes client.
    #[error("cannot connect to Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// A listener failed.
    #[error("cannot serve: {0}")]
    Serve(#[from] std::io::Error),
    /// A TLS certificate, key or CA file cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::process::tls::TlsError),
}

/// One MCP server instance (the SDK makes one per request; they share everything).
#[derive(Clone)]
pub struct Server {
    client: kube::Client,
    settings: Arc<Settings>,
    limit: Arc<CallLimit>,
    slots: Arc<CallSlots>,
    watches: Arc<Watches>,
    metrics: Arc<McpMetrics>,
    http: reqwest::Client,
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        let mut config = ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions(
                "Start Coder workspaces through Kubernetes WorkspaceStartRequests: call \
                 start_workspace with chat_id, workspace_id, or owner and name; \
                 get_workspace_start reads a request by name.",
            );
        config.server_info =
            Implementation::new("workspace-start-operator", env!("CARGO_PKG_VERSION"));
        config
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools::definitions().into_iter().find(|t| t.name == name)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools::definitions()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned()
            .ok_or_else(|| ErrorData::internal_error("request was not authenticated", None))?;
        let _slot = match self.slots.enter(&caller) {
            Ok(slot) => slot,
            Err(message) => {
                self.metrics.limited("calls_per_caller");
                // The tool name is the caller's: only known names become a metric label.
                let tool = match &*request.name {
                    name @ (tools::START_WORKSPACE | tools::GET_WORKSPACE_START) => name,
                    _ => "unknown",
                };
                self.metrics.call(tool, "too_many_calls", 0.0);
                tracing::info!(tool, caller = %caller.username, "too many calls in flight");
                let result = StartResult::refused(Refusal::TooManyCalls, message, None);
                let value = serde_json::to_value(&result).unwrap_or_default();
                return Ok(rmcp::model::CallToolResult::structured_error(value).into());
            }
        };
        let args = request.arguments.clone();
        if request.name == logs::GET_WORKSPACE_BUILD_LOGS {
            return self
                .build_logs(args, &caller, &context)
                .await
                .map(Into::into);
        }
        self.call(&request.name, args, &caller, context)
            .await
            .map(Into::into)
    }
}

/// Runs `mcp` until SIGTERM/ctrl-c.
pub fn main(args: McpArgs) -> ExitCode {
    crate::process::init_logging(args.process.log_format, &args.process.log_level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&McpError::Serve(e)),
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &McpError) -> ExitCode {
    tracing::error!(error = %e, "exiting");
    eprintln!("workspace-start-operator mcp: {e}");
    ExitCode::FAILURE
}

async fn run(args: McpArgs) -> Result<(), McpError> {
    let settings = Settings {
        namespaces: args.process.namespaces(),
        default_wait: args.default_wait,
        max_wait: args.max_wait,
        shard: args.shard.clone(),
        logs_url: args.logs_url.clone().filter(|u| !u.is_empty()),
    };
    let shutdown = crate::process::shutdown_signal().boxed().shared();
    // HTTP/2 when the API server offers it: TokenReviews, SubjectAccessReviews and the shared
    // watches of every call go over one connection.
    let client = crate::process::kube_client::connect().await?;
    let metrics = Arc::new(McpMetrics::new());
    let health = Health::default();
    let exposition: Arc<dyn crate::process::http::Exposition> = metrics.clone();
    let metrics_server = tokio::spawn(crate::process::http::serve(
        args.process.metrics_addr,
        exposition,
        health.clone(),
        shutdown.clone(),
    ));
    let limit = Arc::new(CallLimit::new(args.calls_per_minute, args.call_burst));
    limit.spawn_cleanup();
    let audiences = crate::cli::non_empty(std::slice::from_ref(&args.audience));
    let server = Server {
        client: client.clone(),
        settings: Arc::new(settings),
        limit,
        slots: Arc::new(CallSlots::new(args.max_calls_per_caller.get() as usize)),
        watches: Arc::new(Watches::new(client.clone(), Arc::clone(&metrics))),
        metrics: Arc::clone(&metrics),
        http: crate::process::tls::client(args.logs_ca_file.as_deref(), Duration::from_secs(30))?,
    };
    // Cancelled on shutdown: ends in-flight tool calls (their requests go on; callers can read
    // them with get_workspace_start) so the process stops within its grace period.
    let cancel = CancellationToken::new();
    let refusals = Refusals::new(Arc::clone(&metrics.port), auth::json_rpc_body);
    let auth = Authenticator::new(client.clone(), args.port.auth(audiences), refusals);
    auth.spawn_cleanup();
    let limits = args.port.limits();
    let app = router(server, &args.allowed_hosts, cancel.clone());
    let app = crate::process::auth::guard(app, limits, auth);
    let tls = args.port.tls()?;
    let listener = listener::bind(args.listen)?;
    tracing::info!(addr = %listener.local_addr()?, audience = %args.audience, ?limits, "serving MCP at {ENDPOINT}");
    client.apiserver_version().await?;
    health.set_ready(true);
    let stop = shutdown.clone().map(move |()| cancel.cancel());
    listener::serve(listener, app, limits, Arc::clone(&metrics.port), tls, stop).await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), metrics_server).await;
    Ok(())
}

/// `/mcp` (put behind the port's defences by [`crate::process::auth::guard`]).
fn router(server: Server, allowed_hosts: &[String], cancel: CancellationToken) -> Router {
    let hosts = crate::cli::non_empty(allowed_hosts);
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_cancellation_token(cancel)
        .with_sse_keep_alive(Some(Duration::from_secs(15)));
    config = if hosts.is_empty() {
        config.disable_allowed_hosts()
    } else {
        config.with_allowed_hosts(hosts)
    };
    let service: StreamableHttpService<Server, NeverSessionManager> = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new().nest_service(ENDPOINT, service)
}
