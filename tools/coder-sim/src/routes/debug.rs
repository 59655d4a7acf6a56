//! `GET /api/v2/workspacebuilds/{id}/logs` and `.../timings`: a build's provisioner logs
//! (paged with `after`, as `coderd/provisionerjobs.go` does) and its timings. Access follows the
//! build's workspace, as in Coder. `follow` (a WebSocket stream in Coder) is not simulated: it is
//! refused with 400, so a client relying on it fails loudly.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use jiff::Timestamp;
use serde::Deserialize;

use super::middleware::{Act, actor};
use super::{App, readable_build};
use crate::http::{error, not_found, reply};
use crate::json;

/// Query of the logs route (values kept raw so a bad one gets Coder's 400).
#[derive(Debug, Deserialize)]
pub(crate) struct LogsQuery {
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    follow: Option<String>,
}

fn int_param(name: &str, raw: Option<&str>) -> Result<Option<i64>, Response> {
    match raw.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                &format!("Query param \"{name}\" must be an integer."),
                None,
            )
        }),
    }
}

pub(crate) async fn build_logs(
    State(app): State<App>,
    a: Act,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Response {
    let a = match actor(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if q.follow.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "coder-sim does not stream logs (follow); page with ?after=",
            None,
        );
    }
    let (after, before) = match (
        int_param("after", q.after.as_deref()),
        int_param("before", q.before.as_deref()),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let st = app.sim.lock();
    let b = match readable_build(&st, a, &id) {
        Ok((_, b)) => b,
        Err(r) => return r,
    };
    let Some(rec) = st.builds.get(&b) else {
        return not_found();
    };
    let lines: Vec<_> = rec
        .logs(Timestamp::now())
        .into_iter()
        .filter(|l| after.is_none_or(|a| l.id > a) && before.is_none_or(|b| l.id < b))
        .collect();
    reply(StatusCode::OK, json::logs(&st, &lines))
}

pub(crate) async fn build_timings(
    State(app): State<App>,
    a: Act,
    Path(id): Path<String>,
) -> Response {
    let a = match actor(a) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let st = app.sim.lock();
    let b = match readable_build(&st, a, &id) {
        Ok((_, b)) => b,
        Err(r) => return r,
    };
    let Some(rec) = st.builds.get(&b) else {
        return not_found();
    };
    let timings = rec.timings(Timestamp::now());
    reply(StatusCode::OK, json::timings(&st, rec, &timings))
}
