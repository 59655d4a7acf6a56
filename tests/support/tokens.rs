//! Probes of a port whose callers send Kubernetes bearer tokens (the MCP endpoint, the operator's
//! build logs endpoint): ServiceAccount callers with a role and a token, the TokenReviews the API
//! server's audit log records, junk and over-size tokens, and connections that never send a
//! request.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use envtest::ControlPlane;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::{Env, RELEASE};

/// A ServiceAccount `sa` bound in the test namespace to the chart's ClusterRole `<release>-<role>`
/// (`editor`, `viewer`), and a token for it, for `audience` (None: the API server's).
pub async fn caller_with_role(env: &Env, sa: &str, role: &str, audience: Option<&str>) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(env.admin.clone(), &env.ns);
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": sa}})).expect("sa");
    api.create(&PostParams::default(), &account)
        .await
        .expect("create ServiceAccount");
    let ns = &env.ns;
    let binding = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {sa}-{role}, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {RELEASE}-{role}}}\n\
         subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]\n"
    );
    env.plane
        .apply_yaml(&binding, ns)
        .await
        .expect("RoleBinding");
    token_for(env, sa, audience).await
}

/// A token for the test namespace's ServiceAccount `sa`, for `audience` (None: the API
/// server's), valid for an hour.
pub async fn token_for(env: &Env, sa: &str, audience: Option<&str>) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(env.admin.clone(), &env.ns);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_owned()]),
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    api.create_token_request(sa, &PostParams::default(), &req)
        .await
        .expect("TokenRequest")
        .status
        .and_then(|s| s.token)
        .expect("token")
}

/// TokenReviews `username` sent, as the API server's audit log records them.
pub fn token_reviews_by(plane: &ControlPlane, username: &str) -> usize {
    let log = std::fs::read_to_string(plane.audit_log()).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["objectRef"]["resource"] == "tokenreviews"
                && e["stage"] == "ResponseComplete"
                && e["user"]["username"] == username
        })
        .count()
}

/// `n` distinct tokens over every size bound (alternately 9 KiB and 300 KB).
pub fn oversize_tokens(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let size = if i % 2 == 0 { 9 * 1024 } else { 300_000 };
            std::iter::repeat_n('x', size - 4)
                .chain(format!("{i:04}").chars())
                .collect()
        })
        .collect()
}

/// Sends `n` distinct 32-byte junk tokens through `send` (one request each, 8 at a time, as fast
/// as they are answered); returns how many answers had each status, and checks each answer with
/// `check(status, body)`.
pub async fn send_junk_tokens<F, Fut>(
    n: usize,
    send: F,
    check: impl Fn(u16, &str),
) -> BTreeMap<u16, usize>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = (u16, String)>,
{
    let junk: Vec<String> = (0..n)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let mut statuses = BTreeMap::new();
    for chunk in junk.chunks(8) {
        let answers = futures::future::join_all(chunk.iter().cloned().map(&send)).await;
        for (status, body) in answers {
            *statuses.entry(status).or_default() += 1;
            check(status, &body);
        }
    }
    statuses
}

/// Opens a connection that sends nothing and waits until the server closes it: the time that
/// took (None if it stayed open for `within`).
pub async fn closed_after(addr: &str, within: Duration) -> Option<Duration> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let t0 = Instant::now();
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    read.ok().map(|()| t0.elapsed())
}

/// Opens `batches` × 100 connections to `addr` that never send a request (in batches of 100, as
/// clients connect: thousands at one instant would overflow the kernel's accept queue, whose
/// casualties look connected to the client but never reach the server); returns how many were
/// still open after `within`, and the longest time one took to be closed.
pub async fn idle_connections(addr: &str, batches: usize, within: Duration) -> (usize, Duration) {
    let mut conns = Vec::new();
    for _ in 0..batches {
        for _ in 0..100 {
            let addr = addr.to_owned();
            conns.push(tokio::spawn(
                async move { closed_after(&addr, within).await },
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut longest = Duration::ZERO;
    let mut open = 0;
    for c in conns {
        match c.await.expect("task") {
            Some(d) => longest = longest.max(d),
            None => open += 1,
        }
    }
    (open, longest)
}
