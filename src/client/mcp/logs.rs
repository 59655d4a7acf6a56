//! The MCP tool `get_workspace_build_logs`: one page of a request's build logs, in the shape of
//! Coder's chat tool of the same name (`logs`, `has_more`, `next_after_id`, `job_error`,
//! `job_error_code`). The MCP server holds no Coder credentials: it forwards the call, with the
//! caller's own bearer token, to the operator's logs endpoint (`--logs-url`), which
//! authenticates the token and checks `get workspacestartrequests/logs` for that caller.

use std::sync::Arc;

use rmcp::model::{CallToolResult, Tool};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer};
use schemars::JsonSchema;
use serde::Deserialize;

use super::Server;
use super::auth::Caller;
use crate::client::submit;

/// Name of the tool (as Coder's).
pub const GET_WORKSPACE_BUILD_LOGS: &str = "get_workspace_build_logs";
/// Largest answer read from the operator.
const MAX_ANSWER: usize = 8 << 20;

/// Arguments of `get_workspace_build_logs`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsArgs {
    /// Name of the WorkspaceStartRequest (the `name` returned by `start_workspace`).
    pub name: String,
    /// Its namespace. Default: the caller's ServiceAccount namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Return log lines with an id greater than this; pass the last page's `next_after_id`.
    #[serde(default)]
    pub after_id: Option<i64>,
    /// At most this many lines (1 to 400, default 400).
    #[serde(default)]
    pub limit: Option<u16>,
}

/// The tool definition.
pub fn definition() -> Tool {
    Tool::new(
        GET_WORKSPACE_BUILD_LOGS,
        "Read the provisioner (Terraform) logs of a workspace start's build, by the \
         WorkspaceStartRequest's name. Returns up to 400 lines per call with their ids, the \
         job's status, error and error code; pass next_after_id as after_id to continue. Use \
         it to see why a build failed.",
        Arc::new(serde_json::Map::new()),
    )
    .with_input_schema::<LogsArgs>()
    .annotate(super::annotations::get_workspace_build_logs())
}

fn invalid(argument: &str, problem: impl Into<String>) -> ErrorData {
    let problem = problem.into();
    ErrorData::invalid_params(
        format!("invalid argument {argument}: {problem}"),
        Some(serde_json::json!({"argument": argument, "problem": problem})),
    )
}

/// The caller's bearer token from the MCP HTTP request.
fn bearer(context: &RequestContext<RoleServer>) -> Option<String> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.headers.get(axum::http::header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
}

impl Server {
    /// Runs `get_workspace_build_logs` for an authenticated caller.
    pub(super) async fn build_logs(
        &self,
        args: Option<serde_json::Map<String, serde_json::Value>>,
        caller: &Caller,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let args: LogsArgs =
            serde_path_to_error::deserialize(serde_json::Value::Object(args.unwrap_or_default()))
                .map_err(|e| invalid(&e.path().to_string(), e.into_inner().to_string()))?;
        submit::check_request_name("name", &args.name)
            .map_err(|e| invalid(&e.argument, e.problem))?;
        if let Some(l) = args.limit
            && !(1..=400).contains(&l)
        {
            return Err(invalid("limit", format!("must be 1 to 400, got {l}")));
        }
        let namespace = match args.namespace.as_deref().or(caller.namespace()) {
            Some(ns) => ns.to_owned(),
            None => {
                return Err(invalid(
                    "namespace",
                    "required for callers that are not ServiceAccounts",
                ));
            }
        };
        submit::check_namespace("namespace", &namespace)
            .map_err(|e| invalid(&e.argument, e.problem))?;
        if let Err(msg) = self.limit.check(caller) {
            return Ok(refused("RateLimited", msg));
        }
        let Some(base) = self.settings.logs_url.as_deref() else {
            return Ok(refused(
                "LogsNotServed",
                "this MCP server is not connected to the operator's logs endpoint (--logs-url)",
            ));
        };
        let token = bearer(context).unwrap_or_default();
        let mut url = format!(
            "{}/{namespace}/{}?limit={}",
            base.trim_end_matches('/'),
            args.name,
            args.limit.unwrap_or(400)
        );
        if let Some(after) = args.after_id.filter(|a| *a > 0) {
            url.push_str(&format!("&after={after}"));
        }
        let resp = self
            .http
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| {
                ErrorData::internal_error(
                    format!(
                        "the operator's logs endpoint cannot be reached: {}",
                        e.without_url()
                    ),
                    None,
                )
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            ErrorData::internal_error(
                format!("reading the logs failed: {}", e.without_url()),
                None,
            )
        })?;
        if bytes.len() > MAX_ANSWER {
            return Err(ErrorData::internal_error(
                "the logs answer is too large",
                None,
            ));
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if status.is_success() {
            return Ok(CallToolResult::structured(value));
        }
        let reason = match status.as_u16() {
            401 | 403 => "Forbidden",
            404 => "NotFound",
            409 => "NoBuild",
            _ => "LogsUnavailable",
        };
        let message = value["message"].as_str().map_or_else(
            || format!("the logs endpoint answered {status}"),
            str::to_owned,
        );
        Ok(refused(reason, message))
    }
}

fn refused(reason: &str, message: impl Into<String>) -> CallToolResult {
    let message = message.into();
    CallToolResult::structured_error(
        serde_json::json!({"error": message, "reason": reason, "message": message}),
    )
}
