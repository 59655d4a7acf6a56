//! One watch per namespace, shared by every tool call waiting on a request there.
//!
//! A waiting call used to open its own watch (and, over kube's HTTP/1.1 client, its own TLS
//! connection) to the API server: 200 waiting calls were 200 connections and 200 watches. Here the
//! first waiter in a namespace starts one watch of the namespace's WorkspaceStartRequests; its
//! events are fanned out over a [`tokio::sync::broadcast`] channel to every waiter, each picking
//! its own request by name. The watch is reference counted: it stops when the last waiter in the
//! namespace leaves. Together with the HTTP/2 client ([`crate::process::kube_client`]) all waits
//! share one connection.
//!
//! A waiter never trusts the watch alone to have seen its request: after subscribing it reads the
//! request once (the watch may have passed the change it needs before it subscribed), and reads it
//! again when it fell behind the channel or a relist did not contain it. Only a `Delete` event or
//! a read that finds nothing reports the request as deleted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::core::Status;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use super::metrics::McpMetrics;
use crate::api::crd::WorkspaceStartRequest;
use crate::client::track::{FollowError, Followed, Progress, Tracker};

/// Events a namespace's watch can hold for waiters that are slow to read them; one that falls
/// further behind reads its request again.
const CHANNEL: usize = 512;

/// What the shared watch tells its waiters.
#[derive(Debug, Clone)]
enum Change {
    /// A request was created or changed (also during a relist).
    Applied(Arc<WorkspaceStartRequest>),
    /// A request was deleted.
    Deleted(Arc<str>),
    /// A relist began: waiters forget whether they saw their request.
    Relisting,
    /// A relist ended: a waiter whose request was not in it reads it.
    Relisted,
    /// The API server refused the watch (401, 403 or 404): waiters stop.
    Refused(Arc<Status>),
}

type Registry = Mutex<HashMap<String, Weak<NamespaceWatch>>>;

/// The shared watches of the process, by namespace.
pub struct Watches {
    client: kube::Client,
    registry: Arc<Registry>,
    metrics: Arc<McpMetrics>,
}

/// One namespace's watch; stops when the last waiter drops its handle.
struct NamespaceWatch {
    namespace: String,
    sender: broadcast::Sender<Change>,
    /// The last refusal, until the watch works again: waiters that join a refused watch stop at
    /// once instead of waiting for its next retry.
    refused: Arc<Mutex<Option<Arc<Status>>>>,
    task: AbortHandle,
    registry: Weak<Registry>,
    metrics: Arc<McpMetrics>,
}

