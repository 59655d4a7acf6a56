//! Build logs on demand: `GET /logs/{namespace}/{name}?after=N&limit=N` on the operator (flag
//! `--logs-addr`), for whoever Kubernetes RBAC lets read a request's logs.
//!
//! Logs are read from Coder by the operator, the one component that holds the Coder
//! credentials; they never pass through status, Events or the operator's own log. The caller
//! sends its Kubernetes bearer token: a TokenReview authenticates it, and a SubjectAccessReview
//! asks whether it may `get` the subresource `workspacestartrequests/logs` of that request (the
//! chart grants it with the editor role, not the viewer role: Terraform output may hold
//! secrets). A page holds at most 400 lines (Coder's chat tool's page) in the shape of Coder's
//! `get_workspace_build_logs` tool: `logs`, `has_more`, `next_after_id`, `job_error`,
//! `job_error_code`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::crd::{GROUP, WorkspaceStartRequest};
use crate::coder::logs::{self, LogPage};
use crate::operator::connect::Connections;

/// The subresource a caller needs `get` on.
pub const LOGS_SUBRESOURCE: &str = "logs";

/// Why a logs call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// No bearer token, or one the API server does not accept.
    #[error("{0}")]
    Unauthenticated(String),
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
            LogsError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
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
    audiences: Vec<String>,
}

impl LogsServer {
    /// A server reading requests with `kube` and Coder through `connections`; tokens must be
    /// issued for one of `audiences` (empty: the API server's own).
    pub fn new(kube: kube::Client, connections: Connections, audiences: Vec<String>) -> Self {
        LogsServer {
            kube,
            connections,
            audiences,
        }
    }

    /// The router.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/logs/{namespace}/{name}", get(handle))
            .with_state(self)
    }

    /// Serves on `addr` until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        addr: SocketAddr,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "serving build logs at /logs/{{namespace}}/{{name}}");
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    async fn caller(&self, headers: &HeaderMap) -> Result<SubjectAccessReviewSpec, LogsError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 16 * 1024)
            .ok_or_else(|| {
                LogsError::Unauthenticated("send a Kubernetes bearer token".to_owned())
            })?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.kube.clone());
        let status = api
            .create(&PostParams::default(), &review)
            .await?
            .status
            .unwrap_or_default();
        let user = status
            .user
            .filter(|_| status.authenticated == Some(true))
            .ok_or_else(|| LogsError::Unauthenticated("the token was not accepted".to_owned()))?;
        Ok(SubjectAccessReviewSpec {
            user: user.username,
            uid: user.uid,
            groups: user.groups,
            extra: user.extra,
            ..Default::default()
        })
    }

    async fn authorize(
        &self,
        mut spec: SubjectAccessReviewSpec,
        namespace: &str,
        name: &str,
    ) -> Result<(), LogsError> {
        let who = spec.user.clone().unwrap_or_default();
        spec.resource_attributes = Some(ResourceAttributes {
            verb: Some("get".to_owned()),
            group: Some(GROUP.to_owned()),
            resource: Some("workspacestartrequests".to_owned()),
            subresource: Some(LOGS_SUBRESOURCE.to_owned()),
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            ..Default::default()
        });
        let api: Api<SubjectAccessReview> = Api::all(self.kube.clone());
        let review = SubjectAccessReview {
            spec,
            ..Default::default()
        };
        let status = api
            .create(&PostParams::default(), &review)
            .await?
            .status
            .unwrap_or_default();
        if status.allowed {
            return Ok(());
        }
        Err(LogsError::Forbidden(format!(
            "{who} may not get workspacestartrequests/logs {namespace}/{name}"
        )))
    }

    /// One page of `namespace/name`'s build logs for the caller of `headers`.
    pub async fn logs(
        &self,
        headers: &HeaderMap,
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
        let caller = self.caller(headers).await?;
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
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<axum::Json<BuildLogs>, LogsError> {
    server
        .logs(&headers, &namespace, &name, &q)
        .await
        .map(axum::Json)
}
