//! The chart and the CRD under real Kubernetes controllers: kube-controller-manager runs beside
//! the API server (ClusterRole aggregation, garbage collector, Deployment, ReplicaSet and
//! disruption controllers) and `helm` installs and upgrades the chart as a user would.
//!
//! There is no scheduler or kubelet: a stand-in marks each Pod Running and Ready, as a kubelet
//! would once the container's `/readyz` answers, so rollouts progress as on a cluster. No operator
//! runs here; the Pods stand for it.

mod support;

use support::opproc;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envtest::ControlPlane;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource as _, ResourceExt};
use opproc::eventually;
use serde_json::json;
use support::{ControlPlaneBins, repo};
use workspace_start_operator::api::crd::WorkspaceStartRequest;

/// Controllers on a busy 2-core machine (and the garbage collector's 30 s discovery of new
/// kinds) can take a while; every wait is for a condition, never a fixed sleep.
const T: Duration = Duration::from_secs(180);

/// The image the chart deploys by default (what `make image` names its image).
const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/coder-operators/workspace-start-operator:",
    env!("CARGO_PKG_VERSION")
);

/// The shared plane with kube-controller-manager running and the CRD installed.
async fn plane() -> &'static ControlPlane {
    let plane = ControlPlane::shared().await;
    plane
        .ensure_controller_manager()
        .await
        .expect("start kube-controller-manager");
    plane
        .install_crds(&repo().join("crds"))
        .await
        .expect("install the CRD");
    plane
}

/// Runs `helm` against the plane (admin kubeconfig, Helm's state in `home`); panics with its
/// output on failure.
fn helm(plane: &ControlPlane, home: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(ControlPlaneBins::helm())
        .args(args)
        .arg(format!(
            "--kubeconfig={}",
            plane.admin_kubeconfig().display()
        ))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helm {args:?} failed:\n{text}");
    text
}

/// A client acting as `user` (impersonated by the admin), in group `system:authenticated`.
fn impersonating(plane: &ControlPlane, user: &str) -> Client {
    let mut config = plane.admin_config().clone();
    config.auth_info.impersonate = Some(user.to_owned());
    config.auth_info.impersonate_groups = Some(vec!["system:authenticated".to_owned()]);
    Client::try_from(config).expect("impersonating client")
}

async fn bind_cluster_role(admin: &Client, ns: &str, user: &str, role: &str) {
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(format!("{user}-{role}")),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: user.into(),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("create RoleBinding");
}

fn request(name: &str, owner: Option<&ConfigMap>) -> WorkspaceStartRequest {
    let mut wsr: WorkspaceStartRequest = serde_json::from_value(json!({
        "apiVersion": "coder.com/v1alpha1",
        "kind": "WorkspaceStartRequest",
        "metadata": {"name": name},
        "spec": {"workspace": {"owner": "alice", "name": "dev"}},
    }))
    .expect("request");
    if let Some(cm) = owner {
        wsr.metadata.owner_references = Some(vec![
            cm.controller_owner_ref(&()).expect("ConfigMap has a uid"),
        ]);
    }
    wsr
}

