//! `GET /api/v2/workspaces/{id}/watch`: the Server-Sent Events stream.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use uuid::Uuid;

use super::App;
use super::middleware::{Act, actor};
use super::readable_ws;
use crate::json;

/// Interval between `event: ping` frames on a watch stream.
const PING_INTERVAL: Duration = Duration::from_secs(15);

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

pub(crate) async fn watch(State(app): State<App>, a: Act, Path(id): Path<String>) -> Response {
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
