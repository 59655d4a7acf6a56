//! The Helm chart's RBAC against the real kube-apiserver: the rendered chart (cluster and
//! namespaced mode, one and two replicas; leader election is always on) is applied, and
//! SubjectAccessReviews prove the operator's ServiceAccount gets exactly what it needs and nothing
//! more. The operator then runs in cluster mode as that ServiceAccount; and every
//! `ci/*-values.yaml` passes `kubectl apply --dry-run=server`.
//!
//! Only `operator_in_cluster_mode_*` creates WorkspaceStartRequests: its operator watches every
//! namespace of this binary's control plane, so no other test here may create requests.

mod support;

use support::opproc;

use std::time::Duration;

use coder_sim::{SimConfig, SimServer, WorkspaceSeed};
use envtest::ControlPlane;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::api::{Api, PostParams};
use opproc::{Launch, Proc, helm_template};
use serde_json::json;
use support::{kubectl_admin, ready, repo};
use workspace_start_operator::api::crd::{Phase, WorkspaceStartRequest};

/// The ServiceAccount name every test renders (fixed through `serviceAccount.name`).
const SA: &str = "workspace-start-operator";
const T: Duration = Duration::from_secs(40);

/// Renders the chart with a per-test `fullnameOverride` (so cluster-scoped objects of tests
/// running in parallel do not collide) and the fixed ServiceAccount name, then applies it.
async fn install(plane: &ControlPlane, release_ns: &str, sets: &[String]) -> String {
    let mut args = vec![
        format!("--set=fullnameOverride=wso-{release_ns}"),
        format!("--set=serviceAccount.name={SA}"),
        "--set=coder.url=https://coder.example.com".to_owned(),
        "--set=coder.token=x".to_owned(),
    ];
    args.extend(sets.iter().cloned());
    let yaml = helm_template("workspace-start-operator", release_ns, &args);
    plane
        .apply_yaml(&yaml, release_ns)
        .await
        .unwrap_or_else(|e| panic!("apply chart {sets:?}: {e}"));
    yaml
}

/// One access check: `verb resource[.group][/subresource]` in `ns` ("" = cluster-wide) on `name`.
struct Access<'a> {
    verb: &'a str,
    resource: &'a str,
    ns: &'a str,
    name: Option<&'a str>,
}

fn access<'a>(verb: &'a str, resource: &'a str, ns: &'a str) -> Access<'a> {
    Access {
        verb,
        resource,
        ns,
        name: None,
    }
}

fn named<'a>(verb: &'a str, resource: &'a str, ns: &'a str, name: &'a str) -> Access<'a> {
    Access {
        verb,
        resource,
        ns,
        name: Some(name),
    }
}

impl std::fmt::Display for Access<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(n) = self.name {
            write!(f, " {n:?}")?;
        }
        if self.ns.is_empty() {
            write!(f, " (all namespaces)")
        } else {
            write!(f, " in {}", self.ns)
        }
    }
}

