//! Tenancy against the real API server: requests are created by an impersonated tenant (a user
//! with the chart's editor role in one namespace, not the cluster admin), WorkspaceStartPolicies
//! by the admin; the operator runs in bound mode as the chart's ServiceAccount with an admin
//! Coder token (the shared identity that can reach every user's workspace), and the chart's
//! ValidatingAdmissionPolicies are live.

mod support;

use std::time::Duration;

use coder_sim::{SimUser, WorkspaceSeed};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::{Env, RELEASE, ready};
use workspace_start_operator::api::crd::{Phase, WorkspaceStartRequest};
use workspace_start_operator::api::policy::{WorkspaceStartPolicy, WorkspaceStartPolicySpec};

const T: Duration = Duration::from_secs(30);
const POSTS: &str = "POST /api/v2/workspaces/{id}/builds";
/// The impersonated tenant: may edit requests and Secrets in the test namespace only.
const TENANT: &str = "tenant@example.com";

/// A test namespace with an admin Coder token for the operator, bob beside alice, and a tenant.
struct World {
    env: Env,
    bob: SimUser,
    tenant: Client,
    policies: Vec<String>,
}

impl World {
    async fn new(prefix: &str) -> World {
        let env = Env::new(prefix).await;
        let admin = env.sim.sim().add_admin("coder-admin");
        std::fs::write(env.token_file(), format!("{}\n", admin.token)).expect("token file");
        let bob = env.sim.sim().add_user("bob");
        // The chart again, with its tenancy admission policies (the harness leaves them off).
        let chart = support::render_chart(
            &env.ns,
            &env.sim.url(),
            &["--set=tenancy.admissionPolicies=true"],
        );
        env.plane
            .apply_yaml(&chart, &env.ns)
            .await
            .expect("chart with admission policies");
        let rbac = format!(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: tenant-requests, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {RELEASE}-editor}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: "{TENANT}"}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: tenant-secrets, namespace: {ns}}}
