//! How the operator connects to Coder, end to end (real kube-apiserver + etcd, coder-sim, the
//! operator binary as the chart's ServiceAccount): TLS trust for a Coder behind a private CA,
//! and the memory of per-request credentials (`coderRef` tokens) coming back once they are gone.

mod support;

use std::time::{Duration, Instant};

use coder_sim::{BuildScript, SimConfig, TestCa, WorkspaceSeed};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::DeleteParams;
use support::{Env, ready};
use workspace_start_operator::api::crd::WorkspaceStartRequest;

const T: Duration = Duration::from_secs(30);

/// The request's status message.
fn message(w: &WorkspaceStartRequest) -> String {
    w.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_ca_coder_is_trusted_with_the_given_bundle_and_refused_without_it() {
    let ca = TestCa::generate("Example Corp Private CA").expect("test CA");
    let mut env = Env::with_sim(
        "tls-private-ca",
        SimConfig {
            tls: Some(ca.tls.clone()),
            ..SimConfig::default()
        },
    )
    .await;
    let url = env.sim.url();
    assert!(url.starts_with("https://"), "{url}");
    let sim = env.sim.sim();
    let ws =
        sim.add_workspace(WorkspaceSeed::new(env.alice.id, "dev").script(BuildScript::instant()));
    let ca_file = env.dir.path().join("coder-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).expect("CA file");

    // Without the CA: the certificate is refused at once, with its own reason, not retried
    // as an outage; nothing is started.
    env.start_operator(&[]).await;
    let created = Instant::now();
    env.create_for_workspace("untrusted", ws).await;
    let w = env.wait_terminal("untrusted", T).await;
    assert!(
        created.elapsed() < Duration::from_secs(15),
        "an untrusted certificate is not retried until the deadline"
    );
    assert_eq!(ready(&w), ("False".into(), "CoderTLSUntrusted".into()));
    assert_eq!(
        message(&w),
        r#"the TLS certificate of Coder at 127.0.0.1 is not trusted: it is issued by "CN=Example Corp Private CA", a CA that is not trusted (unknown issuer); give the CA that issued it (--coder-ca-file / Helm value coder.caBundle, or key ca.crt of the spec.coderRef Secret)"#
    );
    assert!(message(&w).contains(&ca.ca_name), "the issuer is named");
    let events = env.events("untrusted").await;
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "CoderTLSUntrusted"),
        "{events:?}"
    );
    assert_eq!(sim.builds_created(ws), 0);

    // A coderRef Secret may bring the CA for its own connection (key ca.crt)...
    env.create_secret(
        "with-ca",
        &[
            ("url", &url),
            ("token", &env.alice.token),
            ("ca.crt", &ca.ca_pem),
        ],
    )
    .await;
    env.create_secret("without-ca", &[("url", &url), ("token", &env.alice.token)])
        .await;
    let by_secret = |secret: &str| serde_json::json!({"workspace": {"id": ws.to_string()}, "coderRef": {"name": secret}});
    env.create("secret-with-ca", by_secret("with-ca")).await;
    let w = env.wait_terminal("secret-with-ca", T).await;
    assert_eq!(
        ready(&w),
        ("True".into(), "Ready".into()),
        "{}",
        message(&w)
    );
    // ... which trusts it for that connection only.
    env.create("secret-without-ca", by_secret("without-ca"))
        .await;
    let w = env.wait_terminal("secret-without-ca", T).await;
    assert_eq!(ready(&w), ("False".into(), "CoderTLSUntrusted".into()));
    // A ca.crt that holds no certificate names the key, never its content.
    env.create_secret(
        "bad-ca",
        &[
            ("url", &url),
            ("token", &env.alice.token),
            ("ca.crt", "not a certificate"),
        ],
    )
    .await;
    env.create("secret-bad-ca", by_secret("bad-ca")).await;
    let w = env.wait_terminal("secret-bad-ca", T).await;
    assert_eq!(ready(&w), ("False".into(), "SecretInvalid".into()));
    assert_eq!(
        message(&w),
        r#"key "ca.crt" of Secret "bad-ca" (spec.coderRef) is not a usable CA bundle: it holds no PEM certificate (-----BEGIN CERTIFICATE-----)"#
    );

    // With --coder-ca-file the operator-wide connection trusts it.
    env.operator().terminate().await;
    env.start_operator(&[&format!("--coder-ca-file={}", ca_file.display())])
        .await;
    env.create_for_workspace("trusted", ws).await;
    let w = env.wait_terminal("trusted", T).await;
    assert_eq!(
        ready(&w),
        ("True".into(), "Ready".into()),
        "{}",
        message(&w)
    );

    // A CA file that holds no certificate stops the operator at start, saying why.
    let bad = env.dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, "hello").expect("file");
    env.operator().terminate().await;
    let out = std::process::Command::new(support::operator_bin())
        .args(["run", &format!("--coder-ca-file={}", bad.display())])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("run operator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("holds no PEM certificate"),
        "exit message: {stderr}"
    );
}

/// The operator's resident memory now, in KiB.
fn rss(env: &Env) -> u64 {
    env.operator.as_ref().expect("operator").memory_kib().1
}

