//! Hostile input end to end (real kube-apiserver + etcd, coder-sim, the operator binary as the
//! chart's ServiceAccount): what a careless or malicious user, or a Coder URL answering
//! anything, can do to the operator. Each test checks that the operator stays up, that the
//! request concerned gets its own clear reason, and that other requests go on.

mod support;

use std::time::Duration;

use coder_sim::{BuildScript, Fault, WorkspaceSeed};
use futures::StreamExt;
use support::opproc::{Launch, Proc, eventually};
use support::{Env, ready};
use workspace_start_operator::api::crd::{Phase, WorkspaceStartRequest};

const T: Duration = Duration::from_secs(30);
const WS_GET: &str = "GET /api/v2/workspaces/{id}";
const WATCH: &str = "GET /api/v2/workspaces/{id}/watch";
const START_BUILD: &str = "POST /api/v2/workspaces/{id}/builds";
/// How much the operator's peak resident memory may exceed what it used before the hostile
/// answer: the body limit (4 MiB) and frame limit (1 MiB) plus allocator slack.
const MEMORY_MARGIN_KIB: u64 = 16 * 1024;

/// A hostile-Coder test: the operator, a victim workspace, a bystander workspace (a request
/// for each), and the operator's resident memory before anything hostile happened.
struct Hostile {
    env: Env,
    victim: uuid::Uuid,
    bystander: uuid::Uuid,
    baseline_kib: u64,
}

impl Hostile {
    /// Starts the operator with `flags`; both workspaces are stopped and start with `script`.
    async fn start(prefix: &str, flags: &[&str], script: BuildScript) -> Hostile {
        let mut env = Env::new(prefix).await;
        env.start_operator(flags).await;
        let sim = env.sim.sim();
        let seed = |name: &str| WorkspaceSeed::new(env.alice.id, name).script(script.clone());
        let victim = sim.add_workspace(seed("victim"));
        let bystander = sim.add_workspace(seed("bystander"));
        let (_, baseline_kib) = env.operator().memory_kib();
        Hostile {
            env,
            victim,
            bystander,
            baseline_kib,
        }
    }

    /// Creates the two requests.
    async fn create(&self) {
        self.env.create_for_workspace("victim", self.victim).await;
        self.env
            .create_for_workspace("bystander", self.bystander)
            .await;
    }

    /// The bystander went Ready with one build; the operator is up and its peak memory
    /// stayed within [`MEMORY_MARGIN_KIB`] of the baseline.
    async fn assert_unharmed(&mut self) {
        let w = self.env.wait_terminal("bystander", T).await;
        assert_eq!(ready(&w), ("True".into(), "Ready".into()), "bystander");
        assert_eq!(self.env.sim.sim().builds_created(self.bystander), 1);
        let baseline = self.baseline_kib;
        let op = self.env.operator();
        assert!(op.is_running(), "the operator exited");
        let (peak, now) = op.memory_kib();
        eprintln!("operator memory: baseline {baseline} KiB, peak {peak} KiB, now {now} KiB");
        assert!(
            peak < baseline + MEMORY_MARGIN_KIB,
            "peak RSS {peak} KiB is more than {MEMORY_MARGIN_KIB} KiB above the baseline {baseline} KiB"
        );
    }

    /// The victim failed with `reason` and `message`, and nothing was started for it.
    async fn assert_victim_failed(&self, reason: &str, message: &str) -> WorkspaceStartRequest {
        let w = self.env.wait_terminal("victim", T).await;
        assert_eq!(ready(&w), ("False".into(), reason.into()));
        assert_eq!(
            w.status.as_ref().and_then(|s| s.message.as_deref()),
            Some(message)
        );
        assert_eq!(self.env.sim.sim().builds_created(self.victim), 0);
        w
    }

