//! The Coder REST routes and the middleware in front of them (request
//! counters, authentication, rate limiting, fault injection).

#![allow(clippy::result_large_err)] // helpers return `Response` as their error type

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::faults::{Action, ConnInfo, take};
use crate::json;
use crate::model::{State as SimState, Transition, WorkspaceRec};
use crate::{App, ChatEra};

/// Coder's message for a missing or bad session.
pub(crate) const SIGNED_OUT: &str =
    "You are signed out or your session has expired. Please sign in again to continue.";
/// `httpapi.ResourceNotFoundResponse`.
pub(crate) const NOT_FOUND: &str = "Resource not found or you do not have access to this resource";
/// `httpapi.ResourceForbiddenResponse.Detail`.
const FORBIDDEN_DETAIL: &str = "You don't have permission to view this content. If you believe this is a mistake, please contact your administrator or try signing in with different credentials.";
/// Routes answered without a session token.
const PUBLIC_ROUTES: &[&str] = &["GET /healthz", "GET /api/v2/buildinfo"];
/// Routes exempt from rate limiting.
const UNLIMITED_ROUTES: &[&str] = &["GET /healthz"];
/// Interval between `event: ping` frames on a watch stream.
const PING_INTERVAL: Duration = Duration::from_secs(15);

/// The authenticated caller.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Actor {
    pub id: Uuid,
    pub admin: bool,
}

impl Actor {
    fn can_read(&self, owner: Uuid) -> bool {
        self.admin || self.id == owner
    }
}

/// JSON response with a status.
pub(crate) fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// `{"message":…,"detail"?:…}` error response.
pub(crate) fn error(status: StatusCode, message: &str, detail: Option<&str>) -> Response {
    reply(status, json::response(message, detail))
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, NOT_FOUND, None)
}

fn route_not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Route not found.", None)
}

/// Parses a UUID path parameter like `httpmw.ParseUUIDParam`.
fn parse_uuid(raw: &str) -> Result<Uuid, Response> {
    Uuid::parse_str(raw).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid UUID {raw:?}."),
            Some(&e.to_string()),
        )
    })
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
            get(builds_list).post(post_build),
        )
        .route("/api/v2/workspaces/{id}/watch", get(watch))
        .route("/api/v2/workspacebuilds/{id}", get(build_get))
        .route("/api/v2/workspacebuilds/{id}/cancel", patch(build_cancel))
        .route("/api/v2/workspaceagents/{id}", get(agent_get))
        .route_layer(middleware::from_fn_with_state(app, api_middleware))
        .fallback(fallback)
}

async fn fallback() -> Response {
    route_not_found()
}

// ---------------------------------------------------------------------------
// Middleware

enum Auth {
    Missing,
    Invalid,
    Inactive(String),
    Ok(Actor),
}

fn session_token(req: &Request) -> Option<String> {
    let headers = req.headers();
    if let Some(v) = headers
        .get("Coder-Session-Token")
        .and_then(|v| v.to_str().ok())
    {
        return Some(v.to_owned());
    }
    if let Some(cookies) = headers.get(header::COOKIE).and_then(|v| v.to_str().ok()) {
        for c in cookies.split(';') {
            if let Some(v) = c.trim().strip_prefix("coder_session_token=") {
                return Some(v.to_owned());
            }
        }
    }
    let query = req.uri().query().unwrap_or("");
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("coder_session_token=") {
            return Some(v.to_owned());
        }
    }
    None
}

fn authenticate(st: &SimState, token: Option<&str>) -> Auth {
    let Some(token) = token else {
        return Auth::Missing;
    };
    let Some(user) = st.tokens.get(token).and_then(|id| st.users.get(id)) else {
        return Auth::Invalid;
    };
    if user.status == "suspended" {
        return Auth::Inactive(user.status.clone());
    }
    Auth::Ok(Actor {
        id: user.id,
        admin: user.admin,
    })
}

