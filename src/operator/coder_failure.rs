//! What a Coder error means for a request, in one place: retry (Coder down, slow or overloaded:
//! `CoderUnavailable` until the deadline), or fail at once with its own reason and a message
//! that carries Coder's words (bounded, never a token). Reads, the chat owner check and the start
//! build POST each ask here.

use uuid::Uuid;

use crate::api::reason::Reason;
use crate::coder::error::{bounded_text, human_bytes, or_none, with_fields, with_fields_or_detail};
use crate::coder::{CoderError, OwnerAccount};
use crate::operator::decide::{Observation, OwnerState};

/// What a failed Coder call means for the request that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Coder is down, slow or overloaded (5xx, 429, timeouts, resets): wait for Coder to
    /// answer again (see [`crate::operator::coder_health`]) until the request's deadline
    /// (reason `CoderUnavailable`).
    Retry,
    /// Coder's answer is final: fail the request at once.
    Fail {
        /// A reason from [`reasons`].
        reason: Reason,
        /// User-facing message (Coder's own message included, bounded; never a token).
        message: String,
    },
}

/// What this error means for a request that read Coder: retry, or fail at once with its
/// own reason and a message that carries Coder's.
pub fn of_read(e: &CoderError) -> Disposition {
    let fail = |reason, message| Disposition::Fail { reason, message };
    match e {
        e if e.is_transient() => Disposition::Retry,
        CoderError::Unauthorized { message, .. } => fail(
            Reason::CoderUnauthorized,
            format!(
                "Coder rejected the session token (401): {}; check the token Secret",
                or_none(message)
            ),
        ),
        CoderError::Forbidden { endpoint, message } => fail(
            Reason::CoderForbidden,
            format!("Coder refused {endpoint} (403): {}", or_none(message)),
        ),
        CoderError::Invalid {
            endpoint,
            status,
            message,
            validations,
            ..
        } => fail(
            Reason::CoderRequestInvalid,
            format!(
                "Coder refused {endpoint} ({status}): {}",
                with_fields(message, validations)
            ),
        ),
        CoderError::NotFound { endpoint, message }
        | CoderError::Gone { endpoint, message }
        | CoderError::Conflict { endpoint, message } => fail(
            Reason::CoderRequestInvalid,
            format!(
                "Coder refused {endpoint} ({}): {}",
                e.status_label(),
                or_none(message)
            ),
        ),
        CoderError::UnexpectedStatus {
            endpoint,
            status,
            message,
        } => fail(
            Reason::CoderResponseInvalid,
            format!(
                "Coder answered {endpoint} with unexpected status {status}: {}",
                or_none(message)
            ),
        ),
        CoderError::Decode { endpoint, detail } => fail(
            Reason::CoderResponseInvalid,
            format!(
                "Coder's answer to {endpoint} is not the expected JSON: {}",
                bounded_text(detail)
            ),
        ),
        CoderError::TooLarge { endpoint, limit } => fail(
            Reason::CoderResponseInvalid,
            format!(
                "Coder's answer to {endpoint} is larger than {}",
                human_bytes(*limit)
            ),
        ),
        CoderError::TlsUntrusted { host, reason, .. } => fail(
            Reason::CoderTLSUntrusted,
            bounded_text(&format!(
                "the TLS certificate of Coder at {host} is not trusted: {reason}; give the CA that issued it (--coder-ca-file / Helm value coder.caBundle, or key ca.crt of the spec.coderRef Secret)"
            )),
        ),
        CoderError::InvalidName { what, problem, .. } => fail(
            Reason::CoderRequestInvalid,
            format!(
                "the {what} {problem}: Coder accepts letters and digits joined by single hyphens, at most 32 characters (a user also as me or a UUID); nothing was sent to Coder"
            ),
        ),
        CoderError::Config(message) => fail(Reason::CoderNotConfigured, message.clone()),
        // Transient ones are matched above.
        _ => Disposition::Retry,
    }
}

/// What this error means when it answered the start build POST: as [`of_read`], but
/// a refusal is `BuildRejected` (403: `CoderForbidden`) and 404/410 mean the workspace is
/// gone. A 409 is not covered here (the caller joins the active build).
///
fn of_start_build(e: &CoderError) -> Disposition {
    let fail = |reason, message| Disposition::Fail { reason, message };
    match e {
        CoderError::NotFound { .. } | CoderError::Gone { .. } => {
            fail(Reason::WorkspaceDeleted, "workspace was deleted".to_owned())
        }
        CoderError::Forbidden { message, .. } => fail(
            Reason::CoderForbidden,
            format!("Coder refused the start build (403): {}", or_none(message)),
        ),
        CoderError::Invalid {
            status,
            message,
            detail,
            validations,
            ..
        } => fail(
            Reason::BuildRejected,
            format!(
                "Coder refused the start build ({status}): {}",
                with_fields_or_detail(message, detail, validations)
            ),
        ),
        other => of_read(other),
    }
}

