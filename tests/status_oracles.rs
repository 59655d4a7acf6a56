//! The statuses GitOps tools read, taken from real operator runs (real kube-apiserver + etcd,
//! coder-sim, the operator binary as the chart's ServiceAccount):
//! - a request is never status-less once the operator has seen it, even while Coder hangs, and
//!   kstatus (sigs.k8s.io/cli-utils) reads it InProgress, never Current;
//! - `tests/fixtures/status/*.json`, which the GitOps oracles in `tools/gitops-health` (Argo CD's
//!   and Flux's own health code, kstatus) evaluate, are exactly what the operator writes in each
//!   state. `UPDATE_FIXTURES=1 cargo test --test status_oracles` rewrites them.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use coder_sim::{BuildScript, Fault, LifecycleState, WorkspaceSeed};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use support::{ControlPlaneBins, Env};
use workspace_start_operator::api::crd::{Phase, WorkspaceStartRequest};
use workspace_start_operator::operator::first_status::{READING_CODER, WAITING_FOR_SLOT};

const T: Duration = Duration::from_secs(60);
const GET_WS: &str = "GET /api/v2/workspaces/{id}";
/// Long enough that no Coder answer (or timeout) can explain a status seen while Coder hangs.
const LONG_CODER_TIMEOUT: &str = "--coder-timeout-ms=30000";
/// A finalizer the test holds, so a deleted request stays readable.
const HOLD: &str = "test.coder.com/hold";

/// What kstatus says about a live object: (status, message), from `status.Compute` in
/// sigs.k8s.io/cli-utils (the `kstatus` tool built by `scripts/control-plane-bins.sh` from
/// `tools/gitops-health/fluxcd`).
fn kstatus(obj: &WorkspaceStartRequest) -> (String, String) {
    use std::io::Write;
    let bin = ControlPlaneBins::dir().join("kstatus");
    let mut child = std::process::Command::new(&bin)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e} (make tools builds it)", bin.display()));
    let input = serde_json::to_vec(obj).expect("json");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("write object");
    let out = child.wait_with_output().expect("kstatus output");
    assert!(
        out.status.success(),
        "kstatus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("kstatus JSON");
    let field = |k: &str| v["kstatus"][k].as_str().unwrap_or_default().to_owned();
    (field("status"), field("message"))
}

