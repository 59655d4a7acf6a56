//! The MCP tools: `start_workspace` creates a WorkspaceStartRequest for the caller and follows it,
//! sending a progress notification on each change; `get_workspace_start` reads one (and can wait
//! for it). Arguments are checked one by one (an MCP invalid-params error names the argument);
//! a refusal (RBAC, rate limit) or a failed start is a tool result with `isError`, so the model
//! sees the reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::Api;
use rmcp::model::{CallToolResult, ProgressNotificationParam, ProgressToken, Tool};
use rmcp::service::{Peer, RequestContext};
use rmcp::{ErrorData, RoleServer};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::Server;
use super::auth::{self, Caller};
use crate::api::crd::WorkspaceStartRequest;
use crate::api::duration::parse_duration;
use crate::client::result::{Refusal, StartResult, humanize};
use crate::client::submit::{self, ArgError, NewRequest, Target, TargetArgs, Via};
use crate::client::track::{self, Followed, Progress};

/// Name of the start tool (as Coder's chat tool).
pub const START_WORKSPACE: &str = "start_workspace";
/// Name of the read tool.
pub const GET_WORKSPACE_START: &str = "get_workspace_start";

/// Arguments of `start_workspace`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartWorkspaceArgs {
    /// Start the workspace bound to this Coder chat (UUID).
    #[serde(default)]
    pub chat_id: Option<String>,
    /// Start the workspace with this id (UUID).
    #[serde(default)]
    pub workspace_id: Option<String>,
    /// Owner of the workspace to start (username, user id, or `me`); with `name`.
    #[serde(default)]
    pub owner: Option<String>,
    /// Name of the workspace to start; with `owner`.
    #[serde(default)]
    pub name: Option<String>,
    /// Rich parameter values for the start build, name to value.
    #[serde(default)]
    pub parameters: Option<BTreeMap<String, String>>,
    /// Namespace for the WorkspaceStartRequest. Default: the caller's ServiceAccount namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Wait until the workspace is ready or the start failed (default true). False returns at
    /// once with the request's name; read it later with `get_workspace_start`.
    #[serde(default)]
    pub wait: Option<bool>,
    /// How long to wait, as a duration such as `10m` or `90s` (default and maximum set by the
    /// server).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Idempotency key (1 to 128 visible ASCII characters, e.g. your tool call id): a retry with
    /// the same request_id returns the request the first call created instead of starting
    /// another one.
    #[serde(default)]
    pub request_id: Option<String>,
}

/// Arguments of `get_workspace_start`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetWorkspaceStartArgs {
    /// Name of the WorkspaceStartRequest (the `name` returned by `start_workspace`).
    pub name: String,
    /// Its namespace. Default: the caller's ServiceAccount namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Wait until it is ready or failed (default false).
    #[serde(default)]
    pub wait: Option<bool>,
    /// How long to wait, as a duration such as `10m` (default and maximum set by the server).
    #[serde(default)]
    pub timeout: Option<String>,
}

/// The tool definitions `tools/list` returns: input and output schemas generated from the
/// argument and result types (JSON Schema 2020-12, by the SDK).
pub fn definitions() -> Vec<Tool> {
    let empty = || Arc::new(serde_json::Map::new());
    vec![
        Tool::new(
            START_WORKSPACE,
            "Start a Coder workspace (the one bound to a chat, or one by id, or by owner and name) \
             and wait until its agent is ready. Idempotent like Coder's start_workspace: an already \
             running workspace returns at once. Creates a WorkspaceStartRequest in Kubernetes; the \
             result names it. Give exactly one of chat_id, workspace_id, or owner with name. \
             Safe to retry only with request_id: a call repeating an earlier call's request_id \
             returns that call's request instead of creating another.",
            empty(),
        )
        .annotate(super::annotations::start_workspace())
        .with_input_schema::<StartWorkspaceArgs>()
        .with_output_schema::<StartResult>(),
        Tool::new(
            GET_WORKSPACE_START,
            "Report the state of a workspace start (a WorkspaceStartRequest) by name, optionally \
             waiting until it is ready or failed.",
            empty(),
        )
        .annotate(super::annotations::get_workspace_start())
        .with_input_schema::<GetWorkspaceStartArgs>()
        .with_output_schema::<StartResult>(),
        super::logs::definition(),
    ]
}

/// Parses tool arguments, naming the argument that is wrong.
fn parse_args<T: DeserializeOwned>(
    args: Option<serde_json::Map<String, serde_json::Value>>,
) -> Result<T, ErrorData> {
    let value = serde_json::Value::Object(args.unwrap_or_default());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let argument = if path == "." {
            "arguments".to_owned()
        } else {
            path
        };
        invalid(&ArgError::new(argument, e.into_inner().to_string()))
    })
}

