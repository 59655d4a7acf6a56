//! Property test for the reconcile pass and its pure state machine: random Coder histories (job
//! status × transition × agent lifecycle × unavailability × lost POST results) are fed through
//! the controller's own pass (`operator::reconcile::pass`, with a simulated Coder behind its
//! ports; the status carried forward as the controller writes it), and three promises are
//! checked:
//!
//! (a) never two start builds created by the operator for one request, unless the first POST
//!     provably did not land;
//! (b) the request ends Ready or Failed no later than its deadline from `spec.timeouts` plus one
//!     step (every pass at or after the deadline is terminal);
//! (c) once terminal, the status never changes;
//! (d) a finished request's stage timings add up to its total, none negative or beyond it,
//!     with Coder's build timings (on a clock hours off) or without them (an older Coder's
//!     404), read at most once.
//!
//! A second property feeds `decide`, the duration parser and the TTL arithmetic any spec the
//! CRD schema admits, any status and any Coder answer, at any time, and asserts none panics.

use std::cell::RefCell;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;
use uuid::Uuid;
use workspace_start_operator::api::crd::{
    Outcome, Phase, Timeouts, WorkspaceSelector, WorkspaceStartRequestSpec,
    WorkspaceStartRequestStatus,
};
use workspace_start_operator::api::duration::parse_duration;
use workspace_start_operator::coder::logs::WorkspaceBuildTimings;
use workspace_start_operator::coder::types::{
    Agent, CreateWorkspaceBuildRequest, JobStatus, ProvisionerJob, Resource, Transition, Workspace,
    WorkspaceBuild,
};
use workspace_start_operator::operator::decide::{
    Action, Input, Observation, OwnerState, build_info, decide, ttl_expiry,
};
use workspace_start_operator::operator::reconcile::{
    self, CoderPort, PassEnd, PostOutcome, Recorded, Request, StartRecord,
};

