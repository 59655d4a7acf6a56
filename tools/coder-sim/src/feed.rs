//! A feed of workspace state changes: one [`StateChange`] whenever the latest build of a
//! workspace changes, its provisioner job changes status, or its chat agent changes lifecycle
//! state. It is the simulator's own view, for test drivers and the benchmark's floor writer
//! (which acts the instant an agent is ready, without reading the Coder API); served as SSE
//! on `/admin/events`.
//!
//! Timer-driven changes are seen at the same instant a `/watch` stream sees them (the scripted
//! time plus the same 2 ms margin), so the feed is no faster than what Coder tells a client.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use futures::Stream;
use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::model::{Sim, State, select_chat_agent};

/// Margin after a scripted instant before the state is read again (as `/watch` does).
const TIMER_MARGIN: Duration = Duration::from_millis(2);

/// One change of a workspace's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateChange {
    /// The workspace.
    pub workspace: Uuid,
    /// Its latest build.
    pub build: Uuid,
    /// The build's number.
    pub build_number: i64,
    /// `start`, `stop` or `delete`.
    pub transition: &'static str,
    /// The provisioner job's status (`pending`, `running`, `succeeded`, …).
    pub job: &'static str,
    /// The chat agent's lifecycle state (`created`, `starting`, `ready`, …), once agents exist.
    pub agent: Option<&'static str>,
    /// When the feed saw the change.
    pub at: Timestamp,
}

/// What a change is compared on (everything but `at`).
type Signature = (Uuid, &'static str, Option<&'static str>);

/// The current state of `workspace` (None without builds) and its next timer-driven change.
fn render(st: &State, workspace: Uuid, now: Timestamp) -> Option<(StateChange, Option<Timestamp>)> {
    let ws = st.workspaces.get(&workspace)?;
    let b = st.latest_build(ws)?;
    let agents = b.agents(now);
    let change = StateChange {
        workspace,
        build: b.id,
        build_number: b.number,
        transition: b.transition.as_str(),
        job: b.job(now).status.as_str(),
        agent: select_chat_agent(&agents).map(|a| a.lifecycle),
        at: now,
    };
    Some((change, st.next_event(ws, now)))
}

/// One subscriber's position in the feed.
struct Cursor {
    sim: Sim,
    touched: broadcast::Receiver<Uuid>,
    known: HashMap<Uuid, Signature>,
    timers: BinaryHeap<Reverse<(Timestamp, Uuid)>>,
    out: std::collections::VecDeque<StateChange>,
}

impl Cursor {
    /// Re-reads `ids`, queues what changed and schedules their next timer-driven change.
    fn look(&mut self, ids: &[Uuid]) {
        let now = Timestamp::now();
        let st = self.sim.lock();
        for &id in ids {
            let Some((change, next)) = render(&st, id, now) else {
                continue;
            };
            let sig = (change.build, change.job, change.agent);
            if self.known.insert(id, sig) != Some(sig) {
                self.out.push_back(change);
            }
            if let Some(t) = next {
                self.timers.push(Reverse((t, id)));
            }
        }
    }

    fn look_all(&mut self) {
        let ids = self.sim.workspace_ids();
        self.look(&ids);
    }

    async fn next(mut self) -> Option<(StateChange, Cursor)> {
        loop {
            if let Some(c) = self.out.pop_front() {
                return Some((c, self));
            }
            let due = self.timers.peek().map(|Reverse((t, _))| *t);
            let wait = due.map_or(Duration::from_secs(3600), |t| {
                Duration::try_from(t.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO)
                    + TIMER_MARGIN
            });
            tokio::select! {
                r = self.touched.recv() => match r {
                    Ok(id) => self.look(&[id]),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.look_all(),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                () = tokio::time::sleep(wait), if due.is_some() => {
                    let now = Timestamp::now();
                    let mut ids = Vec::new();
                    while let Some(Reverse((t, id))) = self.timers.peek().copied() {
                        if t > now {
                            break;
                        }
                        self.timers.pop();
                        ids.push(id);
                    }
                    ids.dedup();
                    self.look(&ids);
                }
            }
        }
    }
}

impl Sim {
    /// The feed of state changes from now on (the current state of every workspace with a
    /// build is sent first).
    pub fn state_changes(&self) -> impl Stream<Item = StateChange> + Send + 'static {
        let mut cursor = Cursor {
            sim: self.clone(),
            touched: self.subscribe_touched(),
            known: HashMap::new(),
            timers: BinaryHeap::new(),
            out: std::collections::VecDeque::new(),
        };
        cursor.look_all();
        futures::stream::unfold(cursor, Cursor::next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimConfig;
    use crate::model::{BuildScript, LifecycleState, Transition, WorkspaceSeed};
    use futures::StreamExt;

    #[tokio::test]
    async fn a_start_build_is_followed_to_a_ready_agent() {
        let sim = Sim::new(&SimConfig::default());
        let user = sim.add_user("alice");
        let ms = Duration::from_millis;
        let ws = sim.add_workspace(WorkspaceSeed::new(user.id, "dev").script(
            BuildScript::default().with_job(ms(20), ms(40)).with_agent(
                ms(20),
                ms(20),
                LifecycleState::Ready,
            ),
        ));
        let feed = sim.state_changes();
        futures::pin_mut!(feed);
        let build = sim.start_build(ws, Transition::Start);
        let mut seen = Vec::new();
        while let Ok(Some(c)) = tokio::time::timeout(Duration::from_secs(5), feed.next()).await {
            assert_eq!(c.workspace, ws);
            if c.build != build {
                // The seeded state, sent first.
                assert!(seen.is_empty(), "{c:?} after {seen:?}");
                continue;
            }
            seen.push((c.job, c.agent));
            if c.agent == Some("ready") {
                break;
            }
        }
        assert_eq!(seen.first(), Some(&("pending", None)));
        assert!(seen.contains(&("running", None)), "{seen:?}");
        assert_eq!(seen.last(), Some(&("succeeded", Some("ready"))), "{seen:?}");
        let ready_at = sim.agent_ready_at(ws).expect("agent ready");
        assert!(Timestamp::now() >= ready_at);
    }
}
