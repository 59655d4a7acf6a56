//! Reconcile triggers fanned out to every running controller (one per watched namespace; each
//! keeps the requests of its own scope).

use std::sync::Mutex;

use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api::crd::WorkspaceStartRequest;

/// One lossless channel per controller: a dropped trigger would leave a request waiting for the
/// backstop poll (a bounded broadcast drops messages when the controller lags).
#[derive(Default)]
pub struct Triggers {
    senders: Mutex<Vec<mpsc::UnboundedSender<ObjectRef<WorkspaceStartRequest>>>>,
}

impl Triggers {
    /// A new stream of triggers for one controller (`reconcile_on`).
    pub fn subscribe(&self) -> UnboundedReceiverStream<ObjectRef<WorkspaceStartRequest>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().push(tx);
        UnboundedReceiverStream::new(rx)
    }

    /// Triggers a reconcile of each of `objs` in every live controller.
    pub fn send(&self, objs: &[ObjectRef<WorkspaceStartRequest>]) {
        let mut senders = self.lock();
        senders.retain(|tx| !tx.is_closed());
        for tx in senders.iter() {
            for o in objs {
                let _ = tx.send(o.clone());
            }
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<mpsc::UnboundedSender<ObjectRef<WorkspaceStartRequest>>>>
    {
        self.senders.lock().unwrap_or_else(|p| p.into_inner())
    }
}
