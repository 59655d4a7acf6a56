//! Shared Coder watch streams and the per-workspace read cache.
//!
//! One `/watch` stream per in-flight workspace (per Coder connection), shared by every request
//! that waits on it. Each event stores the latest workspace and triggers a reconcile of every
//! subscribed request, so a request turns Ready within milliseconds of the agent. While a
//! stream is live, reconciles read the workspace from here instead of calling Coder.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::reflector::ObjectRef;
use tokio_stream::wrappers::UnboundedReceiverStream;
use uuid::Uuid;

use crate::coder::types::{Workspace, WorkspaceBuild};
use crate::coder::{CoderClient, WatchEvent};
use crate::crd::WorkspaceStartRequest;
use crate::metrics::Metrics;
use crate::triggers::Triggers;

/// Identifies a workspace on one Coder connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct WorkspaceKey {
    /// Connection key (URL plus token fingerprint).
    pub connection: String,
    /// Workspace id.
    pub workspace: Uuid,
}

struct Entry {
    subscribers: HashSet<ObjectRef<WorkspaceStartRequest>>,
    latest: Option<(Workspace, Instant)>,
    /// Changes whenever `latest` does (values from [`Watches::next_seq`], never reused).
    seq: u64,
    live: bool,
    streaming: bool,
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Wakes the stream task when its last subscriber leaves, so it ends at once.
    stop: Arc<tokio::sync::Notify>,
}

