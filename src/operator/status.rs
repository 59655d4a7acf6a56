//! Writing a request's status: server-side apply with the operator's field manager, a memory
//! of what this process last wrote (the operator is the only writer of status, so while the
//! reflector lags behind that write it is the request's real status), and throttling of
//! progress-only changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use crate::api::conditions;
use crate::api::crd::{FIELD_MANAGER, WorkspaceStartRequest, WorkspaceStartRequestStatus};
use crate::operator::write_slots::Permit;

/// Progress-only status changes (job pending → running, agent connecting → connected) are
/// written at most this often per request; phase and reason changes are written at once.
pub const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// Below this many slots the map of written statuses is never shrunk.
const SHRINK_ABOVE: usize = 64;

/// A status this process wrote.
struct Written {
    uid: String,
    resource_version: String,
    status: WorkspaceStartRequestStatus,
    at: Instant,
}

/// Writes statuses and remembers the last one written per request.
#[derive(Default)]
pub struct StatusWriter {
    written: Mutex<HashMap<ObjectRef<WorkspaceStartRequest>, Written>>,
}

impl StatusWriter {
    /// Writes `new` by server-side apply when it differs from `old`, under `_permit` (the
    /// write's priority, see [`crate::operator::write_slots`]). Returns the labels the object
    /// had when the write took effect (`None` when nothing was written): they say which shard
    /// the request belonged to at that moment.
    pub async fn apply(
        &self,
        _permit: &Permit<'_>,
        api: &Api<WorkspaceStartRequest>,
        wsr: &WorkspaceStartRequest,
        old: &WorkspaceStartRequestStatus,
        new: &WorkspaceStartRequestStatus,
    ) -> Result<Option<BTreeMap<String, String>>, kube::Error> {
        if old == new {
            return Ok(None);
        }
        let patch = serde_json::json!({
            "apiVersion": WorkspaceStartRequest::api_version(&()),
            "kind": WorkspaceStartRequest::kind(&()),
            "status": new,
        });
        let written = api
            .patch_status(
                &wsr.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        self.remember(&ObjectRef::from_obj(wsr), &written, new);
        Ok(Some(written.metadata.labels.unwrap_or_default()))
    }

    /// Writes a request's first status by server-side apply, with the request's
    /// resourceVersion as precondition (a 409 means it changed since it was seen), under
    /// `_permit` ([`crate::operator::write_slots::Priority::First`]). Returns the object written;
    /// the caller remembers it once the write is settled.
    pub async fn apply_first(
        &self,
        _permit: &Permit<'_>,
        api: &Api<WorkspaceStartRequest>,
        wsr: &WorkspaceStartRequest,
        status: &WorkspaceStartRequestStatus,
    ) -> Result<WorkspaceStartRequest, kube::Error> {
        let patch = serde_json::json!({
            "apiVersion": WorkspaceStartRequest::api_version(&()),
            "kind": WorkspaceStartRequest::kind(&()),
            "metadata": {"name": wsr.name_any(), "resourceVersion": wsr.resource_version()},
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch_status(&wsr.name_any(), &params, &Patch::Apply(&patch))
            .await
    }

    /// Remembers `status` as written for `obj`, with `written` the object the API server
    /// returned (its uid and resourceVersion).
    pub fn remember(
        &self,
        obj: &ObjectRef<WorkspaceStartRequest>,
        written: &WorkspaceStartRequest,
        status: &WorkspaceStartRequestStatus,
    ) {
        let mut w = self.lock();
        match (written.uid(), written.resource_version()) {
            (Some(uid), Some(resource_version)) => {
                w.insert(
                    obj.clone(),
                    Written {
                        uid,
                        resource_version,
                        status: status.clone(),
                        at: Instant::now(),
                    },
                );
            }
            _ => {
                w.remove(obj);
            }
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<WorkspaceStartRequest>, Written>> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets what was written for `obj`. The map keeps the room of the most requests it ever
    /// held (a slot holds a whole status: about 700 bytes, so the room of a 5,000-request burst
    /// is about 6 MiB): once it is three-quarters empty it is shrunk, so that memory comes back
    /// when the burst's requests are deleted.
    pub fn forget(&self, obj: &ObjectRef<WorkspaceStartRequest>) {
        let mut w = self.lock();
        w.remove(obj);
        if w.capacity() > SHRINK_ABOVE && w.len() < w.capacity() / 4 {
            w.shrink_to_fit();
        }
    }

    /// The status to decide on: ours, when the cached object is not the version our last
    /// status write produced (the reflector lags behind our own write; deciding on the stale
    /// status could repeat a start build the newer status says was already requested).
    pub fn current(
        &self,
        obj: &ObjectRef<WorkspaceStartRequest>,
        wsr: &WorkspaceStartRequest,
    ) -> WorkspaceStartRequestStatus {
        match self.lock().get(obj) {
            Some(e)
                if wsr.uid().as_deref() == Some(e.uid.as_str())
                    && wsr.resource_version().as_deref() != Some(e.resource_version.as_str()) =>
            {
                e.status.clone()
            }
            _ => wsr.status.clone().unwrap_or_default(),
        }
    }

    /// True when `wsr` is the watch echo of this process's last status write (same object and
    /// resourceVersion): it carries nothing new, so it needs no reconcile. Once the echo of a
    /// terminal status arrives the cache holds that status, and the memory of it is dropped.
    pub fn is_echo(&self, wsr: &WorkspaceStartRequest) -> bool {
        let obj = ObjectRef::from_obj(wsr);
        let mut w = self.lock();
        let Some(e) = w.get(&obj) else {
            return false;
        };
        let echo = wsr.uid().as_deref() == Some(e.uid.as_str())
            && wsr.resource_version().as_deref() == Some(e.resource_version.as_str());
        if echo
            && e.status
                .phase
                .is_some_and(crate::api::crd::Phase::is_terminal)
        {
            w.remove(&obj);
        }
        echo
    }

    /// How long to hold back writing `new` over `old`: `Some` when the change is progress
    /// detail only and this process wrote the object less than [`PROGRESS_WRITE_INTERVAL`] ago.
    pub fn defer(
        &self,
        obj: &ObjectRef<WorkspaceStartRequest>,
        old: &WorkspaceStartRequestStatus,
        new: &WorkspaceStartRequestStatus,
    ) -> Option<Duration> {
        let since = self.lock().get(obj).map(|e| e.at.elapsed())?;
        (since < PROGRESS_WRITE_INTERVAL && progress_only(old, new))
            .then(|| PROGRESS_WRITE_INTERVAL - since)
    }
}

/// True when `new` differs from `old` only in progress detail: same phase, Ready reason,
/// outcome, build followed, start request and workspace.
pub fn progress_only(old: &WorkspaceStartRequestStatus, new: &WorkspaceStartRequestStatus) -> bool {
    old.phase == new.phase
        && conditions::ready_reason(&old.conditions) == conditions::ready_reason(&new.conditions)
        && old.outcome == new.outcome
        && old.build.as_ref().map(|b| &b.id) == new.build.as_ref().map(|b| &b.id)
        && old.build_requested_at == new.build_requested_at
        && old.workspace == new.workspace
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::crd::{BuildInfo, Outcome, Phase};

    #[test]
    fn only_progress_detail_is_progress_only() {
        let base = WorkspaceStartRequestStatus {
            phase: Some(Phase::Starting),
            outcome: Some(Outcome::Queued),
            build: Some(BuildInfo {
                id: "b1".into(),
                job_status: "pending".into(),
                ..BuildInfo::default()
            }),
            ..WorkspaceStartRequestStatus::default()
        };
        let mut running = base.clone();
        running.build.as_mut().expect("build").job_status = "running".into();
        running.message = Some("running".into());
        assert!(progress_only(&base, &running));
        let mut waiting = running.clone();
        waiting.phase = Some(Phase::WaitingForAgent);
        assert!(!progress_only(&running, &waiting));
        let mut other_build = base.clone();
        other_build.build.as_mut().expect("build").id = "b2".into();
        assert!(!progress_only(&base, &other_build));
    }

    #[test]
    fn the_room_of_a_burst_comes_back_once_its_requests_are_forgotten() {
        let writer = StatusWriter::default();
        let objs: Vec<ObjectRef<WorkspaceStartRequest>> = (0..1000)
            .map(|i| ObjectRef::new(&format!("r-{i}")).within("ns"))
            .collect();
        for o in &objs {
            writer.lock().insert(
                o.clone(),
                Written {
                    uid: "u".into(),
                    resource_version: "1".into(),
                    status: WorkspaceStartRequestStatus::default(),
                    at: Instant::now(),
                },
            );
        }
        assert!(writer.lock().capacity() >= 1000);
        for o in &objs[..990] {
            writer.forget(o);
        }
        let w = writer.lock();
        assert_eq!(w.len(), 10);
        assert!(
            w.capacity() <= SHRINK_ABOVE,
            "room for {} kept",
            w.capacity()
        );
    }
}
