//! Integration tests of the envtest control plane against the real kube-apiserver + etcd.
//!
//! All tests share one plane (`ControlPlane::shared`) and isolate themselves by namespace; one
//! starts kube-controller-manager on it.

use std::time::{Duration, Instant};

use envtest::ControlPlane;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{DynamicObject, GroupVersionKind, PostParams},
    discovery,
};

const TEST_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.envtest.example.com
spec:
  group: envtest.example.com
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              min: {type: integer}
              max: {type: integer}
            x-kubernetes-validations:
            - rule: "self.min <= self.max"
              message: "min must not exceed max"
"#;

fn widget(name: &str, min: i64, max: i64) -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "envtest.example.com/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"min": min, "max": max},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_version_is_pinned_release() {
    let cp = ControlPlane::shared().await;
    eprintln!("control plane started in {:?}", cp.startup_duration());
    let v = cp.admin_client().apiserver_version().await.unwrap();
    assert_eq!(v.git_version, envtest::KUBERNETES_VERSION);
    assert!(cp.admin_kubeconfig().is_file());
    assert!(cp.server_url().starts_with("https://127.0.0.1:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_with_cel_rule_rejects_invalid_objects() {
    let cp = ControlPlane::shared().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("widgets.yaml"), TEST_CRD).unwrap();
    std::fs::write(dir.path().join("ignored.txt"), "not yaml").unwrap();
    cp.install_crds(dir.path()).await.unwrap();
    // Installing again is idempotent (server-side apply).
    cp.install_crds(dir.path()).await.unwrap();

    let ns = cp.create_namespace("crd").await.unwrap();
    let client = cp.admin_client();
    let gvk = GroupVersionKind::gvk("envtest.example.com", "v1", "Widget");
    let (ar, _) = discovery::pinned_kind(&client, &gvk).await.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &ar);

    api.create(&PostParams::default(), &widget("ok", 1, 2))
        .await
        .unwrap();
    let err = api
        .create(&PostParams::default(), &widget("bad", 3, 2))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(
                s.message.contains("min must not exceed max"),
                "{}",
                s.message
            );
        }
        other => panic!("expected a 422, got {other:?}"),
    }

    // apply_yaml resolves custom kinds through discovery.
    cp.apply_yaml(
        "apiVersion: envtest.example.com/v1\nkind: Widget\nmetadata:\n  name: applied\nspec:\n  min: 0\n  max: 0\n",
        &ns,
    )
    .await
    .unwrap();
    assert!(api.get_opt("applied").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_is_bound_by_rbac() {
    let cp = ControlPlane::shared().await;
    let ns = cp.create_namespace("rbac").await.unwrap();
    let (sa_client, kubeconfig) = cp.service_account_client(&ns, "op").await.unwrap();
    assert!(kubeconfig.is_file());

    let cms: Api<ConfigMap> = Api::namespaced(sa_client, &ns);
    match cms.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("expected 403 without RBAC, got {other:?}"),
    }

    let rbac = format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: cm-reader}}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: cm-reader}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: cm-reader}}
subjects:
- {{kind: ServiceAccount, name: op, namespace: {ns}}}
"#
    );
    cp.apply_yaml(&rbac, &ns).await.unwrap();
    // RBAC is evaluated from the informer cache: allow a moment for the binding to propagate.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cms.list(&Default::default()).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet allowed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("still refused after the RoleBinding: {e}"),
        }
    }
    // Writes stay forbidden.
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("x".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match cms.create(&PostParams::default(), &cm).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("expected 403 on create, got {other:?}"),
    }
}

/// Uses its own plane: restarting the shared one would disturb the tests running in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_apiserver_keeps_data() {
    let cp = ControlPlane::start().await.unwrap();
    let ns = cp.create_namespace("restart").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(cp.admin_client(), &ns);
    let mut cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("keep".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    cm.data = Some([("k".to_owned(), "v".to_owned())].into());
    cms.create(&PostParams::default(), &cm).await.unwrap();

    let t0 = Instant::now();
    cp.restart_apiserver().await.unwrap();
    eprintln!("apiserver restarted in {:?}", t0.elapsed());

    // A client created before the restart still works (same URL, CA and token).
    let got = cms.get("keep").await.unwrap();
    assert_eq!(got.data.unwrap()["k"], "v");
    let dir = cp.dir().to_owned();
    cp.stop();
    if std::env::var("KEEP_ENVTEST").as_deref() != Ok("1") {
        assert!(!dir.exists(), "temp dir removed on stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_manager_started_on_demand_aggregates_roles() {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let cp = ControlPlane::shared().await;
    let (a, b) = tokio::join!(
        cp.ensure_controller_manager(),
        cp.ensure_controller_manager()
    );
    a.unwrap();
    b.unwrap();
    cp.ensure_controller_manager().await.unwrap();
    // `view` is built only by the clusterrole-aggregation controller (its rules start empty).
    let roles: Api<ClusterRole> = Api::all(cp.admin_client());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = roles.get("view").await.unwrap();
        if view.rules.is_some_and(|r| !r.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "view was never aggregated");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
