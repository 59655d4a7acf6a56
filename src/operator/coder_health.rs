//! One health signal per Coder endpoint (base URL), so that recovery follows Coder rather than
//! each request's own backoff.
//!
//! - A request whose Coder call fails as unavailable (5xx, 429, timeout, reset) marks its
//!   endpoint down (with the cause) and waits on the signal instead of retrying on its own: its
//!   reconcile ends with a requeue no later than its deadline, and while the endpoint is down a
//!   reconcile of a waiting request makes no Coder call ([`CoderHealth::hold`]).
//! - While an endpoint is down, one probe ([`Probe`], `GET /api/v2/buildinfo`: unauthenticated
//!   and static in coderd) runs on [`ProbeSchedule`], and any call Coder answers counts as the
//!   endpoint being back.
//! - Each new request still makes its one first attempt while the endpoint is down, but the
//!   first attempts go one at a time, at most one per [`ProbeSchedule::turn`]: a request that
//!   arrives while another's attempt is recent waits for its turn (oldest first). So requests
//!   that arrive in a burst during an outage keep looking at Coder through the outage, and its
//!   return is seen within a turn rather than a probe period, with no more calls than one per
//!   request plus the probes.
//! - When Coder answers again, every waiting request is triggered at once (`reconcile_on`),
//!   paced only by the client's rate budget and the start slots.
//! - A request that fails again right after it was released, while Coder answers, has a broken
//!   path of its own (one workspace's route failing): it retries on its own backoff and no
//!   longer marks the endpoint down, so it cannot keep the others waiting or loop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kube::runtime::reflector::ObjectRef;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api::crd::WorkspaceStartRequest;
use crate::coder::CoderClient;
use crate::operator::coder_failure::{self, CallOutcome};
use crate::operator::metrics::{Metrics, ProbeLabels};
use crate::operator::triggers::Triggers;

type Obj = ObjectRef<WorkspaceStartRequest>;

/// Default time from an endpoint going down to its first probe.
pub const FIRST_PROBE: Duration = Duration::from_millis(2500);
/// Default time between later probes: at most one probe per 5 s while an endpoint stays down.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Default time between the first attempts of requests while an endpoint is down.
pub const TURN: Duration = Duration::from_secs(1);

/// When a down endpoint is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSchedule {
    /// From going down to the first probe.
    pub first: Duration,
    /// Between later probes.
    pub every: Duration,
    /// Between the first attempts of new requests while the endpoint is down.
    pub turn: Duration,
}

impl Default for ProbeSchedule {
    fn default() -> Self {
        ProbeSchedule {
            first: FIRST_PROBE,
            every: PROBE_EVERY,
            turn: TURN,
        }
    }
}

/// One look at a down endpoint: `Answered` when Coder answered at all, `Unavailable` with the
/// cause otherwise.
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, CallOutcome> + Send + Sync>;

/// The probe of a Coder deployment: `GET /api/v2/buildinfo` through this client's connection,
/// without its token (coderd serves it without authentication, from memory, so it answers
/// whenever Coder's API does, and no tenant's token goes out for a health check).
pub fn buildinfo_probe(client: CoderClient) -> Probe {
    Arc::new(move || {
        let client = client.clone();
        Box::pin(async move { coder_failure::call_outcome(&client.build_info().await) })
    })
}

/// How a request whose Coder call was unavailable waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// On its endpoint's signal: it is triggered when Coder answers again.
    Signal,
    /// On its own per-object backoff (its path fails while Coder answers).
    Backoff,
}

/// Where a request stands with its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Standing {
    /// Arrived while the endpoint is down and has not had its attempt: waits for its turn.
    Untried,
    /// Its turn came (or it arrived when none was recent): its next pass calls Coder.
    Trying,
    /// Made its attempt while the endpoint is down: waits for it, with its own last error.
    Waiting { cause: String },
    /// Was released when Coder answered again; has not succeeded since.
    Released,
    /// Failed again while Coder answered: retries on its own backoff.
    OnItsOwn,
}

#[derive(Debug)]
struct Record {
    endpoint: String,
    standing: Standing,
}

