//! The `/watch` stream task: records each event in the cache and triggers the attached requests, and
//! ends once no request is attached to the workspace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};

use tokio::sync::watch;

use super::{Streams, WorkspaceKey};
use crate::coder::types::Workspace;
use crate::coder::{CoderClient, CoderError, WatchEvent};

/// The first pause before a failed or ended stream is reopened; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest pause between reopening attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Waits `backoff`, or less if Coder is seen back meanwhile (`true` then). A closed channel
/// is dropped, so it cannot end every later pause at once.
async fn pause(backoff: Duration, recoveries: &mut Option<watch::Receiver<u64>>) -> bool {
    let Some(rx) = recoveries.as_mut() else {
        tokio::time::sleep(backoff).await;
        return false;
    };
    let sleep = tokio::time::sleep(backoff);
    tokio::pin!(sleep);
    tokio::select! {
        () = &mut sleep => false,
        changed = rx.changed() => {
            if changed.is_ok() {
                return true;
            }
            *recoveries = None;
            sleep.await;
            false
        }
    }
}

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
    /// Coder's return (see [`Streams::reconnect_on`]) cuts a backoff short.
    pub(super) async fn stream(self: Arc<Self>, key: WorkspaceKey, client: CoderClient) {
        let mut backoff = FIRST_BACKOFF;
        let Some(stop) = self.lock_entries().get(&key).map(|e| Arc::clone(&e.stop)) else {
            return;
        };
        let mut recoveries = self.recoveries.get().cloned();
        while self.keep_streaming(&key) {
            // A return of Coder from here on (during this attempt, too) ends the next pause.
            if let Some(rx) = recoveries.as_mut() {
                rx.mark_unchanged();
            }
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
            backoff = if pause(backoff, &mut recoveries).await {
                FIRST_BACKOFF
            } else {
                (backoff * 2).min(MAX_BACKOFF)
            };
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
                        *backoff = FIRST_BACKOFF;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn coders_return_ends_a_streams_pause_and_a_closed_signal_does_not() {
        let (tx, rx) = watch::channel(0u64);
        let mut recoveries = Some(rx);
        let start = tokio::time::Instant::now();
        let back = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send_modify(|n| *n += 1);
        };
        let (woke, ()) = tokio::join!(pause(MAX_BACKOFF, &mut recoveries), back);
        assert!(woke);
        assert_eq!(start.elapsed(), Duration::from_secs(1));

        drop(tx);
        let start = tokio::time::Instant::now();
        assert!(!pause(Duration::from_secs(4), &mut recoveries).await);
        assert_eq!(start.elapsed(), Duration::from_secs(4), "the whole backoff");
        assert!(recoveries.is_none());
    }
}