/// What one Coder call says about its endpoint, for the health signal
/// ([`crate::operator::coder_health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// Coder answered (a success, or an answer that is not an outage such as 404 or 401).
    Answered,
    /// Coder is down, slow or overloaded.
    Unavailable {
        /// The cause, as [`CoderError::transient_cause`]: shown on the request that made the
        /// call.
        cause: String,
        /// The cause without Coder's text, as [`CoderError::general_cause`]: shown on other
        /// requests that wait on the same endpoint.
        general: String,
    },
    /// Nothing reached Coder, or the answer says nothing of its health (a name refused
    /// before sending, a configuration or TLS trust error).
    NotSent,
}

/// What `result` of one Coder call says about its endpoint.
pub fn call_outcome<T>(result: &Result<T, CoderError>) -> CallOutcome {
    match result {
        Ok(_) => CallOutcome::Answered,
        Err(e) if e.is_transient() => CallOutcome::Unavailable {
            cause: e.transient_cause(),
            general: e.general_cause(),
        },
        Err(
            CoderError::Config(_)
            | CoderError::InvalidName { .. }
            | CoderError::TlsUntrusted { .. },
        ) => CallOutcome::NotSent,
        Err(_) => CallOutcome::Answered,
    }
}

/// What a failed Coder read means for the request: the observation `decide` gets.
pub fn read_failure(e: CoderError) -> Observation {
    match of_read(&e) {
        Disposition::Retry => {
            tracing::warn!(error = %e, "Coder unavailable");
            Observation::CoderUnavailable {
                cause: e.transient_cause(),
            }
        }
        Disposition::Fail { reason, message } => {
            tracing::warn!(error = %e, %reason, "Coder refused the request");
            Observation::Failed { reason, message }
        }
    }
}

/// The chat owner's account (as Coder's chat tool judges it) for `decide`; `Err` with the
/// observation to fail with when Coder refuses to say.
pub fn owner_state(
    owner: Uuid,
    account: Result<OwnerAccount, CoderError>,
) -> Result<OwnerState, Observation> {
    match account {
        Ok(OwnerAccount::Active) => Ok(OwnerState::Active),
        Ok(OwnerAccount::Inactive(message)) => {
            tracing::info!(%owner, %message, "chat owner is not active");
            Ok(OwnerState::Inactive(message))
        }
        Err(e) => match of_read(&e) {
            Disposition::Retry => {
                tracing::warn!(%owner, error = %e, "cannot check the chat owner");
                Ok(OwnerState::Unavailable(e.transient_cause()))
            }
            Disposition::Fail { reason, message } => Err(Observation::Failed {
                reason,
                message: format!("cannot check that the chat owner is active: {message}"),
            }),
        },
    }
}