/// A down endpoint.
struct Down {
    /// Tells this outage's probe task from an earlier one's.
    id: u64,
    since: Instant,
    /// The last general cause (without Coder's text): what requests that did not get it see.
    cause: String,
    waiters: HashSet<Obj>,
    /// Untried requests, oldest first (some may have gone since: skipped when their turn comes).
    turns: VecDeque<Obj>,
    /// When the next first attempt may go.
    next_turn: tokio::time::Instant,
    probe: Probe,
}

#[derive(Default)]
struct State {
    down: HashMap<String, Down>,
    requests: HashMap<Obj, Record>,
    /// When each endpoint last answered a call (entries older than [`ANSWER_KEPT`] may go).
    answers: HashMap<String, tokio::time::Instant>,
    next_id: u64,
}

/// How long the time of an endpoint's last answer is kept: longer than any Coder call lasts.
const ANSWER_KEPT: Duration = Duration::from_secs(600);
/// Beyond this many endpoints, old answer times are dropped.
const ANSWERS_MAX: usize = 256;

impl State {
    /// `endpoint` answered a call now.
    fn note_answer(&mut self, endpoint: &str) {
        let now = tokio::time::Instant::now();
        if let Some(at) = self.answers.get_mut(endpoint) {
            *at = now;
            return;
        }
        if self.answers.len() >= ANSWERS_MAX {
            self.answers
                .retain(|_, at| now.duration_since(*at) < ANSWER_KEPT);
        }
        if self.answers.len() < ANSWERS_MAX {
            self.answers.insert(endpoint.to_owned(), now);
        }
    }

    /// Whether `endpoint` answered a call after `started`.
    fn answered_since(&self, endpoint: &str, started: tokio::time::Instant) -> bool {
        self.answers.get(endpoint).is_some_and(|at| *at > started)
    }
}

/// The health signals of every Coder endpoint this process calls (see the module
/// documentation).
pub struct CoderHealth {
    state: Mutex<State>,
    wake: Triggers,
    schedule: ProbeSchedule,
    metrics: Arc<Metrics>,
    /// Counts the times an endpoint that was down answered again ([`CoderHealth::recoveries`]).
    recoveries: tokio::sync::watch::Sender<u64>,
    me: Weak<CoderHealth>,
}

