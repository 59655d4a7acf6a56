//! Recovery follows Coder, not each request's backoff: against a real kube-apiserver + etcd,
//! coder-sim and the operator binary. While Coder is down, requests wait on one health signal
//! per Coder endpoint (one probe per 5 s, plus each new request's first attempt, one request
//! per second); when Coder answers again they are released together.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use coder_sim::{ANY_ROUTE, BuildScript, Fault, LifecycleState, WorkspaceSeed};
use kube::api::ListParams;
use support::{Env, ready};
use workspace_start_operator::api::crd::Phase;

/// How long Coder is down.
const OUTAGE: Duration = Duration::from_secs(40);
/// Requests created, evenly over the outage.
const REQUESTS: usize = 60;
/// The probe period of a down endpoint (`coder_health::PROBE_EVERY`).
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// The time between first attempts while Coder is down (`coder_health::TURN`).
const TURN: Duration = Duration::from_secs(1);
/// The bound: the last request Ready within 15 s of Coder's return.
const READY_AFTER_RETURN: Duration = Duration::from_secs(15);
/// How long a start build takes in coder-sim ([`ten_second_build`]).
const BUILD: Duration = Duration::from_secs(10);
/// What the operator may add to a build between a release and the last request's Ready
/// (60 reads, start records and POSTs paced by start slots and write slots, the agent's
/// watch event, the final status): measured 0.7–1.9 s on a test machine shared with other
/// builds.
const OVERHEAD: Duration = Duration::from_secs(3);
const PROBE_ROUTE: &str = "GET /api/v2/buildinfo";
const WS_GET: &str = "GET /api/v2/workspaces/{id}";

/// A start build of about 10 s: 1 s pending, 8 s running, the agent connected 0.5 s later and
/// ready 0.5 s after that.
fn ten_second_build() -> BuildScript {
    BuildScript::default()
        .with_job(Duration::from_secs(1), Duration::from_secs(8))
        .with_agent(
            Duration::from_millis(500),
            Duration::from_millis(500),
            LifecycleState::Ready,
        )
}

