//! Fault injection as plain data: the [`Fault`] kinds, their JSON/YAML form
//! ([`FaultSpec`]), and how a fault on a route resolves to the [`Action`]
//! the middleware takes for one request. Nothing here knows about the model,
//! the routes or the server; add a variant here and its handling in
//! `routes::middleware`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::DurationSpec;

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
}

impl Fault {
    /// Convenience for `Times(n, Box::new(fault))`.
    pub fn times(n: u32, fault: Fault) -> Fault {
        Fault::Times(n, Box::new(fault))
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
}

/// Takes the action for the next request on a route and updates `Times`
/// counters; returns `None` (and removes the fault) when it is used up.
pub(crate) fn take(slot: &mut Option<Fault>) -> Option<Action> {
    let fault = slot.take()?;
    match fault {
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
        Fault::Times(_, inner) => leaf(inner),
    }
}

/// Serializable form of [`Fault`] used by the admin API and scenarios:
/// `{"status": 503}`, `"hang"`, `"reset"`, `"commit_then_fail"`,
/// `{"slow": "750ms"}`, `"commit_then_hang"`, `{"rate_limited": 2}`,
/// `{"times": {"n": 2, "fault": "reset"}}`.
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_counts_down_and_disappears() {
        let mut slot = Some(Fault::times(2, Fault::Status(503)));
        assert_eq!(take(&mut slot), Some(Action::Status(503)));
        assert_eq!(take(&mut slot), Some(Action::Status(503)));
        assert_eq!(take(&mut slot), None);
        assert!(slot.is_none());
    }

    #[test]
    fn permanent_fault_stays() {
        let mut slot = Some(Fault::Hang);
        assert_eq!(take(&mut slot), Some(Action::Hang));
        assert_eq!(take(&mut slot), Some(Action::Hang));
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