/// Asks the API server (as admin) whether ServiceAccount `sa_ns/sa` may do `a`.
async fn allowed_as(admin: &Client, sa_ns: &str, sa: &str, a: &Access<'_>) -> bool {
    let (res, sub) = a
        .resource
        .split_once('/')
        .map_or((a.resource, None), |(r, s)| (r, Some(s)));
    let (resource, group) = res.split_once('.').unwrap_or((res, ""));
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{sa_ns}:{sa}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{sa_ns}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(a.verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource: sub.map(Into::into),
                namespace: (!a.ns.is_empty()).then(|| a.ns.to_owned()),
                name: a.name.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(admin.clone());
    let r = api
        .create(&PostParams::default(), &sar)
        .await
        .expect("create SubjectAccessReview");
    r.status.is_some_and(|s| s.allowed)
}

/// Checks every expectation of the operator's ServiceAccount and reports all mismatches at once.
async fn expect_access(admin: &Client, sa_ns: &str, allow: &[Access<'_>], deny: &[Access<'_>]) {
    expect_access_as(admin, sa_ns, SA, allow, deny).await
}

/// Checks every expectation of ServiceAccount `sa_ns/sa` and reports all mismatches at once.
async fn expect_access_as(
    admin: &Client,
    sa_ns: &str,
    sa: &str,
    allow: &[Access<'_>],
    deny: &[Access<'_>],
) {
    let mut wrong = Vec::new();
    for a in allow {
        if !allowed_as(admin, sa_ns, sa, a).await {
            wrong.push(format!("DENIED but needed: {a}"));
        }
    }
    for a in deny {
        if allowed_as(admin, sa_ns, sa, a).await {
            wrong.push(format!("ALLOWED but must be denied: {a}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "RBAC of {sa_ns}:{sa}:\n{}",
        wrong.join("\n")
    );
}

const WSR: &str = "workspacestartrequests.coder.com";
const WSR_STATUS: &str = "workspacestartrequests.coder.com/status";
const EVENTS: &str = "events.events.k8s.io";
const LEASES: &str = "leases.coordination.k8s.io";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_grants_least_privilege() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client();
    let rel = plane.create_namespace("rbac-cl").await.expect("ns");
    let sec = plane.create_namespace("rbac-cl-sec").await.expect("ns");
    let other = plane.create_namespace("rbac-cl-other").await.expect("ns");
    install(
        plane,
        &rel,
        &[format!("--set=rbac.secretNamespaces={{{sec}}}")],
    )
    .await;

    expect_access(
        &admin,
        &rel,
        &[
            access("list", WSR, ""),
            access("watch", WSR, ""),
            access("list", WSR, &other),
            access("get", WSR, &other),
            access("delete", WSR, &other), // ttlSecondsAfterFinished
            access("patch", WSR_STATUS, &other),
            access("patch", WSR_STATUS, &sec),
            access("create", EVENTS, &other),
            access("patch", EVENTS, &other), // kube-runtime's Recorder patches event series
            named("get", "secrets", &sec, "team-coder"),
            // Leader election is always on: create Leases, read and renew only the named one.
            access("create", LEASES, &rel),
            named("get", LEASES, &rel, "workspace-start-operator"),
            named("update", LEASES, &rel, "workspace-start-operator"),
            named("patch", LEASES, &rel, "workspace-start-operator"),
        ],
        &[
            // Secrets only by name-less get, only in rbac.secretNamespaces.
            named("get", "secrets", &other, "team-coder"),
            named("get", "secrets", &rel, "wso-coder-token"),
            access("list", "secrets", &sec),
            access("watch", "secrets", &sec),
            access("list", "secrets", ""),
            access("watch", "secrets", ""),
            access("get", "secrets", ""),
            // The spec belongs to users: the operator never writes it nor creates requests.
            access("update", WSR, &other),
            access("patch", WSR, &other),
            access("create", WSR, &other),
            access("update", WSR_STATUS, &other),
            // Nothing else.
            access("create", "pods", &other),
            access("list", "pods", ""),
            access("create", "events", &other), // core/v1 events: not used
            access("list", "namespaces", ""),
            access("create", "clusterroles.rbac.authorization.k8s.io", ""),
            // Leases: no listing, no other Lease, nothing outside the release namespace.
            access("list", LEASES, &rel),
            access("watch", LEASES, &rel),
            named("get", LEASES, &rel, "some-other-lease"),
            named("update", LEASES, &rel, "some-other-lease"),
            named("delete", LEASES, &rel, "workspace-start-operator"),
            access("create", LEASES, &other),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_mode_with_leader_election_grants_least_privilege() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client();
    let rel = plane.create_namespace("rbac-ns").await.expect("ns");
    let a = plane.create_namespace("rbac-ns-a").await.expect("ns");
    let b = plane.create_namespace("rbac-ns-b").await.expect("ns");
    let unlisted = plane.create_namespace("rbac-ns-x").await.expect("ns");
    install(
        plane,
        &rel,
        &[
            format!("--set=watchNamespaces={{{a},{b}}}"),
            format!("--set=rbac.secretNamespaces={{{a}}}"),
            "--set=leaderElection.enabled=true".into(),
            "--set=leaderElection.leaseName=wso-leader".into(),
        ],
    )
    .await;

    expect_access(
        &admin,
        &rel,
        &[
            access("list", WSR, &a),
            access("watch", WSR, &b),
            access("patch", WSR_STATUS, &b),
            access("create", EVENTS, &a),
            named("get", "secrets", &a, "team-coder"),
            // Leader election: the named Lease in the release namespace.
            access("create", LEASES, &rel),
            named("get", LEASES, &rel, "wso-leader"),
            named("update", LEASES, &rel, "wso-leader"),
            named("patch", LEASES, &rel, "wso-leader"),
        ],
        &[
            // Unlisted namespaces, including the release namespace, and cluster-wide.
            access("list", WSR, &unlisted),
            access("watch", WSR, &unlisted),
            access("list", WSR, &rel),
            access("list", WSR, ""),
            access("watch", WSR, ""),
            access("patch", WSR_STATUS, &unlisted),
            access("create", EVENTS, &unlisted),
            // Secrets: only in rbac.secretNamespaces (a), never listed.
            named("get", "secrets", &b, "team-coder"),
            named("get", "secrets", &unlisted, "team-coder"),
            access("list", "secrets", &a),
            // Leases: only that name, only the release namespace, no list/watch/delete.
            named("get", LEASES, &rel, "some-other-lease"),
            named("update", LEASES, &rel, "some-other-lease"),
            named("get", LEASES, &a, "wso-leader"),
            named("update", LEASES, &a, "wso-leader"),
            access("create", LEASES, &a),
            access("list", LEASES, &rel),
            access("watch", LEASES, &rel),
            named("delete", LEASES, &rel, "wso-leader"),
            access("get", LEASES, ""),
            access("create", "pods", &a),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_with_leader_election_and_no_secret_access() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client();
    let rel = plane.create_namespace("rbac-le").await.expect("ns");
    let other = plane.create_namespace("rbac-le-other").await.expect("ns");
    install(
        plane,
        &rel,
        &[
            "--set=replicaCount=2".into(),
            "--set=rbac.allowCoderRefSecrets=false".into(),
            format!("--set=rbac.secretNamespaces={{{other}}}"),
        ],
    )
    .await;
    expect_access(
        &admin,
        &rel,
        &[
            access("watch", WSR, ""),
            named("get", LEASES, &rel, "workspace-start-operator"),
            named("update", LEASES, &rel, "workspace-start-operator"),
        ],
        &[
            named("get", "secrets", &other, "team-coder"),
            named("get", "secrets", &rel, "team-coder"),
            named("get", LEASES, &other, "workspace-start-operator"),
            named("get", LEASES, &rel, "other"),
        ],
    )
    .await;
}

const TOKEN_REVIEWS: &str = "tokenreviews.authentication.k8s.io";
const ACCESS_REVIEWS: &str = "subjectaccessreviews.authorization.k8s.io";

/// What the MCP server's ServiceAccount must never do, in `ns` (requests it may only create and
/// read: never change, delete or write their status; no Secrets, Events, Leases, tokens).
fn mcp_never<'a>(ns: &'a str) -> Vec<Access<'a>> {
    vec![
        access("update", WSR, ns),
        access("patch", WSR, ns),
        access("delete", WSR, ns),
        access("deletecollection", WSR, ns),
        access("patch", WSR_STATUS, ns),
        access("update", WSR_STATUS, ns),
        named("get", "secrets", ns, "team-coder"),
        access("list", "secrets", ns),
        access("create", EVENTS, ns),
        access("create", LEASES, ns),
        access("create", "pods", ns),
        access("create", "serviceaccounts/token", ns),
        access("impersonate", "serviceaccounts", ns),
        access("impersonate", "users", ""),
        access(
            "create",
            "localsubjectaccessreviews.authorization.k8s.io",
            ns,
        ),
    ]
}

/// The MCP server (mcp.enabled) runs as its own ServiceAccount: it may review tokens and access
/// (cluster-wide, as the TokenReview/SubjectAccessReview APIs are), create and read requests where
/// the operator works, and nothing else; without mcp.enabled nothing of it renders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_server_grants_least_privilege_and_renders_only_when_enabled() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client();

    let off = helm_template(
        "workspace-start-operator",
        "wso",
        &[
            "--set=coder.url=https://coder.example.com".into(),
            "--set=coder.token=x".into(),
        ],
    );
    assert!(
        !off.contains("app.kubernetes.io/component: mcp"),
        "MCP rendered although disabled:\n{off}"
    );

    // Cluster mode.
    let rel = plane.create_namespace("rbac-mcp").await.expect("ns");
    let other = plane.create_namespace("rbac-mcp-other").await.expect("ns");
    let yaml = install(plane, &rel, &["--set=mcp.enabled=true".into()]).await;
    let mcp_sa = format!("wso-{rel}-mcp");
    assert!(yaml.contains(&format!("name: {mcp_sa}")), "{yaml}");
    let mut deny = mcp_never(&other);
    deny.extend(mcp_never(&rel));
    expect_access_as(
        &admin,
        &rel,
        &mcp_sa,
        &[
            access("create", TOKEN_REVIEWS, ""),
            access("create", ACCESS_REVIEWS, ""),
            access("create", WSR, &other),
            access("get", WSR, &other),
            access("list", WSR, &other),
            access("watch", WSR, &other),
        ],
        &deny,
    )
    .await;
    // The operator's own ServiceAccount gained nothing from it.
    expect_access(
        &admin,
        &rel,
        &[],
        &[
            access("create", WSR, &other),
            access("create", TOKEN_REVIEWS, ""),
        ],
    )
    .await;

    // Namespaced mode: requests only in the watched namespace.
    let rel = plane.create_namespace("rbac-mcp-ns").await.expect("ns");
    let watched = plane.create_namespace("rbac-mcp-ns-a").await.expect("ns");
    let unwatched = plane.create_namespace("rbac-mcp-ns-x").await.expect("ns");
    install(
        plane,
        &rel,
        &[
            "--set=mcp.enabled=true".into(),
            format!("--set=watchNamespaces={{{watched}}}"),
        ],
    )
    .await;
    let mcp_sa = format!("wso-{rel}-mcp");
    let mut deny = vec![
        access("create", WSR, &unwatched),
        access("get", WSR, &unwatched),
        access("list", WSR, ""),
        access("watch", WSR, ""),
        access("create", WSR, &rel),
    ];
    deny.extend(mcp_never(&watched));
    expect_access_as(
        &admin,
        &rel,
        &mcp_sa,
        &[
            access("create", TOKEN_REVIEWS, ""),
            access("create", ACCESS_REVIEWS, ""),
            access("create", WSR, &watched),
            access("watch", WSR, &watched),
        ],
        &deny,
    )
    .await;
}

async fn create_wsr(admin: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let obj: WorkspaceStartRequest = serde_json::from_value(json!({
        "apiVersion": "coder.com/v1alpha1",
        "kind": "WorkspaceStartRequest",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .expect("valid request");
    Api::<WorkspaceStartRequest>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &obj)
        .await
        .expect("create request");
}

/// Waits until the request is Ready or Failed (a timeout panics; [`Proc`] then prints its log).
async fn wait_terminal(admin: &Client, ns: &str, name: &str) -> WorkspaceStartRequest {
    let api = Api::<WorkspaceStartRequest>::namespaced(admin.clone(), ns);
    opproc::eventually(&format!("{ns}/{name} to finish"), T, || {
        let api = api.clone();
        async move {
            let w = api.get(name).await.ok()?;
            w.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(Phase::is_terminal)
                .then_some(w)
        }
    })
    .await
}

async fn coder_secret(admin: &Client, ns: &str, url: &str, token: &str) {
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "team-coder", "namespace": ns},
        "stringData": {"url": url, "token": token},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .expect("create secret");
}

/// The operator in cluster mode (no --namespaces), as the chart's ServiceAccount: a request in
/// any namespace is reconciled; a coderRef Secret is read only in rbac.secretNamespaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_in_cluster_mode_reconciles_every_namespace_and_reads_only_allowed_secrets() {
    let plane = ControlPlane::shared().await;
    plane
        .install_crds(&repo().join("crds"))
        .await
        .expect("CRDs");
    let admin = plane.admin_client();
    let rel = plane.create_namespace("op-cl").await.expect("ns");
    let app = plane.create_namespace("op-cl-app").await.expect("ns");
    let sec = plane.create_namespace("op-cl-sec").await.expect("ns");
    let nosec = plane.create_namespace("op-cl-nosec").await.expect("ns");
    install(
        plane,
        &rel,
        &[format!("--set=rbac.secretNamespaces={{{sec}}}")],
    )
    .await;

    let sim = SimServer::start(SimConfig::default())
        .await
        .expect("coder-sim");
    let alice = sim.sim().add_user("alice");
    let (_, kubeconfig) = plane
        .service_account_client(&rel, SA)
        .await
        .expect("SA token");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), &alice.token).expect("token file");
    let op = Proc::spawn(Launch {
        kubeconfig: &kubeconfig,
        dir: dir.path(),
        args: vec![
            format!("--coder-url={}", sim.url()),
            format!("--coder-token-file={}", dir.path().join("token").display()),
            "--poll-ms=300".into(),
            "--coder-timeout-ms=3000".into(),
            "--log-level=workspace_start_operator=debug,info".into(),
        ],
        env: vec![("POD_NAMESPACE".into(), rel.clone())],
    });
    op.wait_status("/readyz", 200, T).await;

    // Operator-wide connection, request in a namespace the chart never mentions.
    let ws = sim.sim().add_workspace(WorkspaceSeed::new(alice.id, "dev"));
    create_wsr(
        &admin,
        &app,
        "start",
        json!({"workspace": {"id": ws.to_string()}}),
    )
    .await;
    // coderRef Secret in an allowed namespace: read and used.
    let ws2 = sim
        .sim()
        .add_workspace(WorkspaceSeed::new(alice.id, "dev2"));
    coder_secret(&admin, &sec, &sim.url(), &alice.token).await;
    create_wsr(
        &admin,
        &sec,
        "via-secret",
        json!({"workspace": {"id": ws2.to_string()}, "coderRef": {"name": "team-coder"}}),
    )
    .await;
    // coderRef Secret that exists, but in a namespace not in rbac.secretNamespaces.
    let ws3 = sim
        .sim()
        .add_workspace(WorkspaceSeed::new(alice.id, "dev3"));
    coder_secret(&admin, &nosec, &sim.url(), &alice.token).await;
    create_wsr(
        &admin,
        &nosec,
        "forbidden-secret",
        json!({"workspace": {"id": ws3.to_string()}, "coderRef": {"name": "team-coder"}}),
    )
    .await;

    for (ns, name) in [(&app, "start"), (&sec, "via-secret")] {
        let w = wait_terminal(&admin, ns, name).await;
        assert_eq!(
            ready(&w),
            ("True".into(), "Ready".into()),
            "{ns}/{name}: {:?}",
            w.status
        );
    }
    let w = wait_terminal(&admin, &nosec, "forbidden-secret").await;
    let st = w.status.clone().expect("status");
    assert_eq!(st.phase, Some(Phase::Failed), "{st:?}");
    assert_eq!(ready(&w).1, "SecretNotFound", "{st:?}");
    let msg = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        msg.contains("rbac.secretNamespaces"),
        "Ready message should name the Helm value: {msg:?}"
    );
    assert_eq!(
        sim.sim().builds_created(ws3),
        0,
        "no build without a usable connection"
    );
    assert_eq!(sim.sim().builds_created(ws), 1);
    assert_eq!(sim.sim().builds_created(ws2), 1);

    // Events were written in each request's own namespace (events.k8s.io create via ClusterRole).
    // Events are published in the background: allow them a moment to land.
    let evs: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), &app);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reasons = loop {
        let reasons: Vec<String> = evs
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        if reasons.iter().any(|r| r == "Ready") || std::time::Instant::now() > deadline {
            break reasons;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reasons.iter().any(|r| r == "Ready"), "{reasons:?}");

    // No RBAC denials other than the Secret we meant to be denied.
    let logs = op.logs();
    assert!(
        !logs.contains("watching WorkspaceStartRequests failed"),
        "watch failed in cluster mode:\n{}",
        support::tail(&logs, 30)
    );
}

/// `kubectl apply --dry-run=server` of everything each ci/*-values.yaml renders (CRDs included;
/// the ServiceMonitor against a structural ServiceMonitor CRD fixture, strict field validation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ci_values_file_passes_server_side_dry_run() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client();
    plane
        .install_crds(&repo().join("tests/fixtures/crds-thirdparty"))
        .await
        .expect("ServiceMonitor CRD fixture");
    // The ci values name these namespaces (watchNamespaces / secretNamespaces).
    let nss: Api<Namespace> = Api::all(admin.clone());
    for n in ["team-a", "team-b"] {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": n}})).expect("ns");
        match nss.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("namespace {n}: {e}"),
        }
    }
    let rel = plane.create_namespace("dry").await.expect("ns");
    let ci = repo().join("charts/workspace-start-operator/ci");
    let mut files: Vec<_> = std::fs::read_dir(&ci)
        .expect("ci dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "{files:?}");
    for f in files {
        let yaml = helm_template(
            "workspace-start-operator",
            &rel,
            &["--include-crds".into(), format!("--values={}", f.display())],
        );
        let kinds: Vec<&str> = yaml
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .collect();
        let (ok, out) = kubectl_admin(
            plane,
            &[
                "apply",
                "--dry-run=server",
                "--validate=strict",
                "-o",
                "name",
                "-f",
                "-",
            ],
            Some(&yaml),
        );
        assert!(ok, "{}: server dry run failed:\n{out}", f.display());
        // Every rendered object was accepted (one `kind/name` line each).
        let accepted = out
            .lines()
            .filter(|l| l.contains('/') && !l.contains(' '))
            .count();
        assert_eq!(accepted, kinds.len(), "{}: {kinds:?}\n{out}", f.display());
        if f.to_string_lossy().contains("ha-") {
            assert!(
                out.contains("servicemonitor.monitoring.coreos.com/"),
                "{out}"
            );
            assert!(out.contains("networkpolicy.networking.k8s.io/"), "{out}");
            assert!(
                out.contains("deployment.apps/workspace-start-operator-mcp"),
                "{out}"
            );
        }
        if f.to_string_lossy().contains("shards-") {
            // The default Deployment and one per shard.
            assert_eq!(out.matches("deployment.apps/").count(), 3, "{out}");
        }
    }

    // The longest release name Helm allows (53 characters) still renders valid object names
    // (a Service name is a DNS-1035 label of at most 63 characters).
    let release = "a-very-long-release-name-for-the-coder-start-operator";
    assert_eq!(release.len(), 53);
    let yaml = helm_template(
        release,
        &rel,
        &[
            "--set=coder.url=https://coder.example.com".into(),
            "--set=coder.token=x".into(),
            "--set=serviceMonitor.enabled=true".into(),
            "--set=networkPolicy.enabled=true".into(),
            "--set=leaderElection.enabled=true".into(),
            "--set=rbac.secretNamespaces={team-a}".into(),
            "--set=mcp.enabled=true".into(),
        ],
    );
    let (ok, out) = kubectl_admin(
        plane,
        &[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-o",
            "name",
            "-f",
            "-",
        ],
        Some(&yaml),
    );
    assert!(ok, "long release name: server dry run failed:\n{out}");
}
