//! The live side of a reconcile pass ([`crate::operator::reconcile::CoderPort`]): reads through
//! the shared workspace cache and Coder watch streams ([`crate::operator::streams`]), the chat
//! owner check, and the start build POST with the cache kept in step.
//!
//! Reads and starts of one workspace are serialised by its lock in the shared cache, so
//! requests for the same workspace share one read and at most one start build.

use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use crate::api::crd::{WorkspaceStartRequest, WorkspaceStartRequestStatus};
use crate::coder::CoderError;
use crate::coder::logs::WorkspaceBuildTimings;
use crate::coder::types::{CreateWorkspaceBuildRequest, Workspace};
use crate::operator::coder_failure;
use crate::operator::coder_health::{self, CoderHealth};
use crate::operator::connect::Connection;
use crate::operator::decide::{Observation, OwnerState};
use crate::operator::reconcile::{CoderPort, PostOutcome};
use crate::operator::streams::{Streams, WorkspaceKey};

/// The longest a finishing request waits for Coder's build timings before it finishes with the
/// build's own timestamps (the final status is written after this read).
pub const BUILD_TIMINGS_WAIT: Duration = Duration::from_secs(2);

/// How often to look again without a live stream, and with one (the backstop).
#[derive(Debug, Clone, Copy)]
pub struct PollIntervals {
    /// Without a live Coder stream for the workspace.
    pub poll: Duration,
    /// While a Coder stream delivers events for the workspace.
    pub backstop: Duration,
}

/// One pass's view of Coder: the request's connection, the workspace it read (cache key and
/// sequence number of the read), and the workspace locks it holds until it is dropped.
pub struct LiveCoder<'a> {
    streams: &'a Streams,
    wsr: &'a WorkspaceStartRequest,
    oref: &'a ObjectRef<WorkspaceStartRequest>,
    conn: &'a Connection,
    report: Reporter<'a>,
    intervals: PollIntervals,
    key: Option<WorkspaceKey>,
    seen: u64,
    /// The workspace read was dormant (a 403 on the start then means "dormant").
    dormant: bool,
    /// The locks of the workspace this pass decides on (the one known from status, and the one
    /// learnt by the first read).
    locks: Vec<OwnedMutexGuard<()>>,
}

impl<'a> LiveCoder<'a> {
    /// A pass over `conn` for `wsr`, holding the lock of the workspace its status names. How
    /// each Coder call went is reported to `health`.
    pub async fn new(
        streams: &'a Streams,
        health: &'a CoderHealth,
        wsr: &'a WorkspaceStartRequest,
        oref: &'a ObjectRef<WorkspaceStartRequest>,
        conn: &'a Connection,
        intervals: PollIntervals,
        status: &WorkspaceStartRequestStatus,
    ) -> LiveCoder<'a> {
        let mut locks = Vec::new();
        if let Some(id) = status
            .workspace
            .as_ref()
            .and_then(|w| Uuid::parse_str(&w.id).ok())
        {
            let key = WorkspaceKey {
                connection: conn.key.clone(),
                workspace: id,
            };
            locks.push(streams.workspace_lock(&key).lock_owned().await);
        }
        LiveCoder {
            streams,
            wsr,
            oref,
            conn,
            report: Reporter { health, oref, conn },
            intervals,
            key: None,
            seen: 0,
            dormant: false,
            locks,
        }
    }

    /// The workspace decided on and the cache sequence number of its read, once the locks are
    /// released (so the next request for the workspace decides while this one writes).
    pub fn finish(self) -> Option<(WorkspaceKey, u64)> {
        let LiveCoder {
            key, seen, locks, ..
        } = self;
        drop(locks);
        key.map(|k| (k, seen))
    }

    /// `obs` with the workspace replaced by the shared cache's latest read, which a request
    /// that held the workspace lock may have updated with a build it just started.
    fn latest_shared(&mut self, obs: Observation) -> Observation {
        let (Some(k), Observation::Workspace { chat_owner, .. }) = (&self.key, &obs) else {
            return obs;
        };
        let Some((ws, seq)) = self.streams.latest(k) else {
            return obs;
        };
        self.seen = seq;
        Observation::Workspace {
            chat_owner: *chat_owner,
            workspace: Box::new(ws),
            owner: OwnerState::Unchecked,
        }
    }
}