impl Entry {
    fn new() -> Entry {
        Entry {
            subscribers: HashSet::new(),
            latest: None,
            seq: 0,
            live: false,
            streaming: false,
            lock: Arc::new(tokio::sync::Mutex::new(())),
            stop: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Nobody follows it, no stream runs for it and no reconcile holds its lock.
    fn unused(&self) -> bool {
        self.subscribers.is_empty() && !self.streaming && Arc::strong_count(&self.lock) == 1
    }
}

/// The shared streams, cache and per-workspace locks.
pub struct Watches {
    entries: Mutex<HashMap<WorkspaceKey, Entry>>,
    /// The workspace each request follows (locked after `entries` when both are needed).
    following: Mutex<HashMap<ObjectRef<WorkspaceStartRequest>, WorkspaceKey>>,
    /// Reconciles of the subscribers of a workspace that changed.
    triggers: Triggers,
    metrics: Arc<Metrics>,
    enabled: bool,
    fresh_for: Duration,
    /// Open streams (tasks), and the cap beyond which requests fall back to polling.
    streams: AtomicUsize,
    max_streams: AtomicUsize,
    /// Source of [`Entry::seq`] values.
    seqs: AtomicU64,
    /// How long a live stream's read is trusted ([`Watches::set_backstop`]).
    live_for_ms: AtomicU64,
}

impl Watches {
    /// Creates the registry. `enabled = false` means poll only; `fresh_for` is how long a
    /// polled read may be shared by other requests for the same workspace.
    pub fn new(enabled: bool, fresh_for: Duration, metrics: Arc<Metrics>) -> Arc<Watches> {
        Arc::new(Watches {
            entries: Mutex::new(HashMap::new()),
            following: Mutex::new(HashMap::new()),
            triggers: Triggers::default(),
            metrics,
            enabled,
            fresh_for,
            streams: AtomicUsize::new(0),
            max_streams: AtomicUsize::new(usize::MAX),
            seqs: AtomicU64::new(1),
            live_for_ms: AtomicU64::new(15_000),
        })
    }

    /// Caps concurrent watch streams (each holds a connection and buffers); requests for
    /// further workspaces poll until a stream slot frees up. 0 = no cap.
    pub fn set_max_streams(&self, max: usize) {
        let max = if max == 0 { usize::MAX } else { max };
        self.max_streams.store(max, Ordering::Relaxed);
    }

    fn next_seq(&self) -> u64 {
        self.seqs.fetch_add(1, Ordering::Relaxed)
    }

    fn lock_entries(&self) -> std::sync::MutexGuard<'_, HashMap<WorkspaceKey, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reconcile triggers for the controller (`reconcile_on`).
    pub fn subscribe(&self) -> UnboundedReceiverStream<ObjectRef<WorkspaceStartRequest>> {
        self.triggers.subscribe()
    }

    /// The lock that serialises observe → decide → start for one workspace, so that many
    /// requests for it cause at most one start build.
    pub fn workspace_lock(&self, key: &WorkspaceKey) -> Arc<tokio::sync::Mutex<()>> {
        self.lock_entries()
            .entry(key.clone())
            .or_insert_with(Entry::new)
            .lock
            .clone()
    }

    /// The workspace as last seen, if the read is fresh enough to share, or a live stream
    /// delivered it less than the live trust period ago, with its sequence number (for
    /// [`Watches::follow`]). Coder sends no stream event for changes only time causes (an agent
    /// timing out or disconnected for inactivity), so a live stream's read is trusted only
    /// that long: the backstop poll then reads Coder.
    pub fn cached(&self, key: &WorkspaceKey) -> Option<(Workspace, u64)> {
        let entries = self.lock_entries();
        let e = entries.get(key)?;
        let (ws, at) = e.latest.as_ref()?;
        let trusted = if e.live {
            self.live_for()
        } else {
            self.fresh_for
        };
        (at.elapsed() < trusted).then(|| (ws.clone(), e.seq))
    }

    /// How long a live stream's read is used without asking Coder: half the backstop poll
    /// interval, so each backstop pass reads Coder.
    fn live_for(&self) -> Duration {
        Duration::from_millis(self.live_for_ms.load(Ordering::Relaxed))
    }

    /// Sets the backstop poll interval (a live stream's read is trusted for half of it).
    pub fn set_backstop(&self, backstop: Duration) {
        let half = u64::try_from((backstop / 2).as_millis()).unwrap_or(u64::MAX);
        self.live_for_ms.store(half, Ordering::Relaxed);
    }

    /// The workspace as last seen, however old (at least as new as the caller's own read), with
    /// its sequence number.
    pub fn latest(&self, key: &WorkspaceKey) -> Option<(Workspace, u64)> {
        let entries = self.lock_entries();
        let e = entries.get(key)?;
        e.latest.as_ref().map(|(ws, _)| (ws.clone(), e.seq))
    }

    /// True while a stream delivers events for the workspace.
    pub fn is_live(&self, key: &WorkspaceKey) -> bool {
        self.lock_entries().get(key).is_some_and(|e| e.live)
    }

    /// Stores a workspace read by a GET; returns its sequence number.
    pub fn store(&self, key: &WorkspaceKey, ws: &Workspace) -> u64 {
        let seq = self.next_seq();
        let mut entries = self.lock_entries();
        let e = entries.entry(key.clone()).or_insert_with(Entry::new);
        e.latest = Some((ws.clone(), Instant::now()));
        e.seq = seq;
        seq
    }

    /// Records a build the operator just created as the workspace's latest build; returns the
    /// new sequence number when the cache changed.
    pub fn store_build(&self, key: &WorkspaceKey, build: &WorkspaceBuild) -> Option<u64> {
        let seq = self.next_seq();
        let mut entries = self.lock_entries();
        let e = entries.get_mut(key)?;
        let (ws, at) = e.latest.as_mut()?;
        if ws.latest_build.build_number >= build.build_number {
            return None;
        }
        ws.latest_build = build.clone();
        *at = Instant::now();
        e.seq = seq;
        Some(seq)
    }

    /// Forgets the cached read (after a 409, to re-read Coder).
    pub fn invalidate(&self, key: &WorkspaceKey) {
        let seq = self.next_seq();
        if let Some(e) = self.lock_entries().get_mut(key) {
            e.latest = None;
            e.seq = seq;
        }
    }

    /// Subscribes `obj` to the workspace's stream, starting the stream if needed. `seen` is the
    /// sequence number of the read `obj` decided on: when the cache changed since (an event
    /// arrived before `obj` subscribed), `obj` is triggered at once instead of missing it.
    pub fn follow(
        self: &Arc<Self>,
        key: &WorkspaceKey,
        client: &CoderClient,
        obj: ObjectRef<WorkspaceStartRequest>,
        seen: u64,
    ) {
        // Poll only: no stream, but the subscription is recorded so `unfollow` frees the entry.
        let (start, missed) = {
            let mut entries = self.lock_entries();
            let e = entries.entry(key.clone()).or_insert_with(Entry::new);
            let missed = e.latest.is_some() && e.seq != seen;
            e.subscribers.insert(obj.clone());
            let before = self
                .following
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(obj.clone(), key.clone());
            if let Some(old) = before.filter(|old| old != key) {
                Self::leave(&mut entries, &old, &obj);
            }
            let Some(e) = entries.get_mut(key) else {
                return;
            };
            let start = self.enabled
                && !e.streaming
                && self.streams.load(Ordering::Relaxed) < self.max_streams.load(Ordering::Relaxed);
            if start {
                e.streaming = true;
                self.streams.fetch_add(1, Ordering::Relaxed);
            }
            (start, missed && self.enabled)
        };
        if missed {
            self.triggers.send(&[obj]);
        }
        if start {
            let this = Arc::clone(self);
            let key = key.clone();
            let client = client.clone();
            tokio::spawn(async move {
                Arc::clone(&this).stream(key, client).await;
                this.streams.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    /// Unsubscribes `obj` from its stream; a stream without subscribers stops at once.
    pub fn unfollow(&self, obj: &ObjectRef<WorkspaceStartRequest>) {
        let mut entries = self.lock_entries();
        let key = self
            .following
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(obj);
        if let Some(key) = key {
            Self::leave(&mut entries, &key, obj);
        }
    }

    /// Removes `obj` from `key`'s subscribers; stops the stream when it was the last, and drops
    /// the entry (and its cached read) when nothing uses it any more.
    fn leave(
        entries: &mut HashMap<WorkspaceKey, Entry>,
        key: &WorkspaceKey,
        obj: &ObjectRef<WorkspaceStartRequest>,
    ) {
        let Some(e) = entries.get_mut(key) else {
            return;
        };
        e.subscribers.remove(obj);
        if !e.subscribers.is_empty() {
            return;
        }
        if e.streaming {
            e.stop.notify_one();
        } else if e.unused() {
            entries.remove(key);
        }
    }

    /// Drops entries nothing uses any more (no subscriber, no stream, no reconcile holding the
    /// lock, no cached read fresh enough to share): those of requests that finished without
    /// following a stream. Returns how many remain.
    pub fn sweep(&self) -> usize {
        let mut entries = self.lock_entries();
        entries.retain(|_, e| {
            !e.unused()
                || e.latest
                    .as_ref()
                    .is_some_and(|(_, at)| at.elapsed() < self.fresh_for)
        });
        entries.len()
    }

    fn subscribers(&self, key: &WorkspaceKey) -> Option<Vec<ObjectRef<WorkspaceStartRequest>>> {
        let entries = self.lock_entries();
        let e = entries.get(key)?;
        (!e.subscribers.is_empty()).then(|| e.subscribers.iter().cloned().collect())
    }

    fn set_live(&self, key: &WorkspaceKey, live: bool) {
        if let Some(e) = self.lock_entries().get_mut(key) {
            e.live = live;
        }
    }

    /// Ends the stream when nobody follows it any more; returns false then.
    fn keep_streaming(&self, key: &WorkspaceKey) -> bool {
        let mut entries = self.lock_entries();
        match entries.get_mut(key) {
            Some(e) if !e.subscribers.is_empty() => true,
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

    async fn stream(self: Arc<Self>, key: WorkspaceKey, client: CoderClient) {
        let mut backoff = Duration::from_millis(500);
        let Some(stop) = self.lock_entries().get(&key).map(|e| Arc::clone(&e.stop)) else {
            return;
        };
        while self.keep_streaming(&key) {
            match client.watch_workspace(key.workspace).await {
                Ok(events) => {
                    self.metrics.watch_streams.inc();
                    futures::pin_mut!(events);
                    let mut idle = tokio::time::interval(Duration::from_secs(5));
                    idle.tick().await;
                    loop {
                        tokio::select! {
                            ev = events.next() => match ev {
                                Some(Ok(WatchEvent::Workspace(ws))) => {
                                    backoff = Duration::from_millis(500);
                                    self.record_event(&key, Some(*ws));
                                    let Some(subs) = self.subscribers(&key) else { break };
                                    self.triggers.send(&subs);
                                }
                                Some(Ok(WatchEvent::Error(message))) => {
                                    // Coder could not render a change: the stream goes on, but
                                    // the cached read may be stale, so the followers read Coder.
                                    tracing::debug!(workspace = %key.workspace, %message, "watch stream reported an error");
                                    self.record_event(&key, None);
                                    let Some(subs) = self.subscribers(&key) else { break };
                                    self.triggers.send(&subs);
                                }
                                Some(Err(e)) => {
                                    tracing::debug!(workspace = %key.workspace, error = %e, "watch stream error");
                                    break;
                                }
                                None => break,
                            },
                            _ = idle.tick() => {
                                if self.subscribers(&key).is_none() {
                                    break;
                                }
                            }
                            () = stop.notified() => {
                                if self.subscribers(&key).is_none() {
                                    break;
                                }
                            }
                        }
                    }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coder::client::ClientOptions;
    use crate::coder::credentials::SessionToken;
    use crate::coder::types::{JobStatus, ProvisionerJob, Transition};

    fn workspace(id: Uuid, build_number: i64) -> Workspace {
        Workspace {
            id,
            name: "dev".into(),
            owner_id: Uuid::nil(),
            owner_name: "alice".into(),
            template_active_version_id: None,
            template_require_active_version: false,
            dormant_at: None,
            latest_build: WorkspaceBuild {
                id: Uuid::from_u128(build_number as u128),
                build_number,
                transition: Transition::Start,
                status: String::new(),
                template_version_id: None,
                created_at: None,
                job: ProvisionerJob {
                    id: Uuid::nil(),
                    status: JobStatus::Running,
                    error_code: None,
                    completed_at: None,
                },
                resources: vec![],
            },
        }
    }

    fn setup(enabled: bool) -> (Arc<Watches>, WorkspaceKey, CoderClient) {
        let watches = Watches::new(enabled, Duration::from_secs(1), Arc::new(Metrics::new()));
        let key = WorkspaceKey {
            connection: "c".into(),
            workspace: Uuid::from_u128(7),
        };
        // Nothing listens there: the stream task just retries in the background.
        let client = CoderClient::new(
            "http://127.0.0.1:9",
            SessionToken::parse("t").expect("token"),
            &ClientOptions::default(),
        )
        .expect("client");
        (watches, key, client)
    }

    fn obj(name: &str) -> ObjectRef<WorkspaceStartRequest> {
        ObjectRef::new(name).within("ns")
    }

    #[tokio::test]
    async fn a_change_before_following_triggers_the_request_at_once() {
        let (watches, key, client) = setup(true);
        let mut triggers = watches.subscribe();
        let seen = watches.store(&key, &workspace(key.workspace, 1));
        // An event lands between the request's read and its follow().
        watches.store(&key, &workspace(key.workspace, 2));
        watches.follow(&key, &client, obj("late"), seen);
        assert_eq!(triggers.next().await, Some(obj("late")));

        // Following with the latest read triggers nothing.
        let (_, latest) = watches.latest(&key).expect("cached");
        watches.follow(&key, &client, obj("current"), latest);
        let nothing = tokio::time::timeout(Duration::from_millis(50), triggers.next()).await;
        assert!(nothing.is_err(), "unexpected trigger {nothing:?}");
    }

    #[tokio::test]
    async fn our_own_build_does_not_count_as_missed() {
        let (watches, key, client) = setup(true);
        let mut triggers = watches.subscribe();
        watches.store(&key, &workspace(key.workspace, 1));
        let build = workspace(key.workspace, 2).latest_build;
        let seen = watches
            .store_build(&key, &build)
            .expect("newer build recorded");
        assert!(
            watches.store_build(&key, &build).is_none(),
            "same build again"
        );
        watches.follow(&key, &client, obj("starter"), seen);
        let nothing = tokio::time::timeout(Duration::from_millis(50), triggers.next()).await;
        assert!(nothing.is_err(), "unexpected trigger {nothing:?}");
    }

    #[tokio::test]
    async fn the_last_unfollow_frees_the_entry_when_polling() {
        let (watches, key, client) = setup(false);
        let seen = watches.store(&key, &workspace(key.workspace, 1));
        watches.follow(&key, &client, obj("a"), seen);
        watches.follow(&key, &client, obj("b"), seen);
        watches.unfollow(&obj("a"));
        assert!(watches.latest(&key).is_some(), "b still follows");
        watches.unfollow(&obj("b"));
        assert!(
            watches.latest(&key).is_none(),
            "entry dropped with its last follower"
        );
        assert_eq!(watches.sweep(), 0);
    }
}
