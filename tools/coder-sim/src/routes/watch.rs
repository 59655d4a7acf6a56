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

/// One open watch stream. Like coderd, it sends the full workspace when it connects and on
/// every workspace event (a scheduled job or agent transition, or a change made through the API
/// or the admin API), and nothing for changes that only time causes. An `error` event does not
/// end it.
struct WatchStream {
    app: App,
    ws: Uuid,
    events: tokio::sync::watch::Receiver<u64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    last: Option<String>,
    queue: VecDeque<Bytes>,
    err_seq: u64,
    /// An event happened: render and send the workspace.
    event_due: bool,
    /// When the next scheduled event of the latest build happens.
    next_event: Option<tokio::time::Instant>,
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
            if self.event_due {
                self.event_due = false;
                self.render()?;
                continue;
            }
            let next_event = self.next_event;
            tokio::select! {
                _ = self.events.changed() => self.event_due = true,
                () = sleep_until(next_event) => {
                    self.next_event = None;
                    self.event_due = true;
                }
                _ = tokio::time::sleep_until(self.next_ping) => {
                    self.next_ping += PING_INTERVAL;
                    self.queue.push_back(frame("ping", None));
                }
                _ = self.shutdown.wait_for(|v| *v) => self.done = true,
            }
        }
    }

    /// Queues what an event shows: an injected error, or the workspace when it changed since
    /// the last frame. `None` when the workspace is gone.
    fn render(&mut self) -> Option<()> {
        let now = Timestamp::now();
        let st = self.app.sim.lock();
        let ws = st.workspaces.get(&self.ws)?;
        if let Some((seq, msg)) = st
            .watch_errors
            .get(&self.ws)
            .filter(|(s, _)| *s > self.err_seq)
        {
            self.err_seq = *seq;
            // coderd sends its error with the underlying error as detail.
            let e = json::response(msg, Some("coder-sim: injected watch error")).to_string();
            self.queue.push_back(frame("error", Some(&e)));
        }
        let body = json::workspace(&st, ws, now).to_string();
        self.next_event = st.next_event(ws, now).map(|t| {
            let wait = Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO);
            tokio::time::Instant::now() + wait + Duration::from_millis(2)
        });
        drop(st);
        if self.last.as_deref() != Some(body.as_str()) {
            self.queue.push_back(frame("data", Some(&body)));
            self.last = Some(body);
        }
        Some(())
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
    let mut events = app.sim.subscribe_workspace(ws);
    events.mark_unchanged();
    let state = WatchStream {
        shutdown: app.shutdown.clone(),
        app,
        ws,
        events,
        last: None,
        // Coder: a ping once subscribed, then the workspace at once.
        queue: VecDeque::from([frame("ping", None)]),
        err_seq,
        event_due: true,
        next_event: None,
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
