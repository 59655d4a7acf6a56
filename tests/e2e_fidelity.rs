//! End-to-end: the operator behaves as Coder's own `start_workspace` chat tool and as coderd's
//! REST API do (read from coder/coder's source), against a real kube-apiserver + etcd, the
//! operator binary as the chart's ServiceAccount, and coder-sim playing what coderd does:
//! canceling builds, deadlines, 409 races, chat API moves across upgrades, inactive chat
//! owners, dormant workspaces, agent order, and watch streams that stay silent about changes
//! only time causes.

mod support;

use std::time::Duration;

use coder_sim::{
    AgentSeed, BuildScript, ChatEra, DormantStart, Fault, InitialState, LifecycleState, SimConfig,
    Transition, WorkspaceSeed,
};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use support::{Env, eventually, ready};
use workspace_start_operator::api::crd::{Outcome, Phase, WorkspaceStartRequest};

const T: Duration = Duration::from_secs(30);
const WS_GET: &str = "GET /api/v2/workspaces/{id}";
const WATCH: &str = "GET /api/v2/workspaces/{id}/watch";
const BUILD_POST: &str = "POST /api/v2/workspaces/{id}/builds";
const USER_GET: &str = "GET /api/v2/users/{user}";

/// A quick build whose agents never connect.
fn agent_never_connects() -> BuildScript {
    BuildScript::default()
        .with_job(Duration::from_millis(100), Duration::from_millis(300))
        .with_agent(
            Duration::from_secs(3600),
            Duration::ZERO,
            LifecycleState::Ready,
        )
}

/// A condition's (status, reason, lastTransitionTime).
fn cond(w: &WorkspaceStartRequest, type_: &str) -> Option<(String, String, Timestamp)> {
    w.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.last_transition_time.0))
}

fn outcome(w: &WorkspaceStartRequest) -> Option<Outcome> {
    w.status.as_ref().and_then(|s| s.outcome)
}