impl Drop for NamespaceWatch {
    fn drop(&mut self) {
        self.task.abort();
        self.metrics.shared_watches.dec();
        if let Some(registry) = self.registry.upgrade() {
            let mut map = lock(&registry);
            if map
                .get(&self.namespace)
                .is_some_and(|w| w.strong_count() == 0)
            {
                map.remove(&self.namespace);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Watches {
    /// Watches made with `client` (the MCP server's own identity).
    pub fn new(client: kube::Client, metrics: Arc<McpMetrics>) -> Watches {
        Watches {
            client,
            registry: Arc::new(Mutex::new(HashMap::new())),
            metrics,
        }
    }

    /// Joins the namespace's watch, starting it if no one waits there yet.
    fn join(&self, namespace: &str) -> (Arc<NamespaceWatch>, broadcast::Receiver<Change>) {
        let mut map = lock(&self.registry);
        if let Some(watch) = map.get(namespace).and_then(Weak::upgrade) {
            let rx = watch.sender.subscribe();
            return (watch, rx);
        }
        let (sender, rx) = broadcast::channel(CHANNEL);
        let refused = Arc::new(Mutex::new(None));
        let api: Api<WorkspaceStartRequest> = Api::namespaced(self.client.clone(), namespace);
        let task = tokio::spawn(run(api, sender.clone(), Arc::clone(&refused))).abort_handle();
        self.metrics.shared_watches.inc();
        let watch = Arc::new(NamespaceWatch {
            namespace: namespace.to_owned(),
            sender,
            refused,
            task,
            registry: Arc::downgrade(&self.registry),
            metrics: Arc::clone(&self.metrics),
        });
        map.insert(namespace.to_owned(), Arc::downgrade(&watch));
        (watch, rx)
    }

    /// Follows `initial` (as just created or read) until it is Ready or Failed or `timeout`
    /// passes, as [`crate::client::track::follow`] does, but on the namespace's shared watch:
    /// `report` is called with the request and its progress first for the initial state, then on
    /// every change of [`Progress`].
    pub async fn follow(
        &self,
        initial: WorkspaceStartRequest,
        timeout: Duration,
        report: impl FnMut(&WorkspaceStartRequest, &Progress),
    ) -> Result<Followed, FollowError> {
        let mut tracker = Tracker::new(initial, report);
        if tracker.is_terminal() {
            return Ok(tracker.end());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let name = tracker.name().to_owned();
        let (watch, mut rx) = self.join(tracker.namespace());
        let _waiting = Waiting::new(&self.metrics);
        let api: Api<WorkspaceStartRequest> =
            Api::namespaced(self.client.clone(), tracker.namespace());
        let refused = |status: Arc<Status>| kube::Error::Api(Box::new((*status).clone()));
        if let Some(status) = lock(&watch.refused).clone() {
            return Err(tracker.refused(refused(status)));
        }
        // Read once now: the watch may have delivered the change this call needs before it joined.
        let mut reread = true;
        let mut seen_in_relist = true;
        loop {
            if reread {
                reread = false;
                match api.get_opt(&name).await {
                    Ok(Some(obj)) => {
                        if tracker.observe(obj) {
                            return Ok(tracker.end());
                        }
                    }
                    Ok(None) => return Err(tracker.deleted()),
                    Err(kube::Error::Api(s)) if matches!(s.code, 401 | 403) => {
                        return Err(tracker.refused(kube::Error::Api(s)));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "reading the request failed; the watch goes on");
                    }
                }
            } else {
                let change = match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => {
                        return Ok(tracker.end());
                    }
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                        reread = true;
                        continue;
                    }
                    Ok(Ok(change)) => change,
                };
                match change {
                    Change::Applied(obj) if obj.metadata.name.as_deref() == Some(&*name) => {
                        seen_in_relist = true;
                        if tracker.observe((*obj).clone()) {
                            return Ok(tracker.end());
                        }
                    }
                    Change::Applied(_) => continue,
                    Change::Deleted(gone) if *gone == *name => return Err(tracker.deleted()),
                    Change::Deleted(_) => continue,
                    Change::Relisting => {
                        seen_in_relist = false;
                        continue;
                    }
                    Change::Relisted => {
                        reread = !seen_in_relist;
                        continue;
                    }
                    Change::Refused(status) => return Err(tracker.refused(refused(status))),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(tracker.end());
            }
        }
    }
}

/// The watch of one namespace, until aborted: every event goes to the channel (no one may be
/// listening for a moment; that is fine).
async fn run(
    api: Api<WorkspaceStartRequest>,
    sender: broadcast::Sender<Change>,
    refused: Arc<Mutex<Option<Arc<Status>>>>,
) {
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let change = match event {
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => Change::Applied(Arc::new(obj)),
            Ok(Event::Delete(obj)) => match obj.metadata.name {
                Some(name) => Change::Deleted(name.into()),
                None => continue,
            },
            Ok(Event::Init) => Change::Relisting,
            Ok(Event::InitDone) => Change::Relisted,
            Err(e) => match refusal(e) {
                Some(status) => {
                    let status = Arc::new(status);
                    *lock(&refused) = Some(Arc::clone(&status));
                    Change::Refused(status)
                }
                None => continue,
            },
        };
        if !matches!(change, Change::Refused(_)) {
            lock(&refused).take();
        }
        let _ = sender.send(change);
    }
}

/// The API status of a watch error that retrying will not fix.
fn refusal(e: watcher::Error) -> Option<Status> {
    let err = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        _ => return None,
    };
    match err {
        kube::Error::Api(s) if matches!(s.code, 401 | 403 | 404) => Some(*s),
        err => {
            tracing::debug!(error = %err, "the shared watch failed; retrying");
            None
        }
    }
}

/// Counts a waiter while it lives.
struct Waiting<'a>(&'a McpMetrics);

impl<'a> Waiting<'a> {
    fn new(m: &'a McpMetrics) -> Self {
        m.waiting_calls.inc();
        Waiting(m)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting_calls.dec();
    }
}
