//! The chart's image as real pods on a real node: kube-scheduler places them, the kubelet runs
//! them through containerd and runc, probes them over the pod network and mounts their Secrets
//! and projected ServiceAccount tokens; kube-proxy routes Services (the operator reaches
//! kube-apiserver through the `kubernetes` Service). No stand-in marks anything Running.
//!
//! `make image`'s archive is imported into containerd unchanged, and `helm install` deploys the
//! chart with test values only (Coder URL and token Secret, watched namespaces, `pullPolicy:
//! Never`). coder-sim runs in the test process, listening on the node's address on the pod
//! network ([`envtest::NODE_IP`]), where the pods reach it.
//!
//! Needs root, `scripts/node-bins.sh` and `make image` (`make test-node` runs all three);
//! docs/node.md says what the node is made of and what it changes on the machine.

mod support;

use support::opproc;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use coder_sim::{BuildScript, SimConfig, SimServer, SimUser, WorkspaceSeed};
use envtest::{ControlPlane, NODE_IP, NODE_NAME};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use opproc::eventually;
use serde_json::json;
use support::{ControlPlaneBins, repo};
use tokio::sync::OnceCell;
use workspace_start_operator::api::crd::{Phase, WorkspaceStartRequest};

/// Every wait is for a condition, bounded by this (pods start in seconds; 2 busy cores).
const T: Duration = Duration::from_secs(180);
const VERSION: &str = env!("CARGO_PKG_VERSION");
const REPOSITORY: &str = "ghcr.io/coder-operators/workspace-start-operator";
/// The chart's default Lease name.
const LEASE: &str = "workspace-start-operator";
const TOKEN_SECRET: &str = "coder-token";
/// The MCP caller's image (tools/mcp-probe, built by scripts/node-bins.sh).
const PROBE_IMAGE: &str = "localhost/wso-mcp-probe:1";

fn image() -> String {
    format!("{REPOSITORY}:{VERSION}")
}

/// `make image`'s archive (or `$WSO_IMAGE_ARCHIVE`).
fn archive() -> PathBuf {
    let path = std::env::var_os("WSO_IMAGE_ARCHIVE").map_or_else(
        || repo().join(format!("dist/workspace-start-operator-{VERSION}.oci.tar")),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "{} is missing: build the image with `make image`",
        path.display()
    );
    path
}

/// The shared node plane with the CRD installed and the images imported (once per binary).
async fn node() -> &'static ControlPlane {
    static READY: OnceCell<()> = OnceCell::const_new();
    let plane = ControlPlane::shared_with_node().await;
    READY
        .get_or_init(|| async {
            plane
                .install_crds(&repo().join("crds"))
                .await
                .expect("install the CRD");
            plane
                .import_image(&archive())
                .await
                .expect("import the operator image");
            plane
                .import_image(&plane.bin_dir().join("wso-mcp-probe.oci.tar"))
                .await
                .expect("import the MCP probe image");
        })
        .await;
    plane
}

/// One chart release in its own namespace, with its own coder-sim on the pod network.
struct Release {
    plane: &'static ControlPlane,
    admin: Client,
    ns: String,
    /// `workspace-start-operator-<ns>`: it contains the chart's name, so it is also the
    /// Deployment's name; unique, so the cluster-scoped ClusterRoles of concurrent tests' releases
    /// do not collide.
    name: String,
    sim: SimServer,
    /// Owner of the workspaces.
    alice: SimUser,
    /// The Coder user whose token the operator has (an admin: it may start alice's workspaces).
    operator_user: SimUser,
    home: tempfile::TempDir,
}

