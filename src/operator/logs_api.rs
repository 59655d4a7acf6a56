//! Build logs on demand: `GET /logs/{namespace}/{name}?after=N&limit=N` on the operator (flag
//! `--logs-addr`), for whoever Kubernetes RBAC lets read a request's logs.
//!
//! Logs are read from Coder by the operator, the one component that holds the Coder
//! credentials; they never pass through status, Events or the operator's own log. The caller
//! sends its Kubernetes bearer token: the port has the MCP server's defences
//! ([`crate::process::listener`]: connection cap, idle, header and body timeouts, cap of requests
//! in flight; [`crate::process::auth`]: TokenReview cache, token size bound, per-address review
//! rate), and a SubjectAccessReview asks whether the caller may `get` the subresource
//! `workspacestartrequests/logs` of that request (the chart grants it with the editor role, not
//! the viewer role: Terraform output may hold secrets). A page holds at most 400 lines (Coder's chat tool's page) in the shape of Coder's
//! `get_workspace_build_logs` tool: `logs`, `has_more`, `next_after_id`, `job_error`,
//! `job_error_code`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::authorization::v1::ResourceAttributes;
use kube::api::Api;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::crd::{GROUP, WorkspaceStartRequest};
use crate::coder::logs::{self, LogPage};
use crate::operator::connect::Connections;
use crate::process::auth::{self, Access, AuthSettings, Authenticator, Caller};
use crate::process::listener::{self, Limits, ListenerMetrics, Refusals};

/// The subresource a caller needs `get` on.
pub const LOGS_SUBRESOURCE: &str = "logs";

/// Why a logs call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// RBAC does not allow the caller to read this request's logs.
    #[error("{0}")]
    Forbidden(String),
    /// No such request.
    #[error("workspacestartrequest {0} not found")]
    NotFound(String),
    /// A query parameter is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// The request has no build yet.
    #[error("the request has no build yet; try again once it is Starting")]
    NoBuild,
    /// Kubernetes failed.
    #[error("Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// Coder failed or could not be reached (never the log text).
    #[error("Coder: {0}")]
    Coder(String),
}

impl IntoResponse for LogsError {
    fn into_response(self) -> Response {
        let status = match &self {
            LogsError::Forbidden(_) => StatusCode::FORBIDDEN,
            LogsError::NotFound(_) => StatusCode::NOT_FOUND,
            LogsError::BadRequest(_) => StatusCode::BAD_REQUEST,
            LogsError::NoBuild => StatusCode::CONFLICT,
            LogsError::Kube(_) => StatusCode::INTERNAL_SERVER_ERROR,
            LogsError::Coder(_) => StatusCode::BAD_GATEWAY,
        };
        let body = serde_json::json!({ "message": self.to_string() });
        (status, axum::Json(body)).into_response()
    }
}

/// Query parameters.
#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    /// Lines after this log id (default: from the start).
    #[serde(default)]
    pub after: Option<i64>,
    /// At most this many lines (1 to 400, default 400).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// One page of a request's build logs, in the shape of Coder's `get_workspace_build_logs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildLogs {
    /// The request's namespace.
    pub namespace: String,
    /// The request's name.
    pub name: String,
    /// The build whose logs these are (the request's `status.build`).
    pub build_id: String,
    /// Its number.
    pub build_number: i64,
    /// Its transition.
    pub transition: String,
    /// Its job's status.
    pub job_status: String,
    /// The page.
    #[serde(flatten)]
    pub page: LogPage,
    /// The job's error text (may hold Terraform output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_error: Option<String>,
    /// The job's error code, e.g. `INSUFFICIENT_QUOTA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_error_code: Option<String>,
}

/// What the endpoint needs.
pub struct LogsServer {
    kube: kube::Client,
    connections: Connections,
}

/// How the logs port is guarded: its limits, how tokens are checked, what it counts.
pub struct Guard {
    /// The listener's limits.
    pub limits: Limits,
    /// Token audiences, cache and per-address review rate.
    pub auth: AuthSettings,
    /// The port's counters (`workspace_start_operator_logs_*`).
    pub metrics: Arc<ListenerMetrics>,
    /// TLS for the port (plain HTTP when `None`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl LogsServer {
    /// A server reading requests with `kube` and Coder through `connections`.
    pub fn new(kube: kube::Client, connections: Connections) -> Self {
        LogsServer { kube, connections }
    }

