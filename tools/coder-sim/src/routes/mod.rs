//! The Coder REST routes: the router and the handlers that answer from the
//! model through the JSON rendering.

#![allow(clippy::result_large_err)] // helpers return `Response` as their error type

mod builds;
mod debug;
mod hostile;
mod middleware;
mod watch;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::middleware as axum_mw;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use self::middleware::{Act, Actor, actor, api_middleware};
use crate::config::ChatEra;
use crate::http::{error, not_found, parse_uuid, reply, route_not_found};
use crate::json;
use crate::model::{Sim, State as SimState, WorkspaceRec};

/// Shared router state.
#[derive(Clone)]
pub(crate) struct App {
    pub sim: Sim,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The Coder API router (without state applied).
pub(crate) fn router(app: App) -> Router<App> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v2/buildinfo", get(buildinfo))
        .route("/api/v2/experiments", get(experiments))
        .route("/api/v2/users/me", get(users_me))
        .route("/api/v2/users/{user}", get(user_get))
        .route(
            "/api/v2/users/{user}/workspace/{name}",
            get(workspace_by_name),
        )
        .route("/api/v2/chats/{id}", get(chat_v2))
        .route("/api/experimental/chats/{id}", get(chat_experimental))
        .route("/api/v2/workspaces/{id}", get(workspace_get))
        .route(
            "/api/v2/workspaces/{id}/builds",
            get(builds_list).post(builds::post_build),
        )
        .route("/api/v2/workspaces/{id}/watch", get(watch::watch))
        .route("/api/v2/workspacebuilds/{id}", get(build_get))
        .route("/api/v2/workspacebuilds/{id}/cancel", patch(build_cancel))
        .route("/api/v2/workspacebuilds/{id}/logs", get(debug::build_logs))
        .route(
            "/api/v2/workspacebuilds/{id}/timings",
            get(debug::build_timings),
        )
        .route("/api/v2/workspaceagents/{id}", get(agent_get))
        .route_layer(axum_mw::from_fn_with_state(app, api_middleware))
        .fallback(fallback)
}

async fn fallback() -> Response {
    route_not_found()
}

// ---------------------------------------------------------------------------
// Handlers

async fn healthz() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "OK").into_response()
}

async fn buildinfo(State(app): State<App>) -> Response {
    let st = app.sim.lock();
    reply(StatusCode::OK, json::buildinfo(&st))
}

async fn experiments(State(app): State<App>, a: Act) -> Response {
    if let Err(r) = actor(a) {
        return r;
    }
    let era = app.sim.lock().chat_era;
    let list: Vec<&str> = if era == ChatEra::V2 {
        Vec::new()
    } else {
        vec!["agents"]
    };
    reply(StatusCode::OK, serde_json::json!(list))
}

async fn users_me(State(app): State<App>, a: Act) -> Response {
    let a = match actor(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let st = app.sim.lock();
    match st.users.get(&a.id) {
        Some(u) => reply(StatusCode::OK, json::user(&st, u)),
        None => not_found(),
    }
}

fn user_error(user: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "\"user\" must be an existing uuid or username.",
        Some(&format!("queried user={user:?}")),
    )
}

fn resolve_user<'a>(st: &'a SimState, a: Actor, user: &str) -> Option<&'a crate::model::UserRec> {
    if user == "me" {
        st.users.get(&a.id)
    } else {
        st.user_by_ref(user)
    }
}

