//! Fault injection as plain data: the [`Fault`] kinds, their JSON/YAML form
//! ([`FaultSpec`]), and how a fault on a route resolves to the [`Action`]
//! the middleware takes for one request. Nothing here knows about the model,
//! the routes or the server; add a variant here and its handling in
//! `routes::middleware`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::DurationSpec;

/// The route key of a fault set on every route (a whole-deployment outage); a route's own
/// fault, when it applies to a request, comes first.
pub const ANY_ROUTE: &str = "*";

/// A fault injected on one route key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and a Coder-style `{"message":…}` body
    /// without running the handler (429 also gets `Retry-After: 60`).
    Status(u16),
    /// Never answer (until the server shuts down).
    Hang,
    /// Close the TCP connection with a reset, without any response.
    Reset,
    /// Run the handler (commit the change), then answer 500.
    CommitThenFail,
    /// Delay the request by this long, then handle it normally.
    Slow(Duration),
    /// Run the handler (commit the change), then never answer (until the
    /// server shuts down): a client that gives up or dies mid-request.
    CommitThenHang,
    /// Answer 429 with `Retry-After` of this many seconds, handler not run.
    RateLimited(u64),
    /// Apply the inner fault to the next `n` requests only, then remove it.
    Times(u32, Box<Fault>),
    /// Hostile: answer 200 with a JSON document of this many bytes (one huge string field),
    /// streamed without `Content-Length`, handler not run.
    HugeBody(u64),
    /// Hostile: answer 200 with a body that is not JSON (an HTML error page), handler not run.
    InvalidJson,
    /// Hostile: run the handler, then send its answer this many bytes per second.
    Drip(u32),
    /// Hostile: answer this status with a Coder error whose `message` is this many bytes.
    BigMessage {
        /// HTTP status.
        status: u16,
        /// Length of the message.
        bytes: u64,
    },
    /// Hostile: run the handler, then lengthen every name in its JSON answer (the values of
    /// keys `name`, `owner_name`, `username` and `workspace_name`) by this many bytes.
    HugeNames(u64),
    /// Hostile (watch routes): answer 200 `text/event-stream`, then bytes that never end a
    /// line, as fast as the client reads, until it hangs up.
    UnterminatedSse,
    /// Hostile (watch routes): answer 200 `text/event-stream`, then nothing, not even a ping.
    SilentSse,
    /// Apply the inner fault only to requests whose path contains this text (e.g. one
    /// workspace's id); other requests on the route are answered normally.
    OnPath(String, Box<Fault>),
}

impl Fault {
    /// Convenience for `Times(n, Box::new(fault))`.
    pub fn times(n: u32, fault: Fault) -> Fault {
        Fault::Times(n, Box::new(fault))
    }

    /// Convenience for `OnPath(path, Box::new(fault))`.
    pub fn on_path(path: impl Into<String>, fault: Fault) -> Fault {
        Fault::OnPath(path.into(), Box::new(fault))
    }
}

/// What the middleware does for one request after resolving the fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Status(u16),
    Hang,
    Reset,
    CommitThenFail,
    Slow(Duration),
    CommitThenHang,
    RateLimited(u64),
    HugeBody(u64),
    InvalidJson,
    Drip(u32),
    BigMessage { status: u16, bytes: u64 },
    HugeNames(u64),
    UnterminatedSse,
    SilentSse,
}

/// Takes the action for the next request (to `path`) on a route and updates `Times`
/// counters; returns `None` (and removes the fault) when it is used up, or when an `OnPath`
/// fault does not concern `path` (it stays).
pub(crate) fn take(slot: &mut Option<Fault>, path: &str) -> Option<Action> {
    let fault = slot.take()?;
    match fault {
        Fault::OnPath(p, inner) => {
            if !path.contains(p.as_str()) {
                *slot = Some(Fault::OnPath(p, inner));
                return None;
            }
            let mut rest = Some(*inner);
            let action = take(&mut rest, path);
            *slot = rest.map(|f| Fault::OnPath(p, Box::new(f)));
            action
        }
        Fault::Times(0, _) => None,
        Fault::Times(n, inner) => {
            let action = leaf(&inner);
            if n > 1 {
                *slot = Some(Fault::Times(n - 1, inner));
            }
            Some(action)
        }
        other => {
            let action = leaf(&other);
            *slot = Some(other);
            Some(action)
        }
    }
}