const WS: u128 = 0xe3f4_0000_0000_4000_8000_0000_0000_0001;
const OWNER: u128 = 0x51aa_0000_0000_4000_8000_0000_0000_0002;
/// The longest step between two reconciles (also the longest simulated backoff).
const MAX_STEP_MS: u64 = 5_000;
const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome3 {
    Succeeded,
    Failed,
    Canceled,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Final {
    Ready,
    StartError,
    StartTimeout,
}

/// How one build behaves over time (all durations in ms).
#[derive(Debug, Clone)]
struct Script {
    pending: i64,
    running: i64,
    outcome: Outcome3,
    /// `None`: the build has no agent.
    agent: Option<(i64, i64, Final)>,
}

#[derive(Debug, Clone)]
struct SimBuild {
    number: i64,
    transition: Transition,
    created: i64,
    script: Script,
}

impl SimBuild {
    fn job(&self, now: i64) -> JobStatus {
        let t = now - self.created;
        if t < self.script.pending {
            JobStatus::Pending
        } else if t < self.script.pending + self.script.running {
            if self.script.outcome == Outcome3::Canceled
                && t >= self.script.pending + self.script.running / 2
            {
                JobStatus::Canceling
            } else {
                JobStatus::Running
            }
        } else {
            match self.script.outcome {
                Outcome3::Succeeded => JobStatus::Succeeded,
                Outcome3::Failed => JobStatus::Failed,
                Outcome3::Canceled => JobStatus::Canceled,
            }
        }
    }

    fn to_coder(&self, now: i64) -> WorkspaceBuild {
        let job = self.job(now);
        let mut agents = Vec::new();
        if self.transition == Transition::Start
            && job == JobStatus::Succeeded
            && let Some((connect, ready, fin)) = self.script.agent
        {
            let since = now - (self.created + self.script.pending + self.script.running);
            let (status, lifecycle) = if since < connect {
                ("connecting", "created")
            } else if since < connect + ready {
                ("connected", "starting")
            } else {
                (
                    "connected",
                    match fin {
                        Final::Ready => "ready",
                        Final::StartError => "start_error",
                        Final::StartTimeout => "start_timeout",
                    },
                )
            };
            agents.push(Agent {
                id: Uuid::from_u128(0xa000 + self.number as u128),
                name: "main".into(),
                parent_id: None,
                status: status.into(),
                lifecycle_state: lifecycle.into(),
                ready_at: None,
                first_connected_at: None,
            });
        }
        WorkspaceBuild {
            id: Uuid::from_u128(0xb000 + self.number as u128),
            build_number: self.number,
            transition: self.transition,
            status: String::new(),
            template_version_id: None,
            created_at: None,
            job: ProvisionerJob {
                id: Uuid::from_u128(0xf000 + self.number as u128),
                status: job,
                error_code: (self.script.outcome == Outcome3::Failed).then(|| "SOME_CODE".into()),
                started_at: None,
                completed_at: None,
            },
            resources: vec![Resource {
                agents,
                ..Default::default()
            }],
        }
    }
}

impl SimBuild {
    /// Coder's timings of this build as served at `now`, on a clock `skew` ms off: Terraform's
    /// four stages over the running job once it ended, and the agent's connection and startup
    /// script once they happened.
    fn timings(&self, now: i64, skew: i64, t0: Timestamp) -> WorkspaceBuildTimings {
        let at = |ms: i64| ts(t0, ms + skew).to_string();
        let started = self.created + self.script.pending;
        let ended = started + self.script.running;
        let mut provisioner = Vec::new();
        if now >= ended {
            let quarter = self.script.running / 4;
            for (i, stage) in ["init", "plan", "graph", "apply"].iter().enumerate() {
                let from = started + quarter * i as i64;
                let to = if i == 3 { ended } else { from + quarter };
                provisioner.push(serde_json::json!({
                    "job_id": Uuid::from_u128(0xf000 + self.number as u128),
                    "started_at": at(from), "ended_at": at(to), "stage": stage,
                    "source": "coder", "action": "terraform",
                    "resource": format!("coder_stage_{stage}"),
                }));
            }
        }
        let agent = Uuid::from_u128(0xa000 + self.number as u128).to_string();
        let (mut scripts, mut connections) = (Vec::new(), Vec::new());
        if let Some((connect, ready, _)) = self.script.agent.filter(|_| now >= ended) {
            let connected = ended + connect;
            let never = "0001-01-01T00:00:00Z".to_owned();
            connections.push(serde_json::json!({
                "started_at": at(ended),
                "ended_at": if now >= connected { at(connected) } else { never },
                "stage": "connect", "workspace_agent_id": agent, "workspace_agent_name": "main",
            }));
            if now >= connected + ready {
                scripts.push(serde_json::json!({
                    "started_at": at(connected), "ended_at": at(connected + ready),
                    "exit_code": 0, "stage": "start", "status": "ok",
                    "display_name": "Startup Script", "workspace_agent_id": agent,
                    "workspace_agent_name": "main",
                }));
            }
        }
        serde_json::from_value(serde_json::json!({
            "provisioner_timings": provisioner,
            "agent_script_timings": scripts,
            "agent_connection_timings": connections,
        }))
        .expect("timings")
    }
}

/// What happens to one start build POST.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Post {
    /// 201: the controller records the build.
    Landed,
    /// The build was created but the answer was lost (commit-then-fail 500, timeout, crash).
    LostAfterCommit,
    /// The request never reached Coder (connection refused, reset before commit, crash).
    LostBeforeCommit,
    /// The build was created, the answer lost, and then someone else stopped the workspace
    /// before the operator looked again.
    LostThenStopped,
    /// 409: someone else's start build became active between our read and our POST.
    Conflict,
}

#[derive(Debug, Clone)]
struct Step {
    dt_ms: u64,
    unavailable: bool,
    post: Post,
}

#[derive(Debug, Clone)]
enum Initial {
    Stopped,
    Running(Script),
    FailedStart,
    /// A stop build that started this long ago.
    ActiveStop(Script, i64),
    /// Someone else's start build that started this long ago.
    ActiveStart(Script, i64),
}

#[derive(Debug, Clone)]
struct Case {
    build_timeout_s: u64,
    agent_timeout_s: u64,
    /// Coder's build timings endpoint: its clock's offset from the cluster's (ms), or `None`
    /// for an older Coder that answers 404.
    coder_timings: Option<i64>,
    initial: Initial,
    scripts: Vec<Script>,
    steps: Vec<Step>,
}

