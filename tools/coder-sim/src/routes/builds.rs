//! `POST /api/v2/workspaces/{id}/builds`: validates the request as codersdk and wsbuilder do,
//! applies the workspace's rules (deleted, dormant, active version, a build already active),
//! then creates the build.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::middleware::{Act, Actor, actor};
use super::{App, readable_ws};
use crate::http::{FORBIDDEN_DETAIL, error, not_found, reply};
use crate::json;
use crate::model::{DormantStart, State as SimState, Transition, WorkspaceRec};

const BUILD_REASONS: &[&str] = &[
    "dashboard",
    "cli",
    "ssh_connection",
    "vscode_connection",
    "jetbrains_connection",
];

#[derive(Debug, Deserialize)]
struct CreateBuild {
    #[serde(default)]
    transition: Option<String>,
    #[serde(default)]
    template_version_id: Option<Uuid>,
    #[serde(default)]
    rich_parameter_values: Option<Vec<BuildParameter>>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    log_level: Option<String>,
    #[serde(default)]
    orphan: Option<bool>,
    #[serde(default)]
    state: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct BuildParameter {
    name: String,
    value: String,
}

/// A request that passed validation.
struct Valid {
    transition: Transition,
    version: Option<Uuid>,
    parameters: Vec<(String, String)>,
    reason: String,
}

fn validation(field: &str, tag: &str, value: &str) -> Response {
    reply(
        StatusCode::BAD_REQUEST,
        serde_json::json!({
            "message": "Validation failed.",
            "validations": [{
                "field": field,
                "detail": format!("Validation failed for tag {tag:?} with value: {value:?}"),
            }],
        }),
    )
}

/// A `wsbuilder.BuildError`: its message, and as detail the wrapped error (here the same).
fn build_error(status: StatusCode, message: &str) -> Response {
    error(status, message, Some(message))
}

pub(crate) async fn post_build(
    State(app): State<App>,
    a: Act,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let a = match actor(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let now = Timestamp::now();
    let mut st = app.sim.lock();
    let ws_id = match readable_ws(&st, a, &id) {
        Ok(ws) => ws.id,
        Err(r) => return r,
    };
    let req = match validate(a, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(ws) = st.workspaces.get(&ws_id) else {
        return not_found();
    };
    if let Err(resp) = check_workspace(&st, ws, a, &req, now) {
        return resp;
    }
    let Some(build_id) = st.create_build(
        ws_id,
        req.transition,
        a.id,
        &req.reason,
        req.version,
        req.parameters,
        now,
        true,
    ) else {
        return not_found();
    };
    if let Some(w) = st.workspaces.get_mut(&ws_id) {
        w.builds_posted += 1;
        if req.transition == Transition::Start {
            // Current Coder wakes a dormant workspace in the build's transaction.
            w.dormant_at = None;
        }
    }
    let body = match (st.workspaces.get(&ws_id), st.builds.get(&build_id)) {
        (Some(ws), Some(b)) => json::build(&st, ws, b, now),
        _ => Value::Null,
    };
    drop(st);
    app.sim.notify_workspace(ws_id);
    reply(StatusCode::CREATED, body)
}

/// The body as codersdk's validation and wsbuilder's authorization see it.
#[allow(clippy::result_large_err)]
fn validate(a: Actor, body: &[u8]) -> Result<Valid, Response> {
    let req: CreateBuild = serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "Request body must be valid JSON.",
            Some(&e.to_string()),
        )
    })?;
    let raw = req.transition.clone().unwrap_or_default();
    if raw.is_empty() {
        return Err(validation("transition", "required", ""));
    }
    let transition =
        Transition::parse(&raw).ok_or_else(|| validation("transition", "oneof", &raw))?;
    if let Some(reason) = req.reason.as_deref().filter(|r| !r.is_empty())
        && !BUILD_REASONS.contains(&reason)
    {
        return Err(validation("reason", "oneof", reason));
    }
    if let Some(level) = req.log_level.as_deref().filter(|l| !l.is_empty()) {
        if level != "debug" {
            return Err(validation("log_level", "oneof", level));
        }
        if !a.admin {
            return Err(build_error(
                StatusCode::BAD_REQUEST,
                "Workspace builds with a custom log level are restricted to administrators only.",
            ));
        }
    }
    let orphan = req.orphan == Some(true);
    if orphan && transition != Transition::Delete {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "Orphan is only permitted when deleting a workspace.",
            None,
        ));
    }
    if (orphan || req.state.as_ref().is_some_and(|s| !s.is_null())) && !a.admin {
        return Err(build_error(
            StatusCode::FORBIDDEN,
            "Only template managers may provide custom state",
        ));
    }
    Ok(Valid {
        transition,
        version: req.template_version_id.filter(|v| !v.is_nil()),
        parameters: req
            .rich_parameter_values
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.name, p.value))
            .collect(),
        reason: req
            .reason
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "initiator".to_owned()),
    })
}

/// The workspace's own rules, in wsbuilder's order.
#[allow(clippy::result_large_err)]
fn check_workspace(
    st: &SimState,
    ws: &WorkspaceRec,
    a: Actor,
    req: &Valid,
    now: Timestamp,
) -> Result<(), Response> {
    if st.is_deleted(ws, now) && req.transition != Transition::Delete {
        return Err(build_error(
            StatusCode::CONFLICT,
            "Workspace has been deleted.",
        ));
    }
    if ws.dormant_at.is_some()
        && req.transition == Transition::Start
        && st.dormant_start == DormantStart::Refuse
    {
        // Older Coder: a dormant workspace may be stopped or deleted, not started.
        return Err(error(
            StatusCode::FORBIDDEN,
            "You do not have permission to start this workspace.",
            Some(FORBIDDEN_DETAIL),
        ));
    }
    check_version(st, ws, a, req)?;
    if st
        .latest_build(ws)
        .is_some_and(|b| b.job(now).status.active())
    {
        return Err(build_error(
            StatusCode::CONFLICT,
            "A workspace build is already active.",
        ));
    }
    Ok(())
}

/// The build uses `template_version_id` when sent, else the previous build's version (Coder
/// never picks the active version by itself on this route). A template that requires the
/// active version refuses a start on another one unless the caller administers templates.
#[allow(clippy::result_large_err)]
fn check_version(st: &SimState, ws: &WorkspaceRec, a: Actor, req: &Valid) -> Result<(), Response> {
    if let Some(v) = req.version
        && !ws.template.versions.contains(&v)
    {
        let elsewhere = st
            .workspaces
            .values()
            .any(|w| w.template.versions.contains(&v));
        let message = if elsewhere {
            "template version doesn't match template"
        } else {
            "template version does not exist"
        };
        return Err(build_error(StatusCode::BAD_REQUEST, message));
    }
    let previous = st.latest_build(ws).map(|b| b.template_version_id);
    let version = req
        .version
        .or(previous)
        .unwrap_or_else(|| ws.template.active_version());
    if req.transition == Transition::Start
        && ws.template.require_active_version
        && version != ws.template.active_version()
        && !a.admin
    {
        return Err(build_error(
            StatusCode::FORBIDDEN,
            "cannot use non-active version: the template requires the active version",
        ));
    }
    Ok(())
}