fn is_forbidden(r: &Result<impl Sized, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(s)) if s.code == 403)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_may_create_requests_and_view_may_not_through_the_aggregated_roles() {
    let plane = plane().await;
    let admin = plane.admin_client();
    let ns = plane.create_namespace("agg").await.expect("namespace");
    let home = tempfile::tempdir().expect("tempdir");
    // The chart's <release>-editor and -viewer ClusterRoles, labelled for aggregation.
    let roles = helm(
        plane,
        home.path(),
        &[
            "template",
            &format!("wso-{ns}"),
            &repo()
                .join("charts/workspace-start-operator")
                .display()
                .to_string(),
            "--show-only=templates/rbac-aggregate.yaml",
            "--set=coder.url=https://coder.example.com",
            "--set=coder.token=t",
        ],
    );
    plane.apply_yaml(&roles, &ns).await.expect("apply roles");
    bind_cluster_role(&admin, &ns, "alice", "edit").await;
    bind_cluster_role(&admin, &ns, "bob", "view").await;
    let alice: Api<WorkspaceStartRequest> = Api::namespaced(impersonating(plane, "alice"), &ns);
    let bob: Api<WorkspaceStartRequest> = Api::namespaced(impersonating(plane, "bob"), &ns);

    // The clusterrole-aggregation controller copies the rules into `edit` asynchronously.
    eventually("alice (edit) may create a request", T, || async {
        alice
            .create(&PostParams::default(), &request("from-alice", None))
            .await
            .ok()
    })
    .await;
    let by_bob = bob
        .create(&PostParams::default(), &request("from-bob", None))
        .await;
    assert!(is_forbidden(&by_bob), "view must not create: {by_bob:?}");
    let seen = bob.list(&ListParams::default()).await.expect("view lists");
    assert_eq!(
        seen.items.iter().map(|w| w.name_any()).collect::<Vec<_>>(),
        ["from-alice"]
    );
    bob.get("from-alice").await.expect("view reads");
    let deleted_by_bob = bob.delete("from-alice", &DeleteParams::default()).await;
    assert!(is_forbidden(&deleted_by_bob), "view must not delete");
    alice
        .delete("from-alice", &DeleteParams::default())
        .await
        .expect("edit deletes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_owned_by_a_configmap_is_garbage_collected_with_it() {
    let plane = plane().await;
    let admin = plane.admin_client();
    let ns = plane.create_namespace("gc").await.expect("namespace");
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let wsrs: Api<WorkspaceStartRequest> = Api::namespaced(admin.clone(), &ns);
    let mut owners = Vec::new();
    for name in ["owner", "keeper"] {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        owners.push(
            cms.create(&PostParams::default(), &cm)
                .await
                .expect("create ConfigMap"),
        );
    }
    for (name, owner) in [("owned", &owners[0]), ("kept", &owners[1])] {
        wsrs.create(&PostParams::default(), &request(name, Some(owner)))
            .await
            .expect("create request");
    }

    cms.delete("owner", &DeleteParams::background())
        .await
        .expect("delete owner");
    eventually(
        "the garbage collector deletes the owned request",
        T,
        || async { matches!(wsrs.get_opt("owned").await, Ok(None)).then_some(()) },
    )
    .await;
    assert!(
        wsrs.get_opt("kept").await.expect("read").is_some(),
        "a request whose owner lives is kept"
    );
}

/// What the stand-in kubelet writes: the Pod runs and is Ready.
fn running_and_ready() -> serde_json::Value {
    let now = jiff::Timestamp::now().to_string();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    json!({"status": {
        "phase": "Running",
        "startTime": now,
        "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
    }})
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Marks every Pod of `ns` Running and Ready as it appears, until dropped.
fn stand_in_kubelet(admin: Client, ns: &str) -> tokio::task::JoinHandle<()> {
    let pods: Api<Pod> = Api::namespaced(admin, ns);
    tokio::spawn(async move {
        let mut events = watcher(pods.clone(), watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(ev) = events.next().await {
            let Ok(pod) = ev else { continue };
            if is_ready(&pod) || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let _ = pods
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(running_and_ready()),
                )
                .await;
        }
    })
}

/// Whether a pod spec runs the operator with leader election (the chart's `WSO_LEADER_ELECT`).
fn elects_leader(spec: Option<&PodSpec>) -> bool {
    spec.and_then(|s| s.containers.first())
        .and_then(|c| c.env.as_ref())
        .and_then(|env| env.iter().find(|e| e.name == "WSO_LEADER_ELECT"))
        .is_some_and(|e| e.value.as_deref() == Some("true"))
}

/// Everything the watches saw of ReplicaSets and Pods, reduced to what the invariant needs.
#[derive(Default, Debug)]
struct Observed {
    /// uid → (scale, template with leader election) of every ReplicaSet.
    replica_sets: BTreeMap<String, (i32, bool)>,
    /// uid → leader election, of every existing Pod.
    pods: BTreeMap<String, bool>,
    /// The most ReplicaSet replicas without leader election at any one moment.
    max_replicas_without_election: i32,
    /// The most Pods without leader election at any one moment.
    max_pods_without_election: usize,
    /// The most Pods at any one moment.
    max_pods: usize,
}

impl Observed {
    fn replica_set(&mut self, rs: &ReplicaSet, exists: bool) {
        let uid = rs.uid().unwrap_or_default();
        if exists {
            let spec = rs.spec.template.as_ref().and_then(|t| t.spec.as_ref());
            let scale = rs.spec.replicas.unwrap_or(1);
            self.replica_sets.insert(uid, (scale, elects_leader(spec)));
        } else {
            self.replica_sets.remove(&uid);
        }
        self.record();
    }

    fn pod(&mut self, pod: &Pod, exists: bool) {
        let uid = pod.uid().unwrap_or_default();
        if exists {
            self.pods.insert(uid, elects_leader(pod.spec.as_ref()));
        } else {
            self.pods.remove(&uid);
        }
        self.record();
    }

    fn record(&mut self) {
        let replicas: i32 = self
            .replica_sets
            .values()
            .filter(|(_, elects)| !elects)
            .map(|(n, _)| n)
            .sum();
        let pods = self.pods.values().filter(|elects| !**elects).count();
        self.max_replicas_without_election = self.max_replicas_without_election.max(replicas);
        self.max_pods_without_election = self.max_pods_without_election.max(pods);
        self.max_pods = self.max_pods.max(self.pods.len());
    }
}

/// Feeds every change of one kind in `ns` to `apply(observed, object, exists)`, until aborted.
fn observe<K, F>(
    admin: Client,
    ns: &str,
    seen: Arc<Mutex<Observed>>,
    apply: F,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
    F: Fn(&mut Observed, &K, bool) + Send + 'static,
{
    let mut events = watcher(Api::<K>::namespaced(admin, ns), watcher::Config::default()).boxed();
    tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            let mut s = seen.lock().expect("lock");
            match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    apply(&mut s, &o, true)
                }
                Ok(watcher::Event::Delete(o)) => apply(&mut s, &o, false),
                _ => {}
            }
        }
    })
}