fn invalid(e: &ArgError) -> ErrorData {
    ErrorData::invalid_params(
        format!("invalid argument {e}"),
        Some(serde_json::json!({"argument": e.argument, "problem": e.problem})),
    )
}

/// One tool call's outcome for metrics.
fn outcome_of(result: &StartResult, timed_out: bool) -> &'static str {
    match (timed_out, result.phase.as_deref(), result.reason.as_deref()) {
        (true, _, _) => "timeout",
        (_, Some("Ready"), _) => "ready",
        (_, Some("Failed"), _) => "failed",
        (_, Some(_), _) => "in_progress",
        (_, None, Some("Forbidden")) => "forbidden",
        (_, None, Some("RateLimited")) => "rate_limited",
        (_, None, Some("NotFound")) => "not_found",
        _ => "error",
    }
}

/// A tool result: JSON text (as Coder's tool) plus the same object as structured content.
fn tool_result(result: &StartResult) -> CallToolResult {
    let value = serde_json::to_value(result).unwrap_or_default();
    if result.is_failure() {
        CallToolResult::structured_error(value)
    } else {
        CallToolResult::structured(value)
    }
}

/// What a tool call produced: the result, or an invalid-arguments error.
type Answer = Result<(StartResult, bool), ErrorData>;

impl Server {
    /// Runs one tool call for an authenticated caller.
    pub(super) async fn call(
        &self,
        tool: &str,
        args: Option<serde_json::Map<String, serde_json::Value>>,
        caller: &Caller,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let started = Instant::now();
        let _in_flight = InFlight::new(&self.metrics.in_flight);
        let answer: Answer = match tool {
            START_WORKSPACE => match self.limit.check(caller) {
                Err(msg) => Ok((StartResult::refused(Refusal::RateLimited, msg, None), false)),
                Ok(()) => {
                    self.start_workspace(parse_args(args)?, caller, &context)
                        .await
                }
            },
            GET_WORKSPACE_START => match self.limit.check(caller) {
                Err(msg) => Ok((StartResult::refused(Refusal::RateLimited, msg, None), false)),
                Ok(()) => {
                    self.get_workspace_start(parse_args(args)?, caller, &context)
                        .await
                }
            },
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown tool {other:?}"),
                    None,
                ));
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        match answer {
            Ok((result, timed_out)) => {
                let outcome = outcome_of(&result, timed_out);
                self.metrics.call(tool, outcome, seconds);
                tracing::info!(
                    tool,
                    caller = %caller.username,
                    outcome,
                    namespace = result.namespace.as_deref().unwrap_or_default(),
                    name = result.name.as_deref().unwrap_or_default(),
                    reason = result.reason.as_deref().unwrap_or_default(),
                    "tool call finished"
                );
                Ok(tool_result(&result))
            }
            Err(e) => {
                let outcome = if e.code == rmcp::model::ErrorCode::INVALID_PARAMS {
                    "invalid_arguments"
                } else {
                    "error"
                };
                self.metrics.call(tool, outcome, seconds);
                Err(e)
            }
        }
    }

    async fn start_workspace(
        &self,
        args: StartWorkspaceArgs,
        caller: &Caller,
        context: &RequestContext<RoleServer>,
    ) -> Answer {
        let target = Target::from_args(&TargetArgs {
            names: submit::MCP_ARGS,
            chat: args.chat_id.as_deref(),
            workspace_id: args.workspace_id.as_deref(),
            owner: args.owner.as_deref(),
            name: args.name.as_deref(),
        })
        .map_err(|e| invalid(&e))?;
        let parameters = submit::parameters("parameters", &args.parameters.unwrap_or_default())
            .map_err(|e| invalid(&e))?;
        let namespace = self.namespace_for(args.namespace.as_deref(), caller)?;
        let timeout = self.timeout(args.timeout.as_deref())?;
        if let Err(msg) = self.authorize(caller, "create", &namespace, None).await? {
            return Ok((
                StartResult::refused(Refusal::Forbidden, msg, Some(&namespace)),
                false,
            ));
        }
        let new = NewRequest {
            namespace: namespace.clone(),
            target,
            parameters,
            via: Via::Mcp,
            requested_by: Some(caller.username.clone()),
            shard: self.settings.shard.clone(),
        };
        let created = match args.request_id.as_deref() {
            None => new
                .create(&self.client)
                .await
                .map_err(|e| api_error("creating the request", &e))?,
            Some(id) => super::idempotent::create(&self.client, &new, id, caller).await?,
        };
        tracing::info!(caller = %caller.username, namespace, name = created.metadata.name.as_deref().unwrap_or_default(), "created or found a WorkspaceStartRequest");
        if args.wait == Some(false) {
            return Ok((StartResult::of(&created), false));
        }
        self.follow(created, timeout, context).await
    }

    async fn get_workspace_start(
        &self,
        args: GetWorkspaceStartArgs,
        caller: &Caller,
        context: &RequestContext<RoleServer>,
    ) -> Answer {
        submit::check_request_name("name", &args.name).map_err(|e| invalid(&e))?;
        let namespace = self.namespace_for(args.namespace.as_deref(), caller)?;
        let timeout = self.timeout(args.timeout.as_deref())?;
        if let Err(msg) = self
            .authorize(caller, "get", &namespace, Some(&args.name))
            .await?
        {
            return Ok((
                StartResult::refused(Refusal::Forbidden, msg, Some(&namespace)),
                false,
            ));
        }
        let api: Api<WorkspaceStartRequest> = Api::namespaced(self.client.clone(), &namespace);
        let found = api
            .get_opt(&args.name)
            .await
            .map_err(|e| api_error("reading the request", &e))?;
        let Some(request) = found else {
            let msg = format!("workspacestartrequest {namespace}/{} not found", args.name);
            return Ok((
                StartResult::refused(Refusal::NotFound, msg, Some(&namespace)),
                false,
            ));
        };
        if args.wait == Some(true) {
            return self.follow(request, timeout, context).await;
        }
        Ok((StartResult::of(&request), false))
    }

    /// Follows `request`, forwarding each change as an MCP progress notification when the client
    /// asked for them (sent a progress token).
    async fn follow(
        &self,
        request: WorkspaceStartRequest,
        timeout: Duration,
        context: &RequestContext<RoleServer>,
    ) -> Answer {
        let namespace = request.metadata.namespace.clone().unwrap_or_default();
        let name = request.metadata.name.clone().unwrap_or_default();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let forwarder = context
            .meta
            .get_progress_token()
            .map(|token| tokio::spawn(forward_progress(context.peer.clone(), token, rx)));
        let following = self.watches.follow(request, timeout, |_, p| {
            let _ = tx.send(p.clone());
        });
        let followed = tokio::select! {
            f = following => f,
            () = context.ct.cancelled() => {
                return Err(ErrorData::internal_error(
                    format!("the call was cancelled while waiting; the request {namespace}/{name} goes on: read it with get_workspace_start"),
                    None,
                ));
            }
        };
        drop(tx);
        if let Some(f) = forwarder {
            let _ = f.await;
        }
        match followed {
            Ok(Followed::Finished(r)) => Ok((StartResult::of(&r), false)),
            Ok(Followed::TimedOut(r)) => Ok((StartResult::timed_out(&r, timeout), true)),
            Err(e @ track::FollowError::Deleted { .. }) => Ok((
                StartResult::refused(Refusal::NotFound, e.to_string(), Some(&namespace)),
                false,
            )),
            Err(e) => Err(ErrorData::internal_error(e.to_string(), None)),
        }
    }

    fn namespace_for(&self, given: Option<&str>, caller: &Caller) -> Result<String, ErrorData> {
        let namespace = match given {
            Some(ns) => ns.to_owned(),
            None => caller.namespace().map(str::to_owned).ok_or_else(|| {
                invalid(&ArgError::new(
                    "namespace",
                    format!("required: the caller {} is not a ServiceAccount, so it has no namespace of its own", caller.username),
                ))
            })?,
        };
        submit::check_namespace("namespace", &namespace).map_err(|e| invalid(&e))?;
        if !self.settings.namespaces.is_empty() && !self.settings.namespaces.contains(&namespace) {
            return Err(invalid(&ArgError::new(
                "namespace",
                format!(
                    "{namespace} is not served here; requests may be created in: {}",
                    self.settings.namespaces.join(", ")
                ),
            )));
        }
        Ok(namespace)
    }

    fn timeout(&self, given: Option<&str>) -> Result<Duration, ErrorData> {
        let Some(raw) = given else {
            return Ok(self.settings.default_wait);
        };
        let max = self.settings.max_wait;
        match parse_duration(raw).filter(|d| !d.is_zero()) {
            Some(d) if d <= max => Ok(d),
            Some(_) => Err(invalid(&ArgError::new(
                "timeout",
                format!("at most {} here, got {raw:?}", humanize(max)),
            ))),
            None => Err(invalid(&ArgError::new(
                "timeout",
                format!(
                    "must be a positive duration such as 10m or 90s, got {:?}",
                    raw.chars().take(32).collect::<String>()
                ),
            ))),
        }
    }

    async fn authorize(
        &self,
        caller: &Caller,
        verb: &str,
        namespace: &str,
        name: Option<&str>,
    ) -> Result<Result<(), String>, ErrorData> {
        auth::may(&self.client, caller, verb, namespace, name)
            .await
            .map_err(|e| api_error("checking access (SubjectAccessReview)", &e))
    }
}