rules: [{{apiGroups: [""], resources: [secrets], verbs: [create]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: tenant-secrets, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: tenant-secrets}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: "{TENANT}"}}]
"#,
            ns = env.ns
        );
        env.plane
            .apply_yaml(&rbac, &env.ns)
            .await
            .expect("tenant RBAC");
        let tenant = impersonating(&env, TENANT);
        World {
            env,
            bob,
            tenant,
            policies: Vec::new(),
        }
    }

    /// Binds this namespace (admin) with a policy named after it plus `suffix`.
    async fn bind(&mut self, suffix: &str, spec: Value) {
        let mut spec = spec;
        spec["namespaces"] = json!([self.env.ns]);
        let name = format!("{}{suffix}", self.env.ns);
        let policy = WorkspaceStartPolicy::new(
            &name,
            serde_json::from_value::<WorkspaceStartPolicySpec>(spec).expect("policy spec"),
        );
        Api::<WorkspaceStartPolicy>::all(self.env.admin.clone())
            .create(&PostParams::default(), &policy)
            .await
            .expect("create policy");
        self.policies.push(name);
    }

    /// The tenant creates a request; `Err` with the API server's message when refused.
    async fn tenant_creates(
        &self,
        name: &str,
        spec: Value,
    ) -> Result<WorkspaceStartRequest, String> {
        self.creates_as(&self.tenant, name, spec, json!({})).await
    }

    async fn creates_as(
        &self,
        client: &Client,
        name: &str,
        spec: Value,
        labels: Value,
    ) -> Result<WorkspaceStartRequest, String> {
        let obj: WorkspaceStartRequest = serde_json::from_value(json!({
            "apiVersion": "coder.com/v1alpha1",
            "kind": "WorkspaceStartRequest",
            "metadata": {"name": name, "namespace": self.env.ns, "labels": labels},
            "spec": spec,
        }))
        .expect("valid request");
        Api::<WorkspaceStartRequest>::namespaced(client.clone(), &self.env.ns)
            .create(&PostParams::default(), &obj)
            .await
            .map_err(|e| e.to_string())
    }

    /// Waits until the admission policy refuses `spec` (policies reach the API server's
    /// admission cache asynchronously), returning its message. A probe that got through before
    /// is deleted at once (the operator is not running yet).
    async fn refused_at_create(&self, spec: Value) -> String {
        let deadline = std::time::Instant::now() + T;
        loop {
            match self.tenant_creates("probe", spec.clone()).await {
                Err(message) => return message,
                Ok(_) => self.env.delete("probe").await,
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the admission policy never refused {spec}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Turns the chart's tenancy admission policy off for this test (as a cluster may run
    /// without it) and waits until a request it refused is admitted.
    async fn admission_policy_off(&self, refused: Value) {
        let binding = format!("{RELEASE}-{}-tenancy", self.env.ns);
        let (ok, out) = self.env.kubectl(
            &["delete", "validatingadmissionpolicybinding", &binding],
            None,
        );
        assert!(ok, "delete {binding}: {out}");
        let deadline = std::time::Instant::now() + T;
        loop {
            if self.tenant_creates("probe", refused.clone()).await.is_ok() {
                self.env.delete("probe").await;
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the admission policy still refuses {refused}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn start_bound(&mut self, extra: &[&str]) {
        let mut args = vec!["--tenancy=bound"];
        args.extend_from_slice(extra);
        self.env.start_operator(&args).await;
    }

    /// The request ended Failed with `reason`, a Warning Event of that reason, and a message
    /// containing each of `names`.
    async fn failed_with(&self, name: &str, reason: &str, names: &[&str]) {
        let w = self.env.wait_terminal(name, T).await;
        let st = w.status.clone().unwrap_or_default();
        assert_eq!(st.phase, Some(Phase::Failed), "{name}: {st:?}");
        assert_eq!(ready(&w).1, reason, "{name}: {:?}", st.message);
        let message = st.message.unwrap_or_default();
        for n in names {
            assert!(
                message.contains(n),
                "{name}: message {message:?} lacks {n:?}"
            );
        }
        let events = self.env.events(name).await;
        assert!(
            events.iter().any(|e| e.0 == "Warning" && e.1 == reason),
            "{name}: no Warning Event {reason}: {events:?}"
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for name in &self.policies {
            let _ = self.env.kubectl(
                &["delete", "workspacestartpolicy", name, "--wait=false"],
                None,
            );
        }
    }
}

/// A client acting as `user` (the admin's credentials with impersonation).
fn impersonating(env: &Env, user: &str) -> Client {
    let mut config = env.plane.admin_config().clone();
    config.auth_info.impersonate = Some(user.to_owned());
    Client::try_from(config).expect("impersonating client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_bound_to_alice_cannot_start_bobs_workspace() {
    let mut w = World::new("ten-owner").await;
    w.bind("", json!({"owners": ["alice"]})).await;
    let sim = w.env.sim.sim();
    let bobs = sim.add_workspace(WorkspaceSeed::new(w.bob.id, "dev"));
    let alices = sim.add_workspace(WorkspaceSeed::new(w.env.alice.id, "dev"));
    let bobs_chat = sim.add_chat(w.bob.id, Some(bobs));

    // Named owner: refused at create time by the admission policy.
    let by_name = json!({"workspace": {"owner": "bob", "name": "dev"}});
    let refused = w.refused_at_create(by_name.clone()).await;
    assert!(
        refused.contains("OwnerNotAllowed") && refused.contains("bob"),
        "{refused}"
    );

    w.start_bound(&[]).await;
    w.tenant_creates("by-id", json!({"workspace": {"id": bobs.to_string()}}))
        .await
        .expect("by id: the owner is known only to Coder");
    w.tenant_creates("by-chat", json!({"chatId": bobs_chat.to_string()}))
        .await
        .expect("by chat: the owner is known only to Coder");
    w.tenant_creates("alice", json!({"workspace": {"id": alices.to_string()}}))
        .await
        .expect("alice's workspace");
    let ns = w.env.ns.clone();
    w.failed_with("by-id", "OwnerNotAllowed", &[&ns, "bob", "spec.owners"])
        .await;
    w.failed_with("by-chat", "OwnerNotAllowed", &[&ns, "bob", "spec.owners"])
        .await;
    let ok = w.env.wait_terminal("alice", T).await;
    assert_eq!(ready(&ok), ("True".to_owned(), "Ready".to_owned()));

    // With the admission policy off, the operator alone refuses the named owner.
    w.admission_policy_off(by_name.clone()).await;
    w.tenant_creates("by-name", by_name)
        .await
        .expect("admitted");
    w.failed_with("by-name", "OwnerNotAllowed", &[&ns, "bob"])
        .await;
    assert_eq!(sim.builds_posted(bobs), 0, "nothing was started for bob");
    assert_eq!(
        sim.builds_posted(alices),
        1,
        "alice's workspace was started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_outside_the_binding_are_refused_at_create_and_by_the_operator() {
    let mut w = World::new("ten-params").await;
    w.bind("", json!({"owners": ["alice"], "parameters": ["region"]}))
        .await;
    let sim = w.env.sim.sim();
    let ws = sim.add_workspace(WorkspaceSeed::new(w.env.alice.id, "dev"));
    let spec = |names: &[&str]| {
        let params: Vec<Value> = names
            .iter()
            .map(|n| json!({"name": n, "value": "x"}))
            .collect();
        json!({"workspace": {"id": ws.to_string()}, "parameters": params})
    };
    let refused = w.refused_at_create(spec(&["region", "image"])).await;
    assert!(
        refused.contains("ParameterNotAllowed") && refused.contains("image"),
        "{refused}"
    );
    w.start_bound(&[]).await;
    w.tenant_creates("allowed", spec(&["region"]))
        .await
        .expect("allowed parameter");
    let ok = w.env.wait_terminal("allowed", T).await;
    assert_eq!(ready(&ok).1, "Ready");

    w.admission_policy_off(spec(&["image"])).await;
    let before = sim.count(POSTS);
    w.tenant_creates("outside", spec(&["region", "image"]))
        .await
        .expect("admitted without the admission policy");
    let ns = w.env.ns.clone();
    w.failed_with(
        "outside",
        "ParameterNotAllowed",
        &[&ns, "\"image\"", "spec.parameters"],
    )
    .await;
    assert_eq!(
        sim.count(POSTS),
        before,
        "no start build for the refused request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_namespace_is_refused_in_bound_mode_and_served_in_open_mode() {
    let mut w = World::new("ten-unbound").await;
    let sim = w.env.sim.sim();
    let ws = sim.add_workspace(WorkspaceSeed::new(w.env.alice.id, "dev"));
    w.start_bound(&[]).await;
    w.tenant_creates("bound-mode", json!({"workspace": {"id": ws.to_string()}}))
        .await
        .expect("create");
    let ns = w.env.ns.clone();
    w.failed_with(
        "bound-mode",
        "OwnerNotAllowed",
        &[&ns, "WorkspaceStartPolicy"],
    )
    .await;
    assert_eq!(sim.count(POSTS), 0, "bound mode started nothing");
    assert_eq!(
        sim.counters().values().sum::<u64>(),
        0,
        "an unbound namespace costs no Coder call at all"
    );

    // The same operator in open mode (the harness default for tests written before tenancy).
    w.env.operator().terminate().await;
    w.env.start_operator(&[]).await;
    w.tenant_creates("open-mode", json!({"workspace": {"id": ws.to_string()}}))
        .await
        .expect("create");
    let ok = w.env.wait_terminal("open-mode", T).await;
    assert_eq!(ready(&ok).1, "Ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_refuses_requests_from_namespaces_it_does_not_serve() {
    let mut w = World::new("ten-shard").await;
    // Bound to alice, and to the default deployment only (no spec.shards).
    w.bind("", json!({"owners": ["alice"]})).await;
    let sim = w.env.sim.sim();
    let ws = sim.add_workspace(WorkspaceSeed::new(w.env.alice.id, "dev"));
    // The privileged shard's process: its own (admin) token, the same simulator.
    w.start_bound(&["--shard=privileged"]).await;
    let labels = json!({"coder.com/shard": "privileged"});
    w.creates_as(
        &w.tenant,
        "to-privileged",
        json!({"workspace": {"id": ws.to_string()}}),
        labels,
    )
    .await
    .expect("create");
    let ns = w.env.ns.clone();
    w.failed_with(
        "to-privileged",
        "ShardNotAllowed",
        &[&ns, "privileged", "spec.shards"],
    )
    .await;
    assert_eq!(
        sim.counters().values().sum::<u64>(),
        0,
        "no call was made with the shard's token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_opted_in_secrets_serve_as_coder_ref() {
    let mut w = World::new("ten-secret").await;
    let sim = w.env.sim.sim();
    // Bob's own token in the namespace: no owner binding needed for coderRef.
    let ws = sim.add_workspace(WorkspaceSeed::new(w.bob.id, "dev"));
    w.start_bound(&[]).await;
    let url = w.env.sim.url();
    let secrets: Api<Secret> = Api::namespaced(w.tenant.clone(), &w.env.ns);
    for (name, labels, type_) in [
        ("plain", json!({}), "Opaque"),
        ("labelled", json!({"coder.com/coder-ref": "true"}), "Opaque"),
        ("typed", json!({}), "coder.com/coder-credentials"),
    ] {
        let s: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "type": type_,
            "metadata": {"name": name, "labels": labels},
            "stringData": {"url": url, "token": w.bob.token},
        }))
        .expect("secret");
        secrets
            .create(&PostParams::default(), &s)
            .await
            .expect("tenant creates its Secret");
    }
    for name in ["plain", "labelled", "typed"] {
        w.tenant_creates(
            name,
            json!({"workspace": {"id": ws.to_string()}, "coderRef": {"name": name}}),
        )
        .await
        .expect("create");
    }
    w.failed_with(
        "plain",
        "SecretNotAllowed",
        &["plain", "coder.com/coder-ref"],
    )
    .await;
    for name in ["labelled", "typed"] {
        let done = w.env.wait_terminal(name, T).await;
        assert_eq!(ready(&done).1, "Ready", "{name}");
    }
    assert_eq!(
        sim.builds_posted(ws),
        1,
        "one start build, by the opted-in Secrets"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_mcp_service_account_may_set_provenance_labels() {
    let w = World::new("ten-prov").await;
    let spec = json!({"workspace": {"id": uuid::Uuid::new_v4().to_string()}});
    let forged = [
        json!({"coder.com/requested-via": "mcp"}),
        json!({"coder.com/requested-by-namespace": "bots"}),
        json!({"coder.com/requested-by-serviceaccount": "chat-bot"}),
    ];
    let deadline = std::time::Instant::now() + T;
    for (i, labels) in forged.iter().enumerate() {
        loop {
            let name = format!("forged-{i}");
            match w
                .creates_as(&w.tenant, &name, spec.clone(), labels.clone())
                .await
            {
                Err(m) => {
                    assert!(m.contains("only the MCP server"), "{m}");
                    break;
                }
                // The policy may not be loaded yet right after the chart was applied.
                Ok(_) => w.env.delete(&name).await,
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{labels} was never refused"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The annotation too, and a later change of the labels.
    let mut annotated: WorkspaceStartRequest = serde_json::from_value(json!({
        "apiVersion": "coder.com/v1alpha1", "kind": "WorkspaceStartRequest",
        "metadata": {"name": "annotated", "annotations": {"coder.com/requested-by": "system:serviceaccount:bots:chat-bot"}},
        "spec": spec,
    }))
    .expect("request");
    let tenant_api = Api::<WorkspaceStartRequest>::namespaced(w.tenant.clone(), &w.env.ns);
    assert!(
        tenant_api
            .create(&PostParams::default(), &annotated)
            .await
            .is_err()
    );
    annotated.annotations_mut().clear();
    let mine = tenant_api
        .create(&PostParams::default(), &annotated)
        .await
        .expect("no provenance: allowed");
    let mut relabelled = mine.clone();
    relabelled
        .labels_mut()
        .insert("coder.com/requested-via".into(), "mcp".into());
    assert!(
        tenant_api
            .replace("annotated", &PostParams::default(), &relabelled)
            .await
            .is_err(),
        "a tenant may not add provenance later"
    );
    // `kubectl wsr start` labels its requests requested-via=start, for anyone.
    w.creates_as(
        &w.tenant,
        "via-start",
        spec.clone(),
        json!({"coder.com/requested-via": "start"}),
    )
    .await
    .expect("requested-via=start is anyone's");
    // The MCP server's ServiceAccount may set them all.
    let mcp = impersonating(
        &w.env,
        &format!("system:serviceaccount:{}:{RELEASE}-mcp", w.env.ns),
    );
    let (ok, out) = w.env.kubectl(
        &[
            "create",
            "rolebinding",
            "mcp-requests",
            &format!("--clusterrole={RELEASE}-editor"),
            &format!("--serviceaccount={}:{RELEASE}-mcp", w.env.ns),
        ],
        None,
    );
    assert!(ok, "{out}");
    let all = json!({
        "coder.com/requested-via": "mcp",
        "coder.com/requested-by-namespace": "bots",
        "coder.com/requested-by-serviceaccount": "chat-bot",
    });
    let deadline = std::time::Instant::now() + T;
    loop {
        match w
            .creates_as(&mcp, "via-mcp", spec.clone(), all.clone())
            .await
        {
            Ok(_) => break,
            // RBAC for the new binding may take a moment.
            Err(m) => assert!(std::time::Instant::now() < deadline, "MCP refused: {m}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = Api::<WorkspaceStartRequest>::namespaced(w.env.admin.clone(), &w.env.ns)
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await;
}