/// Waits until Deployment `name` has rolled out its current spec: `replicas` updated and
/// available pods and no others (its status counts the pods of old ReplicaSets too); on timeout,
/// panics with its status and the namespace's pods.
async fn rolled_out(admin: &Client, ns: &str, name: &str, replicas: i32) -> Deployment {
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), ns);
    let deadline = Instant::now() + T;
    loop {
        let d = deployments.get(name).await.expect("read Deployment");
        let s = d.status.clone().unwrap_or_default();
        if s.observed_generation == d.metadata.generation
            && s.replicas == Some(replicas)
            && s.updated_replicas == Some(replicas)
            && s.available_replicas == Some(replicas)
        {
            return d;
        }
        if Instant::now() > deadline {
            let pods = Api::<Pod>::namespaced(admin.clone(), ns)
                .list(&ListParams::default())
                .await
                .expect("list pods");
            let pods: Vec<_> = pods
                .items
                .iter()
                .map(|p| (p.name_any(), p.labels().clone(), is_ready(p)))
                .collect();
            panic!("deployment {name} not rolled out to {replicas} in {T:?}: {s:?}; pods {pods:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A release of the chart in its own namespace, installed and upgraded with `helm` as a user
/// would (Coder URL and token set, everything else default).
struct Release {
    plane: &'static ControlPlane,
    ns: String,
    /// Contains the chart's name, so it is also the Deployment's name.
    name: String,
    home: tempfile::TempDir,
}

impl Release {
    async fn new(prefix: &str) -> Release {
        let plane = plane().await;
        let ns = plane.create_namespace(prefix).await.expect("namespace");
        Release {
            plane,
            name: format!("workspace-start-operator-{ns}"),
            ns,
            home: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `helm install` (`verb` = "install") or `helm upgrade --reuse-values`, with `sets`.
    fn helm(&self, verb: &str, sets: &[&str]) {
        let chart = repo().join("charts/workspace-start-operator");
        let chart = chart.display().to_string();
        let mut args = vec![verb, &self.name, &chart, "--namespace", &self.ns];
        if verb == "install" {
            args.extend([
                "--set=coder.url=https://coder.example.com",
                "--set=coder.token=not-a-real-token",
            ]);
        } else {
            args.push("--reuse-values");
        }
        args.extend(sets);
        helm(self.plane, self.home.path(), &args);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_deployment_rolls_out_to_a_replicaset_of_ready_pods() {
    let release = Release::new("rollout").await;
    let (admin, ns) = (release.plane.admin_client(), release.ns.clone());
    let _kubelet = stand_in_kubelet(admin.clone(), &ns);
    release.helm("install", &[]);
    let release = release.name;

    let deployment = rolled_out(&admin, &ns, &release, 1).await;
    let sets = Api::<ReplicaSet>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list ReplicaSets");
    let [rs] = sets.items.as_slice() else {
        panic!("one ReplicaSet expected, got {}", sets.items.len())
    };
    let owner = rs
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.first());
    assert_eq!(
        owner.map(|o| (o.kind.as_str(), o.name.as_str(), o.controller)),
        Some(("Deployment", release.as_str(), Some(true)))
    );
    assert_eq!(
        rs.spec.template.as_ref().and_then(|t| t.spec.as_ref()),
        deployment.spec.template.spec.as_ref(),
        "the ReplicaSet runs the Deployment's pod template"
    );
    let pods = Api::<Pod>::namespaced(admin, &ns)
        .list(&ListParams::default())
        .await
        .expect("list pods");
    let [pod] = pods.items.as_slice() else {
        panic!("one pod expected, got {}", pods.items.len())
    };
    let spec = pod.spec.as_ref().expect("pod spec");
    assert_eq!(spec.containers[0].image.as_deref(), Some(DEFAULT_IMAGE));
    assert_eq!(spec.service_account_name.as_deref(), Some(release.as_str()));
    assert!(elects_leader(Some(spec)));
    assert_eq!(
        pod.metadata
            .owner_references
            .as_ref()
            .map(|o| o[0].name.clone()),
        Some(rs.name_any())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrades_one_two_one_replicas_never_run_two_pods_without_leader_election() {
    let release = Release::new("scale").await;
    let (admin, ns, name) = (release.plane.admin_client(), &release.ns, &release.name);
    let _kubelet = stand_in_kubelet(admin.clone(), ns);
    let seen = Arc::new(Mutex::new(Observed::default()));
    let watches = [
        observe(admin.clone(), ns, seen.clone(), Observed::replica_set),
        observe(admin.clone(), ns, seen.clone(), Observed::pod),
    ];
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(admin.clone(), ns);

    release.helm("install", &[]);
    rolled_out(&admin, ns, name, 1).await;
    assert!(pdbs.get_opt(name).await.expect("read").is_none());

    // 1 → 2 together with a change of the pod template: the deployment controller scales the
    // current ReplicaSet first, then rolls out the new template.
    release.helm(
        "upgrade",
        &["--set=replicaCount=2", "--set=logging.level=debug"],
    );
    rolled_out(&admin, ns, name, 2).await;
    eventually(
        "the PodDisruptionBudget allows one disruption of two pods",
        T,
        || async {
            let s = pdbs.get_opt(name).await.ok()??.status?;
            (s.expected_pods == Some(2) && s.disruptions_allowed == Some(1)).then_some(())
        },
    )
    .await;

    // 2 → 1, again with a template change.
    release.helm(
        "upgrade",
        &["--set=replicaCount=1", "--set=logging.level=info"],
    );
    rolled_out(&admin, ns, name, 1).await;
    assert!(pdbs.get_opt(name).await.expect("read").is_none());
    watches.iter().for_each(|w| w.abort());

    let seen = seen.lock().expect("lock");
    assert!(
        seen.max_pods >= 2 && seen.replica_sets.len() >= 2,
        "the upgrades ran two pods and two templates: {seen:?}"
    );
    // At most one pod without leader election may ever run; the chart runs none.
    assert_eq!(
        (
            seen.max_pods_without_election,
            seen.max_replicas_without_election
        ),
        (0, 0),
        "pods without leader election ran: {seen:?}"
    );
}

/// Shards beside the default Deployment: the default Deployment's selector also matches shard
/// pods, yet each Deployment runs exactly its own pods (controller references), and each
/// PodDisruptionBudget counts only its own Deployment's pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_deployments_roll_out_beside_the_default_and_each_budget_counts_its_own_pods() {
    let installed = Release::new("shards").await;
    let (admin, ns) = (installed.plane.admin_client(), installed.ns.clone());
    let _kubelet = stand_in_kubelet(admin.clone(), &ns);
    installed.helm(
        "install",
        &[
            "--set=replicaCount=2",
            "--set=shards[0].name=a",
            "--set=shards[0].replicaCount=2",
            "--set=shards[1].name=b",
            // Unset, a shard's replicaCount would be the chart's (2).
            "--set=shards[1].replicaCount=1",
        ],
    );
    let release = installed.name.clone();
    let shard_a = format!("{release}-shard-a");
    let shard_b = format!("{release}-shard-b");
    for (name, replicas) in [(&release, 2), (&shard_a, 2), (&shard_b, 1)] {
        rolled_out(&admin, &ns, name, replicas).await;
    }

    // Every pod belongs, through its ReplicaSet, to the Deployment of its shard.
    let sets: BTreeMap<String, String> = Api::<ReplicaSet>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list ReplicaSets")
        .items
        .iter()
        .filter_map(|rs| {
            let owner = rs.metadata.owner_references.as_ref()?.first()?;
            Some((rs.name_any(), owner.name.clone()))
        })
        .collect();
    let pods = Api::<Pod>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list pods");
    let mut per_deployment: BTreeMap<String, usize> = BTreeMap::new();
    for pod in &pods.items {
        let shard = pod.labels().get("coder.com/shard").cloned();
        let want = shard.map_or(release.clone(), |s| format!("{release}-shard-{s}"));
        let rs = pod
            .metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.first())
            .map(|o| o.name.clone())
            .unwrap_or_default();
        assert_eq!(sets.get(&rs), Some(&want), "pod {}", pod.name_any());
        *per_deployment.entry(want).or_default() += 1;
    }
    assert_eq!(
        per_deployment,
        BTreeMap::from([(release.clone(), 2), (shard_a.clone(), 2), (shard_b, 1)])
    );

    // The disruption controller counts each budget's pods: two each, not the five the default
    // Deployment's selector would match. Shard b (one replica) has none.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(admin.clone(), &ns);
    for name in [&release, &shard_a] {
        eventually(
            &format!("PodDisruptionBudget {name} counts its two pods"),
            T,
            || async {
                let s = pdbs.get_opt(name).await.ok()??.status?;
                (s.expected_pods == Some(2) && s.disruptions_allowed == Some(1)).then_some(())
            },
        )
        .await;
    }
    let all = pdbs.list(&ListParams::default()).await.expect("list PDBs");
    assert_eq!(all.items.len(), 2, "no budget for the one-replica shard");
}
