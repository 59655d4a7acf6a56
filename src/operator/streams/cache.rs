//! The per-workspace cache: the latest read of each workspace, its sequence number, and how
//! long a read is trusted (shared polled reads, live stream reads).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;

use super::{Streams, WorkspaceKey};
use crate::api::crd::WorkspaceStartRequest;
use crate::coder::types::{Workspace, WorkspaceBuild};

/// One workspace's cached read, attached requests, stream state and lock.
pub(super) struct Entry {
    /// The requests following this workspace.
    pub(super) attached: HashSet<ObjectRef<WorkspaceStartRequest>>,
    /// The workspace as last seen, and when.
    pub(super) latest: Option<(Workspace, Instant)>,
    /// Changes whenever `latest` does (values from [`Streams::next_seq`], never reused).
    pub(super) seq: u64,
    /// True while a stream delivers events for the workspace.
    pub(super) live: bool,
    /// True while a stream task runs for the workspace.
    pub(super) streaming: bool,
    /// Serialises observe → decide → start for the workspace.
    pub(super) lock: Arc<tokio::sync::Mutex<()>>,
    /// Wakes the stream task when its last attached request leaves, so it ends at once.
    pub(super) stop: Arc<tokio::sync::Notify>,
}

impl Entry {
    /// An entry with no read, no attached request and no stream.
    pub(super) fn new() -> Entry {
        Entry {
            attached: HashSet::new(),
            latest: None,
            seq: 0,
            live: false,
            streaming: false,
            lock: Arc::new(tokio::sync::Mutex::new(())),
            stop: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// No request is attached to it, no stream runs for it and no reconcile holds its lock.
    pub(super) fn unused(&self) -> bool {
        self.attached.is_empty() && !self.streaming && Arc::strong_count(&self.lock) == 1
    }
}

impl Streams {
    /// A sequence number never handed out before.
    pub(super) fn next_seq(&self) -> u64 {
        self.seqs.fetch_add(1, Ordering::Relaxed)
    }

    /// The workspace as last seen, if the read is fresh enough to share, or a live stream
    /// delivered it less than the live trust period ago, with its sequence number (for
    /// [`Streams::attach`]). Coder sends no stream event for changes only time causes (an agent
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
}