fn script() -> impl Strategy<Value = Script> {
    let outcome = prop_oneof![
        6 => Just(Outcome3::Succeeded),
        1 => Just(Outcome3::Failed),
        1 => Just(Outcome3::Canceled),
    ];
    let fin = prop_oneof![
        6 => Just(Final::Ready),
        1 => Just(Final::StartError),
        1 => Just(Final::StartTimeout),
    ];
    let agent = prop_oneof![
        1 => Just(None),
        8 => (0i64..20_000, 0i64..30_000, fin).prop_map(Some),
        // An agent that never connects (within any timeout we use).
        1 => Just(Some((10_000_000, 0, Final::Ready))),
    ];
    (0i64..20_000, 0i64..60_000, outcome, agent).prop_map(|(pending, running, outcome, agent)| {
        Script {
            pending,
            running,
            outcome,
            agent,
        }
    })
}

fn post() -> impl Strategy<Value = Post> {
    prop_oneof![
        5 => Just(Post::Landed),
        2 => Just(Post::LostAfterCommit),
        2 => Just(Post::LostBeforeCommit),
        1 => Just(Post::LostThenStopped),
        1 => Just(Post::Conflict),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (100u64..MAX_STEP_MS, prop::bool::weighted(0.2), post()).prop_map(
        |(dt_ms, unavailable, post)| Step {
            dt_ms,
            unavailable,
            post,
        },
    )
}

fn initial() -> impl Strategy<Value = Initial> {
    prop_oneof![
        3 => Just(Initial::Stopped),
        1 => script().prop_map(Initial::Running),
        1 => Just(Initial::FailedStart),
        1 => (script(), 0i64..30_000).prop_map(|(s, a)| Initial::ActiveStop(s, a)),
        1 => (script(), 0i64..30_000).prop_map(|(s, a)| Initial::ActiveStart(s, a)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(30u64), Just(60), Just(120), Just(600)],
        prop_oneof![Just(30u64), Just(60), Just(120), Just(600)],
        initial(),
        prop::collection::vec(script(), 4),
        prop::collection::vec(step(), 1..120),
        prop_oneof![1 => Just(None), 3 => (-7_200_000i64..7_200_000).prop_map(Some)],
    )
        .prop_map(|(b, a, initial, scripts, steps, coder_timings)| Case {
            build_timeout_s: b,
            agent_timeout_s: a,
            coder_timings,
            initial,
            scripts,
            steps,
        })
}

fn done(ms: i64) -> Script {
    Script {
        pending: 0,
        running: ms,
        outcome: Outcome3::Succeeded,
        agent: Some((0, 0, Final::Ready)),
    }
}

struct World {
    builds: Vec<SimBuild>,
    scripts: std::vec::IntoIter<Script>,
    /// Builds created by the operator's POSTs (landed, whether or not it learnt the result).
    operator_builds: usize,
}

impl World {
    fn new(initial: &Initial, scripts: Vec<Script>) -> World {
        let past = -3_600_000;
        let first = match initial {
            // The running workspace's agent may still be starting, or have failed.
            Initial::Running(s) => Script {
                outcome: Outcome3::Succeeded,
                ..s.clone()
            },
            _ => done(1000),
        };
        let created = match initial {
            Initial::Running(s) => -(s.pending + s.running + 5_000),
            _ => past,
        };
        let mut builds = vec![SimBuild {
            number: 1,
            transition: Transition::Start,
            created,
            script: first,
        }];
        let mut push = |transition, created, script| {
            let number = builds.len() as i64 + 1;
            builds.push(SimBuild {
                number,
                transition,
                created,
                script,
            });
        };
        match initial {
            Initial::Stopped => push(Transition::Stop, past, done(1000)),
            Initial::Running(_) => {}
            Initial::FailedStart => push(
                Transition::Start,
                past,
                Script {
                    outcome: Outcome3::Failed,
                    ..done(1000)
                },
            ),
            Initial::ActiveStop(s, age) => push(
                Transition::Stop,
                -age,
                Script {
                    outcome: Outcome3::Succeeded,
                    ..s.clone()
                },
            ),
            Initial::ActiveStart(s, age) => push(Transition::Start, -age, s.clone()),
        }
        World {
            builds,
            scripts: scripts.into_iter(),
            operator_builds: 0,
        }
    }

    fn latest(&self) -> &SimBuild {
        self.builds.last().expect("history")
    }

    fn active(&self, now: i64) -> bool {
        self.latest().job(now).is_active()
    }

    fn create(&mut self, transition: Transition, now: i64) -> WorkspaceBuild {
        let script = self.scripts.next().unwrap_or_else(|| done(1000));
        let b = SimBuild {
            number: self.latest().number + 1,
            transition,
            created: now,
            script,
        };
        let wb = b.to_coder(now);
        self.builds.push(b);
        wb
    }

    fn observe(&self, now: i64) -> Observation {
        observed(self.latest().to_coder(now), false, OwnerState::Unchecked)
    }
}

/// Coder's answer for the test workspace with `latest_build` (dormant or not), and the chat
/// owner as checked so far.
fn observed(latest_build: WorkspaceBuild, dormant: bool, owner: OwnerState) -> Observation {
    Observation::Workspace {
        chat_owner: None,
        owner,
        workspace: Box::new(Workspace {
            id: Uuid::from_u128(WS),
            name: "dev".into(),
            owner_id: Uuid::from_u128(OWNER),
            owner_name: "alice".into(),
            template_active_version_id: None,
            template_require_active_version: dormant,
            dormant_at: dormant.then_some(Timestamp::UNIX_EPOCH),
            latest_build,
        }),
    }
}

/// A build numbered `number`, its job completed at `completed`, with `agents`.
fn any_build(
    number: i64,
    transition: Transition,
    job: JobStatus,
    completed: Option<Timestamp>,
    agents: Vec<Agent>,
) -> WorkspaceBuild {
    WorkspaceBuild {
        id: Uuid::from_u128(number as u128),
        build_number: number,
        transition,
        status: String::new(),
        template_version_id: None,
        created_at: completed,
        job: ProvisionerJob {
            id: Uuid::from_u128(0xf1),
            status: job,
            error_code: None,
            started_at: None,
            completed_at: completed,
        },
        resources: vec![Resource {
            agents,
            ..Default::default()
        }],
    }
}

fn ts(t0: Timestamp, ms: i64) -> Timestamp {
    t0.checked_add(SignedDuration::from_millis(ms))
        .expect("time")
}

/// Totals over all generated cases, printed once.
static STATS: std::sync::Mutex<[u64; 7]> = std::sync::Mutex::new([0; 7]);

/// The simulated Coder a pass talks to during one step: the world's history, this step's
/// availability and the fate of a POST. Broken promises are collected in `violations`.
struct SimCoder<'a> {
    world: &'a mut World,
    t0: Timestamp,
    now: i64,
    step: &'a Step,
    /// The status as last recorded (the start record before a POST).
    recorded: &'a RefCell<WorkspaceStartRequestStatus>,
    first_landed_post: &'a mut Option<i64>,
    posts: u64,
    lost_posts: u64,
    /// Reads of Coder's build timings in this pass.
    timings_reads: u64,
    /// The case's timings endpoint ([`Case::coder_timings`]).
    coder_timings: Option<i64>,
    violations: Vec<String>,
}

