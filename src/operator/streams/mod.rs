//! Shared Coder watch streams and the per-workspace read cache.
//!
//! One `/watch` stream per in-flight workspace (per Coder connection), shared by every request
//! that waits on it. Each event stores the latest workspace and triggers a reconcile of every
//! attached request, so a request turns Ready within milliseconds of the agent. While a
//! stream is live, reconciles read the workspace from here instead of calling Coder.
//!
//! - `cache`: the per-workspace entries, their sequence numbers and how long a read is trusted.
//! - `attached`: which requests are attached to which workspace, and when an entry is dropped.
//! - `stream`: the `/watch` stream task that feeds the cache and triggers the attached requests.

mod attached;
mod cache;
mod stream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use tokio_stream::wrappers::UnboundedReceiverStream;
use uuid::Uuid;

use crate::api::crd::WorkspaceStartRequest;
use crate::operator::metrics::Metrics;
use crate::operator::triggers::Triggers;

use cache::Entry;

/// Identifies a workspace on one Coder connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct WorkspaceKey {
    /// Connection key (URL plus token fingerprint).
    pub connection: String,
    /// Workspace id.
    pub workspace: Uuid,
}

/// The shared streams, cache and per-workspace locks.
pub struct Streams {
    entries: Mutex<HashMap<WorkspaceKey, Entry>>,
    /// The workspace each request is attached to (locked after `entries` when both are needed).
    following: Mutex<HashMap<ObjectRef<WorkspaceStartRequest>, WorkspaceKey>>,
    /// Reconciles of the attached requests of a workspace that changed.
    triggers: Triggers,
    metrics: Arc<Metrics>,
    enabled: bool,
    fresh_for: Duration,
    /// Open streams (tasks), and the cap beyond which requests fall back to polling.
    streams: AtomicUsize,
    max_streams: AtomicUsize,
    /// Source of [`Entry::seq`] values.
    seqs: AtomicU64,
    /// How long a live stream's read is trusted ([`Streams::set_backstop`]).
    live_for_ms: AtomicU64,
    /// Coder's returns after an outage ([`Streams::reconnect_on`]).
    recoveries: OnceLock<tokio::sync::watch::Receiver<u64>>,
}

impl Streams {
    /// Creates the registry. `enabled = false` means poll only; `fresh_for` is how long a
    /// polled read may be shared by other requests for the same workspace.
    pub fn new(enabled: bool, fresh_for: Duration, metrics: Arc<Metrics>) -> Arc<Streams> {
        Arc::new(Streams {
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
            recoveries: OnceLock::new(),
        })
    }

    /// Streams waiting to reopen try again at once when `recoveries` changes (Coder answers
    /// again after an outage: `CoderHealth::recoveries`) rather than sleeping out a backoff of
    /// up to 30 s. Set once; a second call is ignored.
    pub fn reconnect_on(&self, recoveries: tokio::sync::watch::Receiver<u64>) {
        let _ = self.recoveries.set(recoveries);
    }

    /// Caps concurrent watch streams (each holds a connection and buffers); requests for
    /// further workspaces poll until a stream slot frees up. 0 = no cap.
    pub fn set_max_streams(&self, max: usize) {
        let max = if max == 0 { usize::MAX } else { max };
        self.max_streams.store(max, Ordering::Relaxed);
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
}