fn fault_response(code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match code {
        401 => error(status, SIGNED_OUT, Some("API key is invalid.")),
        403 => error(status, "Forbidden.", Some(FORBIDDEN_DETAIL)),
        404 => not_found(),
        429 => error(
            status,
            "You've been rate limited for sending more than 512 requests in 1m0s.",
            None,
        ),
        500 => error(status, "Internal error.", Some("coder-sim: injected fault")),
        _ => error(
            status,
            status.canonical_reason().unwrap_or("Error"),
            Some("coder-sim: injected fault"),
        ),
    };
    if code == 429 {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    resp
}

fn set_header(h: &mut HeaderMap, name: &'static str, v: i64) {
    if let Ok(v) = HeaderValue::from_str(&v.to_string()) {
        h.insert(name, v);
    }
}

async fn api_middleware(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let Some(route) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| format!("{} {}", req.method(), m.as_str()))
    else {
        return next.run(req).await;
    };
    let conn = req
        .extensions()
        .get::<ConnectInfo<ConnInfo>>()
        .map(|c| c.0.clone());
    let token = session_token(&req);
    // Coder's limiter keys by user and URL path (httprate.KeyByEndpoint = r.URL.Path, no
    // method): every workspace, chat and build has its own budget per user.
    let limit_key = req.uri().path().to_owned();
    let bypass = req
        .headers()
        .get("X-Coder-Bypass-Ratelimit")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "t"));
    let now_s = Timestamp::now().as_second();

    let (auth, verdict, action, limit) = {
        let mut st = app.sim.lock();
        *st.counters.entry(route.clone()).or_default() += 1;
        let auth = authenticate(&st, token.as_deref());
        let limit = st.ratelimit.limit();
        let mut verdict = None;
        if !UNLIMITED_ROUTES.contains(&route.as_str()) {
            let key = match &auth {
                Auth::Ok(a) if bypass && !a.admin => {
                    drop(st);
                    return (
                        StatusCode::PRECONDITION_REQUIRED,
                        "\"X-Coder-Bypass-Ratelimit\" provided but user is not owner\n",
                    )
                        .into_response();
                }
                Auth::Ok(a) if bypass && a.admin => None,
                Auth::Ok(a) => Some(a.id.to_string()),
                _ => Some(
                    conn.as_ref()
                        .map_or_else(|| "unknown".to_owned(), |c| c.peer.ip().to_string()),
                ),
            };
            if let Some(key) = key {
                verdict = st.ratelimit.check(&key, &limit_key, now_s);
            }
        }
        let mut slot = st.faults.remove(&route);
        let action = take(&mut slot);
        if let Some(f) = slot {
            st.faults.insert(route.clone(), f);
        }
        (auth, verdict, action, limit)
    };

    let with_headers = |mut resp: Response| -> Response {
        if let Some(v) = verdict {
            let h = resp.headers_mut();
            set_header(h, "X-RateLimit-Limit", v.limit);
            set_header(h, "X-RateLimit-Remaining", v.remaining);
            set_header(h, "X-RateLimit-Reset", v.reset);
        }
        resp
    };

    if let Some(v) = verdict
        && !v.allowed
    {
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("You've been rate limited for sending more than {limit} requests in 1m0s."),
            None,
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return with_headers(resp);
    }

    let mut commit_then_fail = false;
    let mut commit_then_hang = false;
    match action {
        None => {}
        Some(Action::Status(code)) => return with_headers(fault_response(code)),
        Some(Action::Hang) => {
            let mut rx = app.shutdown.clone();
            let _ = rx.wait_for(|v| *v).await;
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "coder-sim is shutting down.",
                None,
            );
        }
        Some(Action::Reset) => {
            if let Some(c) = &conn {
                c.reset();
            }
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Some(Action::Slow(d)) => tokio::time::sleep(d).await,
        Some(Action::CommitThenFail) => commit_then_fail = true,
        Some(Action::CommitThenHang) => commit_then_hang = true,
        Some(Action::RateLimited(secs)) => {
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "You've been rate limited for sending more than {limit} requests in 1m0s."
                ),
                None,
            );
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return with_headers(resp);
        }
    }

    if !PUBLIC_ROUTES.contains(&route.as_str()) {
        match auth {
            Auth::Missing => {
                return with_headers(error(
                    StatusCode::UNAUTHORIZED,
                    SIGNED_OUT,
                    Some("Cookie \"coder_session_token\" or query parameter must be provided."),
                ));
            }
            Auth::Invalid => {
                return with_headers(error(
                    StatusCode::UNAUTHORIZED,
                    SIGNED_OUT,
                    Some("API key is invalid."),
                ));
            }
            Auth::Inactive(status) => {
                return with_headers(error(
                    StatusCode::UNAUTHORIZED,
                    &format!(
                        "User is not active (status = {status:?}). Contact an admin to reactivate your account."
                    ),
                    None,
                ));
            }
            Auth::Ok(actor) => {
                req.extensions_mut().insert(actor);
            }
        }
    }

    let resp = next.run(req).await;
    if commit_then_hang {
        drop(resp);
        let mut rx = app.shutdown.clone();
        let _ = rx.wait_for(|v| *v).await;
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "coder-sim is shutting down.",
            None,
        );
    }
    if commit_then_fail {
        return with_headers(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error.",
            Some("coder-sim: injected commit-then-fail (the change was applied)"),
        ));
    }
    with_headers(resp)
}

