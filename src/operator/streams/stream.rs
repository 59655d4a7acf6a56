//! The `/watch` stream task: records each event in the cache and triggers the attached requests, and
//! ends once no request is attached to the workspace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};

use super::{Streams, WorkspaceKey};
use crate::coder::types::Workspace;
use crate::coder::{CoderClient, CoderError, WatchEvent};

impl Streams {
    /// Marks whether a stream currently delivers events for `key`.
    fn set_live(&self, key: &WorkspaceKey, live: bool) {
        if let Some(e) = self.lock_entries().get_mut(key) {
            e.live = live;
        }
    }

    /// Ends the stream when no request is attached to it any more; returns false then.
    fn keep_streaming(&self, key: &WorkspaceKey) -> bool {
        let mut entries = self.lock_entries();
        match entries.get_mut(key) {
            Some(e) if !e.attached.is_empty() => true,
            Some(e) => {
                e.streaming = false;
                e.live = false;
                if e.unused() {
                    entries.remove(key);
                }
                false
            }
            None => false,
        }
    }

    /// Records a stream event: the workspace it carried, or (`None`) an error event after which
    /// the cached read must not be trusted.
    fn record_event(&self, key: &WorkspaceKey, ws: Option<Workspace>) {
        let mut entries = self.lock_entries();
        if let Some(e) = entries.get_mut(key) {
            e.seq = self.next_seq();
            match ws {
                Some(ws) => {
                    e.latest = Some((ws, Instant::now()));
                    e.live = true;
                }
                None => e.latest = None,
            }
        }
    }

    /// Follows `key`'s `/watch` stream until no request is attached to the workspace, reopening it with
    /// exponential backoff (at least Coder's `Retry-After`) when it fails or ends.
    pub(super) async fn stream(self: Arc<Self>, key: WorkspaceKey, client: CoderClient) {
        let mut backoff = Duration::from_millis(500);
        let Some(stop) = self.lock_entries().get(&key).map(|e| Arc::clone(&e.stop)) else {
            return;
        };
        while self.keep_streaming(&key) {
            match client.watch_workspace(key.workspace).await {
                Ok(events) => {
                    self.metrics.watch_streams.inc();
                    self.drain(&key, events, &stop, &mut backoff).await;
                    self.metrics.watch_streams.dec();
                    self.set_live(&key, false);
                }
                Err(e) => {
                    tracing::debug!(workspace = %key.workspace, error = %e, "cannot open watch stream");
                    if let Some(d) = e.retry_after() {
                        backoff = backoff.max(d);
                    }
                }
            }
            if !self.keep_streaming(&key) {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Handles one opened stream's events until it fails, ends, or nobody follows `key`; a
    /// workspace event resets `backoff`.
    async fn drain(
        &self,
        key: &WorkspaceKey,
        events: impl Stream<Item = Result<WatchEvent, CoderError>> + Send,
        stop: &tokio::sync::Notify,
        backoff: &mut Duration,
    ) {
        futures::pin_mut!(events);
        let mut idle = tokio::time::interval(Duration::from_secs(5));
        idle.tick().await;
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(WatchEvent::Workspace(ws))) => {
                        *backoff = Duration::from_millis(500);
                        self.record_event(key, Some(*ws));
                        let Some(subs) = self.attached(key) else { break };
                        self.triggers.send(&subs);
                    }
                    Some(Ok(WatchEvent::Error(message))) => {
                        // Coder could not render a change: the stream goes on, but
                        // the cached read may be stale, so the attached requests read Coder.
                        tracing::debug!(workspace = %key.workspace, %message, "watch stream reported an error");
                        self.record_event(key, None);
                        let Some(subs) = self.attached(key) else { break };
                        self.triggers.send(&subs);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(workspace = %key.workspace, error = %e, "watch stream error");
                        break;
                    }
                    None => break,
                },
                _ = idle.tick() => {
                    if self.attached(key).is_none() {
                        break;
                    }
                }
                () = stop.notified() => {
                    if self.attached(key).is_none() {
                        break;
                    }
                }
            }
        }
    }
}
