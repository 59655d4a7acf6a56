//! The admin HTTP API under `/admin`: no auth, no rate limit, not counted.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use jiff::Timestamp;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::http::{error, reply};
use crate::json;
use crate::model::{BuildScript, Transition};
use crate::routes::App;
use crate::scenario::{
    ChatDoc, FaultDoc, Scenario, ScriptDoc, ServerDoc, UserDoc, WorkspaceDoc, add_chat_doc,
    add_workspace_doc,
};

/// The admin router.
pub(crate) fn router() -> Router<App> {
    Router::new()
        .route("/admin/users", post(add_user))
        .route("/admin/users/{id}", delete(delete_user))
        .route("/admin/users/{id}/status", put(user_status))
        .route("/admin/server", put(server))
        .route("/admin/workspaces/{id}/dormant", put(dormant))
        .route("/admin/workspaces", post(add_workspace))
        .route("/admin/workspaces/{id}", delete(delete_workspace))
        .route("/admin/workspaces/{id}/script", post(script))
        .route("/admin/workspaces/{id}/builds", post(start_build))
        .route(
            "/admin/workspaces/{id}/template-version",
            post(publish_version),
        )
        .route("/admin/workspaces/{id}/watch-error", post(watch_error))
        .route("/admin/workspacebuilds/{id}/cancel", post(cancel_build))
        .route("/admin/chats", post(add_chat))
        .route("/admin/scenario", post(apply_scenario))
        .route("/admin/faults", put(set_fault).delete(clear_faults))
        .route("/admin/counters", get(counters).delete(reset_counters))
        .route("/admin/state", get(state))
        .route("/admin/events", get(events))
}

fn bad(msg: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, &msg.to_string(), None)
}

#[allow(clippy::result_large_err)]
fn body<T: DeserializeOwned>(b: &Bytes) -> Result<T, Response> {
    let b: &[u8] = if b.is_empty() { b"{}" } else { b };
    serde_json::from_slice(b).map_err(|e| bad(format!("invalid body: {e}")))
}

#[allow(clippy::result_large_err)]
fn ws_id(app: &App, raw: &str) -> Result<Uuid, Response> {
    let id = Uuid::parse_str(raw).map_err(|e| bad(format!("invalid id: {e}")))?;
    if app.sim.lock().workspaces.contains_key(&id) {
        Ok(id)
    } else {
        Err(error(StatusCode::NOT_FOUND, "unknown workspace", None))
    }
}

async fn add_user(State(app): State<App>, b: Bytes) -> Response {
    let doc: UserDoc = match body(&b) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let u = app.sim.add_user_spec(doc.into());
    reply(StatusCode::CREATED, json!(u))
}

#[allow(clippy::result_large_err)]
fn user_id(app: &App, raw: &str) -> Result<Uuid, Response> {
    let id = Uuid::parse_str(raw).map_err(|e| bad(format!("invalid id: {e}")))?;
    if app.sim.lock().users.contains_key(&id) {
        Ok(id)
    } else {
        Err(error(StatusCode::NOT_FOUND, "unknown user", None))
    }
}

#[derive(Deserialize)]
struct StatusBody {
    status: String,
}