fn leaf(f: &Fault) -> Action {
    match f {
        Fault::Status(c) => Action::Status(*c),
        Fault::Hang => Action::Hang,
        Fault::Reset => Action::Reset,
        Fault::CommitThenFail => Action::CommitThenFail,
        Fault::Slow(d) => Action::Slow(*d),
        Fault::CommitThenHang => Action::CommitThenHang,
        Fault::RateLimited(s) => Action::RateLimited(*s),
        Fault::HugeBody(n) => Action::HugeBody(*n),
        Fault::InvalidJson => Action::InvalidJson,
        Fault::Drip(bps) => Action::Drip(*bps),
        Fault::BigMessage { status, bytes } => Action::BigMessage {
            status: *status,
            bytes: *bytes,
        },
        Fault::HugeNames(n) => Action::HugeNames(*n),
        Fault::UnterminatedSse => Action::UnterminatedSse,
        Fault::SilentSse => Action::SilentSse,
        Fault::Times(_, inner) | Fault::OnPath(_, inner) => leaf(inner),
    }
}

/// Serializable form of [`Fault`] used by the admin API and scenarios:
/// `{"status": 503}`, `"hang"`, `"reset"`, `"commit_then_fail"`,
/// `{"slow": "750ms"}`, `"commit_then_hang"`, `{"rate_limited": 2}`,
/// `{"times": {"n": 2, "fault": "reset"}}`; hostile: `{"huge_body": 314572800}`,
/// `"invalid_json"`, `{"drip": 1}`, `{"big_message": {"status": 403, "bytes": 2000000}}`,
/// `{"huge_names": 1048576}`,
/// `"unterminated_sse"`, `"silent_sse"`, `{"on_path": {"path": "<id>", "fault": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultSpec {
    /// See [`Fault::Status`].
    Status(u16),
    /// See [`Fault::Hang`].
    Hang,
    /// See [`Fault::Reset`].
    Reset,
    /// See [`Fault::CommitThenFail`].
    CommitThenFail,
    /// See [`Fault::Slow`].
    Slow(DurationSpec),
    /// See [`Fault::CommitThenHang`].
    CommitThenHang,
    /// See [`Fault::RateLimited`].
    RateLimited(u64),
    /// See [`Fault::Times`].
    Times {
        /// Number of requests affected.
        n: u32,
        /// The fault applied to them.
        fault: Box<FaultSpec>,
    },
    /// See [`Fault::HugeBody`].
    HugeBody(u64),
    /// See [`Fault::InvalidJson`].
    InvalidJson,
    /// See [`Fault::Drip`].
    Drip(u32),
    /// See [`Fault::BigMessage`].
    BigMessage {
        /// HTTP status.
        status: u16,
        /// Length of the message.
        bytes: u64,
    },
    /// See [`Fault::HugeNames`].
    HugeNames(u64),
    /// See [`Fault::UnterminatedSse`].
    UnterminatedSse,
    /// See [`Fault::SilentSse`].
    SilentSse,
    /// See [`Fault::OnPath`].
    OnPath {
        /// Text the request path must contain.
        path: String,
        /// The fault applied to those requests.
        fault: Box<FaultSpec>,
    },
}

impl From<FaultSpec> for Fault {
    fn from(s: FaultSpec) -> Fault {
        match s {
            FaultSpec::Status(c) => Fault::Status(c),
            FaultSpec::Hang => Fault::Hang,
            FaultSpec::Reset => Fault::Reset,
            FaultSpec::CommitThenFail => Fault::CommitThenFail,
            FaultSpec::Slow(d) => Fault::Slow(d.0),
            FaultSpec::CommitThenHang => Fault::CommitThenHang,
            FaultSpec::RateLimited(s) => Fault::RateLimited(s),
            FaultSpec::Times { n, fault } => Fault::Times(n, Box::new(Fault::from(*fault))),
            FaultSpec::HugeBody(n) => Fault::HugeBody(n),
            FaultSpec::InvalidJson => Fault::InvalidJson,
            FaultSpec::Drip(bps) => Fault::Drip(bps),
            FaultSpec::BigMessage { status, bytes } => Fault::BigMessage { status, bytes },
            FaultSpec::HugeNames(n) => Fault::HugeNames(n),
            FaultSpec::UnterminatedSse => Fault::UnterminatedSse,
            FaultSpec::SilentSse => Fault::SilentSse,
            FaultSpec::OnPath { path, fault } => Fault::OnPath(path, Box::new(Fault::from(*fault))),
        }
    }
}