/// Coder answers 503 on every route for 40 s while 60 requests arrive, one every 2/3 s; its
/// builds take about 10 s. Counted: every request coder-sim receives on any route from the
/// moment the fault is set until it is cleared; the probes are those to `GET
/// /api/v2/buildinfo`, every other one is a request's attempt. Bounds: at most one attempt
/// per request plus one probe per started 5 s of outage; exactly 60 builds; Coder's return
/// seen at the next first attempt (the requests arrive faster than one a second, so some
/// still wait for their turn when Coder returns), within a turn plus 1 s; from that release
/// on, the last request Ready within the build time plus 3 s; and so the last Ready within
/// 15 s of Coder's return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coder_down_for_40s_while_60_requests_arrive_recovers_together() {
    let mut env = Env::new("recovery").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let workspaces: Vec<uuid::Uuid> = (0..REQUESTS)
        .map(|i| {
            sim.add_workspace(
                WorkspaceSeed::new(env.alice.id, &format!("ws-{i}")).script(ten_second_build()),
            )
        })
        .collect();

    // Coder answers 503 on every route, the probe's included, for 40 s.
    sim.reset_counters();
    sim.set_fault(ANY_ROUTE, Fault::Status(503));
    let down_at = Instant::now();
    for (i, ws) in workspaces.iter().enumerate() {
        let due = down_at + OUTAGE.mul_f64(i as f64 / REQUESTS as f64);
        tokio::time::sleep_until(due.into()).await;
        env.create_for_workspace(&format!("r{i}"), *ws).await;
    }
    tokio::time::sleep_until((down_at + OUTAGE).into()).await;
    let during = sim.counters();
    // Meanwhile every request was Pending with CoderUnavailable and the last cause.
    let list = env.wsrs().list(&ListParams::default()).await.expect("list");
    let metrics = env.operator().metrics().await;
    sim.clear_faults();
    let back_at = Instant::now();
    let back_ts = jiff::Timestamp::now();
    let outage = back_at.duration_since(down_at);
    let waiting = list
        .items
        .iter()
        .filter(|w| {
            w.status.as_ref().and_then(|s| s.phase) == Some(Phase::Pending)
                && ready(w).1 == "CoderUnavailable"
                && w.status
                    .as_ref()
                    .and_then(|s| s.message.as_deref())
                    .is_some_and(|m| m.contains("HTTP 503 from"))
        })
        .count();

    // Then all of them become Ready, together.
    let mut ready_at = BTreeMap::new();
    while ready_at.len() < REQUESTS {
        assert!(
            back_at.elapsed() < Duration::from_secs(120),
            "{} of {REQUESTS} Ready 120 s after Coder's return",
            ready_at.len()
        );
        let list = env.wsrs().list(&ListParams::default()).await.expect("list");
        for w in &list.items {
            let name = w.metadata.name.clone().unwrap_or_default();
            match w.status.as_ref().and_then(|s| s.phase) {
                Some(Phase::Ready) => {
                    ready_at.entry(name).or_insert_with(|| back_at.elapsed());
                }
                Some(Phase::Failed) => panic!("{name} failed: {:?}", w.status),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_ready = ready_at.values().max().copied().unwrap_or_default();
    let first_ready = ready_at.values().min().copied().unwrap_or_default();
    let builds: usize = workspaces.iter().map(|ws| sim.builds_created(*ws)).sum();

    // Every Coder call counted by coder-sim between the fault and its end, on every route.
    let calls: u64 = during.values().sum();
    let probes = during.get(PROBE_ROUTE).copied().unwrap_or(0);
    let probe_budget = outage.as_secs().div_ceil(PROBE_EVERY.as_secs());
    // When the operator released the waiting requests (its log), after Coder's return.
    let logs = env.operator().logs();
    let released = released_after(&logs, back_ts);
    println!(
        "outage {:.1} s, {REQUESTS} requests: Coder calls during the outage {calls} \
         ({probes} probes, {} request calls; by route {during:?}); builds {builds}; \
         released {:.1} s after Coder's return; Ready {:.1} s (first) to {:.1} s (last) \
         after Coder's return",
        outage.as_secs_f64(),
        calls - probes,
        released.as_secs_f64(),
        first_ready.as_secs_f64(),
        last_ready.as_secs_f64(),
    );
    assert_eq!(
        waiting, REQUESTS,
        "Pending/CoderUnavailable during the outage"
    );
    assert_eq!(
        gauge(&metrics, "workspace_start_operator_coder_endpoints_down"),
        1
    );
    assert_eq!(
        gauge(
            &metrics,
            "workspace_start_operator_requests_waiting_on_coder"
        ),
        REQUESTS as i64
    );
    assert_eq!(builds, REQUESTS, "exactly one start build per request");
    assert!(
        calls - probes <= REQUESTS as u64,
        "at most one attempt per request during the outage: {during:?}"
    );
    assert!(
        probes <= probe_budget,
        "at most one probe per 5 s of outage ({probe_budget}): {probes}"
    );
    // Coder's return is seen by the next request's first attempt, at most a turn later ...
    assert!(
        released <= TURN + Duration::from_secs(1),
        "released {:.1} s after Coder's return",
        released.as_secs_f64()
    );
    // ... and from then on only the builds take time: all released together.
    assert!(
        last_ready <= released + BUILD + OVERHEAD,
        "last request Ready {:.1} s after its release",
        (last_ready.saturating_sub(released)).as_secs_f64()
    );
    assert!(
        last_ready <= READY_AFTER_RETURN,
        "last request Ready {:.1} s after Coder's return",
        last_ready.as_secs_f64()
    );
}

/// How long after `back` the operator logged that Coder answers again (it logs in UTC with
/// the timestamp first).
fn released_after(logs: &str, back: jiff::Timestamp) -> Duration {
    let line = logs
        .lines()
        .find(|l| l.contains("Coder answers again"))
        .unwrap_or_else(|| {
            panic!(
                "no release in the operator log:\n{}",
                support::tail(logs, 40)
            )
        });
    let at: jiff::Timestamp = line
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    Duration::try_from(at.duration_since(back)).unwrap_or(Duration::ZERO)
}

/// One workspace's route answers 503 while the rest of Coder (the probe included) answers: the
/// request is released once, then retries on its own backoff (1 s, 2 s, 4 s …, ±20 %), never
/// in a loop on the health signal, and Coder is not held for down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_workspace_failing_while_coder_answers_retries_on_its_own_backoff() {
    let mut env = Env::new("recovery-path").await;
    env.start_operator(&[]).await;
    let sim = env.sim.sim();
    let broken = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "broken"));
    sim.reset_counters();
    sim.set_fault(
        WS_GET,
        Fault::on_path(broken.to_string(), Fault::Status(503)),
    );
    env.create_for_workspace("broken", broken).await;
    let window = Duration::from_secs(15);
    tokio::time::sleep(window).await;
    let reads = sim.count(WS_GET);
    let probes = sim.count(PROBE_ROUTE);
    let metrics = env.operator().metrics().await;
    println!("a broken path for {window:?}: {reads} reads of it, {probes} probes");
    // The first attempt; after the one probe (2.5 s) the release; then its own backoff at
    // about +1, +2, +4 and +8 s: at most 6 reads in 15 s.
    assert!((2..=6).contains(&reads), "{reads} reads in {window:?}");
    assert_eq!(probes, 1, "one probe: Coder answered it");
    assert_eq!(
        gauge(&metrics, "workspace_start_operator_coder_endpoints_down"),
        0
    );
    let w = env.wsrs().get("broken").await.expect("get");
    assert_eq!(ready(&w).1, "CoderUnavailable");
    sim.clear_faults();
    let w = env.wait_terminal("broken", Duration::from_secs(30)).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(sim.builds_created(broken), 1);
}

/// The value of an unlabelled gauge in an OpenMetrics text.
fn gauge(metrics: &str, name: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gauge {name} in the metrics"))
}