    /// Waits until no watch stream is open.
    async fn assert_no_watch_streams(&mut self) {
        let deadline = std::time::Instant::now() + T;
        loop {
            let m = self.env.operator().metrics().await;
            if metric(&m, "workspace_start_operator_watch_streams") == Some(0.0) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a watch stream stayed open"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// CPU seconds the operator used over `window`.
    async fn cpu_over(&mut self, window: Duration) -> f64 {
        let before = self.env.operator().cpu_seconds();
        tokio::time::sleep(window).await;
        self.env.operator().cpu_seconds() - before
    }
}

/// The value of an unlabelled counter or gauge in `/metrics`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_reconcile_fails_only_that_request() {
    let mut env = Env::new("hostile-panic").await;
    env.start_operator(&["--test-panic-on=boom"]).await;
    let sim = env.sim.sim();
    let a = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "a"));
    let b = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "b"));
    env.create_for_workspace("boom", a).await;
    env.create_for_workspace("fine", b).await;

    let w = env.wait_terminal("boom", T).await;
    assert_eq!(w.status.as_ref().and_then(|s| s.phase), Some(Phase::Failed));
    assert_eq!(ready(&w), ("False".into(), "InternalError".into()));
    let message = w.status.as_ref().and_then(|s| s.message.clone());
    assert_eq!(
        message.as_deref(),
        Some(
            "the operator hit an internal error while reconciling this request (details in the operator log); it is not retried"
        )
    );
    let events = env.events("boom").await;
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "InternalError"),
        "{events:?}"
    );
    let w = env.wait_terminal("fine", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(
        sim.builds_created(a),
        0,
        "the panicking request started nothing"
    );

    let op = env.operator();
    assert!(op.is_running(), "the operator exited");
    let m = op.metrics().await;
    assert_eq!(
        metric(&m, "workspace_start_operator_reconcile_panics_total"),
        Some(1.0),
        "one panic counted, and not repeated after Failed"
    );
    assert!(
        op.logs()
            .contains("reconcile panicked; failing the request")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typo_in_the_workspace_owner_fails_at_once() {
    let mut env = Env::new("hostile-typo").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "dev"));
    let created = std::time::Instant::now();
    env.create(
        "typo",
        serde_json::json!({"workspace": {"owner": "alcie", "name": "dev"}}),
    )
    .await;
    env.create(
        "right",
        serde_json::json!({"workspace": {"owner": "alice", "name": "dev"}}),
    )
    .await;
    let w = env.wait_terminal("typo", T).await;
    assert!(
        created.elapsed() < Duration::from_secs(10),
        "a permanent answer is not retried until the deadline"
    );
    assert_eq!(ready(&w), ("False".into(), "CoderRequestInvalid".into()));
    assert_eq!(
        w.status.as_ref().and_then(|s| s.message.as_deref()),
        Some(
            r#"Coder refused /api/v2/users/{user}/workspace/{name} (400): "user" must be an existing uuid or username.; check spec.workspace.owner ("alcie") and spec.workspace.name ("dev")"#
        )
    );
    let events = env.events("typo").await;
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "CoderRequestInvalid"),
        "{events:?}"
    );
    let w = env.wait_terminal("right", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(sim.builds_created(ws), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coders_403_message_reaches_the_request() {
    let mut env = Env::new("hostile-403").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "dev"));
    sim.set_fault("GET /api/v2/workspaces/{id}", coder_sim::Fault::Status(403));
    env.create_for_workspace("forbidden", ws).await;
    let w = env.wait_terminal("forbidden", T).await;
    assert_eq!(ready(&w), ("False".into(), "CoderForbidden".into()));
    assert_eq!(
        w.status.as_ref().and_then(|s| s.message.as_deref()),
        Some("Coder refused /api/v2/workspaces/{id} (403): Forbidden.")
    );
    assert_eq!(sim.builds_created(ws), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coder_ref_urls_outside_the_allow_list_are_refused() {
    let mut env = Env::new("hostile-allowed").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let bob = sim.add_user("bob");
    let ws = sim.add_workspace(WorkspaceSeed::new(bob.id, "bobs-box"));
    // Another address on this machine standing in for an in-cluster service or a metadata
    // endpoint: it counts every connection made to it.
    let decoy = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let decoy_url = format!("http://{}", decoy.local_addr().expect("addr"));
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while decoy.accept().await.is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    env.create_secret("decoy", &[("url", &decoy_url), ("token", &bob.token)])
        .await;
    let url = env.sim.url();
    env.create_secret("same-coder", &[("url", &url), ("token", &bob.token)])
        .await;
    let spec = |secret: &str| serde_json::json!({"workspace": {"id": ws.to_string()}, "coderRef": {"name": secret}});
    env.create("to-decoy", spec("decoy")).await;
    env.create("to-coder", spec("same-coder")).await;

    let w = env.wait_terminal("to-decoy", T).await;
    assert_eq!(ready(&w), ("False".into(), "CoderURLNotAllowed".into()));
    let message = w
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert_eq!(
        message,
        format!(
            "the url in Secret \"decoy\" (spec.coderRef) is not an allowed Coder URL (allowed: {}); an administrator can add it to coder.allowedUrls",
            env.sim.url().trim_end_matches('/')
        )
    );
    assert!(
        !message.contains(&decoy_url),
        "the Secret's URL is not echoed"
    );
    // By default the operator-wide Coder's scheme, host and port are allowed.
    let w = env.wait_terminal("to-coder", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the operator connected to a URL that is not allowed"
    );

    // An explicit list replaces the default.
    env.operator().terminate().await;
    env.start_operator(&[&format!("--coder-allowed-urls={decoy_url}/coder")])
        .await;
    env.create("not-listed", spec("same-coder")).await;
    let w = env.wait_terminal("not-listed", T).await;
    assert_eq!(ready(&w), ("False".into(), "CoderURLNotAllowed".into()));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_coder_answer_fails_the_request_and_memory_stays_bounded() {
    let mut h = Hostile::start("hostile-huge", &[], BuildScript::instant()).await;
    let victim = h.victim.to_string();
    h.env
        .sim
        .sim()
        .set_fault(WS_GET, Fault::on_path(victim, Fault::HugeBody(300 << 20)));
    h.create().await;
    h.assert_victim_failed(
        "CoderResponseInvalid",
        "Coder's answer to /api/v2/workspaces/{id} is larger than 4 MiB",
    )
    .await;
    h.assert_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json_from_coder_fails_the_request_at_once() {
    let mut h = Hostile::start("hostile-json", &[], BuildScript::instant()).await;
    let victim = h.victim.to_string();
    h.env
        .sim
        .sim()
        .set_fault(WS_GET, Fault::on_path(victim, Fault::InvalidJson));
    h.create().await;
    h.assert_victim_failed(
        "CoderResponseInvalid",
        "Coder's answer to /api/v2/workspaces/{id} is not the expected JSON: expected value at line 1 column 1",
    )
    .await;
    h.assert_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_with_a_huge_message_fails_with_a_bounded_message() {
    let mut h = Hostile::start("hostile-403big", &[], BuildScript::instant()).await;
    let victim = h.victim.to_string();
    h.env.sim.sim().set_fault(
        WS_GET,
        Fault::on_path(
            victim,
            Fault::BigMessage {
                status: 403,
                bytes: 2_000_000,
            },
        ),
    );
    h.create().await;
    let w = h.env.wait_terminal("victim", T).await;
    assert_eq!(ready(&w), ("False".into(), "CoderForbidden".into()));
    let message = w
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    let want = format!(
        "Coder refused /api/v2/workspaces/{{id}} (403): {}…",
        "x".repeat(300)
    );
    assert_eq!(message, want);
    let events = h.env.events("victim").await;
    assert!(
        events
            .iter()
            .any(|(t, r, note)| t == "Warning" && r == "CoderForbidden" && note.len() < 1024),
        "{events:?}"
    );
    h.assert_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_coder_answer_times_out_and_is_retried() {
    let mut h = Hostile::start("hostile-drip", &[], BuildScript::instant()).await;
    let victim = h.victim.to_string();
    h.env
        .sim
        .sim()
        .set_fault(WS_GET, Fault::on_path(victim, Fault::Drip(1)));
    h.create().await;
    // 1 byte/s never completes within the 3 s request timeout: an outage, retried.
    let w = h
        .env
        .wait_for("victim", T, |w| ready(w).1 == "CoderUnavailable")
        .await;
    assert_eq!(
        w.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Pending)
    );
    h.assert_unharmed().await;
    h.env.sim.sim().clear_faults();
    let w = h.env.wait_terminal("victim", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unterminated_watch_stream_is_cut_and_the_workspace_polled() {
    // Builds run long enough for the operator to open watch streams.
    let slow = BuildScript::instant().with_job(Duration::from_millis(500), Duration::from_secs(3));
    let mut h = Hostile::start("hostile-sse-flood", &[], slow).await;
    let sim = h.env.sim.sim();
    sim.set_fault(WATCH, Fault::UnterminatedSse);
    h.create().await;
    let w = h.env.wait_terminal("victim", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert!(
        sim.count(WATCH) >= 1,
        "the operator never opened a watch stream"
    );
    h.assert_unharmed().await;
    h.assert_no_watch_streams().await;
    let cpu = h.cpu_over(Duration::from_secs(3)).await;
    assert!(cpu < 0.5, "the operator used {cpu:.2} CPU s while idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_watch_stream_is_replaced_by_polling() {
    let slow = BuildScript::instant().with_job(Duration::from_millis(500), Duration::from_secs(5));
    let mut h = Hostile::start("hostile-sse-silent", &["--coder-watch-idle-ms=1500"], slow).await;
    let sim = h.env.sim.sim();
    sim.set_fault(WATCH, Fault::SilentSse);
    h.create().await;
    let w = h.env.wait_terminal("victim", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert!(
        sim.count(WATCH) >= 3,
        "silent streams were not closed and reopened ({} opened)",
        sim.count(WATCH)
    );
    h.assert_unharmed().await;
    h.assert_no_watch_streams().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_names_from_coder_stay_bounded_in_status_and_events() {
    // The watch stream is off so every read is the faulted GET; the body limit is raised so
    // the answer (several 1 MiB names) is read rather than refused as too large.
    let mut h = Hostile::start(
        "hostile-names",
        &["--coder-watch=false", "--coder-max-body-bytes=33554432"],
        BuildScript::instant(),
    )
    .await;
    let victim = h.victim.to_string();
    h.env
        .sim
        .sim()
        .set_fault(WS_GET, Fault::on_path(victim, Fault::HugeNames(1 << 20)));
    h.create().await;
    let w = h.env.wait_terminal("victim", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    let status = w.status.as_ref().expect("status");
    let size = serde_json::to_vec(status).expect("json").len();
    assert!(size < 16 * 1024, "the status is {size} bytes");
    let cut = |name: &str| format!("{name}{}…", "x".repeat(128 - name.len()));
    assert_eq!(
        status.workspace.as_ref().map(|ws| ws.name.clone()),
        Some(cut("victim"))
    );
    assert_eq!(
        status
            .workspace
            .as_ref()
            .and_then(|ws| ws.owner_name.clone()),
        Some(cut("alice"))
    );
    let events = h.env.events("victim").await;
    assert!(!events.is_empty());
    for (_, reason, note) in &events {
        assert!(note.len() < 2048, "{reason}: a {} byte note", note.len());
    }
    h.assert_unharmed().await;
}

/// When coder-sim received the start build of `ws` (`None` while the operator has sent none;
/// the seeded workspace's latest build is an older stop).
fn build_created(sim: &coder_sim::Sim, ws: uuid::Uuid) -> Option<jiff::Timestamp> {
    if sim.builds_created(ws) == 0 {
        return None;
    }
    sim.workspace_json(ws)["latest_build"]["created_at"]
        .as_str()?
        .parse()
        .ok()
}

/// A noisy tenant: namespace A queues 120 requests for new starts, then namespace B creates 5.
/// One operator watches both with 2 start slots and one write slot per namespace. A freed start
/// slot goes to the waiting namespace holding the fewest and B's start records have a write
/// slot of their own, so from B's first create until B's last start build Coder receives at
/// most about one of A's start builds per B's, plus those already under way: B never waits
/// behind A's whole queue (first come, first served would put 60 or more of A's first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_in_one_namespace_lets_another_namespaces_requests_start_in_turn() {
    const A: usize = 120;
    const B: usize = 5;
    const SLOTS: usize = 2;
    let env = Env::new("noisy-a").await;
    let ns_b = env.plane.create_namespace("noisy-b").await.expect("ns");
    let sim = env.sim.sim();
    let script = BuildScript::default().with_job(Duration::ZERO, Duration::from_millis(200));
    let seed = |name: String| {
        sim.add_workspace(WorkspaceSeed::new(env.alice.id, &name).script(script.clone()))
    };
    let a_ws: Vec<uuid::Uuid> = (0..A).map(|i| seed(format!("a-{i}"))).collect();
    let b_ws: Vec<uuid::Uuid> = (0..B).map(|i| seed(format!("b-{i}"))).collect();
    // Both namespaces, so as the cluster admin (the chart's Role covers its own namespace).
    let op = Proc::spawn(Launch {
        kubeconfig: env.plane.admin_kubeconfig(),
        dir: env.dir.path(),
        args: vec![
            format!("--namespaces={},{ns_b}", env.ns),
            format!("--coder-url={}", env.sim.url()),
            format!("--coder-token-file={}", env.token_file().display()),
            format!("--concurrency={SLOTS}"),
            "--write-slots=1".to_owned(),
        ],
        env: vec![("POD_NAMESPACE".into(), env.ns.clone())],
    });
    op.wait_status("/readyz", 200, T).await;
    // Each start holds its slot at least 40 ms, so A's queue lasts beyond B's creates.
    sim.set_fault(START_BUILD, Fault::Slow(Duration::from_millis(40)));

    let create = |ns: &str, name: String, ws: uuid::Uuid| {
        let api: kube::Api<WorkspaceStartRequest> = kube::Api::namespaced(env.admin.clone(), ns);
        async move {
            let obj: WorkspaceStartRequest = serde_json::from_value(serde_json::json!({
                "apiVersion": "coder.com/v1alpha1",
                "kind": "WorkspaceStartRequest",
                "metadata": {"name": name},
                "spec": {"workspace": {"id": ws.to_string()}},
            }))
            .expect("valid request");
            api.create(&kube::api::PostParams::default(), &obj)
                .await
                .expect("create request");
        }
    };
    futures::stream::iter(a_ws.iter().enumerate())
        .map(|(i, ws)| create(&env.ns, format!("a-{i}"), *ws))
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let b_from = jiff::Timestamp::now();
    for (i, ws) in b_ws.iter().enumerate() {
        create(&ns_b, format!("b-{i}"), *ws).await;
    }
    let b_builds: Vec<jiff::Timestamp> =
        eventually("B's start builds", Duration::from_secs(60), || {
            let built: Vec<_> = b_ws
                .iter()
                .filter_map(|ws| build_created(&sim, *ws))
                .collect();
            async move { (built.len() == B).then_some(built) }
        })
        .await;
    let b_last = b_builds.iter().max().copied().expect("B's builds");
    eventually("A's start builds", Duration::from_secs(120), || {
        let all = a_ws.iter().all(|ws| sim.builds_created(*ws) >= 1);
        async move { all.then_some(()) }
    })
    .await;
    let a_builds: Vec<jiff::Timestamp> = a_ws
        .iter()
        .filter_map(|ws| build_created(&sim, *ws))
        .collect();
    let a_between = a_builds
        .iter()
        .filter(|t| b_from <= **t && **t <= b_last)
        .count();
    let a_after = a_builds.iter().filter(|t| **t > b_last).count();
    println!(
        "from B's first create to B's last start build ({:?}): {a_between} of A's start \
         builds; {a_after} of A's came after",
        b_last.duration_since(b_from)
    );
    assert!(
        a_after >= A / 2,
        "A still had most of its requests waiting when B's were started ({a_after} after), \
         so the test measured a queue: {}",
        support::tail(&op.logs(), 40)
    );
    assert!(
        a_between <= 2 * B + SLOTS,
        "B waited behind {a_between} of A's start builds (in turn: at most {})",
        2 * B + SLOTS
    );
}