/// The operator's resident memory by kind (`RssAnon`, `RssFile`, `RssShmem`, KiB) and its
/// thread count, from `/proc/<pid>/status`.
fn rss_parts(env: &Env) -> String {
    let pid = env.operator.as_ref().and_then(|o| o.pid()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    ["RssAnon:", "RssFile:", "Threads:"]
        .iter()
        .filter_map(|f| status.lines().find(|l| l.starts_with(f)))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many `coderRef` credentials the memory test uses.
const TOKENS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_300_coder_ref_tokens_returns_once_they_are_gone() {
    let idle = Duration::from_secs(3);
    let mut env = Env::new("clients-memory").await;
    env.start_operator(&[&format!("--coder-client-idle-ms={}", idle.as_millis())])
        .await;
    let sim = env.sim.sim();
    let url = env.sim.url();
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &env.ns);

    let users: Vec<_> = (0..=TOKENS)
        .map(|i| {
            let u = sim.add_user(&format!("user-{i}"));
            let ws =
                sim.add_workspace(WorkspaceSeed::new(u.id, "dev").script(BuildScript::instant()));
            (u, ws)
        })
        .collect();
    let run = |i: usize| {
        let (u, ws) = &users[i];
        let env = &env;
        let url = &url;
        async move {
            let name = format!("t{i}");
            env.create_secret(&name, &[("url", url), ("token", &u.token)])
                .await;
            env.create(
                &name,
                serde_json::json!({"workspace": {"id": ws.to_string()}, "coderRef": {"name": name}}),
            )
            .await;
        }
    };
    let gone = |range: std::ops::Range<usize>| {
        let env = &env;
        let secrets = &secrets;
        async move {
            for i in range {
                let name = format!("t{i}");
                env.delete(&name).await;
                let _ = secrets.delete(&name, &DeleteParams::default()).await;
            }
        }
    };

    // Warm up with one credential (lazy statics, connection pools, caches of the controller),
    // let it go, and take the baseline once its client was dropped.
    run(TOKENS).await;
    let w = env.wait_terminal(&format!("t{TOKENS}"), T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    gone(TOKENS..TOKENS + 1).await;
    tokio::time::sleep(idle * 2).await;
    let baseline = rss(&env);
    eprintln!("baseline: {}", rss_parts(&env));

    for i in 0..TOKENS {
        run(i).await;
    }
    for i in 0..TOKENS {
        let w = env
            .wait_terminal(&format!("t{i}"), Duration::from_secs(120))
            .await;
        assert_eq!(ready(&w), ("True".into(), "Ready".into()), "t{i}");
    }
    let loaded = rss(&env);
    eprintln!("loaded: {}", rss_parts(&env));
    gone(0..TOKENS).await;

    // Within the idle time (plus a sweep), every client is dropped (the operator logs each).
    let dropped = || {
        env.operator
            .as_ref()
            .expect("operator")
            .logs()
            .matches("dropped a Coder client")
            .count()
    };
    let deadline = Instant::now() + idle * 4 + Duration::from_secs(10);
    while dropped() < TOKENS + 1 {
        assert!(
            Instant::now() < deadline,
            "{} of {} idle Coder clients dropped within the idle time",
            dropped(),
            TOKENS + 1
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = rss(&env);
    eprintln!("after: {}", rss_parts(&env));
    eprintln!(
        "operator RSS with {TOKENS} coderRef tokens: baseline {baseline} KiB, loaded {loaded} KiB (+{} KiB, {} B per token), after all were deleted and their clients dropped {now} KiB ({:+.1}% of the baseline)",
        loaded.saturating_sub(baseline),
        loaded.saturating_sub(baseline) * 1024 / TOKENS as u64,
        (now as f64 - baseline as f64) * 100.0 / baseline as f64
    );
    // The figure is printed above; the goal is the baseline + 10%. Measured (debug build, 2 cores
    // shared with other builds, load average 4–6): +5.2..8.1% over nine runs (median +6.2%), loaded
    // +2.5..3.1 MiB (8.6–10.7 KiB per token); the live heap (a byte-counting allocator) 0.5 MiB →
    // 2.3–2.4 MiB → 0.8 MiB. Before the Coder clients shared their HTTP transport (two reqwest
    // clients, each with its pool, connector and TLS setup, per token; now one per URL and CA
    // bundle) it was +12.5..13.3% (once +17.9%), loaded ~16 KiB per token, live heap 0.5 → 5–6 →
    // 1.2 MiB; with the shared transport but the client cache's moka tables kept, +6.9..10.1%. Live
    // heap over the baseline then (heaptrack, after minus baseline): 0.8 MiB, of which 0.25 MiB
    // moka's tables (the room of 300 entries, and the removed keys; now rebuilt once empty), the
    // rest map capacities of the controller's per-request state, kube-runtime's reflector and
    // scheduler and the Event queue's channel blocks; the remaining RSS is mimalloc pages that
    // still hold a few of those blocks. RssFile (the debug binary's code, ~24 MiB) is in the
    // baseline and does not move. Before the cache was bounded, 300 tokens kept +20.7 MiB (+85%)
    // until restart.
    let limit = baseline + baseline / 10;
    assert!(
        now <= limit,
        "RSS {now} KiB stayed above the baseline {baseline} KiB + 10% after every request and Secret was deleted"
    );
    let m = env.operator.as_ref().expect("operator").metrics().await;
    assert!(!m.is_empty(), "the operator is up");
}