impl CoderPort for SimCoder<'_> {
    async fn observe(
        &mut self,
        _status: &WorkspaceStartRequestStatus,
        _fresh: bool,
    ) -> Observation {
        if self.step.unavailable {
            Observation::CoderUnavailable {
                cause: "HTTP 503 from /api/v2/workspaces/{id}".into(),
            }
        } else {
            self.world.observe(self.now)
        }
    }

    async fn owner_state(&mut self, _owner: Uuid) -> Result<OwnerState, Observation> {
        self.violations
            .push("a workspace request needs no chat owner check".into());
        Ok(OwnerState::Active)
    }

    async fn start_build(
        &mut self,
        _workspace: Uuid,
        _request: &CreateWorkspaceBuildRequest,
    ) -> PostOutcome {
        let now = self.now;
        // The controller writes status (with buildRequestedAt) before the POST.
        if self.recorded.borrow().build_requested_at.is_none() {
            self.violations.push("POST without buildRequestedAt".into());
        }
        if self.world.active(now) {
            self.violations
                .push("start decided while a build is active".into());
        }
        // (a) never a second landed POST.
        if let Some(first) = *self.first_landed_post {
            self.violations.push(format!(
                "second start build POST at {now} ms; the first one landed at {first} ms"
            ));
        }
        self.posts += 1;
        let lost = PostOutcome::Uncertain { retry_after: None };
        match self.step.post {
            Post::Landed => {
                let b = self.world.create(Transition::Start, now);
                self.world.operator_builds += 1;
                *self.first_landed_post = Some(now);
                PostOutcome::Created(b)
            }
            Post::LostAfterCommit => {
                self.world.create(Transition::Start, now);
                self.world.operator_builds += 1;
                *self.first_landed_post = Some(now);
                self.lost_posts += 1;
                lost
            }
            Post::LostBeforeCommit => {
                self.lost_posts += 1;
                lost
            }
            Post::LostThenStopped => {
                self.world.create(Transition::Start, now);
                self.world.operator_builds += 1;
                *self.first_landed_post = Some(now);
                self.lost_posts += 1;
                self.world.create(Transition::Stop, now + 1);
                lost
            }
            Post::Conflict => {
                // Someone else's start build won the race; the pass clears buildRequestedAt
                // and joins it.
                self.world.create(Transition::Start, now);
                PostOutcome::Conflict
            }
        }
    }

    async fn build_timings(&mut self, build: Uuid) -> Option<WorkspaceBuildTimings> {
        self.timings_reads += 1;
        let skew = self.coder_timings?;
        let b = self
            .world
            .builds
            .iter()
            .find(|b| Uuid::from_u128(0xb000 + b.number as u128) == build);
        match b {
            Some(b) => Some(b.timings(self.now, skew, self.t0)),
            None => {
                self.violations
                    .push(format!("timings read for unknown build {build}"));
                None
            }
        }
    }

    fn poll(&self) -> Duration {
        POLL
    }

    fn now(&self) -> Timestamp {
        ts(self.t0, self.now)
    }
}