fn api_error(doing: &str, e: &kube::Error) -> ErrorData {
    tracing::warn!(error = %e, "{doing} failed");
    ErrorData::internal_error(format!("{doing} failed: {e}"), None)
}

/// Sends one progress notification per change, numbered so progress always increases.
async fn forward_progress(
    peer: Peer<RoleServer>,
    token: ProgressToken,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Progress>,
) {
    let mut step = 0u32;
    while let Some(p) = rx.recv().await {
        step = step.saturating_add(1);
        let note = ProgressNotificationParam::new(token.clone(), f64::from(step))
            .with_message(p.summary());
        if let Err(e) = peer.notify_progress(note).await {
            tracing::debug!(error = %e, "progress notification not delivered");
        }
    }
}

/// Counts a tool call as in flight while it lives.
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> InFlight<'a> {
    fn new(g: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: serde_json::Value) -> Option<serde_json::Map<String, serde_json::Value>> {
        v.as_object().cloned()
    }

    #[test]
    fn argument_errors_name_the_argument() {
        let e = parse_args::<StartWorkspaceArgs>(args(json!({"chat_id": 5}))).expect_err("type");
        assert!(
            e.message
                .starts_with("invalid argument chat_id: invalid type"),
            "{}",
            e.message
        );
        let e = parse_args::<StartWorkspaceArgs>(args(json!({"chat": "x"}))).expect_err("unknown");
        assert!(e.message.contains("unknown field `chat`"), "{}", e.message);
        let e = parse_args::<StartWorkspaceArgs>(args(json!({"parameters": {"a": 1}})))
            .expect_err("nested");
        assert!(
            e.message.starts_with("invalid argument parameters.a:"),
            "{}",
            e.message
        );
        let e = parse_args::<GetWorkspaceStartArgs>(None).expect_err("missing name");
        assert!(e.message.contains("missing field `name`"), "{}", e.message);
        assert!(parse_args::<StartWorkspaceArgs>(None).is_ok());
    }

    #[test]
    fn tool_schemas_come_from_the_argument_types() {
        let tools = definitions();
        let start = &tools[0];
        assert_eq!(start.name, START_WORKSPACE);
        let props = start.input_schema.get("properties").expect("properties");
        for arg in [
            "chat_id",
            "workspace_id",
            "owner",
            "name",
            "namespace",
            "wait",
            "timeout",
            "parameters",
        ] {
            assert!(props.get(arg).is_some(), "{arg} missing from {props}");
        }
        let out = start.output_schema.as_ref().expect("output schema");
        let out_props = out.get("properties").expect("properties");
        for key in [
            "started",
            "workspace_name",
            "agent_status",
            "reason",
            "message",
            "namespace",
            "name",
        ] {
            assert!(
                out_props.get(key).is_some(),
                "{key} missing from the output schema"
            );
        }
        assert_eq!(
            tools[1].input_schema.get("required"),
            Some(&json!(["name"]))
        );
        assert!(props.get("request_id").is_some());
    }

    #[test]
    fn tools_carry_hints_on_what_they_change() {
        let tools = definitions();
        let hints = |name: &str| {
            let tool = tools.iter().find(|t| t.name == name).expect(name);
            let a = tool.annotations.clone().expect("annotations");
            (a.read_only_hint, a.idempotent_hint, a.open_world_hint)
        };
        assert_eq!(
            hints(START_WORKSPACE),
            (Some(false), Some(false), Some(true))
        );
        assert_eq!(
            hints(GET_WORKSPACE_START),
            (Some(true), Some(true), Some(false))
        );
        let start = &tools[0];
        assert!(
            start
                .description
                .as_deref()
                .unwrap_or_default()
                .contains("request_id")
        );
    }

    #[test]
    fn failures_are_tool_errors_with_structured_content() {
        let refused = tool_result(&StartResult::refused(Refusal::Forbidden, "no", Some("a")));
        assert_eq!(refused.is_error, Some(true));
        assert_eq!(
            refused
                .structured_content
                .as_ref()
                .map(|v| v["reason"].clone()),
            Some(json!("Forbidden"))
        );
        let fine = tool_result(&StartResult::of(&WorkspaceStartRequest::new(
            "x",
            Default::default(),
        )));
        assert_eq!(fine.is_error, Some(false));
    }
}