/// What Coder's refusal of the start build means: the reason and message to fail with, or
/// `None` when it may have created the build after all (retry by re-reading). A 403 on a
/// dormant workspace is older Coder refusing to wake it. A 409 is not covered here (the pass
/// joins the active build).
pub fn start_refusal(e: &CoderError, dormant: bool) -> Option<(Reason, String)> {
    if let (CoderError::Forbidden { message, .. }, true) = (e, dormant) {
        let coder = if message.is_empty() {
            "(no message)"
        } else {
            message
        };
        return Some((
            Reason::WorkspaceDormant,
            format!(
                "the workspace is dormant and Coder refused to start it (403): {coder}; an administrator must wake it (current Coder wakes it on start)"
            ),
        ));
    }
    match of_start_build(e) {
        Disposition::Fail { reason, message } => Some((reason, message)),
        Disposition::Retry => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const EP: &str = "/api/v2/users/{user}/workspace/{name}";

    fn fail(e: &CoderError) -> (Reason, String) {
        match of_read(e) {
            Disposition::Fail { reason, message } => (reason, message),
            Disposition::Retry => panic!("{e} is retried"),
        }
    }

    #[test]
    fn only_outages_are_retried() {
        let retried = [
            CoderError::from_response(EP, 500, None, b"{}"),
            CoderError::from_response(EP, 503, None, b"oops"),
            CoderError::from_response(EP, 429, Some(Duration::from_secs(2)), b""),
            CoderError::Timeout {
                endpoint: EP,
                after: Duration::from_secs(10),
            },
        ];
        for e in &retried {
            assert_eq!(of_read(e), Disposition::Retry, "{e}");
        }
        let failed = [
            (400, Reason::CoderRequestInvalid),
            (401, Reason::CoderUnauthorized),
            (403, Reason::CoderForbidden),
            (404, Reason::CoderRequestInvalid),
            (302, Reason::CoderResponseInvalid),
            (418, Reason::CoderResponseInvalid),
        ];
        for (status, reason) in failed {
            let e = CoderError::from_response(EP, status, None, br#"{"message":"m"}"#);
            assert_eq!(fail(&e).0, reason, "{status}");
        }
    }

    #[test]
    fn a_typo_in_the_owner_fails_with_coders_message() {
        let e = CoderError::from_response(
            EP,
            400,
            None,
            br#"{"message":"\"user\" must be an existing uuid or username."}"#,
        );
        assert_eq!(
            fail(&e),
            (
                Reason::CoderRequestInvalid,
                r#"Coder refused /api/v2/users/{user}/workspace/{name} (400): "user" must be an existing uuid or username."#.to_owned()
            )
        );
    }

    #[test]
    fn invalid_and_oversized_answers_fail_with_their_own_reason() {
        let e = CoderError::Decode {
            endpoint: "/api/v2/workspaces/{id}",
            detail: "expected value at line 1 column 1".into(),
        };
        assert_eq!(
            fail(&e),
            (
                Reason::CoderResponseInvalid,
                "Coder's answer to /api/v2/workspaces/{id} is not the expected JSON: expected value at line 1 column 1".to_owned()
            )
        );
        let e = CoderError::TooLarge {
            endpoint: "/api/v2/workspaces/{id}",
            limit: 4 << 20,
        };
        assert_eq!(
            fail(&e).1,
            "Coder's answer to /api/v2/workspaces/{id} is larger than 4 MiB"
        );
    }

    #[test]
    fn forbidden_carries_coders_message_bounded() {
        let e = CoderError::from_response(
            "/api/v2/chats/{id}",
            403,
            None,
            br#"{"message":"Chat is an experimental feature. Enable it with --experiments=agents."}"#,
        );
        assert_eq!(
            fail(&e).1,
            "Coder refused /api/v2/chats/{id} (403): Chat is an experimental feature. Enable it with --experiments=agents."
        );
        let huge = format!(r#"{{"message":"{}\nsecond line"}}"#, "x".repeat(2 << 20));
        let e = CoderError::from_response("/api/v2/chats/{id}", 403, None, huge.as_bytes());
        let (_, message) = fail(&e);
        assert!(message.chars().count() < 400, "{}", message.len());
        assert!(message.ends_with('…'));
    }

    #[test]
    fn a_start_build_refusal_makes_sense_with_or_without_validations() {
        let ep = "/api/v2/workspaces/{id}/builds";
        let wsbuilder = of_start_build(&CoderError::from_response(
            ep,
            400,
            None,
            br#"{"message":"Unable to validate parameter \"region\"","detail":"parameter validation failed\nrequired parameter value missing"}"#,
        ));
        assert_eq!(
            wsbuilder,
            Disposition::Fail {
                reason: Reason::BuildRejected,
                message: r#"Coder refused the start build (400): Unable to validate parameter "region" (parameter validation failed required parameter value missing)"#.into()
            }
        );
        let bare = of_start_build(&CoderError::from_response(
            ep,
            400,
            None,
            br#"{"message":"Invalid request."}"#,
        ));
        assert_eq!(
            bare,
            Disposition::Fail {
                reason: Reason::BuildRejected,
                message: "Coder refused the start build (400): Invalid request.".into()
            }
        );
        let with = of_start_build(&CoderError::from_response(
            ep,
            400,
            None,
            br#"{"message":"Validation failed.","validations":[{"field":"region","detail":"bad"}]}"#,
        ));
        assert_eq!(
            with,
            Disposition::Fail {
                reason: Reason::BuildRejected,
                message: "Coder refused the start build (400): Validation failed.; fields: region"
                    .into()
            }
        );
        let empty = of_start_build(&CoderError::from_response(ep, 400, None, b""));
        assert_eq!(
            empty,
            Disposition::Fail {
                reason: Reason::BuildRejected,
                message: "Coder refused the start build (400): (no message)".into()
            }
        );
    }
}
