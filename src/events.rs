//! Publishes one `events.k8s.io/v1` Event per request transition.
//!
//! kube-runtime's `Recorder` keeps every event it sent for six minutes (to aggregate series)
//! and scans that cache on each publish; with thousands of requests in flight that cost tens of
//! MiB and O(n) work per event. The operator emits one event per transition and never repeats
//! one, so it needs no series: each event is a plain create.

use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

use crate::crd::WorkspaceStartRequest;

/// Largest note the API server accepts (1 kB).
const MAX_NOTE: usize = 1024;

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
    client: kube::Client,
    controller: String,
    instance: String,
}

impl EventPublisher {
    /// A publisher for `controller` running as `instance` (the pod name).
    pub fn new(client: kube::Client, controller: &str, instance: Option<String>) -> EventPublisher {
        EventPublisher {
            client,
            controller: controller.to_owned(),
            instance: instance.unwrap_or_else(|| controller.to_owned()),
        }
    }

    /// Records `reason` (and `note`) for `wsr` in the background, so a reconcile never waits
    /// for its Event; failures are logged.
    pub fn publish_in_background(
        &self,
        wsr: &WorkspaceStartRequest,
        type_: EventType,
        reason: &str,
        action: &str,
        note: Option<&str>,
    ) {
        let ev = self.event(wsr, type_, reason, action, note);
        let client = self.client.clone();
        tokio::spawn(async move {
            let ns = ev.metadata.namespace.clone().unwrap_or_default();
            if let Err(e) = Api::<Event>::namespaced(client, &ns)
                .create(&PostParams::default(), &ev)
                .await
            {
                tracing::warn!(error = %e, "cannot publish event");
            }
        });
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
