//! Which requests follow which workspace: following starts the stream, leaving stops it, and an
//! entry nothing uses any more is dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use kube::runtime::reflector::ObjectRef;

use super::cache::Entry;
use super::{Streams, WorkspaceKey};
use crate::api::crd::WorkspaceStartRequest;
use crate::coder::CoderClient;

impl Streams {
    /// Attaches `obj` to the workspace's stream, starting the stream if needed. `seen` is the
    /// sequence number of the read `obj` decided on: when the cache changed since (an event
    /// arrived before `obj` was attached), `obj` is triggered at once instead of missing it.
    pub fn attach(
        self: &Arc<Self>,
        key: &WorkspaceKey,
        client: &CoderClient,
        obj: ObjectRef<WorkspaceStartRequest>,
        seen: u64,
    ) {
        let (start, missed) = self.join(key, &obj, seen);
        if missed {
            self.triggers.send(&[obj]);
        }
        if start {
            self.spawn_stream(key, client);
        }
    }

    /// Records `obj` as following `key` (leaving the workspace it followed before). Returns
    /// whether a stream must start for `key` (a slot is then taken) and whether `obj` missed a
    /// change since the read it decided on.
    fn join(
        &self,
        key: &WorkspaceKey,
        obj: &ObjectRef<WorkspaceStartRequest>,
        seen: u64,
    ) -> (bool, bool) {
        // Poll only: no stream, but the attachment is recorded so `detach` frees the entry.
        let mut entries = self.lock_entries();
        let e = entries.entry(key.clone()).or_insert_with(Entry::new);
        let missed = e.latest.is_some() && e.seq != seen;
        e.attached.insert(obj.clone());
        let before = self
            .following
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(obj.clone(), key.clone());
        if let Some(old) = before.filter(|old| old != key) {
            Self::leave(&mut entries, &old, obj);
        }
        let Some(e) = entries.get_mut(key) else {
            return (false, false);
        };
        let start = self.enabled
            && !e.streaming
            && self.streams.load(Ordering::Relaxed) < self.max_streams.load(Ordering::Relaxed);
        if start {
            e.streaming = true;
            self.streams.fetch_add(1, Ordering::Relaxed);
        }
        (start, missed && self.enabled)
    }

    /// Runs `key`'s stream task, releasing its stream slot when it ends.
    fn spawn_stream(self: &Arc<Self>, key: &WorkspaceKey, client: &CoderClient) {
        let this = Arc::clone(self);
        let key = key.clone();
        let client = client.clone();
        tokio::spawn(async move {
            Arc::clone(&this).stream(key, client).await;
            this.streams.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Detaches `obj` from its stream; a stream without attached requests stops at once.
    pub fn detach(&self, obj: &ObjectRef<WorkspaceStartRequest>) {
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

    /// Removes `obj` from `key`'s attached requests; stops the stream when it was the last, and drops
    /// the entry (and its cached read) when nothing uses it any more.
    fn leave(
        entries: &mut HashMap<WorkspaceKey, Entry>,
        key: &WorkspaceKey,
        obj: &ObjectRef<WorkspaceStartRequest>,
    ) {
        let Some(e) = entries.get_mut(key) else {
            return;
        };
        e.attached.remove(obj);
        if !e.attached.is_empty() {
            return;
        }
        if e.streaming {
            e.stop.notify_one();
        } else if e.unused() {
            entries.remove(key);
        }
    }

    /// Drops entries nothing uses any more (no attached request, no stream, no reconcile holding the
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

    /// The requests following `key`, or `None` when nobody does.
    pub(super) fn attached(
        &self,
        key: &WorkspaceKey,
    ) -> Option<Vec<ObjectRef<WorkspaceStartRequest>>> {
        let entries = self.lock_entries();
        let e = entries.get(key)?;
        (!e.attached.is_empty()).then(|| e.attached.iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use uuid::Uuid;

    use super::*;
    use crate::coder::client::ClientOptions;
    use crate::coder::credentials::SessionToken;
    use crate::coder::types::{JobStatus, ProvisionerJob, Transition};
    use crate::coder::types::{Workspace, WorkspaceBuild};
    use crate::operator::metrics::Metrics;

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
                    started_at: None,
                    completed_at: None,
                },
                resources: vec![],
            },
        }
    }

    fn setup(enabled: bool) -> (Arc<Streams>, WorkspaceKey, CoderClient) {
        let streams = Streams::new(enabled, Duration::from_secs(1), Arc::new(Metrics::new()));
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
        (streams, key, client)
    }

    fn obj(name: &str) -> ObjectRef<WorkspaceStartRequest> {
        ObjectRef::new(name).within("ns")
    }

    #[tokio::test]
    async fn a_change_before_following_triggers_the_request_at_once() {
        let (streams, key, client) = setup(true);
        let mut triggers = streams.subscribe();
        let seen = streams.store(&key, &workspace(key.workspace, 1));
        // An event lands between the request's read and its follow().
        streams.store(&key, &workspace(key.workspace, 2));
        streams.attach(&key, &client, obj("late"), seen);
        assert_eq!(triggers.next().await, Some(obj("late")));

        // Following with the latest read triggers nothing.
        let (_, latest) = streams.latest(&key).expect("cached");
        streams.attach(&key, &client, obj("current"), latest);
        let nothing = tokio::time::timeout(Duration::from_millis(50), triggers.next()).await;
        assert!(nothing.is_err(), "unexpected trigger {nothing:?}");
    }

    #[tokio::test]
    async fn our_own_build_does_not_count_as_missed() {
        let (streams, key, client) = setup(true);
        let mut triggers = streams.subscribe();
        streams.store(&key, &workspace(key.workspace, 1));
        let build = workspace(key.workspace, 2).latest_build;
        let seen = streams
            .store_build(&key, &build)
            .expect("newer build recorded");
        assert!(
            streams.store_build(&key, &build).is_none(),
            "same build again"
        );
        streams.attach(&key, &client, obj("starter"), seen);
        let nothing = tokio::time::timeout(Duration::from_millis(50), triggers.next()).await;
        assert!(nothing.is_err(), "unexpected trigger {nothing:?}");
    }

    #[tokio::test]
    async fn the_last_unfollow_frees_the_entry_when_polling() {
        let (streams, key, client) = setup(false);
        let seen = streams.store(&key, &workspace(key.workspace, 1));
        streams.attach(&key, &client, obj("a"), seen);
        streams.attach(&key, &client, obj("b"), seen);
        streams.detach(&obj("a"));
        assert!(streams.latest(&key).is_some(), "b is still attached");
        streams.detach(&obj("b"));
        assert!(
            streams.latest(&key).is_none(),
            "entry dropped with its last attached request"
        );
        assert_eq!(streams.sweep(), 0);
    }
}