/// Records the start record as the controller writes it (before the POST).
struct SimRecord<'a>(&'a RefCell<WorkspaceStartRequestStatus>);

impl StartRecord for SimRecord<'_> {
    type Error = std::convert::Infallible;

    async fn record(
        &mut self,
        status: &WorkspaceStartRequestStatus,
    ) -> Result<Recorded, Self::Error> {
        *self.0.borrow_mut() = status.clone();
        Ok(Recorded::Written)
    }
}

fn run(case: &Case) -> Result<(), TestCaseError> {
    let t0 = Timestamp::from_second(1_780_000_000).expect("t0");
    let spec = WorkspaceStartRequestSpec {
        workspace: Some(WorkspaceSelector {
            id: Some(Uuid::from_u128(WS).to_string()),
            ..Default::default()
        }),
        timeouts: Some(Timeouts {
            build: Some(format!("{}s", case.build_timeout_s)),
            agent: Some(format!("{}s", case.agent_timeout_s)),
        }),
        ..Default::default()
    };
    let request = Request {
        spec: &spec,
        generation: Some(1),
    };
    let mut world = World::new(&case.initial, case.scripts.clone());
    let mut status = WorkspaceStartRequestStatus::default();
    let mut now: i64 = 0;
    // Deadline: build timeout, then agent timeout (measured from when the build was seen to
    // succeed, which is before the build deadline plus one step), plus one step.
    let deadline =
        (case.build_timeout_s + case.agent_timeout_s) as i64 * 1000 + 2 * MAX_STEP_MS as i64;
    let mut posts = 0u64;
    let mut lost_posts = 0u64;
    let mut timings_reads = 0u64;
    let mut unavailable = 0u64;
    let mut first_landed_post: Option<i64> = None;
    let mut terminal_at = None;
    // Generated steps first, then a calm tail (Coder available, POSTs land) until terminal.
    let calm = Step {
        dt_ms: MAX_STEP_MS,
        unavailable: false,
        post: Post::Landed,
    };
    for i in 0..10_000usize {
        let step = case.steps.get(i).unwrap_or(&calm);
        if step.unavailable {
            unavailable += 1;
        }
        // One reconcile pass, as the controller runs it.
        let recorded = RefCell::new(status.clone());
        let mut coder = SimCoder {
            world: &mut world,
            t0,
            now,
            step,
            recorded: &recorded,
            first_landed_post: &mut first_landed_post,
            posts: 0,
            lost_posts: 0,
            timings_reads: 0,
            coder_timings: case.coder_timings,
            violations: Vec::new(),
        };
        let end = futures::executor::block_on(reconcile::pass(
            request,
            &status,
            &mut coder,
            &mut SimRecord(&recorded),
        ));
        let SimCoder {
            posts: p,
            lost_posts: l,
            timings_reads: r,
            violations,
            ..
        } = coder;
        posts += p;
        lost_posts += l;
        timings_reads += r;
        prop_assert!(violations.is_empty(), "{}", violations.join("; "));
        let d = match end {
            Ok(PassEnd::Decided(d)) => *d,
            Ok(PassEnd::Uncertain { .. }) => {
                // (b) a pass at or after the deadline ends the request.
                prop_assert!(
                    now < deadline,
                    "not terminal at {} ms (deadline {} ms): a start build POST",
                    now,
                    deadline
                );
                // The start record stays; the next pass re-reads Coder.
                status = recorded.into_inner();
                now += step.dt_ms as i64;
                continue;
            }
            Ok(PassEnd::Moved) => return Err(TestCaseError::fail("no shard moves here")),
            Err(never) => match never {},
        };
        if let Some(at) = terminal_at {
            // (c) terminal is forever.
            prop_assert_eq!(
                &d.status,
                &status,
                "terminal status changed (terminal since {} ms)",
                at
            );
            prop_assert_eq!(&d.action, &Action::Finish);
            if i >= case.steps.len() + 3 {
                break;
            }
            now += step.dt_ms as i64;
            continue;
        }
        // (b) a decide call at or after the deadline ends the request.
        if now >= deadline {
            prop_assert!(
                d.status.phase.is_some_and(Phase::is_terminal),
                "not terminal at {} ms (deadline {} ms): {:?} {:?}",
                now,
                deadline,
                d.status.phase,
                d.status.message
            );
        }
        let mut next_in = step.dt_ms;
        match &d.action {
            Action::CheckOwner { .. } => {
                prop_assert!(false, "a workspace request needs no chat owner check");
            }
            // A start left undone after two 409 rounds: the controller writes the status and
            // tries again with backoff.
            Action::StartBuild { .. } | Action::Retry => status = d.status.clone(),
            // Waiting for Coder: the controller looks again no later than the deadline.
            Action::AwaitCoder { deadline } => {
                next_in = next_in.min(deadline.as_millis().max(100) as u64);
                status = d.status.clone();
            }
            Action::Requeue(r) => {
                prop_assert!(
                    *r <= POLL.max(Duration::from_millis(100)),
                    "requeue {:?} beyond poll",
                    r
                );
                next_in = next_in.min(r.as_millis() as u64);
                status = d.status.clone();
            }
            Action::Finish => {
                prop_assert!(
                    d.status.phase.is_some_and(Phase::is_terminal),
                    "Finish without terminal phase"
                );
                status = d.status.clone();
                terminal_at = Some(now);
            }
        }
        now += next_in as i64;
    }
    let Some(end) = terminal_at else {
        return Err(TestCaseError::fail(format!(
            "never terminal; status {status:?}"
        )));
    };
    prop_assert!(
        end <= deadline,
        "terminal at {} ms, after the deadline {} ms",
        end,
        deadline
    );
    prop_assert!(
        world.operator_builds <= 1,
        "{} operator builds",
        world.operator_builds
    );
    if status.phase == Some(Phase::Ready) {
        let b = world.latest();
        prop_assert_eq!(b.transition, Transition::Start);
    }
    // (d) timings add up, read from Coder at most once.
    prop_assert!(timings_reads <= 1, "{} timings reads", timings_reads);
    let Some(t) = status.timings.clone() else {
        return Err(TestCaseError::fail("a finished request without timings"));
    };
    let stages = t.parts();
    prop_assert!(
        stages
            .iter()
            .flatten()
            .all(|v| (0..=t.total_ms).contains(v)),
        "{:?}",
        t
    );
    prop_assert_eq!(stages.iter().flatten().sum::<i64>(), t.total_ms, "{:?}", t);
    if let Some(p) = &t.provisioner_stages {
        let within = p.parts();
        prop_assert!(within.iter().flatten().all(|v| *v >= 0), "{:?}", t);
        prop_assert!(
            within.iter().flatten().sum::<i64>() <= t.running_ms.unwrap_or(0),
            "{:?}",
            t
        );
    }
    let mut s = STATS.lock().unwrap_or_else(|p| p.into_inner());
    s[0] += 1;
    s[1] += posts;
    s[2] += lost_posts;
    s[3] += unavailable;
    s[4] += u64::from(status.phase == Some(Phase::Ready));
    s[5] += world.operator_builds.saturating_sub(1) as u64;
    s[6] += u64::from(t.provisioner_stages.is_some());
    Ok(())
}