impl Release {
    /// Namespace, coder-sim, the token Secret, and `helm install` with the test values and
    /// `sets`; `also_watch` are further namespaces the release serves.
    async fn install(prefix: &str, also_watch: &[&str], sets: &[&str]) -> Release {
        let plane = node().await;
        let admin = plane.admin_client();
        let ns = plane.create_namespace(prefix).await.expect("namespace");
        let addr: SocketAddr = format!("{NODE_IP}:0").parse().expect("address");
        let sim = SimServer::start(SimConfig {
            addr: Some(addr),
            ..SimConfig::default()
        })
        .await
        .expect("start coder-sim on the pod network");
        let alice = sim.sim().add_user("alice");
        let operator_user = sim.sim().add_admin("operator");
        let r = Release {
            plane,
            admin,
            name: format!("workspace-start-operator-{ns}"),
            ns,
            sim,
            alice,
            operator_user,
            home: tempfile::tempdir().expect("tempdir"),
        };
        r.write_token(&r.operator_user.token.clone()).await;
        let watch: Vec<&str> = std::iter::once(r.ns.as_str())
            .chain(also_watch.iter().copied())
            .collect();
        let mut args = vec![
            format!("--set=coder.url={}", r.sim.url()),
            format!("--set=coder.existingSecret={TOKEN_SECRET}"),
            format!("--set=watchNamespaces={{{}}}", watch.join(",")),
            "--set=image.pullPolicy=Never".to_owned(),
            // These tests predate tenancy and bind no namespace: open mode keeps their
            // assertions (tests/tenancy.rs covers bound mode).
            "--set=tenancy.mode=open".to_owned(),
        ];
        args.extend(sets.iter().map(|s| (*s).to_owned()));
        r.helm("install", &args);
        r
    }