async fn user_status(State(app): State<App>, Path(id): Path<String>, b: Bytes) -> Response {
    let id = match user_id(&app, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let doc: StatusBody = match body(&b) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if !matches!(doc.status.as_str(), "active" | "dormant" | "suspended") {
        return bad(format!(
            "invalid status {:?} (active, dormant, suspended)",
            doc.status
        ));
    }
    app.sim.set_user_status(id, &doc.status);
    StatusCode::NO_CONTENT.into_response()
}

async fn delete_user(State(app): State<App>, Path(id): Path<String>) -> Response {
    match user_id(&app, &id) {
        Ok(id) => {
            app.sim.delete_user(id);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => r,
    }
}

/// `{"version"?, "chat_era"?, "dormant_start"?}`: upgrades the running deployment.
async fn server(State(app): State<App>, b: Bytes) -> Response {
    let doc: ServerDoc = match body(&b) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if doc.rate_limit_per_minute.is_some() {
        return bad("rate_limit_per_minute cannot change while running");
    }
    app.sim.set_server(doc.version.as_deref(), doc.chat_era);
    if let Some(d) = doc.dormant_start {
        app.sim.set_dormant_start(d);
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct DormantBody {
    dormant: bool,
}

async fn dormant(State(app): State<App>, Path(id): Path<String>, b: Bytes) -> Response {
    let id = match ws_id(&app, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let doc: DormantBody = match body(&b) {
        Ok(d) => d,
        Err(r) => return r,
    };
    app.sim.set_dormant(id, doc.dormant);
    StatusCode::NO_CONTENT.into_response()
}

async fn add_workspace(State(app): State<App>, b: Bytes) -> Response {
    let doc: WorkspaceDoc = match body(&b) {
        Ok(d) => d,
        Err(r) => return r,
    };
    match add_workspace_doc(&app.sim, &doc) {
        Ok(id) => reply(StatusCode::CREATED, json!({ "id": id })),
        Err(e) => bad(e),
    }
}

async fn add_chat(State(app): State<App>, b: Bytes) -> Response {
    let doc: ChatDoc = match body(&b) {
        Ok(d) => d,
        Err(r) => return r,
    };
    match add_chat_doc(&app.sim, &doc) {
        Ok(id) => reply(StatusCode::CREATED, json!({ "id": id })),
        Err(e) => bad(e),
    }
}

async fn apply_scenario(State(app): State<App>, b: Bytes) -> Response {
    let text = String::from_utf8_lossy(&b);
    let scenario = match Scenario::parse(&text, text.trim_start().starts_with('{')) {
        Ok(s) => s,
        Err(e) => return bad(format!("invalid scenario: {e:#}")),
    };
    match scenario.apply(&app.sim) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => bad(e),
    }
}

async fn script(State(app): State<App>, Path(id): Path<String>, b: Bytes) -> Response {
    let id = match ws_id(&app, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let doc: ScriptDoc = match body(&b) {
        Ok(d) => d,
        Err(r) => return r,
    };
    app.sim.script_next_build(id, BuildScript::from(doc));
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct TransitionBody {
    #[serde(default)]
    transition: Option<String>,
}

async fn start_build(State(app): State<App>, Path(id): Path<String>, b: Bytes) -> Response {
    let id = match ws_id(&app, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let t: TransitionBody = match body(&b) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let raw = t.transition.unwrap_or_else(|| "start".to_owned());
    let Some(transition) = Transition::parse(&raw) else {
        return bad(format!("invalid transition {raw:?}"));
    };
    let build = app.sim.start_build(id, transition);
    reply(StatusCode::CREATED, json!({ "id": build }))
}

async fn publish_version(State(app): State<App>, Path(id): Path<String>) -> Response {
    let id = match ws_id(&app, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let v = app.sim.publish_template_version(id);
    reply(StatusCode::CREATED, json!({ "template_version_id": v }))
}

#[derive(Deserialize)]
struct MessageBody {
    #[serde(default)]
    message: Option<String>,
}

async fn watch_error(State(app): State<App>, Path(id): Path<String>, b: Bytes) -> Response {
    let id = match ws_id(&app, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let m: MessageBody = match body(&b) {
        Ok(d) => d,
        Err(r) => return r,
    };
    app.sim.fail_watchers(
        id,
        m.message
            .as_deref()
            .unwrap_or("Internal error fetching workspace."),
    );
    StatusCode::NO_CONTENT.into_response()
}

async fn cancel_build(State(app): State<App>, Path(id): Path<String>) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return bad("invalid id");
    };
    if app.sim.cancel_build(id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(
            StatusCode::CONFLICT,
            "build is not active (or unknown)",
            None,
        )
    }
}

async fn delete_workspace(State(app): State<App>, Path(id): Path<String>) -> Response {
    let id = match ws_id(&app, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    app.sim.delete_workspace(id);
    StatusCode::NO_CONTENT.into_response()
}

async fn set_fault(State(app): State<App>, b: Bytes) -> Response {
    let doc: FaultDoc = match body(&b) {
        Ok(d) => d,
        Err(r) => return r,
    };
    app.sim.set_fault(&doc.route, doc.fault);
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(State(app): State<App>) -> Response {
    app.sim.clear_faults();
    StatusCode::NO_CONTENT.into_response()
}

async fn counters(State(app): State<App>) -> Response {
    reply(StatusCode::OK, json!(app.sim.counters()))
}

async fn reset_counters(State(app): State<App>) -> Response {
    app.sim.reset_counters();
    StatusCode::NO_CONTENT.into_response()
}

async fn state(State(app): State<App>) -> Response {
    let now = Timestamp::now();
    let st = app.sim.lock();
    let users: Vec<Value> = st
        .users
        .values()
        .map(|u| json!({ "id": u.id, "username": u.username, "token": u.token, "admin": u.admin, "status": u.status, "deleted": u.deleted }))
        .collect();
    let workspaces: Vec<Value> = st
        .workspaces
        .values()
        .map(|w| {
            json!({
                "deleted": st.is_deleted(w, now),
                "builds_created": w.builds_created,
                "builds_posted": w.builds_posted,
                "scripted_builds_queued": w.scripts.len(),
                "workspace": json::workspace(&st, w, now),
            })
        })
        .collect();
    let chats: Vec<Value> = st.chats.values().map(|c| json::chat(&st, c, now)).collect();
    let faults: Vec<Value> = st
        .faults
        .iter()
        .map(|(route, f)| json!({ "route": route, "fault": f }))
        .collect();
    reply(
        StatusCode::OK,
        json!({
            "version": st.version,
            "chat_era": st.chat_era,
            "dormant_start": st.dormant_start,
            "rate_limit_per_minute": st.ratelimit.limit(),
            "users": users,
            "workspaces": workspaces,
            "chats": chats,
            "faults": faults,
            "counters": st.counters,
        }),
    )
}

/// `GET /admin/events`: the state-change feed ([`crate::StateChange`]) as server-sent events,
/// one `event: change` per change, until the simulator shuts down.
async fn events(State(app): State<App>) -> Response {
    use futures::StreamExt;
    let mut shutdown = app.shutdown.clone();
    let changes = app
        .sim
        .state_changes()
        .map(|c| {
            let data = serde_json::to_string(&c).unwrap_or_default();
            Ok::<_, std::convert::Infallible>(Bytes::from(format!(
                "event: change\ndata: {data}\n\n"
            )))
        })
        .take_until(async move {
            let _ = shutdown.wait_for(|v| *v).await;
        });
    Response::builder()
        .status(StatusCode::OK)
        .header(axum::http::header::CONTENT_TYPE, "text/event-stream")
        .header(axum::http::header::CACHE_CONTROL, "no-cache")
        .body(axum::body::Body::from_stream(changes))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