/// Reads the actor inserted by the middleware.
fn actor(req_actor: Option<axum::Extension<Actor>>) -> Result<Actor, Response> {
    req_actor
        .map(|a| a.0)
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, SIGNED_OUT, None))
}

type Act = Option<axum::Extension<Actor>>;

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
fn readable_ws<'a>(st: &'a SimState, a: Actor, raw: &str) -> Result<&'a WorkspaceRec, Response> {
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

fn build_error(status: StatusCode, message: &str) -> Response {
    error(status, message, Some(message))
}

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

const BUILD_REASONS: &[&str] = &[
    "dashboard",
    "cli",
    "ssh_connection",
    "vscode_connection",
    "jetbrains_connection",
];

async fn post_build(
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
    let req: CreateBuild = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Request body must be valid JSON.",
                Some(&e.to_string()),
            );
        }
    };
    let raw_transition = req.transition.clone().unwrap_or_default();
    if raw_transition.is_empty() {
        return validation("transition", "required", "");
    }
    let Some(transition) = Transition::parse(&raw_transition) else {
        return validation("transition", "oneof", &raw_transition);
    };
    if let Some(reason) = req.reason.as_deref().filter(|r| !r.is_empty())
        && !BUILD_REASONS.contains(&reason)
    {
        return validation("reason", "oneof", reason);
    }
    if let Some(level) = req.log_level.as_deref().filter(|l| !l.is_empty()) {
        if level != "debug" {
            return validation("log_level", "oneof", level);
        }
        if !a.admin {
            return build_error(
                StatusCode::BAD_REQUEST,
                "Workspace builds with a custom log level are restricted to administrators only.",
            );
        }
    }
    if req.orphan == Some(true) && transition != Transition::Delete {
        return error(
            StatusCode::BAD_REQUEST,
            "Orphan is only permitted when deleting a workspace.",
            None,
        );
    }
    if (req.orphan == Some(true) || req.state.as_ref().is_some_and(|s| !s.is_null())) && !a.admin {
        return build_error(
            StatusCode::FORBIDDEN,
            "Only template managers may provide custom state",
        );
    }
    let Some(ws) = st.workspaces.get(&ws_id) else {
        return not_found();
    };
    if st.is_deleted(ws, now) && transition != Transition::Delete {
        return build_error(StatusCode::CONFLICT, "Workspace has been deleted.");
    }
    let mut version = None;
    if let Some(v) = req.template_version_id.filter(|v| !v.is_nil()) {
        if !ws.template.versions.contains(&v) {
            let elsewhere = st
                .workspaces
                .values()
                .any(|w| w.template.versions.contains(&v));
            return if elsewhere {
                build_error(
                    StatusCode::BAD_REQUEST,
                    "template version doesn't match template",
                )
            } else {
                build_error(StatusCode::BAD_REQUEST, "template version does not exist")
            };
        }
        version = Some(v);
    }
    if transition == Transition::Start && ws.template.require_active_version {
        version = Some(ws.template.active_version());
    }
    if st
        .latest_build(ws)
        .is_some_and(|b| b.job(now).status.active())
    {
        return build_error(StatusCode::CONFLICT, "A workspace build is already active.");
    }
    let params = req
        .rich_parameter_values
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name, p.value))
        .collect();
    let reason = req
        .reason
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "initiator".to_owned());
    let Some(build_id) =
        st.create_build(ws_id, transition, a.id, &reason, version, params, now, true)
    else {
        return not_found();
    };
    if let Some(w) = st.workspaces.get_mut(&ws_id) {
        w.builds_posted += 1;
    }
    let body = match (st.workspaces.get(&ws_id), st.builds.get(&build_id)) {
        (Some(ws), Some(b)) => json::build(&st, ws, b, now),
        _ => Value::Null,
    };
    drop(st);
    app.sim.notify_workspace(ws_id);
    reply(StatusCode::CREATED, body)
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