#[test]
fn any_coder_history_ends_once_without_double_builds() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    if let Err(e) = runner.run(&case(), |c| run(&c)) {
        panic!("{e}");
    }
    let s = *STATS.lock().unwrap_or_else(|p| p.into_inner());
    eprintln!(
        "decide properties: {} histories, {} start POSTs ({} with lost result), {} unavailable reads, {} Ready, {} duplicate builds, {} with Coder's Terraform stages",
        s[0], s[1], s[2], s[3], s[4], s[5], s[6]
    );
}

/// A timestamp anywhere in jiff's range (the extremes included).
fn any_time() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        Just(Timestamp::MIN),
        Just(Timestamp::MAX),
        (Timestamp::MIN.as_second()..=Timestamp::MAX.as_second())
            .prop_map(|s| Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)),
        (1_700_000_000i64..1_900_000_000).prop_map(|s| Timestamp::from_second(s).expect("ts")),
    ]
}

/// `spec.timeouts.*` values the CRD schema admits (pattern and length; the 24h maximum is left
/// out on purpose, for objects admitted before it existed), and some it does not.
fn any_timeout() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        proptest::string::string_regex("([0-9]{1,5}(\\.[0-9]{1,9})?(ns|us|ms|s|m|h)){1,5}")
            .expect("regex")
            .prop_filter("maxLength 32", |s| s.len() <= 32)
            .prop_map(Some),
        ".{0,40}".prop_map(Some),
    ]
}

