//! Errors of the Coder REST client: one variant per cause, mapped from HTTP status and body.

use std::time::Duration;

use super::types::{ErrorBody, Validation};

/// A failed Coder API call.
#[derive(Debug, thiserror::Error)]
pub enum CoderError {
    /// 401: missing, expired or invalid session token.
    #[error("{endpoint}: unauthorized (401): {message}")]
    Unauthorized {
        /// Route template of the call.
        endpoint: &'static str,
        /// Coder's message.
        message: String,
    },
    /// 403: the token's user may not do this.
    #[error("{endpoint}: forbidden (403): {message}")]
    Forbidden {
        /// Route template of the call.
        endpoint: &'static str,
        /// Coder's message.
        message: String,
    },
    /// 404: not found, or not visible to this token (Coder hides existence).
    #[error("{endpoint}: not found (404): {message}")]
    NotFound {
        /// Route template of the call.
        endpoint: &'static str,
        /// Coder's message.
        message: String,
    },
    /// 409: conflicting state, e.g. "A workspace build is already active."
    #[error("{endpoint}: conflict (409): {message}")]
    Conflict {
        /// Route template of the call.
        endpoint: &'static str,
        /// Coder's message.
        message: String,
    },
    /// 410: the workspace was deleted.
    #[error("{endpoint}: gone (410): {message}")]
    Gone {
        /// Route template of the call.
        endpoint: &'static str,
        /// Coder's message.
        message: String,
    },
    /// 400/406: the request was refused as invalid.
    #[error("{endpoint}: invalid request ({status}): {message}")]
    Invalid {
        /// Route template of the call.
        endpoint: &'static str,
        /// HTTP status.
        status: u16,
        /// Coder's message.
        message: String,
        /// Field validations.
        validations: Vec<Validation>,
    },
    /// 429: rate limited; retry after the given delay.
    #[error("{endpoint}: rate limited (429), retry after {retry_after:?}")]
    RateLimited {
        /// Route template of the call.
        endpoint: &'static str,
        /// From the Retry-After header.
        retry_after: Option<Duration>,
    },
    /// 5xx: Coder failed.
    #[error("{endpoint}: server error ({status}): {message}")]
    Server {
        /// Route template of the call.
        endpoint: &'static str,
        /// HTTP status.
        status: u16,
        /// Coder's message.
        message: String,
    },
    /// Any other unexpected status.
    #[error("{endpoint}: unexpected status {status}: {message}")]
    UnexpectedStatus {
        /// Route template of the call.
        endpoint: &'static str,
        /// HTTP status.
        status: u16,
        /// Coder's message.
        message: String,
    },
    /// The request timed out.
    #[error("{endpoint}: request timed out")]
    Timeout {
        /// Route template of the call.
        endpoint: &'static str,
    },
    /// Could not connect or the connection broke.
    #[error("{endpoint}: connection failed: {source}")]
    Connect {
        /// Route template of the call.
        endpoint: &'static str,
        /// Underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// The response body was not the expected JSON.
    #[error("{endpoint}: cannot decode response: {detail}")]
    Decode {
        /// Route template of the call.
        endpoint: &'static str,
        /// What failed to parse.
        detail: String,
    },
    /// The answer (a body or one watch stream frame) was larger than the limit.
    #[error("{endpoint}: response larger than {limit} bytes")]
    TooLarge {
        /// Route template of the call.
        endpoint: &'static str,
        /// The limit in bytes.
        limit: usize,
    },
    /// A watch stream completed no frame, not even a ping, for this long.
    #[error("{endpoint}: no frame for {idle:?}")]
    WatchIdle {
        /// Route template of the call.
        endpoint: &'static str,
        /// The idle limit.
        idle: Duration,
    },
    /// The client is misconfigured (bad URL, unreadable token).
    #[error("coder client configuration: {0}")]
    Config(String),
}

impl CoderError {
    /// Maps a non-success HTTP status and its body to an error.
    pub fn from_response(
        endpoint: &'static str,
        status: u16,
        retry_after: Option<Duration>,
        body: &[u8],
    ) -> CoderError {
        let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_else(|_| ErrorBody {
            message: String::from_utf8_lossy(body).chars().take(200).collect(),
            ..ErrorBody::default()
        });
        let message = parsed.message;
        match status {
            401 => CoderError::Unauthorized { endpoint, message },
            403 => CoderError::Forbidden { endpoint, message },
            404 => CoderError::NotFound { endpoint, message },
            409 => CoderError::Conflict { endpoint, message },
            410 => CoderError::Gone { endpoint, message },
            400 | 406 | 422 => CoderError::Invalid {
                endpoint,
                status,
                message,
                validations: parsed.validations,
            },
            429 => CoderError::RateLimited {
                endpoint,
                retry_after,
            },
            500..=599 => CoderError::Server {
                endpoint,
                status,
                message,
            },
            _ => CoderError::UnexpectedStatus {
                endpoint,
                status,
                message,
            },
        }
    }

    /// True when retrying later may succeed (Coder down, slow, overloaded).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CoderError::RateLimited { .. }
                | CoderError::Server { .. }
                | CoderError::Timeout { .. }
                | CoderError::Connect { .. }
                | CoderError::Decode { .. }
                | CoderError::UnexpectedStatus { .. }
        )
    }

    /// The delay Coder asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CoderError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short label for metrics (`401`, `timeout`, …).
    pub fn status_label(&self) -> String {
        match self {
            CoderError::Unauthorized { .. } => "401".into(),
            CoderError::Forbidden { .. } => "403".into(),
            CoderError::NotFound { .. } => "404".into(),
            CoderError::Conflict { .. } => "409".into(),
            CoderError::Gone { .. } => "410".into(),
            CoderError::Invalid { status, .. }
            | CoderError::Server { status, .. }
            | CoderError::UnexpectedStatus { status, .. } => status.to_string(),
            CoderError::RateLimited { .. } => "429".into(),
            CoderError::Timeout { .. } => "timeout".into(),
            CoderError::Connect { .. } => "connect_error".into(),
            CoderError::Decode { .. } => "decode_error".into(),
            CoderError::TooLarge { .. } => "too_large".into(),
            CoderError::WatchIdle { .. } => "idle".into(),
            CoderError::Config(_) => "config_error".into(),
        }
    }
}