// ---------------------------------------------------------------------------
// Watch (SSE)

struct WatchStream {
    app: App,
    ws: Uuid,
    changed: tokio::sync::watch::Receiver<u64>,
    changed_ws: tokio::sync::watch::Receiver<u64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    last: Option<String>,
    queue: VecDeque<Bytes>,
    err_seq: u64,
    next_ping: tokio::time::Instant,
    done: bool,
}

fn frame(event: &str, data: Option<&str>) -> Bytes {
    match data {
        Some(d) => Bytes::from(format!("event: {event}\ndata: {d}\n\n")),
        None => Bytes::from(format!("event: {event}\n\n")),
    }
}

impl WatchStream {
    async fn next_frame(mut self) -> Option<(Result<Bytes, Infallible>, WatchStream)> {
        loop {
            if let Some(b) = self.queue.pop_front() {
                return Some((Ok(b), self));
            }
            if self.done {
                return None;
            }
            let now = Timestamp::now();
            let (body, next, err) = {
                let st = self.app.sim.lock();
                let ws = st.workspaces.get(&self.ws)?;
                let body = json::workspace(&st, ws, now).to_string();
                let err = st
                    .watch_errors
                    .get(&self.ws)
                    .filter(|(s, _)| *s > self.err_seq)
                    .cloned();
                (body, st.next_change(ws, now), err)
            };
            if let Some((seq, msg)) = err {
                self.err_seq = seq;
                let e = json::response(&msg, None).to_string();
                self.queue.push_back(frame("error", Some(&e)));
                self.done = true;
                continue;
            }
            if self.last.as_deref() != Some(body.as_str()) {
                self.queue.push_back(frame("data", Some(&body)));
                self.last = Some(body);
                continue;
            }
            let wait = next.map_or(Duration::from_secs(3600), |t| {
                Duration::try_from(t.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO)
                    + Duration::from_millis(2)
            });
            tokio::select! {
                r = self.changed.changed() => {
                    if r.is_err() { self.done = true; }
                }
                _ = self.changed_ws.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = tokio::time::sleep_until(self.next_ping) => {
                    self.next_ping += PING_INTERVAL;
                    self.queue.push_back(frame("ping", None));
                }
                _ = self.shutdown.wait_for(|v| *v) => { self.done = true; }
            }
        }
    }
}

async fn watch(State(app): State<App>, a: Act, Path(id): Path<String>) -> Response {
    let a = match actor(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (ws, err_seq) = {
        let st = app.sim.lock();
        let ws = match readable_ws(&st, a, &id) {
            Ok(ws) => ws.id,
            Err(r) => return r,
        };
        (ws, st.watch_errors.get(&ws).map_or(0, |(s, _)| *s))
    };
    let mut changed = app.sim.subscribe();
    changed.mark_unchanged();
    let mut changed_ws = app.sim.subscribe_workspace(ws);
    changed_ws.mark_unchanged();
    let state = WatchStream {
        shutdown: app.shutdown.clone(),
        app,
        ws,
        changed,
        changed_ws,
        last: None,
        queue: VecDeque::from([frame("ping", None)]),
        err_seq,
        next_ping: tokio::time::Instant::now() + PING_INTERVAL,
        done: false,
    };
    let stream = futures::stream::unfold(state, WatchStream::next_frame);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("X-Accel-Buffering", "no")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
