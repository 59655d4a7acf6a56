//! The floor writer: what the API server allows at best. Instead of the operator, it
//! server-side-applies each request's final Ready status (the operator's field manager, a status
//! of the same shape and size) the instant coder-sim makes the workspace's agent ready, learned
//! from coder-sim's own state-change feed. It reads nothing from the Coder API, writes no Events
//! and no intermediate statuses, and writes all requests of a workspace at once. Builds are
//! started in coder-sim at the instants the operator's run of the same size and shape started
//! them ([`crate::run::World::start_builds`]), so agents become ready at the same pace.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use coder_sim::{Sim, StateChange};
use futures::StreamExt;
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::Value;
use uuid::Uuid;
use workspace_start_operator::api::crd::{FIELD_MANAGER, WorkspaceStartRequest};

/// A Ready status as the operator writes it (captured from a real run), used as the template.
const READY_FIXTURE: &str = include_str!("../../../tests/fixtures/status/ready.json");

/// A running floor writer; stops when dropped.
pub struct Floor {
    /// Its own threads (as many as the operator's runtime has) and its own API connection, so it
    /// does not queue behind the bench's simulator and watch.
    rt: Option<tokio::runtime::Runtime>,
    /// Bytes of the status in each apply body.
    pub status_bytes: usize,
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The final status for a request of `change`'s workspace: the operator's Ready status with
/// this build's ids and the current time.
fn ready_status(template: &Value, change: &StateChange, now: Timestamp) -> Value {
    let mut st = template.clone();
    let ts = Value::String(now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    st["workspace"]["id"] = Value::String(change.workspace.to_string());
    st["build"]["id"] = Value::String(change.build.to_string());
    st["build"]["number"] = Value::from(change.build_number);
    st["completionTime"] = ts.clone();
    if let Some(conds) = st["conditions"].as_array_mut() {
        for c in conds {
            c["lastTransitionTime"] = ts.clone();
        }
    }
    st
}

/// Starts the floor writer for `requests` (request name → workspace) in namespace `ns`.
pub fn start(
    sim: &Sim,
    config: &kube::Config,
    ns: &str,
    requests: &[(String, Uuid)],
) -> anyhow::Result<Floor> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(crate::measure::cores())
        .thread_name("floor")
        .enable_all()
        .build()?;
    let client = {
        let _in_rt = rt.enter();
        workspace_start_operator::process::kube_client::from_config(config.clone())?
    };
    let api: Api<WorkspaceStartRequest> = Api::namespaced(client, ns);
    let fixture: Value = serde_json::from_str(READY_FIXTURE).unwrap_or_default();
    let template = fixture["status"].clone();
    let status_bytes = template.to_string().len();
    let mut by_ws: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (name, ws) in requests {
        by_ws.entry(*ws).or_default().push(name.clone());
    }
    let feed = sim.state_changes();
    rt.spawn(async move {
        futures::pin_mut!(feed);
        let mut done = HashSet::new();
        while let Some(change) = feed.next().await {
            if change.agent != Some("ready") || !done.insert(change.workspace) {
                continue;
            }
            let Some(names) = by_ws.get(&change.workspace) else {
                continue;
            };
            let status = ready_status(&template, &change, Timestamp::now());
            for name in names {
                let patch = serde_json::json!({
                    "apiVersion": "coder.com/v1alpha1",
                    "kind": "WorkspaceStartRequest",
                    "status": status,
                });
                tokio::spawn(apply(api.clone(), name.clone(), patch));
            }
        }
    });
    Ok(Floor {
        rt: Some(rt),
        status_bytes,
    })
}

/// One server-side apply of the status, retried while the API server is unavailable.
async fn apply(api: Api<WorkspaceStartRequest>, name: String, patch: Value) {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for attempt in 0u64..20 {
        match api
            .patch_status(&name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(request = %name, error = %e, "floor apply failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
            }
        }
    }
}