fn message(w: &WorkspaceStartRequest) -> Option<String> {
    w.status.as_ref().and_then(|s| s.message.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_created_while_coder_hangs_reads_in_progress() {
    let mut env = Env::new("st-hang").await;
    let ws = env
        .sim
        .sim()
        .add_workspace(WorkspaceSeed::new(env.alice.id, "dev"));
    env.sim.sim().set_fault(GET_WS, Fault::Hang);
    env.start_operator(&[LONG_CODER_TIMEOUT, "--concurrency=1"])
        .await;

    env.create_for_workspace("first", ws).await;
    let first = env.wait_for("first", T, |w| message(w).is_some()).await;
    env.create_for_workspace("second", ws).await;
    let second = env.wait_for("second", T, |w| message(w).is_some()).await;

    // Coder has not answered a single read: these statuses come before any Coder call.
    assert_eq!(
        env.sim.sim().count(GET_WS),
        1,
        "only the first request reads Coder"
    );
    for (w, msg) in [(&first, READING_CODER), (&second, WAITING_FOR_SLOT)] {
        let st = w.status.as_ref().expect("status");
        assert_eq!(st.phase, Some(Phase::Pending), "{st:?}");
        assert_eq!(st.message.as_deref(), Some(msg));
        assert_eq!(st.observed_generation, w.metadata.generation);
        let (status, kmsg) = kstatus(w);
        assert_eq!(status, "InProgress", "kstatus: {kmsg}");
        assert_eq!(kmsg, msg);
    }

    // Once Coder answers, both go on to Ready with one build.
    env.sim.sim().clear_faults();
    for name in ["first", "second"] {
        let w = env.wait_terminal(name, T).await;
        assert_eq!(support::ready(&w).0, "True", "{name}: {:?}", w.status);
    }
    assert_eq!(env.sim.sim().builds_created(ws), 1);
}

/// Replaces what differs between runs (uids, Coder ids, times, stage timings, namespace,
/// resourceVersion) so a
/// captured object can be compared with the checked-in fixture.
struct Normalizer {
    ids: HashMap<String, String>,
    namespace: String,
}

impl Normalizer {
    fn object(ns: &str, obj: &WorkspaceStartRequest) -> Value {
        let mut v = serde_json::to_value(obj).expect("json");
        let meta = v["metadata"].as_object_mut().expect("metadata");
        for drop in ["resourceVersion", "managedFields", "selfLink"] {
            meta.remove(drop);
        }
        let mut n = Normalizer {
            ids: HashMap::new(),
            namespace: ns.to_owned(),
        };
        n.walk(&mut v);
        // Stage timings are durations measured in this run: keep which are present, not values.
        if let Some(t) = v
            .pointer_mut("/status/timings")
            .and_then(Value::as_object_mut)
        {
            for (key, value) in t.iter_mut() {
                match value {
                    // provisionerStages: keep which stages are present.
                    Value::Object(stages) => stages.values_mut().for_each(|v| *v = 0.into()),
                    _ if key == "took" => *value = Value::String("0.0s".into()),
                    _ => *value = Value::from(0),
                }
            }
        }
        v
    }

    fn walk(&mut self, v: &mut Value) {
        match v {
            Value::Object(m) => m.values_mut().for_each(|x| self.walk(x)),
            Value::Array(a) => a.iter_mut().for_each(|x| self.walk(x)),
            Value::String(s) => *s = self.string(s),
            _ => {}
        }
    }

    fn string(&mut self, s: &str) -> String {
        if s == self.namespace {
            return "team-a".into();
        }
        if uuid::Uuid::parse_str(s).is_ok() && s.len() == 36 {
            let next = self.ids.len() + 1;
            return self
                .ids
                .entry(s.to_owned())
                .or_insert_with(|| format!("00000000-0000-4000-8000-{next:012}"))
                .clone();
        }
        if s.parse::<jiff::Timestamp>().is_ok() {
            return "2026-11-30T12:00:00Z".into();
        }
        s.to_owned()
    }
}

fn fixtures_dir() -> PathBuf {
    support::repo().join("tests/fixtures/status")
}

/// Compares the captured objects with the fixtures (or rewrites them with UPDATE_FIXTURES=1);
/// every fixture file must come from a capture.
fn check_fixtures(captured: &BTreeMap<String, Value>) {
    let dir = fixtures_dir();
    let update = std::env::var_os("UPDATE_FIXTURES").is_some_and(|v| v == "1");
    let mut drift = Vec::new();
    for (name, obj) in captured {
        let path = dir.join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(obj).expect("json") + "\n";
        if update {
            std::fs::write(&path, &text).expect("write fixture");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            drift.push(format!("{name}.json differs; the operator writes:\n{text}"));
        }
    }
    for entry in std::fs::read_dir(&dir).expect("fixtures dir") {
        let file = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(name) = file.strip_suffix(".json")
            && !captured.contains_key(name)
        {
            if update {
                std::fs::remove_file(dir.join(&file)).expect("remove stale fixture");
            } else {
                drift.push(format!("{file} is not captured from any run"));
            }
        }
    }
    assert!(
        drift.is_empty(),
        "status fixtures drifted from what the operator writes (rewrite with \
         UPDATE_FIXTURES=1 cargo test --test status_oracles):\n{}",
        drift.join("\n")
    );
}

/// The requests of the capture, each named after its fixture, created once Coder answers.
fn scenarios(env: &Env) -> Vec<(&'static str, Value, Phase)> {
    let sim = env.sim.sim();
    let alice = env.alice.id;
    let ws = |name: &str, script: BuildScript| {
        sim.add_workspace(WorkspaceSeed::new(alice, name).script(script))
            .to_string()
    };
    let by_id = |id: String| json!({"workspace": {"id": id}});
    let long = Duration::from_secs(600);
    let deleted = sim.add_workspace(WorkspaceSeed::new(alice, "gone"));
    sim.delete_workspace(deleted);
    let chat_ws = sim.add_workspace(WorkspaceSeed::new(alice, "chat-dev"));
    let chat = sim.add_chat(alice, Some(chat_ws));
    let lonely_chat = sim.add_chat(alice, None);
    vec![
        (
            "starting",
            by_id(ws("slow", BuildScript::default().with_job(long, long))),
            Phase::Starting,
        ),
        (
            "waiting-for-agent",
            by_id(ws(
                "agent-slow",
                BuildScript::instant().with_agent(long, long, LifecycleState::Ready),
            )),
            Phase::WaitingForAgent,
        ),
        ("ready", json!({"chatId": chat.to_string()}), Phase::Ready),
        (
            "failed-build",
            by_id(ws(
                "broken",
                BuildScript::failed(None, "terraform apply failed"),
            )),
            Phase::Failed,
        ),
        (
            "failed-insufficient-quota",
            by_id(ws("quota", BuildScript::insufficient_quota())),
            Phase::Failed,
        ),
        (
            "failed-build-canceled",
            by_id(ws("canceled", BuildScript::canceled())),
            Phase::Failed,
        ),
        (
            "failed-agent-start-error",
            by_id(ws(
                "agent-broken",
                BuildScript::default().with_agent(
                    Duration::ZERO,
                    Duration::ZERO,
                    LifecycleState::StartError,
                ),
            )),
            Phase::Failed,
        ),
        (
            "failed-build-timeout",
            json!({"workspace": {"id": ws("stuck", BuildScript::default().with_job(long, long))},
                   "timeouts": {"build": "2s"}}),
            Phase::Failed,
        ),
        (
            "failed-chat-not-found",
            json!({"chatId": uuid::Uuid::new_v4().to_string()}),
            Phase::Failed,
        ),
        (
            "failed-chat-has-no-workspace",
            json!({"chatId": lonely_chat.to_string()}),
            Phase::Failed,
        ),
        (
            "failed-workspace-deleted",
            by_id(deleted.to_string()),
            Phase::Failed,
        ),
        (
            "failed-owner-mismatch",
            json!({"workspace": {"id": ws("not-yours", BuildScript::default())},
                   "ownerId": uuid::Uuid::new_v4().to_string()}),
            Phase::Failed,
        ),
        (
            "failed-secret-not-found",
            json!({"workspace": {"id": ws("other-coder", BuildScript::default())},
                   "coderRef": {"name": "no-such-secret"}}),
            Phase::Failed,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_fixtures_are_what_the_operator_writes() {
    let mut env = Env::new("st-fixtures").await;
    let ns = env.ns.clone();
    let sim = env.sim.sim();
    let mut captured = BTreeMap::new();
    let mut capture = |name: &str, w: &WorkspaceStartRequest| {
        captured.insert(name.to_owned(), Normalizer::object(&ns, w));
    };

    // Before the operator runs: a request as the API server stores it, without status.
    let waiting_ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "queued"));
    let w = env.create_for_workspace("new", waiting_ws).await;
    capture("new", &w);

    // Coder hangs: the operator's first status comes before any Coder answer.
    sim.set_fault(GET_WS, Fault::Hang);
    env.start_operator(&["--concurrency=1", "--coder-timeout-ms=4000"])
        .await;
    let w = env
        .wait_for("new", T, |w| message(w).as_deref() == Some(READING_CODER))
        .await;
    capture("pending-reading-coder", &w);
    env.create_for_workspace("pending-waiting-for-start-slot", waiting_ws)
        .await;
    let w = env
        .wait_for("pending-waiting-for-start-slot", T, |w| {
            message(w).is_some()
        })
        .await;
    capture("pending-waiting-for-start-slot", &w);
    // The read times out: Coder unavailable, retried.
    let w = env
        .wait_for("new", T, |w| {
            support::ready(w).1 == workspace_start_operator::api::reason::Reason::CoderUnavailable
        })
        .await;
    capture("pending-coder-unavailable", &w);
    sim.clear_faults();

    let runs = scenarios(&env);
    for (name, spec, _) in &runs {
        env.create(name, spec.clone()).await;
    }
    for (name, _, phase) in &runs {
        let w = env
            .wait_for(name, T, |w| {
                let status = w.status.as_ref();
                let starting_build = status
                    .and_then(|s| s.build.as_ref())
                    .is_some_and(|b| b.transition == "start");
                // `Starting` is captured once the start build exists, not at the start record
                // written just before it is requested (a moment a slow run may catch).
                status.and_then(|s| s.phase) == Some(*phase)
                    && (*phase != Phase::Starting || starting_build)
            })
            .await;
        capture(name, &w);
    }

    // Deleting a request its owner still holds by a finalizer: the API server bumps the
    // generation, and the operator (which has nothing left to do) leaves the status as it was.
    let hold = json!({"metadata": {"finalizers": [HOLD]}});
    env.wsrs()
        .patch("ready", &PatchParams::default(), &Patch::Merge(&hold))
        .await
        .expect("add finalizer");
    env.wsrs()
        .delete("ready", &DeleteParams::default())
        .await
        .expect("delete");
    let w = env
        .wait_for("ready", T, |w| w.metadata.deletion_timestamp.is_some())
        .await;
    capture("stale-generation-deleting", &w);
    let release = json!({"metadata": {"finalizers": null}});
    env.wsrs()
        .patch("ready", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .expect("remove finalizer");

    check_fixtures(&captured);
}