    /// Creates or replaces the Coder token Secret the chart mounts.
    async fn write_token(&self, token: &str) {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": TOKEN_SECRET, "namespace": self.ns},
            "stringData": {"token": token},
        }))
        .expect("secret");
        Api::<Secret>::namespaced(self.admin.clone(), &self.ns)
            .patch(
                TOKEN_SECRET,
                &PatchParams::apply("node-test").force(),
                &Patch::Apply(&secret),
            )
            .await
            .expect("apply the token Secret");
    }

    /// `helm install` or `helm upgrade --reuse-values` of the chart; panics with its output.
    fn helm(&self, verb: &str, sets: &[String]) {
        let chart = repo().join("charts/workspace-start-operator");
        let mut cmd = std::process::Command::new(ControlPlaneBins::helm());
        cmd.args([verb, self.name.as_str()])
            .arg(&chart)
            .args(["--namespace", &self.ns])
            .arg(format!(
                "--kubeconfig={}",
                self.plane.admin_kubeconfig().display()
            ))
            .env("HELM_CACHE_HOME", self.home.path().join("cache"))
            .env("HELM_CONFIG_HOME", self.home.path().join("config"))
            .env("HELM_DATA_HOME", self.home.path().join("data"));
        if verb == "upgrade" {
            cmd.arg("--reuse-values");
        }
        cmd.args(sets);
        let out = cmd.output().expect("run helm");
        assert!(
            out.status.success(),
            "helm {verb} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// The operator's pods (not the MCP server's), terminating ones excluded.
    async fn operator_pods(&self) -> Vec<Pod> {
        let selector = format!(
            "app.kubernetes.io/name=workspace-start-operator,app.kubernetes.io/instance={}",
            self.name
        );
        self.pods_api()
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("list pods")
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// Waits until Deployment `name` runs `replicas` updated, available pods and no others; on
    /// timeout panics with its status, the pods and the tail of the kubelet's log.
    async fn rolled_out(&self, name: &str, replicas: i32) -> Deployment {
        let api: Api<Deployment> = Api::namespaced(self.admin.clone(), &self.ns);
        let deadline = Instant::now() + T;
        loop {
            let d = api.get(name).await.expect("read Deployment");
            let s = d.status.clone().unwrap_or_default();
            if s.observed_generation == d.metadata.generation
                && s.replicas == Some(replicas)
                && s.updated_replicas == Some(replicas)
                && s.available_replicas == Some(replicas)
            {
                return d;
            }
            if Instant::now() > deadline {
                panic!(
                    "deployment {name} not rolled out to {replicas} in {T:?}: {s:?}\npods: {}\n{}\n{}",
                    self.describe_pods().await,
                    self.container_logs(),
                    self.node_log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn describe_pods(&self) -> String {
        let pods = self.pods_api().list(&ListParams::default()).await;
        let Ok(pods) = pods else {
            return "unreadable".into();
        };
        pods.items
            .iter()
            .map(|p| {
                format!(
                    "{} {}",
                    p.name_any(),
                    serde_json::to_string(&p.status).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The tails of this namespace's container logs, as the kubelet wrote them
    /// (`<podLogsDir>/<ns>_<pod>_<uid>/<container>/<n>.log`).
    fn container_logs(&self) -> String {
        let mut out = String::new();
        let dir = self.plane.dir().join("pod-logs");
        let Ok(pods) = std::fs::read_dir(&dir) else {
            return out;
        };
        for pod in pods.flatten() {
            let name = pod.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&format!("{}_", self.ns)) {
                continue;
            }
            for container in std::fs::read_dir(pod.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                for log in std::fs::read_dir(container.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                    out.push_str(&format!(
                        "--- {name}/{} ---\n{}\n",
                        container.file_name().to_string_lossy(),
                        support::tail(&text, 20)
                    ));
                }
            }
        }
        out
    }

    fn node_log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.plane.dir().join("kubelet.log")).unwrap_or_default();
        format!("--- kubelet.log ---\n{}", support::tail(&log, 30))
    }

    /// The Lease holder (the leader pod's name).
    async fn leader(&self) -> Option<String> {
        Api::<Lease>::namespaced(self.admin.clone(), &self.ns)
            .get_opt(LEASE)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty())
    }

    fn requests(&self, ns: &str) -> Api<WorkspaceStartRequest> {
        Api::namespaced(self.admin.clone(), ns)
    }

    async fn request(&self, name: &str, workspace: &str) {
        let wsr: WorkspaceStartRequest = serde_json::from_value(json!({
            "apiVersion": "coder.com/v1alpha1",
            "kind": "WorkspaceStartRequest",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {"workspace": {"owner": "alice", "name": workspace}},
        }))
        .expect("request");
        self.requests(&self.ns)
            .create(&PostParams::default(), &wsr)
            .await
            .expect("create request");
    }

    async fn phase(&self, ns: &str, name: &str) -> Option<Phase> {
        self.requests(ns)
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|w| w.status?.phase)
    }

    /// Waits until request `ns/name` is Ready; on a Failed request or timeout panics with its
    /// status and the operator pods' state.
    async fn wait_ready(&self, ns: &str, name: &str) {
        let deadline = Instant::now() + T;
        loop {
            let w = self.requests(ns).get(name).await.expect("read request");
            match w.status.as_ref().and_then(|s| s.phase) {
                Some(Phase::Ready) => return,
                Some(Phase::Failed) => panic!(
                    "request {ns}/{name} failed: {}",
                    serde_json::to_string_pretty(&w.status).unwrap_or_default()
                ),
                _ if Instant::now() > deadline => panic!(
                    "request {ns}/{name} not Ready in {T:?}: {}\npods: {}\n{}",
                    serde_json::to_string_pretty(&w.status).unwrap_or_default(),
                    self.describe_pods().await,
                    self.container_logs()
                ),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    fn stopped_workspace(&self, name: &str, script: BuildScript) -> uuid::Uuid {
        self.sim
            .sim()
            .add_workspace(WorkspaceSeed::new(self.alice.id, name).script(script))
    }
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

/// `workspace_start_operator_leader` as the pod's own metrics endpoint reports it, read over
/// the pod network (`None` when unreachable).
async fn leader_gauge(pod: &Pod) -> Option<bool> {
    let url = format!("http://{}:8080/metrics", pod_ip(pod));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("workspace_start_operator_leader"))?;
    Some(line.trim_end().ends_with(" 1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real node (root): make test-node"]
async fn chart_operator_pod_becomes_ready_through_its_probes_and_starts_a_workspace() {
    let r = Release::install("node-ready", &[], &[]).await;
    r.rolled_out(&r.name, 1).await;
    let [pod] = r
        .operator_pods()
        .await
        .try_into()
        .expect("one operator pod");
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some(NODE_NAME), "scheduled");
    assert_eq!(spec.containers[0].image.as_deref(), Some(image().as_str()));
    let status = pod.status.as_ref().expect("status");
    let ip = pod_ip(&pod);
    assert!(
        ip.starts_with("10.88.0.") && ip != NODE_IP,
        "pod network address: {ip}"
    );
    let c = &status
        .container_statuses
        .as_ref()
        .expect("container statuses")[0];
    assert!(c.ready && c.started == Some(true), "{c:?}");
    assert!(
        c.container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("containerd://")),
        "run by containerd: {c:?}"
    );
    assert_eq!(c.restart_count, 0);
    // What the kubelet's probes read, read the same way: over the pod network.
    for path in ["/healthz", "/readyz"] {
        let resp = reqwest::get(format!("http://{ip}:8080{path}"))
            .await
            .expect("reach the pod");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
    }
    let leader = eventually("the pod holds the Lease", T, || async { r.leader().await }).await;
    assert_eq!(leader, pod.name_any());

    let ws = r.stopped_workspace("dev", BuildScript::default());
    r.request("start-dev", "dev").await;
    r.wait_ready(&r.ns, "start-dev").await;
    assert_eq!(r.sim.sim().builds_posted(ws), 1, "one start build");
    let pod = r.pods_api().get(&pod.name_any()).await.expect("pod");
    assert_eq!(restarts(&pod), 0, "no restart while starting a workspace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real node (root): make test-node"]
async fn deleting_the_leader_pod_resumes_without_a_second_build() {
    let r = Release::install("node-failover", &[], &["--set=replicaCount=2"]).await;
    r.rolled_out(&r.name, 2).await;
    let leader = eventually("a leader", T, || async { r.leader().await }).await;
    let pods: BTreeSet<String> = r
        .operator_pods()
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert!(pods.contains(&leader), "leader {leader} is one of {pods:?}");

    // A build that runs long enough to delete the leader in the middle of it.
    let ws = r.stopped_workspace(
        "dev",
        BuildScript::default().with_job(Duration::from_secs(3), Duration::from_secs(15)),
    );
    r.request("start-dev", "dev").await;
    eventually("the start build was posted", T, || async {
        (r.sim.sim().builds_posted(ws) == 1).then_some(())
    })
    .await;
    assert_eq!(r.phase(&r.ns, "start-dev").await, Some(Phase::Starting));

    let t0 = Instant::now();
    r.pods_api()
        .delete(&leader, &DeleteParams::default())
        .await
        .expect("delete the leader pod");
    let next = eventually("another pod takes the Lease", T, || async {
        r.leader().await.filter(|h| *h != leader)
    })
    .await;
    println!(
        "leader {leader} deleted; {next} ({}) took the Lease after {:.1}s",
        if pods.contains(&next) {
            "the standby"
        } else {
            "its replacement"
        },
        t0.elapsed().as_secs_f64()
    );
    r.wait_ready(&r.ns, "start-dev").await;
    assert_eq!(
        r.sim.sim().builds_posted(ws),
        1,
        "the new leader followed the running build instead of starting another"
    );
    // The Deployment replaces the deleted pod.
    r.rolled_out(&r.name, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real node (root): make test-node"]
async fn rolling_upgrade_to_a_new_image_keeps_one_leader() {
    let r = Release::install("node-upgrade", &[], &["--set=replicaCount=2"]).await;
    r.rolled_out(&r.name, 2).await;
    let old_pods: BTreeSet<String> = r
        .operator_pods()
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    // The new image: the same layers under a new reference, as a registry retag would give.
    let tag = format!("{VERSION}-upgrade");
    r.plane
        .ctr(&[
            "images",
            "tag",
            "--force",
            &image(),
            &format!("{REPOSITORY}:{tag}"),
        ])
        .expect("tag the new image");

    // Requests keep arriving during the rollout; each must get exactly one build.
    let mut workspaces = Vec::new();
    for i in 0..3 {
        let name = format!("dev-{i}");
        workspaces.push((
            name.clone(),
            r.stopped_workspace(&name, BuildScript::default()),
        ));
    }
    r.helm("upgrade", &[format!("--set=image.tag={tag}")]);
    let started = Instant::now();
    let mut holders: Vec<String> = Vec::new();
    let mut most_leaders = 0;
    let mut created = 0;
    let deadline = Instant::now() + T;
    loop {
        if let Some(h) = r.leader().await
            && holders.last() != Some(&h)
        {
            holders.push(h);
        }
        // Every pod's own view of leadership, over the pod network.
        let pods = r.operator_pods().await;
        let mut leaders = 0;
        for p in &pods {
            if leader_gauge(p).await == Some(true) {
                leaders += 1;
            }
        }
        most_leaders = most_leaders.max(leaders);
        // One request at the start, then one every 4 s while the pods are replaced.
        if created < workspaces.len()
            && started.elapsed() >= Duration::from_secs(4) * created as u32
        {
            let (name, _) = &workspaces[created];
            r.request(&format!("start-{name}"), name).await;
            created += 1;
        }
        let new_image = format!("{REPOSITORY}:{tag}");
        let done = pods.len() == 2
            && pods.iter().all(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.containers[0].image.as_deref())
                    == Some(new_image.as_str())
                    && !old_pods.contains(&p.name_any())
            })
            && created == workspaces.len();
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rollout not done in {T:?}: {}",
            r.describe_pods().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    r.rolled_out(&r.name, 2).await;
    let leader = eventually("a leader after the rollout", T, || async {
        r.leader().await.filter(|h| !old_pods.contains(h))
    })
    .await;
    if holders.last() != Some(&leader) {
        holders.push(leader.clone());
    }
    println!(
        "lease holders during the rollout: {holders:?}; most pods reporting leader at one poll: {most_leaders}"
    );
    let new_pods: BTreeSet<String> = r
        .operator_pods()
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert!(new_pods.contains(&leader), "a new pod leads: {leader}");
    for (name, ws) in &workspaces {
        r.wait_ready(&r.ns, &format!("start-{name}")).await;
        assert_eq!(r.sim.sim().builds_posted(*ws), 1, "{name}: one build");
    }
    // Exactly one pod says it leads, and it is the Lease holder.
    let pods = r.operator_pods().await;
    let mut leading = Vec::new();
    for p in &pods {
        if leader_gauge(p).await == Some(true) {
            leading.push(p.name_any());
        }
    }
    assert_eq!(leading, vec![leader], "one leader after the rollout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real node (root): make test-node"]
async fn token_secret_rotation_reaches_the_running_pod_without_a_restart() {
    let r = Release::install("node-rotate", &[], &[]).await;
    r.rolled_out(&r.name, 1).await;
    let [pod] = r
        .operator_pods()
        .await
        .try_into()
        .expect("one operator pod");
    let ws = r.stopped_workspace("dev", BuildScript::default());
    r.request("start-dev", "dev").await;
    r.wait_ready(&r.ns, "start-dev").await;
    assert_eq!(r.sim.sim().builds_posted(ws), 1);

    // Rotate: a new Coder user's token into the Secret, then the old user's tokens stop working.
    let next = r.sim.sim().add_admin("operator-next");
    let uid = pod.uid().expect("uid");
    let mounted = r
        .plane
        .dir()
        .join("kubelet/pods")
        .join(&uid)
        .join("volumes/kubernetes.io~secret/coder-token/token");
    let t0 = Instant::now();
    r.write_token(&next.token).await;
    eventually("the new token in the pod's Secret volume", T, || async {
        let now = std::fs::read_to_string(&mounted).unwrap_or_default();
        (now.trim() == next.token).then_some(())
    })
    .await;
    let in_volume = t0.elapsed();
    r.sim.sim().delete_user(r.operator_user.id);

    let ws2 = r.stopped_workspace("dev-2", BuildScript::default());
    r.request("start-dev-2", "dev-2").await;
    r.wait_ready(&r.ns, "start-dev-2").await;
    let in_use = t0.elapsed();
    println!(
        "token rotation: the Secret update reached the pod's volume after {:.1}s; a workspace \
         started with the new token (old one revoked) {:.1}s after the update",
        in_volume.as_secs_f64(),
        in_use.as_secs_f64()
    );
    assert_eq!(r.sim.sim().builds_posted(ws2), 1);
    let now = r
        .pods_api()
        .get(&pod.name_any())
        .await
        .expect("the same pod");
    assert_eq!(now.uid(), Some(uid), "the same pod");
    assert_eq!(restarts(&now), 0, "no container restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real node (root): make test-node"]
async fn mcp_server_pod_is_called_from_another_namespace_with_a_projected_token() {
    let plane = node().await;
    let caller_ns = plane
        .create_namespace("node-caller")
        .await
        .expect("namespace");
    let r = Release::install(
        "node-mcp",
        &[caller_ns.as_str()],
        &["--set=mcp.enabled=true"],
    )
    .await;
    let mcp = format!("{}-mcp", r.name);
    r.rolled_out(&r.name, 1).await;
    r.rolled_out(&mcp, 1).await;
    let service = Api::<Service>::namespaced(r.admin.clone(), &r.ns)
        .get(&mcp)
        .await
        .expect("the MCP Service");
    let cluster_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP");

    // The caller: ServiceAccount chat-bot in its own namespace, allowed to create requests there
    // through the chart's editor ClusterRole (what the built-in edit role aggregates).
    let objects = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: chat-bot, namespace: {caller_ns}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: chat-bot-edits-requests, namespace: {caller_ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {release}-editor}}\n\
         subjects: [{{kind: ServiceAccount, name: chat-bot, namespace: {caller_ns}}}]\n",
        release = r.name
    );
    plane
        .apply_yaml(&objects, &caller_ns)
        .await
        .expect("caller ServiceAccount and RoleBinding");
    let ws = r.stopped_workspace("dev", BuildScript::default());
    let args = json!({"owner": "alice", "name": "dev", "timeout": "3m"}).to_string();
    let caller: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "chat", "namespace": caller_ns},
        "spec": {
            "serviceAccountName": "chat-bot",
            "automountServiceAccountToken": false,
            "restartPolicy": "Never",
            "containers": [{
                "name": "mcp-probe",
                "image": PROBE_IMAGE,
                "imagePullPolicy": "Never",
                "args": [
                    "-url", format!("http://{cluster_ip}:8090/mcp"),
                    "-token-file", "/var/run/secrets/wso/token",
                    "-tool", "start_workspace",
                    "-arguments", args,
                ],
                "volumeMounts": [{"name": "token", "mountPath": "/var/run/secrets/wso", "readOnly": true}],
            }],
            "volumes": [{"name": "token", "projected": {
                "defaultMode": 0o444,
                "sources": [{"serviceAccountToken": {
                    "audience": "workspace-start-operator", "expirationSeconds": 600, "path": "token",
                }}],
            }}],
        },
    }))
    .expect("caller pod");
    let pods: Api<Pod> = Api::namespaced(r.admin.clone(), &caller_ns);
    pods.create(&PostParams::default(), &caller)
        .await
        .expect("create the caller pod");
    let done = eventually("the caller pod finished", T, || async {
        let p = pods.get("chat").await.ok()?;
        let phase = p.status.as_ref()?.phase.clone()?;
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(p)
    })
    .await;
    let terminated = done
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs[0].state.as_ref())
        .and_then(|s| s.terminated.clone())
        .expect("terminated state");
    let message = terminated.message.clone().unwrap_or_default();
    assert_eq!(
        terminated.exit_code,
        0,
        "the MCP call failed: {message}\nMCP pods: {}\n{}",
        r.describe_pods().await,
        r.container_logs()
    );
    let result: serde_json::Value = serde_json::from_str(&message).expect("the tool's JSON");
    println!("MCP start_workspace from {caller_ns}: {result}");
    let requests = r
        .requests(&caller_ns)
        .list(&ListParams::default())
        .await
        .expect("list requests");
    let [request] = requests.items.as_slice() else {
        panic!("one request in {caller_ns}, got {}", requests.items.len())
    };
    r.wait_ready(&caller_ns, &request.name_any()).await;
    assert_eq!(r.sim.sim().builds_posted(ws), 1);
}