impl CoderPort for LiveCoder<'_> {
    async fn observe(&mut self, status: &WorkspaceStartRequestStatus, fresh: bool) -> Observation {
        let (obs, key, seen) = read(
            self.streams,
            self.conn,
            &self.report,
            self.wsr,
            status,
            !fresh,
        )
        .await;
        self.key = key;
        self.seen = seen;
        // First pass: the workspace was unknown until now. Take its lock and re-read the shared
        // cache, where a request that held the lock may have recorded a build it just started.
        let obs = match (&self.key, self.locks.is_empty(), fresh) {
            (Some(k), true, false) => {
                let lock = self.streams.workspace_lock(k);
                self.locks.push(lock.lock_owned().await);
                self.latest_shared(obs)
            }
            _ => obs,
        };
        if let Observation::Workspace { workspace, .. } = &obs {
            self.dormant = workspace.dormant_at.is_some();
        }
        obs
    }

    async fn owner_state(&mut self, owner: Uuid) -> Result<OwnerState, Observation> {
        let account = self
            .report
            .call(self.conn.client.owner_account(owner))
            .await;
        coder_failure::owner_state(owner, account)
    }

    async fn start_build(
        &mut self,
        workspace: Uuid,
        request: &CreateWorkspaceBuildRequest,
    ) -> PostOutcome {
        let ws_key = self.key.clone().unwrap_or(WorkspaceKey {
            connection: self.conn.key.clone(),
            workspace,
        });
        tracing::info!(request = %self.oref, workspace = %workspace, "requesting start build");
        let created = self
            .report
            .call(self.conn.client.create_build(workspace, request))
            .await;
        match created {
            Ok(build) => {
                if let Some(seq) = self.streams.store_build(&ws_key, &build) {
                    self.seen = seq;
                }
                self.key = Some(ws_key);
                PostOutcome::Created(build)
            }
            Err(CoderError::Conflict { .. }) => {
                // No build was created: someone else's build is active. Read afresh to join it.
                self.streams.invalidate(&ws_key);
                PostOutcome::Conflict
            }
            Err(e) => match coder_failure::start_refusal(&e, self.dormant) {
                Some((reason, message)) => {
                    tracing::warn!(request = %self.oref, error = %e, %reason, "Coder refused the start build");
                    PostOutcome::Refused { reason, message }
                }
                None => {
                    tracing::warn!(request = %self.oref, error = %e, "start build request failed; will re-read");
                    // A cached read from before the POST would make the next pass POST again.
                    self.streams.invalidate(&ws_key);
                    PostOutcome::Uncertain {
                        retry_after: e.retry_after(),
                    }
                }
            },
        }
    }

    async fn build_timings(&mut self, build: Uuid) -> Option<WorkspaceBuildTimings> {
        let read = self.conn.client.get_build_timings(build);
        match tokio::time::timeout(BUILD_TIMINGS_WAIT, read).await {
            Ok(Ok(t)) => Some(t),
            Ok(Err(e)) => {
                // An older Coder has no such endpoint (404): the build's timestamps serve.
                tracing::debug!(request = %self.oref, build = %build, error = %e, "no build timings from Coder");
                None
            }
            Err(_) => {
                tracing::debug!(request = %self.oref, build = %build, wait = ?BUILD_TIMINGS_WAIT, "build timings not read in time");
                None
            }
        }
    }

    fn poll(&self) -> Duration {
        match &self.key {
            Some(k) if self.streams.is_live(k) => self.intervals.backstop,
            _ => self.intervals.poll,
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Tells the endpoint's health signal how each Coder call of one pass went.
struct Reporter<'a> {
    health: &'a CoderHealth,
    oref: &'a ObjectRef<WorkspaceStartRequest>,
    conn: &'a Connection,
}

impl Reporter<'_> {
    /// Makes the Coder call `call` and reports how it went.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, CoderError>>,
    ) -> Result<T, CoderError> {
        let started = tokio::time::Instant::now();
        let result = call.await;
        let client = &self.conn.client;
        self.health.report(
            client.base_url(),
            self.oref,
            started,
            &coder_failure::call_outcome(&result),
            || coder_health::buildinfo_probe(client.clone()),
        );
        result
    }
}

/// Where the request's workspace is, as far as we know before reading it.
enum WorkspaceRef {
    Id(Uuid),
    Name { owner: String, name: String },
}