impl CoderHealth {
    /// No endpoint down yet; down endpoints are probed on `schedule`.
    pub fn new(metrics: Arc<Metrics>, schedule: ProbeSchedule) -> Arc<CoderHealth> {
        Arc::new_cyclic(|me| CoderHealth {
            state: Mutex::new(State::default()),
            wake: Triggers::default(),
            schedule,
            metrics,
            recoveries: tokio::sync::watch::channel(0).0,
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Triggers for the controller (`reconcile_on`): requests released when Coder answers again.
    pub fn subscribe(&self) -> UnboundedReceiverStream<Obj> {
        self.wake.subscribe()
    }

    /// Before a pass: `Some(cause)` when `obj` must not call Coder now, because `endpoint` is
    /// down and `obj` already had its attempt or waits for its turn (it waits, showing `cause`:
    /// its own last error, or the endpoint's). `None`: call Coder (the endpoint answers, or
    /// this is the request's first attempt).
    pub fn hold(&self, endpoint: &str, obj: &Obj) -> Option<String> {
        let mut st = self.lock();
        let State { down, requests, .. } = &mut *st;
        let d = down.get_mut(endpoint)?;
        let standing = requests
            .get(obj)
            .filter(|r| r.endpoint == endpoint)
            .map(|r| r.standing.clone());
        let (standing, held) = match standing {
            Some(Standing::Trying) => (Standing::Trying, None),
            Some(Standing::Untried) => (Standing::Untried, Some(d.cause.clone())),
            Some(Standing::Waiting { cause }) => (
                Standing::Waiting {
                    cause: cause.clone(),
                },
                Some(cause),
            ),
            // Released or on its own, and the endpoint went down again: wait with the others.
            Some(Standing::Released | Standing::OnItsOwn) => (
                Standing::Waiting {
                    cause: d.cause.clone(),
                },
                Some(d.cause.clone()),
            ),
            None => d.arrival(obj, self.schedule.turn),
        };
        requests.insert(obj.clone(), record(endpoint, standing));
        d.waiters.insert(obj.clone());
        self.count_waiting_locked(&st);
        held
    }

    /// Reports how a Coder call of `obj` on `endpoint`, `started` then, went: an answer
    /// releases the endpoint's waiters; an outage marks it down, unless `obj`'s own path is
    /// what fails or Coder answered another call since this one started (a call that hung
    /// through the end of an outage says nothing of Coder now). `probe` makes the probe used
    /// while the endpoint is down.
    pub fn report(
        &self,
        endpoint: &str,
        obj: &Obj,
        started: tokio::time::Instant,
        outcome: &CallOutcome,
        probe: impl FnOnce() -> Probe,
    ) {
        match outcome {
            CallOutcome::Answered => self.answered(endpoint),
            CallOutcome::Unavailable { cause, general } => {
                self.unavailable(endpoint, obj, started, (cause, general), probe);
            }
            CallOutcome::NotSent => {}
        }
    }

    /// Changes each time an endpoint that was down answers again, for work that waits on its
    /// own backoff meanwhile (the workspace watch streams) to try again at once.
    pub fn recoveries(&self) -> tokio::sync::watch::Receiver<u64> {
        self.recoveries.subscribe()
    }

    /// Coder answered a call on `endpoint`: if it was down, it is back, and every request
    /// waiting on it is released at once.
    pub fn answered(&self, endpoint: &str) {
        let mut st = self.lock();
        st.note_answer(endpoint);
        let Some(d) = st.down.remove(endpoint) else {
            return;
        };
        for o in &d.waiters {
            if let Some(rec) = st.requests.get_mut(o).filter(|r| r.endpoint == endpoint) {
                rec.standing = Standing::Released;
            }
        }
        drop(st);
        let released: Vec<Obj> = d.waiters.into_iter().collect();
        tracing::info!(
            endpoint,
            down_for_ms = u64::try_from(d.since.elapsed().as_millis()).unwrap_or(u64::MAX),
            released = released.len(),
            "Coder answers again; releasing the requests waiting for it"
        );
        self.wake.send(&released);
        self.recoveries.send_modify(|n| *n = n.wrapping_add(1));
        self.count_waiting();
    }

    /// `obj`'s call on `endpoint` failed as unavailable with `cause` (`general` for others).
    fn unavailable(
        &self,
        endpoint: &str,
        obj: &Obj,
        started: tokio::time::Instant,
        (cause, general): (&str, &str),
        probe: impl FnOnce() -> Probe,
    ) {
        let mut st = self.lock();
        let st = &mut *st;
        let standing = st
            .requests
            .get(obj)
            .filter(|r| r.endpoint == endpoint)
            .map(|r| r.standing.clone());
        let waiting = Standing::Waiting {
            cause: cause.to_owned(),
        };
        // A request whose connection moved to another endpoint no longer waits on the old one.
        if let Some(old) = st.requests.get(obj).filter(|r| r.endpoint != endpoint)
            && let Some(d) = st.down.get_mut(&old.endpoint)
        {
            d.waiters.remove(obj);
        }
        if let Some(d) = st.down.get_mut(endpoint) {
            d.waiters.insert(obj.clone());
            st.requests.insert(obj.clone(), record(endpoint, waiting));
        } else if matches!(standing, Some(Standing::Released | Standing::OnItsOwn))
            || st.answered_since(endpoint, started)
        {
            // Coder answered since this request last failed, or since this call started: its
            // own path fails, or the call outlived an outage that is over.
            st.requests
                .insert(obj.clone(), record(endpoint, Standing::OnItsOwn));
        } else {
            st.next_id = st.next_id.wrapping_add(1);
            let id = st.next_id;
            tracing::warn!(endpoint, %cause, "Coder is unavailable; requests wait for it to answer again (probing)");
            st.down.insert(
                endpoint.to_owned(),
                Down {
                    id,
                    since: Instant::now(),
                    cause: general.to_owned(),
                    waiters: HashSet::from([obj.clone()]),
                    turns: VecDeque::new(),
                    next_turn: tokio::time::Instant::now() + self.schedule.turn,
                    probe: probe(),
                },
            );
            st.requests.insert(obj.clone(), record(endpoint, waiting));
            self.spawn_probe(endpoint.to_owned(), id);
        }
        self.count_waiting_locked(st);
    }

    /// How `obj`, whose pass ended with Coder unavailable, waits.
    pub fn wait_of(&self, obj: &Obj) -> Wait {
        match self.lock().requests.get(obj).map(|r| &r.standing) {
            Some(Standing::Waiting { .. } | Standing::Untried | Standing::Trying) => Wait::Signal,
            _ => Wait::Backoff,
        }
    }

    /// Forgets `obj` (its pass got past Coder, it finished, or it was deleted).
    pub fn forget(&self, obj: &Obj) {
        let mut st = self.lock();
        let Some(rec) = st.requests.remove(obj) else {
            return;
        };
        if let Some(d) = st.down.get_mut(&rec.endpoint) {
            d.waiters.remove(obj);
        }
        self.count_waiting_locked(&st);
    }

    /// Endpoints down now.
    pub fn endpoints_down(&self) -> usize {
        self.lock().down.len()
    }

    fn count_waiting(&self) {
        let st = self.lock();
        self.count_waiting_locked(&st);
    }

    fn count_waiting_locked(&self, st: &State) {
        let waiting: usize = st.down.values().map(|d| d.waiters.len()).sum();
        self.metrics
            .coder_endpoints_down
            .set(i64::try_from(st.down.len()).unwrap_or(i64::MAX));
        self.metrics
            .requests_waiting_on_coder
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// Probes `endpoint` on the schedule while outage `id` lasts and requests wait on it.
    fn spawn_probe(&self, endpoint: String, id: u64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let health = self.me.clone();
        let schedule = self.schedule;
        rt.spawn(async move {
            let start = tokio::time::Instant::now();
            let (mut next_probe, mut next_turn) = (start + schedule.first, start + schedule.turn);
            loop {
                tokio::time::sleep_until(next_probe.min(next_turn)).await;
                let Some(h) = health.upgrade() else { return };
                let now = tokio::time::Instant::now();
                if now >= next_turn {
                    if !h.give_turn(&endpoint, id, next_turn) {
                        return;
                    }
                    next_turn += schedule.turn;
                }
                if now >= next_probe {
                    next_probe += schedule.every;
                    let Some(probe) = h.probe_due(&endpoint, id) else {
                        return;
                    };
                    h.run_probe(&endpoint, id, &probe).await;
                }
            }
        });
    }

    /// Runs one probe of outage `id` of `endpoint` and takes what it says.
    async fn run_probe(&self, endpoint: &str, id: u64, probe: &Probe) {
        let outcome = probe().await;
        let result = match &outcome {
            CallOutcome::Unavailable { .. } => "unavailable",
            _ => "answered",
        };
        self.metrics
            .coder_probes
            .get_or_create(&ProbeLabels { result })
            .inc();
        match outcome {
            CallOutcome::Unavailable { general, .. } => self.still_down(endpoint, id, general),
            _ => self.answered(endpoint),
        }
    }

    /// At the turn due `at`, lets the oldest untried request of outage `id` of `endpoint` make
    /// its first attempt, if none went within the last turn. `false` when the outage is over.
    fn give_turn(&self, endpoint: &str, id: u64, at: tokio::time::Instant) -> bool {
        let mut st = self.lock();
        let State { down, requests, .. } = &mut *st;
        let Some(d) = down.get_mut(endpoint).filter(|d| d.id == id) else {
            return false;
        };
        if at < d.next_turn {
            return true;
        }
        while let Some(o) = d.turns.pop_front() {
            let Some(rec) = requests
                .get_mut(&o)
                .filter(|r| r.endpoint == endpoint && r.standing == Standing::Untried)
            else {
                continue;
            };
            rec.standing = Standing::Trying;
            d.next_turn = at + self.schedule.turn;
            drop(st);
            self.wake.send(&[o]);
            return true;
        }
        true
    }

    /// The probe to run for outage `id` of `endpoint`, or `None` when it is over. An outage no
    /// request waits on any more ends here (unknown again: the next request's attempt tells).
    fn probe_due(&self, endpoint: &str, id: u64) -> Option<Probe> {
        let mut st = self.lock();
        let d = st.down.get(endpoint).filter(|d| d.id == id)?;
        if d.waiters.is_empty() {
            st.down.remove(endpoint);
            tracing::info!(
                endpoint,
                "no request waits for Coder any more; stopped probing"
            );
            self.count_waiting_locked(&st);
            return None;
        }
        Some(Arc::clone(&d.probe))
    }

    /// The probe of outage `id` found `endpoint` still unavailable.
    fn still_down(&self, endpoint: &str, id: u64, cause: String) {
        if let Some(d) = self.lock().down.get_mut(endpoint).filter(|d| d.id == id) {
            tracing::debug!(endpoint, %cause, "Coder probe: still unavailable");
            d.cause = cause;
        }
    }
}

impl Down {
    /// A request that has no standing with this endpoint arrives while it is down: it makes
    /// its first attempt now when no turn is waiting and none went within the last `turn`;
    /// otherwise it waits for its turn, showing the endpoint's cause.
    fn arrival(&mut self, obj: &Obj, turn: Duration) -> (Standing, Option<String>) {
        let now = tokio::time::Instant::now();
        if self.turns.is_empty() && now >= self.next_turn {
            self.next_turn = now + turn;
            return (Standing::Trying, None);
        }
        self.turns.push_back(obj.clone());
        (Standing::Untried, Some(self.cause.clone()))
    }
}

fn record(endpoint: &str, standing: Standing) -> Record {
    Record {
        endpoint: endpoint.to_owned(),
        standing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const EP: &str = "http://coder.test";
    const CAUSE: &str = "HTTP 503 from /api/v2/workspaces/{id}";

    fn now() -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    fn unavailable(cause: &str) -> CallOutcome {
        CallOutcome::Unavailable {
            cause: cause.into(),
            general: cause.into(),
        }
    }

    fn obj(name: &str) -> Obj {
        ObjectRef::new(name).within("ns")
    }

    /// A probe that counts its calls and answers once `up` is set.
    fn probe(calls: &Arc<AtomicUsize>, up: &Arc<AtomicBool>) -> Probe {
        let (calls, up) = (Arc::clone(calls), Arc::clone(up));
        Arc::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let up = up.load(Ordering::SeqCst);
            Box::pin(async move {
                if up {
                    CallOutcome::Answered
                } else {
                    unavailable("HTTP 503 from /api/v2/buildinfo")
                }
            })
        })
    }

    fn down(h: &CoderHealth, o: &Obj, p: &Probe) {
        h.report(EP, o, now(), &unavailable(CAUSE), || Arc::clone(p));
    }

    #[tokio::test(start_paused = true)]
    async fn down_is_probed_once_on_schedule_and_up_releases_every_waiter() {
        let metrics = Arc::new(Metrics::new());
        let h = CoderHealth::new(Arc::clone(&metrics), ProbeSchedule::default());
        let mut released = h.subscribe();
        let recoveries = h.recoveries();
        let (calls, up) = (Arc::default(), Arc::default());
        let p = probe(&calls, &up);
        let start = tokio::time::Instant::now();
        // Three requests, more than a turn apart, make their first attempt and find Coder down.
        for name in ["a", "b", "c"] {
            assert_eq!(h.hold(EP, &obj(name)), None, "a first attempt calls Coder");
            down(&h, &obj(name), &p);
            assert_eq!(h.wait_of(&obj(name)), Wait::Signal);
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        assert_eq!(h.endpoints_down(), 1);
        assert_eq!(metrics.requests_waiting_on_coder.get(), 3);
        // A reconcile of a waiting request makes no call, and shows its own last error.
        assert_eq!(h.hold(EP, &obj("a")).as_deref(), Some(CAUSE));
        // 20 s of outage: probes at 2.5, 7.5, 12.5 and 17.5 s, one schedule for all three.
        tokio::time::sleep_until(start + Duration::from_secs(20)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // Coder is back: the next probe releases all three at once.
        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        let mut woken: Vec<String> = Vec::new();
        for _ in 0..3 {
            woken.push(released.next().await.expect("released").name);
        }
        woken.sort();
        assert_eq!(woken, ["a", "b", "c"]);
        assert!(
            recoveries.has_changed().unwrap_or(false),
            "streams are told"
        );
        assert_eq!(h.endpoints_down(), 0);
        assert_eq!(metrics.requests_waiting_on_coder.get(), 0);
        assert_eq!(h.hold(EP, &obj("a")), None, "released: call Coder");
        // No more probes once Coder is up.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_during_an_outage_takes_turns_and_sees_coder_back_within_a_turn() {
        let h = CoderHealth::new(Arc::new(Metrics::new()), ProbeSchedule::default());
        let mut woken = h.subscribe();
        let (probes, up) = (Arc::default(), Arc::<AtomicBool>::default());
        let p = probe(&probes, &up);
        // 30 requests arrive at once; the first finds Coder down, the rest wait for turns.
        assert_eq!(h.hold(EP, &obj("r0")), None);
        down(&h, &obj("r0"), &p);
        for i in 1..30 {
            assert_eq!(
                h.hold(EP, &obj(&format!("r{i}"))).as_deref(),
                Some(CAUSE),
                "r{i} waits for its turn, showing the endpoint's cause"
            );
            assert_eq!(h.wait_of(&obj(&format!("r{i}"))), Wait::Signal);
        }
        // Each woken request makes its one attempt; Coder comes back 10.3 s in.
        let start = tokio::time::Instant::now();
        let back = start + Duration::from_millis(10_300);
        let mut attempts: HashMap<String, usize> = HashMap::new();
        let mut turns = Vec::new();
        let mut released = HashSet::new();
        while released.len() < 30 {
            let o = woken.next().await.expect("woken");
            if h.endpoints_down() == 0 {
                released.insert(o.name);
                continue;
            }
            turns.push(start.elapsed());
            assert_eq!(
                h.hold(EP, &o),
                None,
                "{} has its turn: it calls Coder",
                o.name
            );
            *attempts.entry(o.name.clone()).or_default() += 1;
            if tokio::time::Instant::now() >= back {
                h.report(EP, &o, now(), &CallOutcome::Answered, || unreachable!());
            } else {
                down(&h, &o, &p);
                assert_eq!(h.hold(EP, &o).as_deref(), Some(CAUSE), "tried: it waits");
            }
        }
        // Turns a second apart, oldest first; Coder's return seen at the next turn (11 s),
        // before the probe (12.5 s); one attempt per request and the probes of 2.5 and 7.5 s.
        let secs: Vec<u64> = turns.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, (1..=11).collect::<Vec<_>>());
        assert!(attempts.values().all(|n| *n == 1), "{attempts:?}");
        assert_eq!(attempts.len(), 11);
        assert_eq!(probes.load(Ordering::SeqCst), 2);
        assert_eq!(h.endpoints_down(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_for_its_turn_sees_the_outage_but_not_what_coder_told_another() {
        let h = CoderHealth::new(Arc::new(Metrics::new()), ProbeSchedule::default());
        let (calls, up) = (Arc::default(), Arc::default());
        let told_alice = CallOutcome::Unavailable {
            cause: "HTTP 503 from /api/v2/workspaces/{id}: alice's workspace db is locked".into(),
            general: "HTTP 503 from /api/v2/workspaces/{id}".into(),
        };
        h.report(EP, &obj("alice"), now(), &told_alice, || probe(&calls, &up));
        assert_eq!(
            h.hold(EP, &obj("bob")).as_deref(),
            Some("HTTP 503 from /api/v2/workspaces/{id}")
        );
        assert_eq!(
            h.hold(EP, &obj("alice")).as_deref(),
            Some("HTTP 503 from /api/v2/workspaces/{id}: alice's workspace db is locked"),
            "its own error, in full"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_hung_through_the_end_of_an_outage_does_not_mark_coder_down() {
        let h = CoderHealth::new(Arc::new(Metrics::new()), ProbeSchedule::default());
        let (calls, up) = (Arc::default(), Arc::default());
        let hung_since = now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.report(
            EP,
            &obj("fresh"),
            now(),
            &CallOutcome::Answered,
            || unreachable!(),
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The call that started before that answer times out now.
        h.report(EP, &obj("hung"), hung_since, &unavailable(CAUSE), || {
            probe(&calls, &up)
        });
        assert_eq!(h.endpoints_down(), 0);
        assert_eq!(h.wait_of(&obj("hung")), Wait::Backoff, "its own backoff");
        assert_eq!(h.hold(EP, &obj("new")), None);
        // A call that started after the last answer and fails does mark it down.
        h.report(EP, &obj("hung"), now(), &unavailable(CAUSE), || {
            probe(&calls, &up)
        });
        assert_eq!(h.endpoints_down(), 0, "hung is on its own: its path fails");
        h.report(EP, &obj("other"), now(), &unavailable(CAUSE), || {
            probe(&calls, &up)
        });
        assert_eq!(h.endpoints_down(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_requests_answer_releases_the_waiters_before_the_probe() {
        let h = CoderHealth::new(Arc::new(Metrics::new()), ProbeSchedule::default());
        let mut released = h.subscribe();
        let (calls, up) = (Arc::default(), Arc::default());
        down(&h, &obj("a"), &probe(&calls, &up));
        h.report(
            EP,
            &obj("new"),
            now(),
            &CallOutcome::Answered,
            || unreachable!(),
        );
        assert_eq!(released.next().await, Some(obj("a")));
        assert_eq!(h.endpoints_down(), 0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "no probe once Coder answered"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_path_that_fails_while_coder_answers_falls_back_to_its_own_backoff() {
        let h = CoderHealth::new(Arc::new(Metrics::new()), ProbeSchedule::default());
        let mut released = h.subscribe();
        let (calls, up) = (Arc::default(), Arc::new(AtomicBool::new(true)));
        let p = probe(&calls, &up);
        // One workspace's route 503s; the probe finds Coder answering and releases it.
        down(&h, &obj("broken"), &p);
        tokio::time::sleep(FIRST_PROBE).await;
        assert_eq!(released.next().await, Some(obj("broken")));
        // Its next attempt fails again while Coder answers: its own backoff, Coder stays up.
        down(&h, &obj("broken"), &p);
        assert_eq!(h.wait_of(&obj("broken")), Wait::Backoff);
        assert_eq!(h.endpoints_down(), 0);
        down(&h, &obj("broken"), &p);
        assert_eq!(h.wait_of(&obj("broken")), Wait::Backoff);
        assert_eq!(h.hold(EP, &obj("broken")), None);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one probe in all");
        // A real outage (another request's first failure) holds it with the others.
        down(&h, &obj("other"), &p);
        assert_eq!(h.hold(EP, &obj("broken")).as_deref(), Some(CAUSE));
        assert_eq!(h.wait_of(&obj("broken")), Wait::Signal);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_moved_to_another_endpoint_waits_only_on_that_one() {
        let metrics = Arc::new(Metrics::new());
        let h = CoderHealth::new(Arc::clone(&metrics), ProbeSchedule::default());
        let (calls, up) = (Arc::default(), Arc::default());
        let p = probe(&calls, &up);
        down(&h, &obj("a"), &p);
        h.report(
            "http://other.test",
            &obj("a"),
            now(),
            &unavailable(CAUSE),
            || Arc::clone(&p),
        );
        assert_eq!(h.endpoints_down(), 2);
        assert_eq!(metrics.requests_waiting_on_coder.get(), 1);
        // The first endpoint has no waiter left: its probe stops there.
        tokio::time::sleep(FIRST_PROBE + Duration::from_millis(1)).await;
        assert_eq!(h.endpoints_down(), 1);
        assert_eq!(
            h.hold("http://other.test", &obj("a")).as_deref(),
            Some(CAUSE)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn probing_stops_when_no_request_waits_any_more() {
        let h = CoderHealth::new(Arc::new(Metrics::new()), ProbeSchedule::default());
        let (calls, up) = (Arc::default(), Arc::default());
        down(&h, &obj("a"), &probe(&calls, &up));
        h.forget(&obj("a"));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(h.endpoints_down(), 0);
    }
}