impl From<&Fault> for FaultSpec {
    fn from(f: &Fault) -> FaultSpec {
        match f {
            Fault::Status(c) => FaultSpec::Status(*c),
            Fault::Hang => FaultSpec::Hang,
            Fault::Reset => FaultSpec::Reset,
            Fault::CommitThenFail => FaultSpec::CommitThenFail,
            Fault::Slow(d) => FaultSpec::Slow(DurationSpec(*d)),
            Fault::CommitThenHang => FaultSpec::CommitThenHang,
            Fault::RateLimited(s) => FaultSpec::RateLimited(*s),
            Fault::Times(n, inner) => FaultSpec::Times {
                n: *n,
                fault: Box::new(FaultSpec::from(inner.as_ref())),
            },
            Fault::HugeBody(n) => FaultSpec::HugeBody(*n),
            Fault::InvalidJson => FaultSpec::InvalidJson,
            Fault::Drip(bps) => FaultSpec::Drip(*bps),
            Fault::BigMessage { status, bytes } => FaultSpec::BigMessage {
                status: *status,
                bytes: *bytes,
            },
            Fault::HugeNames(n) => FaultSpec::HugeNames(*n),
            Fault::UnterminatedSse => FaultSpec::UnterminatedSse,
            Fault::SilentSse => FaultSpec::SilentSse,
            Fault::OnPath(path, inner) => FaultSpec::OnPath {
                path: path.clone(),
                fault: Box::new(FaultSpec::from(inner.as_ref())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_counts_down_and_disappears() {
        let mut slot = Some(Fault::times(2, Fault::Status(503)));
        assert_eq!(take(&mut slot, "/p"), Some(Action::Status(503)));
        assert_eq!(take(&mut slot, "/p"), Some(Action::Status(503)));
        assert_eq!(take(&mut slot, "/p"), None);
        assert!(slot.is_none());
    }

    #[test]
    fn permanent_fault_stays() {
        let mut slot = Some(Fault::Hang);
        assert_eq!(take(&mut slot, "/p"), Some(Action::Hang));
        assert_eq!(take(&mut slot, "/p"), Some(Action::Hang));
    }

    #[test]
    fn on_path_faults_hit_only_their_path() {
        let mut slot = Some(Fault::on_path("ws-1", Fault::times(1, Fault::InvalidJson)));
        assert_eq!(take(&mut slot, "/api/v2/workspaces/ws-2"), None);
        assert_eq!(
            take(&mut slot, "/api/v2/workspaces/ws-1"),
            Some(Action::InvalidJson)
        );
        assert_eq!(take(&mut slot, "/api/v2/workspaces/ws-1"), None);
        assert!(slot.is_none(), "used up");
    }

    #[test]
    fn hostile_specs_round_trip() {
        let s: Vec<FaultSpec> = serde_json::from_str(
            r#"[{"huge_body":314572800},"invalid_json",{"drip":1},{"big_message":{"status":403,"bytes":2000000}},"unterminated_sse","silent_sse",{"on_path":{"path":"x","fault":"silent_sse"}},{"huge_names":1048576}]"#,
        )
        .expect("valid");
        let f: Vec<Fault> = s.iter().cloned().map(Fault::from).collect();
        assert_eq!(
            f,
            vec![
                Fault::HugeBody(314572800),
                Fault::InvalidJson,
                Fault::Drip(1),
                Fault::BigMessage {
                    status: 403,
                    bytes: 2000000
                },
                Fault::UnterminatedSse,
                Fault::SilentSse,
                Fault::on_path("x", Fault::SilentSse),
                Fault::HugeNames(1 << 20),
            ]
        );
        let back: Vec<FaultSpec> = f.iter().map(FaultSpec::from).collect();
        assert_eq!(back, s);
    }

    #[test]
    fn spec_parses_all_forms() {
        let s: Vec<FaultSpec> = serde_json::from_str(
            r#"[{"status":503},"hang","reset","commit_then_fail",{"slow":"750ms"},{"times":{"n":2,"fault":"reset"}},"commit_then_hang",{"rate_limited":2}]"#,
        )
        .expect("valid");
        let f: Vec<Fault> = s.into_iter().map(Fault::from).collect();
        assert_eq!(
            f,
            vec![
                Fault::Status(503),
                Fault::Hang,
                Fault::Reset,
                Fault::CommitThenFail,
                Fault::Slow(Duration::from_millis(750)),
                Fault::times(2, Fault::Reset),
                Fault::CommitThenHang,
                Fault::RateLimited(2),
            ]
        );
    }
}