async fn user_get(State(app): State<App>, a: Act, Path(user): Path<String>) -> Response {
    let a = match actor(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let st = app.sim.lock();
    match resolve_user(&st, a, &user) {
        Some(u) => reply(StatusCode::OK, json::user(&st, u)),
        None => user_error(&user),
    }
}

#[derive(Debug, Default, Deserialize)]
struct DeletedQuery {
    #[serde(default)]
    include_deleted: Option<String>,
}

impl DeletedQuery {
    fn yes(&self) -> bool {
        self.include_deleted
            .as_deref()
            .is_some_and(|v| matches!(v, "true" | "1" | "t"))
    }
}

async fn workspace_by_name(
    State(app): State<App>,
    a: Act,
    Path((user, name)): Path<(String, String)>,
    Query(q): Query<DeletedQuery>,
) -> Response {
    let a = match actor(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let now = Timestamp::now();
    let st = app.sim.lock();
    let Some(owner) = resolve_user(&st, a, &user) else {
        return user_error(&user);
    };
    let mut candidates: Vec<&WorkspaceRec> = st
        .workspaces
        .values()
        .filter(|w| w.owner == owner.id && w.name == name)
        .collect();
    // Prefer a live workspace over a deleted one with the same name.
    candidates.sort_by_key(|w| (st.is_deleted(w, now), std::cmp::Reverse(w.created_at)));
    let Some(ws) = candidates
        .into_iter()
        .find(|w| q.yes() || !st.is_deleted(w, now))
    else {
        return not_found();
    };
    if !a.can_read(ws.owner) {
        return not_found();
    }
    reply(StatusCode::OK, json::workspace(&st, ws, now))
}

fn chat_response(app: &App, a: Act, id: &str, want_v2: bool) -> Response {
    let a = match actor(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let st = app.sim.lock();
    if (st.chat_era == ChatEra::V2) != want_v2 {
        return route_not_found();
    }
    let id = match parse_uuid(id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match st.chats.get(&id) {
        Some(c) if a.can_read(c.owner) => {
            reply(StatusCode::OK, json::chat(&st, c, Timestamp::now()))
        }
        _ => not_found(),
    }
}

async fn chat_v2(State(app): State<App>, a: Act, Path(id): Path<String>) -> Response {
    chat_response(&app, a, &id, true)
}

async fn chat_experimental(State(app): State<App>, a: Act, Path(id): Path<String>) -> Response {
    chat_response(&app, a, &id, false)
}

/// Resolves `{id}` to a workspace the actor may read.
pub(crate) fn readable_ws<'a>(
    st: &'a SimState,
    a: Actor,
    raw: &str,
) -> Result<&'a WorkspaceRec, Response> {
    let id = parse_uuid(raw)?;
    match st.workspaces.get(&id) {
        Some(ws) if a.can_read(ws.owner) => Ok(ws),
        _ => Err(not_found()),
    }
}

async fn workspace_get(
    State(app): State<App>,
    a: Act,
    Path(id): Path<String>,
    Query(q): Query<DeletedQuery>,
) -> Response {
    let a = match actor(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let now = Timestamp::now();
    let st = app.sim.lock();
    let ws = match readable_ws(&st, a, &id) {
        Ok(ws) => ws,
        Err(r) => return r,
    };
    if st.is_deleted(ws, now) && !q.yes() {
        return error(
            StatusCode::GONE,
            &format!(
                "Workspace {:?} was deleted, you can view this workspace by specifying '?deleted=true' and trying again.",
                ws.id.to_string()
            ),
            None,
        );
    }
    reply(StatusCode::OK, json::workspace(&st, ws, now))
}

async fn builds_list(State(app): State<App>, a: Act, Path(id): Path<String>) -> Response {
    let a = match actor(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let now = Timestamp::now();
    let st = app.sim.lock();
    let ws = match readable_ws(&st, a, &id) {
        Ok(ws) => ws,
        Err(r) => return r,
    };
    let list: Vec<Value> = ws
        .builds
        .iter()
        .rev()
        .filter_map(|b| st.builds.get(b))
        .map(|b| json::build(&st, ws, b, now))
        .collect();
    reply(StatusCode::OK, Value::Array(list))
}

/// Resolves a build id to (workspace, build) the actor may read.
fn readable_build(st: &SimState, a: Actor, raw: &str) -> Result<(Uuid, Uuid), Response> {
    let id = parse_uuid(raw)?;
    let Some(b) = st.builds.get(&id) else {
        return Err(not_found());
    };
    match st.workspaces.get(&b.workspace_id) {
        Some(ws) if a.can_read(ws.owner) => Ok((ws.id, b.id)),
        _ => Err(not_found()),
    }
}

async fn build_get(State(app): State<App>, a: Act, Path(id): Path<String>) -> Response {
    let a = match actor(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let st = app.sim.lock();
    let (ws, b) = match readable_build(&st, a, &id) {
        Ok(x) => x,
        Err(r) => return r,
    };
    match (st.workspaces.get(&ws), st.builds.get(&b)) {
        (Some(ws), Some(b)) => reply(StatusCode::OK, json::build(&st, ws, b, Timestamp::now())),
        _ => not_found(),
    }
}

async fn build_cancel(State(app): State<App>, a: Act, Path(id): Path<String>) -> Response {
    let a = match actor(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let build = {
        let st = app.sim.lock();
        let (_, b) = match readable_build(&st, a, &id) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let Some(rec) = st.builds.get(&b) else {
            return not_found();
        };
        let job = rec.job(Timestamp::now());
        if job.canceled_at.is_some() {
            return error(
                StatusCode::BAD_REQUEST,
                "Job has already been marked as canceled!",
                None,
            );
        }
        if !job.status.active() {
            return error(StatusCode::BAD_REQUEST, "Job has already completed!", None);
        }
        b
    };
    if !app.sim.cancel_build(build) {
        return error(StatusCode::BAD_REQUEST, "Job has already completed!", None);
    }
    error(StatusCode::OK, "Job has been marked as canceled...", None)
}

async fn agent_get(State(app): State<App>, a: Act, Path(id): Path<String>) -> Response {
    let a = match actor(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let id = match parse_uuid(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let now = Timestamp::now();
    let st = app.sim.lock();
    for b in st.builds.values() {
        if !b.agents.iter().any(|x| x.id == id) {
            continue;
        }
        let Some(ws) = st.workspaces.get(&b.workspace_id) else {
            break;
        };
        if !a.can_read(ws.owner) {
            break;
        }
        let full = json::build(&st, ws, b, now);
        let found = full["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["agents"].as_array().into_iter().flatten())
            .find(|x| x["id"] == Value::String(id.to_string()))
            .cloned();
        if let Some(agent) = found {
            return reply(StatusCode::OK, agent);
        }
        break;
    }
    not_found()
}