/// Any spec the schema admits, plus TTLs beyond its maximum.
fn any_spec() -> impl Strategy<Value = WorkspaceStartRequestSpec> {
    (
        any::<bool>(),
        any_timeout(),
        any_timeout(),
        prop_oneof![
            Just(None),
            (0..=workspace_start_operator::api::bounds::MAX_TTL_SECONDS).prop_map(Some),
            any::<i64>().prop_map(Some),
        ],
        proptest::option::of("[a-z-]{1,20}"),
        prop::collection::vec(("[a-z]{1,8}", ".{0,16}"), 0..4),
    )
        .prop_map(|(by_chat, build, agent, ttl, agent_name, params)| {
            WorkspaceStartRequestSpec {
                chat_id: by_chat.then(|| Uuid::from_u128(7).to_string()),
                workspace: (!by_chat).then(|| WorkspaceSelector {
                    id: Some(Uuid::from_u128(WS).to_string()),
                    ..Default::default()
                }),
                owner_id: None,
                coder_ref: None,
                parameters: params
                    .into_iter()
                    .map(
                        |(name, value)| workspace_start_operator::api::crd::BuildParameter {
                            name,
                            value,
                        },
                    )
                    .collect(),
                agent_name,
                timeouts: Some(Timeouts { build, agent }),
                ttl_seconds_after_finished: ttl,
            }
        })
}