/// Reads the chat (first time only) and the workspace, mapping Coder errors to observations.
/// Also returns the workspace's key and the sequence number of the read in the shared cache
/// (0 without a workspace).
async fn read(
    streams: &Streams,
    conn: &Connection,
    report: &Reporter<'_>,
    wsr: &WorkspaceStartRequest,
    status: &WorkspaceStartRequestStatus,
    use_cache: bool,
) -> (Observation, Option<WorkspaceKey>, u64) {
    let mut chat_owner = None;
    let known = status
        .workspace
        .as_ref()
        .and_then(|w| Uuid::parse_str(&w.id).ok());
    let workspace_ref = if let Some(id) = known {
        WorkspaceRef::Id(id)
    } else if let Some(chat) = &wsr.spec.chat_id {
        let Ok(chat_id) = Uuid::parse_str(chat) else {
            return (Observation::ChatNotFound, None, 0);
        };
        let chat = report.call(conn.client.get_chat(chat_id)).await;
        match chat {
            Ok(c) => {
                chat_owner = Some(c.owner_id);
                match c.workspace_id {
                    Some(w) => WorkspaceRef::Id(w),
                    None => return (Observation::ChatHasNoWorkspace, None, 0),
                }
            }
            Err(CoderError::NotFound { .. }) => return (Observation::ChatNotFound, None, 0),
            Err(e) => return (coder_failure::read_failure(e), None, 0),
        }
    } else if let Some(sel) = &wsr.spec.workspace {
        match (&sel.id, &sel.owner, &sel.name) {
            (Some(id), _, _) => match Uuid::parse_str(id) {
                Ok(id) => WorkspaceRef::Id(id),
                Err(_) => return (Observation::WorkspaceGone, None, 0),
            },
            (None, Some(owner), Some(name)) => WorkspaceRef::Name {
                owner: owner.clone(),
                name: name.clone(),
            },
            _ => return (Observation::WorkspaceGone, None, 0),
        }
    } else {
        return (Observation::ChatNotFound, None, 0);
    };

    let key_for = |id: Uuid| WorkspaceKey {
        connection: conn.key.clone(),
        workspace: id,
    };
    // First pass (the caller holds no workspace lock yet): requests that learn the same
    // workspace at the same time would all miss the cache and each read Coder. The first to
    // hold the workspace's lock reads it; the others wait for that read and share it.
    let _first_read = match &workspace_ref {
        WorkspaceRef::Id(id) if use_cache && known.is_none() => {
            Some(streams.workspace_lock(&key_for(*id)).lock_owned().await)
        }
        _ => None,
    };
    let cached = match &workspace_ref {
        WorkspaceRef::Id(id) if use_cache => streams.cached(&key_for(*id)),
        _ => None,
    };
    // Only a fresh read refreshes the shared cache (re-storing a cached value would keep
    // stale data "fresh" for as long as requests keep reading it).
    let result: Result<(Workspace, u64), CoderError> = match cached {
        Some(read) => Ok(read),
        None => {
            let fetched = match &workspace_ref {
                WorkspaceRef::Id(id) => report.call(conn.client.get_workspace(*id)).await,
                WorkspaceRef::Name { owner, name } => {
                    report
                        .call(conn.client.get_workspace_by_name(owner, name))
                        .await
                }
            };
            fetched.map(|ws| {
                let seq = streams.store(&key_for(ws.id), &ws);
                (ws, seq)
            })
        }
    };
    match result {
        Ok((ws, seq)) => {
            let key = key_for(ws.id);
            (
                Observation::Workspace {
                    chat_owner,
                    workspace: Box::new(ws),
                    owner: OwnerState::Unchecked,
                },
                Some(key),
                seq,
            )
        }
        Err(CoderError::Gone { .. } | CoderError::NotFound { .. }) => {
            (Observation::WorkspaceGone, None, 0)
        }
        Err(e) => {
            let mut obs = coder_failure::read_failure(e);
            if let (Observation::Failed { message, .. }, WorkspaceRef::Name { owner, name }) =
                (&mut obs, &workspace_ref)
            {
                message.push_str(&format!(
                    "; check spec.workspace.owner ({owner:?}) and spec.workspace.name ({name:?})"
                ));
            }
            (obs, None, 0)
        }
    }
}