    /// The router, without the port's defences (callers must put a [`Caller`] in each request).
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/logs/{namespace}/{name}", get(handle))
            .with_state(self)
    }

    /// Serves on `addr` within `guard` until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        addr: SocketAddr,
        guard: Guard,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let refusals = Refusals::new(Arc::clone(&guard.metrics), listener::message_body);
        let authenticator = Authenticator::new(self.kube.clone(), guard.auth, refusals);
        authenticator.spawn_cleanup();
        let app = auth::guard(self.router(), guard.limits, authenticator);
        let tcp = listener::bind(addr)?;
        let tls = guard.tls.is_some();
        tracing::info!(addr = %tcp.local_addr()?, tls, limits = ?guard.limits, "serving build logs at /logs/{{namespace}}/{{name}}");
        listener::serve(tcp, app, guard.limits, guard.metrics, guard.tls, shutdown).await
    }

    /// Whether `caller` may `get workspacestartrequests/logs` of `namespace/name`.
    async fn authorize(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
    ) -> Result<(), LogsError> {
        let attributes = ResourceAttributes {
            verb: Some("get".to_owned()),
            group: Some(GROUP.to_owned()),
            resource: Some("workspacestartrequests".to_owned()),
            subresource: Some(LOGS_SUBRESOURCE.to_owned()),
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            ..Default::default()
        };
        match auth::may(&self.kube, caller, attributes).await? {
            Access::Allowed => Ok(()),
            Access::Denied(_) => Err(LogsError::Forbidden(format!(
                "{} may not get workspacestartrequests/logs {namespace}/{name}",
                caller.username
            ))),
        }
    }

    /// One page of `namespace/name`'s build logs for `caller`.
    pub async fn logs(
        &self,
        caller: &Caller,
        namespace: &str,
        name: &str,
        q: &LogsQuery,
    ) -> Result<BuildLogs, LogsError> {
        let limit = q.limit.unwrap_or(logs::LOG_PAGE_LINES);
        if !(1..=logs::LOG_PAGE_LINES).contains(&limit) {
            return Err(LogsError::BadRequest(format!(
                "limit must be 1 to {}",
                logs::LOG_PAGE_LINES
            )));
        }
        let dns = |v: &str, max: usize| {
            !v.is_empty()
                && v.len() <= max
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        if !dns(namespace, 63) || !dns(name, 253) {
            return Err(LogsError::BadRequest(
                "namespace and name must be Kubernetes names".to_owned(),
            ));
        }
        let after = q.after.unwrap_or(0).max(0);
        self.authorize(caller, namespace, name).await?;
        let api: Api<WorkspaceStartRequest> = Api::namespaced(self.kube.clone(), namespace);
        let wsr = api
            .get_opt(name)
            .await?
            .ok_or_else(|| LogsError::NotFound(format!("{namespace}/{name}")))?;
        let build_id = wsr
            .status
            .as_ref()
            .and_then(|s| s.build.as_ref())
            .and_then(|b| Uuid::parse_str(&b.id).ok())
            .ok_or(LogsError::NoBuild)?;
        let conn =
            self.connections.resolve(&wsr).await.map_err(|_| {
                LogsError::Coder("no usable Coder connection for this request".into())
            })?;
        let job = conn
            .client
            .get_build_job(build_id)
            .await
            .map_err(|e| LogsError::Coder(e.to_string()))?;
        let lines = conn
            .client
            .get_build_logs(build_id, after)
            .await
            .map_err(|e| LogsError::Coder(e.to_string()))?;
        // Counts only: the lines themselves never reach the operator's log.
        tracing::info!(namespace, name, build = %build_id, lines = lines.len(), "served build logs");
        Ok(BuildLogs {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            build_id: build_id.to_string(),
            build_number: job.build_number,
            transition: job.transition,
            job_status: job.job.status,
            page: logs::page(lines, limit),
            job_error: job.job.error.filter(|e| !e.is_empty()),
            job_error_code: job.job.error_code.filter(|e| !e.is_empty()),
        })
    }
}

async fn handle(
    State(server): State<Arc<LogsServer>>,
    Extension(caller): Extension<Caller>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<axum::Json<BuildLogs>, LogsError> {
    server
        .logs(&caller, &namespace, &name, &q)
        .await
        .map(axum::Json)
}