fn any_job() -> impl Strategy<Value = JobStatus> {
    prop_oneof![
        Just(JobStatus::Pending),
        Just(JobStatus::Running),
        Just(JobStatus::Succeeded),
        Just(JobStatus::Canceling),
        Just(JobStatus::Canceled),
        Just(JobStatus::Failed),
        Just(JobStatus::Unknown),
    ]
}

fn any_transition() -> impl Strategy<Value = Transition> {
    prop_oneof![
        Just(Transition::Start),
        Just(Transition::Stop),
        Just(Transition::Delete)
    ]
}

/// Any workspace Coder could answer with (build numbers across the whole i64 range).
fn any_observation() -> impl Strategy<Value = Observation> {
    let agent = (
        "[a-z-]{0,24}",
        any::<bool>(),
        prop_oneof![
            Just("connecting"),
            Just("connected"),
            Just("timeout"),
            Just("")
        ],
        prop_oneof![
            Just("created"),
            Just("starting"),
            Just("ready"),
            Just("start_error"),
            Just("start_timeout"),
            Just("off"),
        ],
    )
        .prop_map(|(name, sub, status, lifecycle)| Agent {
            id: Uuid::from_u128(0xa1),
            name,
            parent_id: sub.then(|| Uuid::from_u128(0xa0)),
            status: status.into(),
            lifecycle_state: lifecycle.into(),
            ready_at: None,
            first_connected_at: None,
        });
    (
        any::<i64>(),
        any_transition(),
        any_job(),
        prop::collection::vec(agent, 0..4),
        any::<bool>(),
        proptest::option::of(any_time()),
        prop_oneof![
            Just(OwnerState::Unchecked),
            Just(OwnerState::Active),
            Just(OwnerState::Unavailable(
                "HTTP 503 from /api/v2/users/{user}".into()
            )),
            ".{0,40}".prop_map(OwnerState::Inactive),
        ],
    )
        .prop_map(
            |(number, transition, job, agents, dormant, completed, owner)| {
                observed(
                    any_build(number, transition, job, completed, agents),
                    dormant,
                    owner,
                )
            },
        )
}

/// Any status the operator may have written before (times anywhere in range, any build number).
fn any_status() -> impl Strategy<Value = WorkspaceStartRequestStatus> {
    (
        prop_oneof![
            Just(None),
            Just(Some(Phase::Pending)),
            Just(Some(Phase::Starting)),
            Just(Some(Phase::WaitingForAgent)),
        ],
        proptest::option::of(any_time()),
        proptest::option::of(any_time()),
        proptest::option::of((any::<i64>(), any_transition(), any_job())),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(phase, start, succeeded, build, requested, queued)| {
            let mut st = WorkspaceStartRequestStatus {
                phase,
                start_time: start.map(Time),
                build_requested_at: start.filter(|_| requested).map(Time),
                outcome: queued.then_some(Outcome::Queued),
                build: build.map(|(number, transition, job)| {
                    build_info(&any_build(number, transition, job, None, vec![]))
                }),
                ..Default::default()
            };
            if let Some(t) = succeeded {
                workspace_start_operator::api::conditions::set(
                    &mut st.conditions,
                    "BuildSucceeded",
                    "True",
                    workspace_start_operator::api::reason::Reason::BuildSucceeded,
                    "",
                    Some(1),
                    &Time(t),
                );
            }
            st
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// No spec the API server admits, no status and no Coder answer makes `decide`, the
    /// duration parser or the TTL arithmetic panic, at any time.
    #[test]
    fn schema_accepted_specs_never_panic(
        spec in any_spec(),
        status in any_status(),
        observation in any_observation(),
        now in any_time(),
        done in any_time(),
        poll_ms in any::<u64>(),
    ) {
        let input = Input {
            spec: &spec,
            generation: Some(1),
            status: &status,
            observation,
            now,
            poll: Duration::from_millis(poll_ms),
            build_timings: None,
        };
        let _ = decide(&input);
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let _ = ttl_expiry(done, ttl);
        }
        for t in spec.timeouts.iter().flat_map(|t| [&t.build, &t.agent]).flatten() {
            let _ = parse_duration(t);
        }
    }
}
