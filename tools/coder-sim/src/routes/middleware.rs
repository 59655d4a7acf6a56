//! The middleware in front of every API route: request counters,
//! authentication, per-user per-path rate limiting and fault injection.

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use uuid::Uuid;

use super::{App, hostile};
use crate::faults::{ANY_ROUTE, Action, take};
use crate::http::{FORBIDDEN_DETAIL, SIGNED_OUT, error, not_found};
use crate::listener::ConnInfo;
use crate::model::State as SimState;

/// Routes answered without a session token.
const PUBLIC_ROUTES: &[&str] = &["GET /healthz", "GET /api/v2/buildinfo"];
/// Routes exempt from rate limiting.
const UNLIMITED_ROUTES: &[&str] = &["GET /healthz"];

/// The authenticated caller.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Actor {
    pub id: Uuid,
    pub admin: bool,
}

impl Actor {
    pub(crate) fn can_read(&self, owner: Uuid) -> bool {
        self.admin || self.id == owner
    }
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

/// As Coder's API key middleware: a dormant user's request activates them; any other status
/// but `active` is refused.
fn authenticate(st: &mut SimState, token: Option<&str>) -> Auth {
    let Some(token) = token else {
        return Auth::Missing;
    };
    let Some(id) = st.tokens.get(token).copied() else {
        return Auth::Invalid;
    };
    let Some(user) = st.users.get_mut(&id).filter(|u| !u.deleted) else {
        return Auth::Invalid;
    };
    if user.status == "dormant" {
        user.status = "active".to_owned();
    }
    if user.status != "active" {
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

pub(crate) async fn api_middleware(
    State(app): State<App>,
    mut req: Request,
    next: Next,
) -> Response {
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
        let auth = authenticate(&mut st, token.as_deref());
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
        // The route's own fault first, then one set on every route (`ANY_ROUTE`).
        let mut action = None;
        for key in [route.as_str(), ANY_ROUTE] {
            let mut slot = st.faults.remove(key);
            action = take(&mut slot, req.uri().path());
            if let Some(f) = slot {
                st.faults.insert(key.to_owned(), f);
            }
            if action.is_some() {
                break;
            }
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
    let mut drip = None;
    let mut huge_names = None;
    match action {
        None => {}
        Some(Action::HugeBody(n)) => return with_headers(hostile::huge_body(n)),
        Some(Action::InvalidJson) => return with_headers(hostile::invalid_json()),
        Some(Action::BigMessage { status, bytes }) => {
            return with_headers(hostile::big_message(status, bytes));
        }
        Some(Action::UnterminatedSse) => return with_headers(hostile::unterminated_sse()),
        Some(Action::SilentSse) => return with_headers(hostile::silent_sse(app.shutdown.clone())),
        Some(Action::Drip(bps)) => drip = Some(bps),
        Some(Action::HugeNames(n)) => huge_names = Some(n),
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
    if let Some(n) = huge_names {
        return with_headers(hostile::huge_names(resp, n).await);
    }
    if let Some(bps) = drip {
        return with_headers(hostile::drip(resp, bps).await);
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
pub(crate) fn actor(req_actor: Option<axum::Extension<Actor>>) -> Result<Actor, Response> {
    req_actor
        .map(|a| a.0)
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, SIGNED_OUT, None))
}

pub(crate) type Act = Option<axum::Extension<Actor>>;
