//! Fault injection as plain data: the [`Fault`] kinds (also their JSON/YAML
//! form), and how a fault on a route resolves to the [`Action`]
//! the middleware takes for one request. Nothing here knows about the model,
//! the routes or the server; add a variant here and its handling in
//! `routes::middleware`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The route key of a fault set on every route (a whole-deployment outage); a route's own
/// fault, when it applies to a request, comes first.
pub const ANY_ROUTE: &str = "*";

/// A fault injected on one route key.
///
/// Its JSON/YAML form, as the admin API and scenarios take it:
/// `{"status": 503}`, `"hang"`, `"reset"`, `"commit_then_fail"`,
/// `{"slow": "750ms"}`, `"commit_then_hang"`, `{"rate_limited": 2}`,
/// `{"times": {"n": 2, "fault": "reset"}}`; hostile: `{"huge_body": 314572800}`,
/// `"invalid_json"`, `{"drip": 1}`, `{"big_message": {"status": 403, "bytes": 2000000}}`,
/// `{"huge_names": 1048576}`,
/// `"unterminated_sse"`, `"silent_sse"`, `{"on_path": {"path": "<id>", "fault": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
    Slow(#[serde(with = "duration_form")] Duration),
    /// Run the handler (commit the change), then never answer (until the
    /// server shuts down): a client that gives up or dies mid-request.
    CommitThenHang,
    /// Answer 429 with `Retry-After` of this many seconds, handler not run.
    RateLimited(u64),
    /// Apply the inner fault to the next `n` requests only, then remove it.
    Times {
        /// Number of requests affected.
        n: u32,
        /// The fault applied to them.
        fault: Box<Fault>,
    },
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
    OnPath {
        /// Text the request path must contain.
        path: String,
        /// The fault applied to those requests.
        fault: Box<Fault>,
    },
}

impl Fault {
    /// Convenience for `Times { n, fault: Box::new(fault) }`.
    pub fn times(n: u32, fault: Fault) -> Fault {
        Fault::Times {
            n,
            fault: Box::new(fault),
        }
    }

    /// Convenience for `OnPath { path, fault: Box::new(fault) }`.
    pub fn on_path(path: impl Into<String>, fault: Fault) -> Fault {
        Fault::OnPath {
            path: path.into(),
            fault: Box::new(fault),
        }
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
        Fault::OnPath { path: p, fault } => {
            if !path.contains(p.as_str()) {
                *slot = Some(Fault::OnPath { path: p, fault });
                return None;
            }
            let mut rest = Some(*fault);
            let action = take(&mut rest, path);
            *slot = rest.map(|f| Fault::on_path(p, f));
            action
        }
        Fault::Times { n: 0, .. } => None,
        Fault::Times { n, fault } => {
            let action = leaf(&fault);
            if n > 1 {
                *slot = Some(Fault::Times { n: n - 1, fault });
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
        Fault::Times { fault, .. } | Fault::OnPath { fault, .. } => leaf(fault),
    }
}

/// [`Fault::Slow`]'s duration in the JSON/YAML form of a [`crate::duration::DurationSpec`]
/// (`"750ms"`, `"2s"`, a bare number of milliseconds).
mod duration_form {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::duration::DurationSpec;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        DurationSpec(*d).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        DurationSpec::deserialize(d).map(|d| d.0)
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
        let json = r#"[{"huge_body":314572800},"invalid_json",{"drip":1},{"big_message":{"status":403,"bytes":2000000}},"unterminated_sse","silent_sse",{"on_path":{"path":"x","fault":"silent_sse"}},{"huge_names":1048576}]"#;
        let f: Vec<Fault> = serde_json::from_str(json).expect("valid");
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
        let back = serde_json::to_string(&f).expect("serializes");
        assert_eq!(back, json);
    }

    #[test]
    fn spec_parses_all_forms() {
        let f: Vec<Fault> = serde_json::from_str(
            r#"[{"status":503},"hang","reset","commit_then_fail",{"slow":"750ms"},{"times":{"n":2,"fault":"reset"}},"commit_then_hang",{"rate_limited":2}]"#,
        )
        .expect("valid");
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
