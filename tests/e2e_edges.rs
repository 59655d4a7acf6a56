//! End-to-end edge cases against a real kube-apiserver + etcd, coder-sim and the operator binary
//! running as the Helm chart's ServiceAccount: ownership, credentials, Coder outages and races,
//! API-server validation, TTL, secrecy of tokens, chat API eras, template versions, parameters.
//! One test per behaviour.

mod support;

use std::time::{Duration, Instant};

use coder_sim::{BuildScript, ChatEra, Fault, SimConfig, Transition, UserSpec, WorkspaceSeed};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;
use support::{Env, eventually, ready};
use workspace_start_operator::api::crd::{Outcome, Phase, WorkspaceStartRequest};

const T: Duration = Duration::from_secs(30);
const WS_GET: &str = "GET /api/v2/workspaces/{id}";
const BUILD_POST: &str = "POST /api/v2/workspaces/{id}/builds";

fn stopped(env: &Env, owner: uuid::Uuid, name: &str) -> uuid::Uuid {
    env.sim.sim().add_workspace(WorkspaceSeed::new(owner, name))
}

/// A condition's (status, reason).
fn cond(w: &WorkspaceStartRequest, type_: &str) -> (String, String) {
    w.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

fn phase(w: &WorkspaceStartRequest) -> Option<Phase> {
    w.status.as_ref().and_then(|s| s.phase)
}

/// Waits until the request has a Warning Event with `reason` for each of `messages`; returns
/// its Events.
async fn wait_for_warnings(
    env: &Env,
    name: &str,
    reason: &str,
    messages: &[&str],
) -> Vec<(String, String, String)> {
    let deadline = Instant::now() + T;
    loop {
        let evs = env.events(name).await;
        let warned = |m: &&str| {
            evs.iter()
                .any(|e| e.0 == "Warning" && e.1 == reason && e.2 == *m)
        };
        if messages.iter().all(warned) {
            return evs;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no Warning Event {reason} for each of {messages:?}: {evs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts the request failed with `reason`.
async fn assert_failed(env: &Env, name: &str, reason: &str) -> WorkspaceStartRequest {
    let w = env.wait_terminal(name, T).await;
    assert_eq!(phase(&w), Some(Phase::Failed), "{name}: {:?}", w.status);
    assert_eq!(ready(&w), ("False".into(), reason.into()), "{name}");
    assert_eq!(
        cond(&w, "Stalled"),
        ("True".into(), reason.into()),
        "{name}"
    );
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_mismatch_fails_and_starts_nothing() {
    let mut env = Env::new("e2e-owner").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let bob = sim.add_user("bob");
    let ws = stopped(&env, env.alice.id, "mine");
    let chat = sim.add_chat(env.alice.id, Some(ws));
    env.create(
        "by-id",
        json!({"workspace": {"id": ws.to_string()}, "ownerId": bob.id.to_string()}),
    )
    .await;
    env.create(
        "by-chat",
        json!({"chatId": chat.to_string(), "ownerId": bob.id.to_string()}),
    )
    .await;
    for name in ["by-id", "by-chat"] {
        assert_failed(&env, name, "OwnerMismatch").await;
    }
    // The matching owner is accepted (the guard is not simply always failing).
    env.create(
        "match",
        json!({"chatId": chat.to_string(), "ownerId": env.alice.id.to_string()}),
    )
    .await;
    let w = env.wait_terminal("match", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(
        sim.builds_created(ws),
        1,
        "only the matching request started a build"
    );
    let evs = env.events("by-id").await;
    assert!(
        evs.iter()
            .any(|e| e.0 == "Warning" && e.1 == "OwnerMismatch"),
        "{evs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_coder_token_fails_unauthorized() {
    let mut env = Env::new("e2e-badtoken").await;
    std::fs::write(env.token_file(), "not-a-valid-coder-token\n").expect("token file");
    env.start_operator(&[]).await;
    let ws = stopped(&env, env.alice.id, "dev");
    env.create_for_workspace("u", ws).await;
    assert_failed(&env, "u", "CoderUnauthorized").await;
    assert_eq!(env.sim.sim().builds_created(ws), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_the_token_cannot_see_fails() {
    let mut env = Env::new("e2e-hidden").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let bob = sim.add_user("bob");
    let ws = stopped(&env, bob.id, "bobs-box");
    env.create_for_workspace("by-id", ws).await;
    env.create(
        "by-name",
        json!({"workspace": {"owner": "bob", "name": "bobs-box"}}),
    )
    .await;
    for name in ["by-id", "by-name"] {
        assert_failed(&env, name, "WorkspaceDeleted").await;
    }
    assert_eq!(sim.builds_created(ws), 0, "nothing started");
    assert_eq!(
        sim.count(BUILD_POST),
        0,
        "no start build was even requested"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coder_down_then_back_recovers() {
    let mut env = Env::new("e2e-down").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let ws = stopped(&env, env.alice.id, "flaky");
    sim.set_fault(WS_GET, Fault::Status(503));
    env.create_for_workspace("d", ws).await;
    let w = env
        .wait_for("d", T, |w| {
            cond(w, "Reconciling") == ("True".into(), "CoderUnavailable".into())
        })
        .await;
    assert_ne!(phase(&w), Some(Phase::Failed));
    assert_eq!(ready(&w), ("False".into(), "CoderUnavailable".into()));
    assert_eq!(cond(&w, "Stalled").0, "False");
    assert_eq!(sim.builds_created(ws), 0);
    // The message names what failed (status, Coder's message, route), not just "unavailable".
    let retrying = "Coder is unavailable (HTTP 503 from /api/v2/workspaces/{id}: Service Unavailable); retrying with backoff";
    assert_eq!(
        w.status.as_ref().and_then(|s| s.message.as_deref()),
        Some(retrying)
    );
    let evs = env.events("d").await;
    assert!(
        evs.iter()
            .any(|e| e.0 == "Warning" && e.1 == "CoderUnavailable" && e.2 == retrying),
        "{evs:?}"
    );

    sim.clear_faults();
    let w = env.wait_terminal("d", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(cond(&w, "Reconciling").0, "False");
    assert_eq!(sim.builds_created(ws), 1, "exactly one build");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coder_unavailable_until_the_deadline_names_the_last_error() {
    let mut env = Env::new("e2e-down-deadline").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let down = stopped(&env, env.alice.id, "down");
    let fine = stopped(&env, env.alice.id, "fine");
    sim.set_fault(WS_GET, Fault::on_path(down.to_string(), Fault::Status(503)));
    env.create(
        "down",
        json!({"workspace": {"id": down.to_string()}, "timeouts": {"build": "4s"}}),
    )
    .await;
    env.create_for_workspace("fine", fine).await;

    let w = assert_failed(&env, "down", "CoderUnavailable").await;
    let last = "Coder stayed unavailable until the request's deadline: last error: HTTP 503 from /api/v2/workspaces/{id}: Service Unavailable";
    assert_eq!(
        w.status.as_ref().and_then(|s| s.message.as_deref()),
        Some(last)
    );
    let evs = wait_for_warnings(&env, "down", "CoderUnavailable", &[last]).await;
    assert!(
        evs.iter().all(|e| !e.2.contains(&env.alice.token)),
        "{evs:?}"
    );
    assert_eq!(sim.builds_created(down), 0);
    // Another request on the same Coder went on.
    let w = env.wait_terminal("fine", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_build_refused_without_validations_fails_with_coders_words() {
    let mut env = Env::new("e2e-400-bare").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let ws = stopped(&env, env.alice.id, "refused");
    // A 400 with a message and a detail but no `validations` (wsbuilder's BuildError shape).
    sim.set_fault(BUILD_POST, Fault::Status(400));
    env.create_for_workspace("bare", ws).await;
    let w = assert_failed(&env, "bare", "BuildRejected").await;
    let message = "Coder refused the start build (400): Bad Request (coder-sim: injected fault)";
    assert_eq!(
        w.status.as_ref().and_then(|s| s.message.as_deref()),
        Some(message)
    );
    let evs = env.events("bare").await;
    assert!(
        evs.iter()
            .any(|e| e.0 == "Warning" && e.1 == "BuildRejected" && e.2 == message),
        "{evs:?}"
    );
    assert_eq!(sim.count(BUILD_POST), 1, "a refusal is final: no retry");
    assert_eq!(sim.builds_created(ws), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_on_start_joins_the_active_build() {
    let mut env = Env::new("e2e-409").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();

    // A real race: our POST is in flight when someone else starts a build, so Coder answers
    // 409 "A workspace build is already active." and the operator joins that build.
    let raced = stopped(&env, env.alice.id, "raced");
    sim.set_fault(
        BUILD_POST,
        Fault::times(1, Fault::Slow(Duration::from_millis(1500))),
    );
    env.create_for_workspace("race", raced).await;
    eventually("the start build POST", T, || sim.count(BUILD_POST) >= 1).await;
    sim.script_next_build(
        raced,
        BuildScript::default().with_job(Duration::from_secs(2), Duration::from_secs(1)),
    );
    sim.start_build(raced, Transition::Start);
    let w = env.wait_terminal("race", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(
        w.status.as_ref().and_then(|s| s.outcome),
        Some(Outcome::InProgress)
    );
    assert_eq!(sim.builds_created(raced), 1, "joined the other build");
    assert_eq!(
        sim.builds_posted(raced),
        0,
        "the operator's POST created nothing"
    );
    assert_eq!(
        w.status
            .as_ref()
            .and_then(|s| s.build.as_ref())
            .map(|b| b.id.clone()),
        sim.latest_build_id(raced).map(|b| b.to_string())
    );

    // A bare 409 whose build is already gone: the re-read finds the workspace stopped and the
    // operator starts it once.
    sim.clear_faults();
    let bare = stopped(&env, env.alice.id, "bare");
    sim.set_fault(BUILD_POST, Fault::times(1, Fault::Status(409)));
    env.create_for_workspace("bare", bare).await;
    let w = env.wait_terminal("bare", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(sim.builds_created(bare), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_for_one_workspace_share_one_build() {
    let mut env = Env::new("e2e-many").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let ws = stopped(&env, env.alice.id, "shared");
    let names: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    for n in &names {
        env.create_for_workspace(n, ws).await;
    }
    let mut builds = std::collections::BTreeSet::new();
    for n in &names {
        let w = env.wait_terminal(n, T).await;
        assert_eq!(ready(&w), ("True".into(), "Ready".into()), "{n}");
        builds.insert(w.status.and_then(|s| s.build).map(|b| b.id));
    }
    assert_eq!(
        sim.builds_created(ws),
        1,
        "one build shared by all requests"
    );
    let latest = sim.latest_build_id(ws).map(|b| b.to_string());
    assert_eq!(
        builds.into_iter().collect::<Vec<_>>(),
        vec![latest],
        "every request reports that build"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_requests_beyond_the_start_slots_wait_their_turn() {
    // One start slot and one write slot: eleven of twelve new requests queue, and each is
    // triggered again when the slot frees up; none is lost or started twice.
    let mut env = Env::new("e2e-queue").await;
    env.start_operator(&["--concurrency=1", "--write-slots=1"])
        .await;
    let sim = env.sim.sim();
    let workspaces: Vec<uuid::Uuid> = (0..12)
        .map(|i| stopped(&env, env.alice.id, &format!("q{i}")))
        .collect();
    for (i, ws) in workspaces.iter().enumerate() {
        env.create_for_workspace(&format!("q{i}"), *ws).await;
    }
    for (i, ws) in workspaces.iter().enumerate() {
        let w = env.wait_terminal(&format!("q{i}"), T).await;
        assert_eq!(ready(&w), ("True".into(), "Ready".into()), "q{i}");
        assert_eq!(sim.builds_created(*ws), 1, "q{i}: exactly one start build");
    }
    let metrics = env.operator().metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "workspace_start_operator_requests_waiting_to_start 0"),
        "start queue drained: {}",
        support::tail(&metrics, 40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_rejected_with_clear_messages() {
    let env = Env::new("e2e-invalid").await;
    let wsr = |name: &str, spec: &str| {
        format!(
            "apiVersion: coder.com/v1alpha1\nkind: WorkspaceStartRequest\nmetadata:\n  name: {name}\nspec:\n{spec}"
        )
    };
    let uuid = "9d0c2f5e-1b7a-4c1e-9a51-3f0f6b2d8e11";
    let chat = format!("  chatId: {uuid}\n");
    let params = |n: usize, value: &str| {
        let mut s = chat.clone() + "  parameters:\n";
        for i in 0..n {
            s += &format!("  - name: p{i}\n    value: \"{value}\"\n");
        }
        s
    };
    // One row per schema rule: the spec, and every line the API server must answer with
    // (after "is invalid: "), exactly.
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "neither",
            "  agentName: main\n".to_owned(),
            &[r#"spec: Invalid value: exactly one of spec.chatId or spec.workspace must be set"#],
        ),
        (
            "both",
            format!("{chat}  workspace:\n    id: {uuid}\n"),
            &[r#"spec: Invalid value: exactly one of spec.chatId or spec.workspace must be set"#],
        ),
        (
            "bad-uuid",
            "  chatId: not-a-uuid\n".to_owned(),
            &[
                r#"spec.chatId: Invalid value: "not-a-uuid": chatId must be a UUID, e.g. 9d0c2f5e-1b7a-4c1e-9a51-3f0f6b2d8e11"#,
            ],
        ),
        (
            "owner-only",
            "  workspace:\n    owner: alice\n".to_owned(),
            &[
                r#"spec.workspace: Invalid value: workspace needs either id, or both owner and name"#,
            ],
        ),
        (
            "dot-dot-owner",
            "  workspace:\n    owner: \"..\"\n    name: dev\n".to_owned(),
            &[
                r#"spec.workspace.owner: Invalid value: "..": workspace.owner must be a Coder username (letters and digits joined by single hyphens, at most 32 characters, e.g. alice), me, or a user UUID"#,
            ],
        ),
        (
            "dot-dot-name",
            "  workspace:\n    owner: alice\n    name: \"..\"\n".to_owned(),
            &[
                r#"spec.workspace.name: Invalid value: "..": workspace.name must be a Coder workspace name (letters and digits joined by single hyphens, at most 32 characters, e.g. dev)"#,
            ],
        ),
        (
            "path-in-owner",
            "  workspace:\n    owner: alice/workspace\n    name: dev\n".to_owned(),
            &[
                r#"spec.workspace.owner: Invalid value: "alice/workspace": workspace.owner must be a Coder username (letters and digits joined by single hyphens, at most 32 characters, e.g. alice), me, or a user UUID"#,
            ],
        ),
        (
            "long-owner",
            format!(
                "  workspace:\n    owner: {}\n    name: dev\n",
                "a".repeat(33)
            ),
            &[
                r#"workspace.owner must be a Coder username (letters and digits joined by single hyphens, at most 32 characters, e.g. alice), me, or a user UUID"#,
            ],
        ),
        (
            "long-name",
            format!(
                "  workspace:\n    owner: me\n    name: {}\n",
                "a".repeat(33)
            ),
            &["spec.workspace.name: Too long: may not be more than 32 bytes"],
        ),
        (
            "bad-timeout",
            format!("{chat}  timeouts:\n    build: ten minutes\n"),
            &[
                r#"spec.timeouts.build: Invalid value: "ten minutes": spec.timeouts.build in body should match '^([0-9]{1,5}([.][0-9]{1,9})?(ns|us|ms|s|m|h))+$'"#,
                r#"spec.timeouts.build: Invalid value: "ten minutes": timeouts.build must be a duration such as 10m, 90s or 1h30m"#,
            ],
        ),
        (
            "zero-timeout",
            format!("{chat}  timeouts:\n    agent: 0s\n"),
            &[
                r#"spec.timeouts.agent: Invalid value: "0s": timeouts.agent must be more than 0s and at most 24h"#,
            ],
        ),
        (
            "long-timeout",
            format!("{chat}  timeouts:\n    build: 24h1s\n"),
            &[
                r#"spec.timeouts.build: Invalid value: "24h1s": timeouts.build must be more than 0s and at most 24h"#,
            ],
        ),
        (
            "huge-timeout",
            format!("{chat}  timeouts:\n    agent: 99999999999h\n"),
            &[
                r#"spec.timeouts.agent: Invalid value: "99999999999h": spec.timeouts.agent in body should match '^([0-9]{1,5}([.][0-9]{1,9})?(ns|us|ms|s|m|h))+$'"#,
                r#"spec.timeouts.agent: Invalid value: "99999999999h": timeouts.agent must be a duration such as 10m, 90s or 1h30m"#,
            ],
        ),
        (
            "negative-ttl",
            format!("{chat}  ttlSecondsAfterFinished: -1\n"),
            &[
                "spec.ttlSecondsAfterFinished: Invalid value: -1: spec.ttlSecondsAfterFinished in body should be greater than or equal to 0",
            ],
        ),
        (
            "huge-ttl",
            format!("{chat}  ttlSecondsAfterFinished: 9223372036854775807\n"),
            &[
                "spec.ttlSecondsAfterFinished: Invalid value: 9223372036854775807: spec.ttlSecondsAfterFinished in body should be less than or equal to 2592000",
                "spec.ttlSecondsAfterFinished: Invalid value: 9223372036854775807: ttlSecondsAfterFinished must be at most 2592000 (30 days)",
            ],
        ),
        (
            "bad-secret-name",
            format!("{chat}  coderRef:\n    name: coder admin\n"),
            &[
                r#"spec.coderRef.name: Invalid value: "coder admin": coderRef.name must be the name of a Secret in this namespace (lower-case letters, digits, '-' and '.'), e.g. coder-credentials"#,
            ],
        ),
        (
            "path-secret-name",
            format!("{chat}  coderRef:\n    name: ../../demo/secrets/coder-admin\n"),
            &[
                r#"spec.coderRef.name: Invalid value: "../../demo/secrets/coder-admin": coderRef.name must be the name of a Secret in this namespace (lower-case letters, digits, '-' and '.'), e.g. coder-credentials"#,
            ],
        ),
        (
            "duplicate-parameter",
            format!(
                "{chat}  parameters:\n  - name: region\n    value: eu\n  - name: region\n    value: us\n"
            ),
            &[
                r#"spec.parameters[1]: Duplicate value: {"name":"region"}"#,
                r#"spec.parameters: Invalid value: parameter names must be unique"#,
            ],
        ),
        (
            "too-many-parameters",
            params(65, "x"),
            &["spec.parameters: Too many: 65: must have at most 64 items"],
        ),
        (
            "long-parameter-value",
            format!(
                "{chat}  parameters:\n  - name: big\n    value: \"{}\"\n",
                "x".repeat(4097)
            ),
            &["spec.parameters[0].value: Too long: may not be more than 4096 bytes"],
        ),
    ];
    let mut wrong = Vec::new();
    for (name, spec, lines) in &cases {
        let (ok, out) = env.kubectl(&["apply", "-f", "-"], Some(&wsr(name, spec)));
        let (exists, _) = env.kubectl(&["get", "wsr", name], None);
        let missing: Vec<&&str> = lines.iter().filter(|l| !out.contains(**l)).collect();
        if ok || exists || !out.contains("is invalid") || !missing.is_empty() {
            wrong.push(format!(
                "{name}: accepted={ok} created={exists} missing={missing:?}\n{out}"
            ));
        }
        assert!(
            !out.contains("type conversion error"),
            "{name}: CEL error leaked: {out}"
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n---\n"));

    // A valid request is accepted; changing its spec afterwards is refused.
    let (ok, out) = env.kubectl(
        &["apply", "-f", "-"],
        Some(&wsr(
            "edit",
            &format!("  chatId: {uuid}\n  timeouts:\n    build: 1m30s\n    agent: 1.5h\n"),
        )),
    );
    assert!(ok, "{out}");
    let other = "1d0c2f5e-1b7a-4c1e-9a51-3f0f6b2d8e11";
    let (ok, out) = env.kubectl(
        &["apply", "-f", "-"],
        Some(&wsr("edit", &format!("  chatId: {other}\n"))),
    );
    assert!(!ok, "spec edit accepted: {out}");
    assert!(
        out.contains(
            "spec is immutable: a WorkspaceStartRequest is one-shot; create a new request instead"
        ),
        "{out}"
    );
    let w = env.wsrs().get("edit").await.expect("get");
    assert_eq!(w.spec.chat_id.as_deref(), Some(uuid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coder_ref_secret_cases() {
    let mut env = Env::new("e2e-coderref").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let bob = sim.add_user("bob");
    let target = stopped(&env, bob.id, "bobs-box");
    let untouched = stopped(&env, bob.id, "untouched");
    let url = env.sim.url();
    env.create_secret("no-token", &[("url", &url)]).await;
    env.create_secret("bob-creds", &[("url", &url), ("token", &bob.token)])
        .await;
    // A token torn by a newline in the middle cannot be an HTTP header value: it fails at once
    // and says which key is wrong, without retrying as if Coder were down or echoing the token.
    let (head, tail) = bob.token.split_at(bob.token.len() / 2);
    env.create_secret(
        "torn-token",
        &[("url", &url), ("token", &format!("{head}\n{tail}\n"))],
    )
    .await;
    let calls_before = sim.counters().values().sum::<u64>();

    let on = |secret: &str| json!({"workspace": {"id": untouched.to_string()}, "coderRef": {"name": secret}});
    env.create("missing", on("does-not-exist")).await;
    env.create("invalid", on("no-token")).await;
    env.create("torn", on("torn-token")).await;
    assert_failed(&env, "missing", "SecretNotFound").await;
    assert_failed(&env, "invalid", "SecretInvalid").await;
    let w = assert_failed(&env, "torn", "SecretInvalid").await;
    let torn = format!(
        "key \"token\" of Secret \"torn-token\" (spec.coderRef) is not a usable Coder session token: it contains a line break at byte {} (a session token is one line of visible ASCII)",
        head.len()
    );
    assert_eq!(
        w.status.as_ref().and_then(|s| s.message.as_deref()),
        Some(torn.as_str())
    );
    wait_for_warnings(&env, "torn", "SecretInvalid", &[&torn]).await;
    assert_eq!(
        sim.counters().values().sum::<u64>(),
        calls_before,
        "no Coder call for a request whose Secret is missing or unusable: {:?}",
        sim.counters()
    );

    env.create(
        "bob",
        json!({"workspace": {"id": target.to_string()}, "coderRef": {"name": "bob-creds"}}),
    )
    .await;
    // alice's operator-wide token cannot see bob's workspace: Ready proves bob's credentials
    // from the Secret were used.
    let w = env.wait_terminal("bob", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(
        w.status
            .as_ref()
            .and_then(|s| s.workspace.as_ref())
            .and_then(|w| w.owner_name.clone()),
        Some("bob".into())
    );
    assert_eq!(sim.builds_created(target), 1);
    assert_eq!(
        sim.builds_created(untouched),
        0,
        "nothing started for the failures"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_coder_ref_secret_is_shown_retried_and_failed_at_the_deadline() {
    let mut env = Env::new("e2e-unreadable").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let target = stopped(&env, env.alice.id, "behind-a-broken-secret");
    let bystander = stopped(&env, env.alice.id, "bystander");
    // A Secret the API server holds but cannot decode: every read of it answers 500.
    env.plane
        .etcd_put(
            &format!("/registry/secrets/{}/broken", env.ns),
            b"not a protobuf-encoded Secret",
        )
        .await
        .expect("write to etcd");
    env.create(
        "unreadable",
        json!({"workspace": {"id": target.to_string()}, "coderRef": {"name": "broken"}, "timeouts": {"build": "8s"}}),
    )
    .await;
    env.create_for_workspace("bystander", bystander).await;

    let what = r#"cannot read Secret "broken" named by spec.coderRef (API server answered 500 InternalError)"#;
    let retrying = format!("{what}; retrying with backoff");
    let w = env
        .wait_for("unreadable", T, |w| {
            cond(w, "Reconciling") == ("True".into(), "SecretUnreadable".into())
        })
        .await;
    assert_eq!(ready(&w), ("False".into(), "SecretUnreadable".into()));
    assert_eq!(
        w.status.as_ref().and_then(|s| s.message.as_deref()),
        Some(retrying.as_str())
    );
    // Other requests go on meanwhile.
    let w = env.wait_terminal("bystander", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));

    let w = assert_failed(&env, "unreadable", "SecretUnreadable").await;
    let last = format!("{what}, until the request's deadline");
    assert_eq!(
        w.status.as_ref().and_then(|s| s.message.as_deref()),
        Some(last.as_str())
    );
    wait_for_warnings(&env, "unreadable", "SecretUnreadable", &[&retrying, &last]).await;
    assert_eq!(sim.builds_created(target), 0, "nothing started");
    assert!(env.operator().is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_deletes_finished_requests() {
    let mut env = Env::new("e2e-ttl").await;
    env.start_operator(&[]).await;
    let ws = stopped(&env, env.alice.id, "brief");
    env.create(
        "ttl",
        json!({"workspace": {"id": ws.to_string()}, "ttlSecondsAfterFinished": 1}),
    )
    .await;
    // Without a TTL the request stays.
    env.create_for_workspace("keep", ws).await;
    let w = env.wait_phase("ttl", Phase::Ready, T).await;
    let done = w
        .status
        .as_ref()
        .and_then(|s| s.completion_time.clone())
        .expect("completionTime");
    let deadline = Instant::now() + T;
    while env.wsrs().get_opt("ttl").await.expect("get").is_some() {
        assert!(
            Instant::now() < deadline,
            "request was not deleted after its TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_after = jiff::Timestamp::now().duration_since(done.0);
    assert!(
        gone_after >= jiff::SignedDuration::from_millis(900),
        "deleted before its TTL ({gone_after:?} after completion)"
    );
    env.wait_phase("keep", Phase::Ready, T).await;
    assert!(env.wsrs().get_opt("keep").await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_logs_events_or_status() {
    let mut env = Env::new("e2e-secrecy").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let bob = sim.add_user("bob");
    let mallory = sim.add_user_spec(UserSpec {
        username: "mallory".into(),
        token: Some("mallory-0123456789-suspended-token".into()),
        ..Default::default()
    });
    sim.set_user_status(mallory.id, "suspended");
    let bogus = "bogus-4f1c9e2a7b-not-a-token";
    let url = env.sim.url();
    env.create_secret("bob-creds", &[("url", &url), ("token", &bob.token)])
        .await;
    env.create_secret("bogus-creds", &[("url", &url), ("token", bogus)])
        .await;
    env.create_secret("mallory-creds", &[("url", &url), ("token", &mallory.token)])
        .await;

    let mine = stopped(&env, env.alice.id, "mine");
    let bobs = stopped(&env, bob.id, "bobs");
    sim.script_next_build(mine, BuildScript::failed(None, "terraform: leaked-output"));
    env.create_for_workspace("alice-fails", mine).await;
    env.create(
        "bob-ok",
        json!({"workspace": {"id": bobs.to_string()}, "coderRef": {"name": "bob-creds"},
               "parameters": [{"name": "password", "value": "param-value-s3cr3t"}]}),
    )
    .await;
    env.create(
        "bogus",
        json!({"workspace": {"id": bobs.to_string()}, "coderRef": {"name": "bogus-creds"}}),
    )
    .await;
    env.create(
        "suspended",
        json!({"workspace": {"id": bobs.to_string()}, "coderRef": {"name": "mallory-creds"}}),
    )
    .await;
    assert_failed(&env, "alice-fails", "BuildFailed").await;
    let w = env.wait_terminal("bob-ok", T).await;
    assert_eq!(ready(&w).1, "Ready");
    assert_failed(&env, "bogus", "CoderUnauthorized").await;
    assert_failed(&env, "suspended", "CoderUnauthorized").await;

    // Coder errors are logged and reported (warnings with the error) without credentials.
    sim.set_fault(WS_GET, Fault::times(2, Fault::Status(503)));
    env.create(
        "flaky",
        json!({"workspace": {"id": bobs.to_string()}, "coderRef": {"name": "bob-creds"}}),
    )
    .await;
    let w = env.wait_terminal("flaky", T).await;
    assert_eq!(ready(&w).1, "Ready");

    // The operator-wide token turns bad (rotated); the file is re-read per request.
    let stale = "stale-7d3e5a9c1b-rotated-away";
    std::fs::write(env.token_file(), format!("{stale}\n")).expect("token file");
    env.create_for_workspace("stale", mine).await;
    assert_failed(&env, "stale", "CoderUnauthorized").await;

    let tokens = [
        env.alice.token.clone(),
        bob.token.clone(),
        mallory.token.clone(),
        bogus.to_owned(),
        stale.to_owned(),
    ];
    // Coder tokens are `<id>-<secret>`: the secret half must not leak either.
    let mut needles: Vec<String> = tokens.to_vec();
    for t in &tokens {
        if let Some((_, secret)) = t.split_once('-')
            && secret.len() >= 16
        {
            needles.push(secret.to_owned());
        }
    }
    needles.push("param-value-s3cr3t".into());
    needles.push("leaked-output".into());

    let logs = env.operator().logs();
    assert!(
        logs.contains("Coder unavailable"),
        "the outage was not logged:\n{logs}"
    );
    let events: Vec<Event> = Api::<Event>::namespaced(env.admin.clone(), &env.ns)
        .list(&ListParams::default())
        .await
        .expect("events")
        .items;
    assert!(!events.is_empty());
    let notes: String = events
        .iter()
        .map(|e| {
            format!(
                "{} {}\n",
                e.reason.clone().unwrap_or_default(),
                e.note.clone().unwrap_or_default()
            )
        })
        .collect();
    let statuses: String = env
        .wsrs()
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|w| serde_json::to_string(&w.status).expect("json"))
        .collect::<Vec<_>>()
        .join("\n");
    let metrics = env.operator().metrics().await;
    assert!(!metrics.is_empty(), "no /metrics");
    for (what, text) in [
        ("log", &logs),
        ("events", &notes),
        ("status", &statuses),
        ("metrics", &metrics),
    ] {
        for n in &needles {
            assert!(!text.contains(n.as_str()), "{what} contains secret {n:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experimental_chat_path_and_wrapped_shape_work() {
    for (era, route) in [
        (ChatEra::Experimental, "GET /api/experimental/chats/{id}"),
        (
            ChatEra::ExperimentalWrapped,
            "GET /api/experimental/chats/{id}",
        ),
    ] {
        let mut env = Env::with_sim(
            "e2e-era",
            SimConfig {
                chat_era: era,
                ..Default::default()
            },
        )
        .await;
        env.start_operator(&[]).await;
        let sim = env.sim.sim();
        let ws = stopped(&env, env.alice.id, "dev");
        let chat = sim.add_chat(env.alice.id, Some(ws));
        env.create("c", json!({"chatId": chat.to_string()})).await;
        let w = env.wait_terminal("c", T).await;
        assert_eq!(ready(&w), ("True".into(), "Ready".into()), "{era:?}");
        assert_eq!(
            w.status
                .as_ref()
                .and_then(|s| s.workspace.as_ref())
                .map(|w| w.id.clone()),
            Some(ws.to_string()),
            "{era:?}"
        );
        assert!(sim.count(route) >= 1, "{era:?}: {:?}", sim.counters());
        assert_eq!(sim.builds_created(ws), 1, "{era:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_requiring_active_version_is_started_on_it() {
    let mut env = Env::new("e2e-tplver").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let ws = sim
        .add_workspace(WorkspaceSeed::new(env.alice.id, "outdated").require_active_version(true));
    let before = sim.workspace_json(ws);
    assert_eq!(
        before["outdated"],
        json!(true),
        "seed is outdated: {before}"
    );
    let active = before["template_active_version_id"].clone();
    assert_ne!(before["latest_build"]["template_version_id"], active);

    env.create_for_workspace("v", ws).await;
    let w = env.wait_terminal("v", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    let after = sim.workspace_json(ws);
    assert_eq!(after["latest_build"]["transition"], json!("start"));
    assert_eq!(
        after["latest_build"]["template_version_id"], active,
        "{after}"
    );
    assert_eq!(after["outdated"], json!(false));
    assert_eq!(sim.builds_created(ws), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_passed_to_the_build() {
    let mut env = Env::new("e2e-params").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let ws = stopped(&env, env.alice.id, "param");
    env.create(
        "p",
        json!({"workspace": {"id": ws.to_string()},
               "parameters": [{"name": "region", "value": "eu-west"}, {"name": "cpus", "value": "4"}]}),
    )
    .await;
    let w = env.wait_terminal("p", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    let build = sim.latest_build_id(ws).expect("a build");
    assert_eq!(
        w.status
            .as_ref()
            .and_then(|s| s.build.as_ref())
            .map(|b| b.id.clone()),
        Some(build.to_string())
    );
    assert_eq!(
        sim.build_parameters(build),
        vec![
            ("region".to_owned(), "eu-west".to_owned()),
            ("cpus".to_owned(), "4".to_owned())
        ]
    );
}