fn message(w: &WorkspaceStartRequest) -> String {
    w.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

fn agent_field(w: &WorkspaceStartRequest, f: impl Fn(&str, &str) -> String) -> String {
    w.status
        .as_ref()
        .and_then(|s| s.agent.as_ref())
        .map(|a| f(a.name.as_deref().unwrap_or(""), &a.status))
        .unwrap_or_default()
}

/// The job status of the workspace's latest build, as Coder shows it now.
fn job_status(env: &Env, ws: uuid::Uuid) -> String {
    env.sim.sim().workspace_json(ws)["latest_build"]["job"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Asserts the request failed with `reason`; returns it.
async fn assert_failed(env: &Env, name: &str, reason: &str) -> WorkspaceStartRequest {
    let w = env.wait_terminal(name, T).await;
    assert_eq!(
        w.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Failed),
        "{name}: {:?}",
        w.status
    );
    assert_eq!(ready(&w), ("False".into(), reason.into()), "{name}");
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_start_build_is_awaited_then_started() {
    let mut env = Env::new("fid-cancel").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();

    // Someone else's start build is being canceled (canceling for 5 s): it can only end
    // canceled. The request waits for it, never adopts it, then starts exactly one build.
    let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "canceled"));
    sim.script_next_build(
        ws,
        BuildScript::canceled().with_job(Duration::from_millis(100), Duration::from_secs(10)),
    );
    sim.start_build(ws, Transition::Start);
    eventually("the other build to be canceling", T, || {
        job_status(&env, ws) == "canceling"
    })
    .await;
    env.create_for_workspace("after-cancel", ws).await;
    let waiting = env
        .wait_for("after-cancel", T, |w| {
            cond(w, "Ready").is_some_and(|c| c.1 == "WaitingForCanceledBuild")
        })
        .await;
    assert_eq!(
        outcome(&waiting),
        None,
        "the canceling build is not adopted"
    );
    assert_eq!(sim.builds_posted(ws), 0, "no POST while it cancels");
    let w = env.wait_terminal("after-cancel", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()), "{:?}", w.status);
    assert_eq!(outcome(&w), Some(Outcome::Queued));
    assert_eq!(sim.builds_posted(ws), 1, "exactly one start build");
    assert_eq!(sim.builds_created(ws), 2, "the canceled one and ours");

    // A start build the request already follows that someone else cancels: BuildCanceled.
    let ours = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "ours"));
    sim.script_next_build(
        ours,
        BuildScript::default().with_job(Duration::from_millis(100), Duration::from_secs(20)),
    );
    env.create_for_workspace("followed", ours).await;
    env.wait_for("followed", T, |w| outcome(w) == Some(Outcome::Queued))
        .await;
    let build = sim.latest_build_id(ours).expect("our build");
    eventually("our build to run", T, || {
        job_status(&env, ours) == "running"
    })
    .await;
    assert!(sim.cancel_build(build), "cancel our running build");
    let w = assert_failed(&env, "followed", "BuildCanceled").await;
    assert_eq!(outcome(&w), Some(Outcome::Queued));
    assert_eq!(sim.builds_posted(ours), 1, "one attempt only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_timeout_never_fires_early() {
    let mut env = Env::new("fid-deadline").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();

    // The agent never connects: timeouts.agent (3 s) counts from the build's success.
    let never = agent_never_connects();
    let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "slow-agent").script(never));
    env.create(
        "agent",
        json!({"workspace": {"id": ws.to_string()}, "timeouts": {"agent": "3s"}}),
    )
    .await;
    let w = assert_failed(&env, "agent", "AgentTimeout").await;
    let failed_seen = Timestamp::now();
    let completed: Timestamp = sim.workspace_json(ws)["latest_build"]["job"]["completed_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("job completed_at");
    assert!(
        failed_seen.duration_since(completed) >= SignedDuration::from_secs(3),
        "failed {:?} after the build completed",
        failed_seen.duration_since(completed)
    );
    // The recorded times (whole seconds) agree: never less than the timeout apart.
    let succeeded = cond(&w, "BuildSucceeded").expect("BuildSucceeded").2;
    let done = w
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .expect("completionTime")
        .0;
    assert!(
        done.duration_since(succeeded) >= SignedDuration::from_secs(3),
        "completionTime {done} is less than 3 s after BuildSucceeded {succeeded}"
    );

    // The build never finishes: timeouts.build (3 s) counts from the request's start.
    let stuck = sim.add_workspace(
        WorkspaceSeed::new(env.alice.id, "stuck")
            .script(BuildScript::default().with_job(Duration::from_secs(3600), Duration::ZERO)),
    );
    let created = Timestamp::now();
    env.create(
        "build",
        json!({"workspace": {"id": stuck.to_string()}, "timeouts": {"build": "3s"}}),
    )
    .await;
    let w = assert_failed(&env, "build", "BuildTimeout").await;
    assert!(
        Timestamp::now().duration_since(created) >= SignedDuration::from_secs(3),
        "build timeout fired early"
    );
    let st = w.status.expect("status");
    let (start, done) = (
        st.start_time.expect("startTime").0,
        st.completion_time.expect("completionTime").0,
    );
    assert!(done.duration_since(start) >= SignedDuration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_joins_the_other_build_as_in_progress() {
    let mut env = Env::new("fid-409").await;
    // One write slot: the status after the 409 must not be left for a later pass.
    env.start_operator(&["--write-slots=1"]).await;
    let sim = env.sim.sim();
    let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "raced"));
    // Our POST is in flight when someone else's build starts: Coder answers 409.
    sim.set_fault(
        BUILD_POST,
        Fault::times(1, Fault::Slow(Duration::from_millis(1500))),
    );
    env.create_for_workspace("race", ws).await;
    eventually("the start build POST", T, || sim.count(BUILD_POST) >= 1).await;
    sim.script_next_build(
        ws,
        BuildScript::default().with_job(Duration::from_secs(2), Duration::from_secs(1)),
    );
    sim.start_build(ws, Transition::Start);
    let joined = env
        .wait_for("race", T, |w| {
            w.status
                .as_ref()
                .is_some_and(|s| s.build_requested_at.is_none() && s.outcome.is_some())
        })
        .await;
    assert_eq!(outcome(&joined), Some(Outcome::InProgress));
    let w = env.wait_terminal("race", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(outcome(&w), Some(Outcome::InProgress), "joined, not queued");
    assert_eq!(sim.builds_posted(ws), 0, "our POST created nothing");
    assert_eq!(sim.builds_created(ws), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_path_is_reprobed_after_a_coder_upgrade() {
    let mut env = Env::with_sim(
        "fid-upgrade",
        SimConfig {
            version: "v2.36.3".into(),
            chat_era: ChatEra::Experimental,
            ..SimConfig::default()
        },
    )
    .await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let chat_for = |name: &str, script: BuildScript| {
        let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, name).script(script));
        (ws, sim.add_chat(env.alice.id, Some(ws)))
    };

    // Before: the experimental path answers and is remembered.
    let (_, before) = chat_for("before", BuildScript::default());
    env.create("before", json!({"chatId": before.to_string()}))
        .await;
    let w = env.wait_terminal("before", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    // In flight across the upgrade: a slow build.
    let slow = BuildScript::default().with_job(Duration::from_secs(3), Duration::from_secs(2));
    let (slow_ws, during) = chat_for("during", slow);
    env.create("during", json!({"chatId": during.to_string()}))
        .await;
    env.wait_phase("during", Phase::Starting, T).await;

    // Coder v2.38 removes /api/experimental/chats.
    sim.set_server(Some("v2.38.0"), Some(ChatEra::V2));
    let (_, after) = chat_for("after", BuildScript::default());
    env.create("after", json!({"chatId": after.to_string()}))
        .await;
    let w = env.wait_terminal("after", T).await;
    assert_eq!(
        ready(&w),
        ("True".into(), "Ready".into()),
        "{}",
        message(&w)
    );
    assert!(
        sim.count("GET /api/v2/chats/{id}") >= 1,
        "{:?}",
        sim.counters()
    );
    let w = env.wait_terminal("during", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(sim.builds_created(slow_ws), 1);

    // The new path is remembered: one more chat costs one chat read.
    let (_, later) = chat_for("later", BuildScript::default());
    let reads = sim.count("GET /api/v2/chats/{id}") + sim.count("GET /api/experimental/chats/{id}");
    env.create("later", json!({"chatId": later.to_string()}))
        .await;
    env.wait_phase("later", Phase::Ready, T).await;
    let now = sim.count("GET /api/v2/chats/{id}") + sim.count("GET /api/experimental/chats/{id}");
    assert_eq!(now - reads, 1, "{:?}", sim.counters());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactive_chat_owner_is_refused() {
    let mut env = Env::new("fid-owner").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    // An owner token may start every user's workspace: the chat owner check is what stops it.
    let admin = sim.add_admin("ops");
    let url = env.sim.url();
    env.create_secret("ops", &[("url", &url), ("token", &admin.token)])
        .await;
    let chat_of = |who: &str| {
        let u = sim.add_user(who);
        let ws = sim.add_workspace(WorkspaceSeed::new(u.id, "dev"));
        let chat = sim.add_chat(u.id, Some(ws));
        (u, ws, chat)
    };
    let spec = |chat: uuid::Uuid| json!({"chatId": chat.to_string(), "coderRef": {"name": "ops"}});

    let (bob, bob_ws, bob_chat) = chat_of("bob");
    sim.set_user_status(bob.id, "suspended");
    let (carol, carol_ws, carol_chat) = chat_of("carol");
    sim.set_user_status(carol.id, "dormant");
    let (dave, dave_ws, dave_chat) = chat_of("dave");
    sim.delete_user(dave.id);
    let (_, erin_ws, erin_chat) = chat_of("erin");
    // The newest tool checks the owner before anything else: a running workspace too.
    let frank = sim.add_user("frank");
    let frank_ws =
        sim.add_workspace(WorkspaceSeed::new(frank.id, "dev").state(InitialState::Running));
    let frank_chat = sim.add_chat(frank.id, Some(frank_ws));
    sim.set_user_status(frank.id, "suspended");
    for (name, chat) in [
        ("suspended", bob_chat),
        ("dormant", carol_chat),
        ("deleted", dave_chat),
        ("running", frank_chat),
        ("active", erin_chat),
    ] {
        env.create(name, spec(chat)).await;
    }
    for (name, ws, who) in [
        ("suspended", bob_ws, "bob"),
        ("dormant", carol_ws, "carol"),
        ("deleted", dave_ws, "dave"),
        ("running", frank_ws, "frank"),
    ] {
        let w = assert_failed(&env, name, "OwnerInactive").await;
        assert!(message(&w).contains(who), "{name}: {}", message(&w));
        assert_eq!(sim.builds_created(ws), 0, "{name}: nothing started");
        assert_eq!(
            w.status.as_ref().and_then(|s| s.outcome),
            None,
            "{name}: not reported as started"
        );
        let evs = env.events(name).await;
        assert!(
            evs.iter()
                .any(|(t, r, _)| t == "Warning" && r == "OwnerInactive"),
            "{name}: {evs:?}"
        );
    }
    let w = env.wait_terminal("active", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(sim.builds_created(erin_ws), 1);

    // The operator's own chats need no user read: its token proves its user active.
    let before = sim.count(USER_GET);
    let own_ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "own"));
    let own_chat = sim.add_chat(env.alice.id, Some(own_ws));
    env.create("own", json!({"chatId": own_chat.to_string()}))
        .await;
    env.wait_phase("own", Phase::Ready, T).await;
    assert_eq!(sim.count(USER_GET), before, "{:?}", sim.counters());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dormant_workspace_is_started_as_coder_does() {
    let mut env = Env::new("fid-dormant").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();

    // Current Coder clears dormant_at in the start build and starts the workspace.
    let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "sleepy").dormant(true));
    assert!(!sim.workspace_json(ws)["dormant_at"].is_null());
    env.create_for_workspace("wake", ws).await;
    let w = env.wait_terminal("wake", T).await;
    assert_eq!(
        ready(&w),
        ("True".into(), "Ready".into()),
        "{}",
        message(&w)
    );
    assert!(sim.workspace_json(ws)["dormant_at"].is_null());
    assert_eq!(sim.builds_posted(ws), 1);

    // Older Coder refuses with 403: WorkspaceDormant with Coder's message.
    sim.set_dormant_start(DormantStart::Refuse);
    let old = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "old").dormant(true));
    env.create_for_workspace("refused", old).await;
    let w = assert_failed(&env, "refused", "WorkspaceDormant").await;
    assert!(
        message(&w).contains("You do not have permission to start this workspace."),
        "{}",
        message(&w)
    );
    assert_eq!(sim.builds_created(old), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_order_follows_coder() {
    let mut env = Env::new("fid-agents").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    // The template orders its agents; none ends in -coderd-chat: the first by order is the
    // chat tool's pick, although "alpha" sorts first by name.
    let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "ordered").agents(vec![
        AgentSeed::new("alpha").order(2),
        AgentSeed::new("zeta").order(1),
        AgentSeed::new("beta").order(3),
    ]));
    let chat = sim.add_chat(env.alice.id, Some(ws));
    env.create("ordered", json!({"chatId": chat.to_string()}))
        .await;
    let w = env.wait_terminal("ordered", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(agent_field(&w, |name, _| name.to_owned()), "zeta");
    // Coder's chat binds the same agent.
    let bound = sim.chat_json(chat)["agent_id"].clone();
    let id = w
        .status
        .as_ref()
        .and_then(|s| s.agent.as_ref())
        .and_then(|a| a.id.clone());
    assert_eq!(bound, json!(id));

    // The -coderd-chat rule applies on top of Coder's order.
    let suffixed = sim.add_workspace(
        WorkspaceSeed::new(env.alice.id, "suffixed")
            .state(InitialState::Running)
            .agents(vec![
                AgentSeed::new("zeta").order(1),
                AgentSeed::new("tools-coderd-chat").order(5),
            ]),
    );
    env.create_for_workspace("suffixed", suffixed).await;
    let w = env.wait_terminal("suffixed", T).await;
    assert_eq!(
        agent_field(&w, |name, _| name.to_owned()),
        "tools-coderd-chat"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backstop_rereads_the_workspace_while_the_stream_is_live() {
    let mut env = Env::new("fid-backstop").await;
    env.start_operator(&["--backstop-poll-ms=2000"]).await;
    let sim = env.sim.sim();
    // The agent never connects and times out after 2 s: a change only time causes, for
    // which Coder sends no watch frame.
    let never = agent_never_connects();
    let ws = sim.add_workspace(
        WorkspaceSeed::new(env.alice.id, "quiet")
            .agents(vec![AgentSeed::new("main").connection_timeout(2)])
            .script(never),
    );
    env.create(
        "quiet",
        json!({"workspace": {"id": ws.to_string()}, "timeouts": {"agent": "60s"}}),
    )
    .await;
    env.wait_for("quiet", T, |w| {
        agent_field(w, |_, status| status.to_owned()) == "connecting"
    })
    .await;
    let gets = sim.count(WS_GET);
    let streams = sim.count(WATCH);
    let w = env
        .wait_for("quiet", T, |w| {
            agent_field(w, |_, status| status.to_owned()) == "timeout"
        })
        .await;
    assert_eq!(
        w.status.as_ref().and_then(|s| s.phase),
        Some(Phase::WaitingForAgent)
    );
    assert!(sim.count(WS_GET) > gets, "the backstop read Coder");
    assert_eq!(sim.count(WATCH), streams, "the stream stayed open");

    // An error event: the stream stays open and the workspace is read again.
    let gets = sim.count(WS_GET);
    sim.fail_watchers(ws, "Internal error fetching workspace.");
    eventually("a read after the error event", T, || {
        sim.count(WS_GET) > gets
    })
    .await;
    assert_eq!(sim.count(WATCH), streams, "the stream stayed open");
}
