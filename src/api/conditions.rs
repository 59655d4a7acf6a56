//! Status conditions (kstatus-shaped); their reasons are [`crate::api::reason::Reason`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::reason::Reason;

/// Condition types.
pub mod types {
    /// The workspace is running and the agent is ready (the one `kubectl wait` watches).
    pub const READY: &str = "Ready";
    /// The operator is still working on the request (kstatus).
    pub const RECONCILING: &str = "Reconciling";
    /// The request failed and will not make progress (kstatus).
    pub const STALLED: &str = "Stalled";
    /// The start build succeeded.
    pub const BUILD_SUCCEEDED: &str = "BuildSucceeded";
    /// The selected agent is connected and ready.
    pub const AGENT_READY: &str = "AgentReady";
}

/// Sets (or replaces) a condition by type, keeping `lastTransitionTime` when the status did not
/// change.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: Reason,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) {
    let new = Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.as_str().to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: now.clone(),
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let ltt = if c.status == status {
                c.last_transition_time.clone()
            } else {
                now.clone()
            };
            *c = Condition {
                last_transition_time: ltt,
                ..new
            };
        }
        None => conditions.push(new),
    }
}

/// Finds a condition by type.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The `Ready` condition's reason, if the condition is set.
pub fn ready_reason(conditions: &[Condition]) -> Option<&str> {
    get(conditions, types::READY).map(|c| c.reason.as_str())
}

/// True when the condition is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_changes_only_with_status() {
        let t0 = Time(jiff::Timestamp::from_second(1).expect("ts"));
        let t1 = Time(jiff::Timestamp::from_second(2).expect("ts"));
        let mut c = Vec::new();
        set(&mut c, "Ready", "False", Reason::Pending, "m", Some(1), &t0);
        set(
            &mut c,
            "Ready",
            "False",
            Reason::BuildInProgress,
            "m2",
            Some(1),
            &t1,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].reason, "BuildInProgress");
        assert_eq!(c[0].last_transition_time, t0);
        set(&mut c, "Ready", "True", Reason::Ready, "ok", Some(1), &t1);
        assert_eq!(c[0].last_transition_time, t1);
        assert!(is_true(&c, "Ready"));
    }
}
