//! Publishes one `events.k8s.io/v1` Event per request transition.
//!
//! kube-runtime's `Recorder` keeps every event it sent for six minutes (to aggregate series)
//! and scans that cache on each publish; with thousands of requests in flight that cost tens of
//! MiB and O(n) work per event. The operator emits one event per transition and never repeats
//! one, so it needs no series: each event is a plain create.
//!
//! Events are the least urgent API writes: they go through a bounded queue served by a few
//! workers, so a burst of transitions never crowds out status writes at the API server. When the
//! queue is full the event is dropped and counted (as client-go's event broadcaster does). A
//! Normal event is a spare write ([`Priority::Spare`]): it waits until no required write
//! (a first status, a start record, a final status) is waiting or was for [`EVENT_QUIET`], and
//! is dropped and counted when that moment has not come within [`MAX_DELAY`] of its transition. Under load the API server's
//! time goes to the writes each request needs, and Events are sent only where they fit; at low
//! load every transition gets its Event. Warnings are always sent.

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::api::crd::WorkspaceStartRequest;
use crate::operator::write_slots::{EVENT_QUIET, Priority, WriteSlots};

/// Largest note the API server accepts (1 kB).
const MAX_NOTE: usize = 1024;

/// Events waiting to be sent; beyond this they are dropped.
pub const QUEUE_CAPACITY: usize = 1024;

/// Concurrent Event creates.
const WORKERS: usize = 1;

/// A Normal event that found no spare write capacity this long after its transition is dropped
/// (counted).
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// True for the events that are always sent (they take a write slot like a required write).
fn always_sent(type_: Option<&str>) -> bool {
    type_ == Some("Warning")
}

/// Event severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Progress.
    Normal,
    /// Failure or trouble.
    Warning,
}

/// Creates Events as `reportingController` / `reportingInstance`.
#[derive(Clone)]
pub struct EventPublisher {
    queue: mpsc::Sender<(Event, Instant)>,
    dropped: Counter,
    controller: String,
    instance: String,
}

impl EventPublisher {
    /// A publisher for `controller` running as `instance` (the pod name); starts its workers
    /// on the current tokio runtime. Each create takes one of the write `slots`; a Normal one
    /// only where it fits (see the module doc). Events dropped (queue full, or no spare capacity
    /// within [`MAX_DELAY`]) are counted in `dropped`.
    pub fn start(
        client: kube::Client,
        controller: &str,
        instance: Option<String>,
        dropped: Counter,
        slots: Arc<WriteSlots>,
    ) -> EventPublisher {
        let (queue, rx) = mpsc::channel::<(Event, Instant)>(QUEUE_CAPACITY);
        let stale = dropped.clone();
        tokio::spawn(
            tokio_stream::wrappers::ReceiverStream::new(rx).for_each_concurrent(
                WORKERS,
                move |(ev, queued)| {
                    let client = client.clone();
                    let slots = Arc::clone(&slots);
                    let stale = stale.clone();
                    async move {
                        let priority = if always_sent(ev.type_.as_deref()) {
                            Priority::Required
                        } else {
                            Priority::Spare {
                                deadline: queued + MAX_DELAY,
                                quiet: EVENT_QUIET,
                            }
                        };
                        let ns = ev.metadata.namespace.as_deref().unwrap_or_default();
                        if let Some(_permit) = slots.permit(priority, ns).await {
                            send(&client, &ev).await;
                        } else {
                            stale.inc();
                            tracing::debug!(reason = ?ev.reason, "no spare write capacity for the event in time; dropped");
                        }
                    }
                },
            ),
        );
        EventPublisher {
            queue,
            dropped,
            controller: controller.to_owned(),
            instance: instance.unwrap_or_else(|| controller.to_owned()),
        }
    }

    /// Queues `reason` (and `note`) for `wsr`, so a reconcile never waits for its Event; a
    /// full queue drops it (counted), send failures are logged.
    pub fn publish_in_background(
        &self,
        wsr: &WorkspaceStartRequest,
        type_: EventType,
        reason: &str,
        action: &str,
        note: Option<&str>,
    ) {
        let ev = self.event(wsr, type_, reason, action, note);
        if self.queue.try_send((ev, Instant::now())).is_err() {
            self.dropped.inc();
            tracing::debug!(request = %wsr.name_any(), reason, "event queue full; event dropped");
        }
    }

    fn event(
        &self,
        wsr: &WorkspaceStartRequest,
        type_: EventType,
        reason: &str,
        action: &str,
        note: Option<&str>,
    ) -> Event {
        let ns = wsr.namespace().unwrap_or_default();
        let now = Timestamp::now();
        let note = note.map(|n| {
            let mut end = n.len().min(MAX_NOTE);
            while !n.is_char_boundary(end) {
                end -= 1;
            }
            n[..end].to_owned()
        });
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", wsr.name_any(), now.as_nanosecond())),
                namespace: Some(ns),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            reason: Some(reason.to_owned()),
            action: Some(action.to_owned()),
            note,
            regarding: Some(wsr.object_ref(&())),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

/// Creates one Event; failures are logged.
async fn send(client: &kube::Client, ev: &Event) {
    let ns = ev.metadata.namespace.as_deref().unwrap_or_default();
    if let Err(e) = Api::<Event>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), ev)
        .await
    {
        tracing::warn!(error = %e, "cannot publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_always_sent() {
        assert!(always_sent(Some("Warning")));
        assert!(!always_sent(Some("Normal")));
    }
}
