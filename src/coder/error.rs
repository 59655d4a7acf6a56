//! Errors of the Coder REST client: one variant per cause, mapped from HTTP status and body, with
//! Coder's own message bounded. What each means for a request (retry, or fail with which
//! reason) is the operator's business: `operator::coder_failure`.

use std::time::Duration;

use super::names::NameError;
use super::types::{ErrorBody, Validation, bounded};

/// The most of Coder's own message kept (in errors, logs, status and Events).
const MAX_MESSAGE_CHARS: usize = 300;
/// The most field validations kept from one error body.
const MAX_VALIDATIONS: usize = 10;

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
        /// Coder's detail, bounded (wsbuilder puts the cause of a refused build there).
        detail: String,
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
    #[error("{endpoint}: request timed out after {after:?}")]
    Timeout {
        /// Route template of the call.
        endpoint: &'static str,
        /// The timeout that expired (connect or whole request).
        after: Duration,
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
    /// Coder's TLS certificate did not verify against the trusted CAs: a configuration
    /// problem (a private CA not given), never retried.
    #[error("{endpoint}: the TLS certificate of {host} is not trusted: {reason}")]
    TlsUntrusted {
        /// Route template of the call.
        endpoint: &'static str,
        /// The host name the certificate was checked for.
        host: String,
        /// The verifier's reason, in words.
        reason: String,
    },
    /// A name for a URL path segment broke Coder's name rules: refused before any call.
    #[error("{endpoint}: the {what} {problem}; not sent to Coder")]
    InvalidName {
        /// Route template of the call that was not made.
        endpoint: &'static str,
        /// What was named (`workspace owner`, `workspace name`, `user`).
        what: &'static str,
        /// What is wrong with it.
        problem: NameError,
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
            message: String::from_utf8_lossy(&body[..body.len().min(4 * MAX_MESSAGE_CHARS)])
                .into_owned(),
            ..ErrorBody::default()
        });
        let message = bounded_text(&parsed.message);
        let validations: Vec<Validation> = parsed
            .validations
            .into_iter()
            .take(MAX_VALIDATIONS)
            .map(|v| Validation {
                field: bounded_text(&v.field),
                detail: bounded_text(&v.detail),
            })
            .collect();
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
                detail: bounded_text(parsed.detail.as_deref().unwrap_or_default()),
                validations,
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

    /// True when retrying later may succeed: 5xx, 429, timeouts, connection failures and
    /// resets, a silent watch stream. Everything else is Coder's final answer.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CoderError::RateLimited { .. }
                | CoderError::Server { .. }
                | CoderError::Timeout { .. }
                | CoderError::Connect { .. }
                | CoderError::WatchIdle { .. }
        )
    }

    /// What went wrong, for a request that Coder kept unavailable: the status and Coder's
    /// message, or the kind of transport failure, and the route template it answered
    /// (e.g. `HTTP 503 from /api/v2/workspaces/{id}: …`). Bounded; never a URL or a token.
    pub fn transient_cause(&self) -> String {
        let cause = match self {
            CoderError::Server {
                endpoint,
                status,
                message,
            } if message.is_empty() => format!("HTTP {status} from {endpoint}"),
            CoderError::Server {
                endpoint,
                status,
                message,
            } => format!("HTTP {status} from {endpoint}: {message}"),
            CoderError::RateLimited {
                endpoint,
                retry_after: Some(after),
            } => format!(
                "HTTP 429 (rate limited) from {endpoint}, retry after {}s",
                after.as_secs()
            ),
            CoderError::RateLimited { endpoint, .. } => {
                format!("HTTP 429 (rate limited) from {endpoint}")
            }
            CoderError::Timeout { endpoint, after } => {
                format!("{endpoint} timed out after {}", seconds(*after))
            }
            CoderError::Connect { endpoint, source } => {
                format!("{endpoint}: {}", connection_failure(source))
            }
            CoderError::WatchIdle { endpoint, idle } => {
                format!("{endpoint} sent nothing for {}", seconds(*idle))
            }
            other => other.to_string(),
        };
        bounded_text(&cause)
    }

    /// [`Self::transient_cause`] without the text Coder sent with it, which may name another
    /// request's chat or workspace: what requests other than the one that got it are shown
    /// while they wait on the same Coder endpoint.
    pub fn general_cause(&self) -> String {
        match self {
            CoderError::Server {
                endpoint, status, ..
            } => format!("HTTP {status} from {endpoint}"),
            other => other.transient_cause(),
        }
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
            CoderError::InvalidName { .. } => "invalid_name".into(),
            CoderError::TlsUntrusted { .. } => "tls_untrusted".into(),
            CoderError::Config(_) => "config_error".into(),
        }
    }
}

/// Coder's text, made safe to show: control characters replaced, at most
/// [`MAX_MESSAGE_CHARS`] characters (an ellipsis marks a cut).
pub fn bounded_text(s: &str) -> String {
    let prefix: String = s.chars().take(MAX_MESSAGE_CHARS + 1).collect();
    bounded(prefix, MAX_MESSAGE_CHARS).trim().to_owned()
}

/// `10s` or `2.5s`.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// What broke a connection, from the innermost cause (e.g. `connection refused`): the
/// outer layers only repeat "error sending request". The URL was stripped by the client.
fn connection_failure(e: &reqwest::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let detail = inner.to_string();
    let lower = detail.to_lowercase();
    let kind = if e.is_connect() {
        "cannot connect to Coder"
    } else if e.is_body() || e.is_decode() {
        "the connection broke while reading Coder's answer"
    } else {
        "the request to Coder failed"
    };
    if lower.contains("connection refused") {
        format!("{kind}: connection refused")
    } else if lower.contains("reset") {
        format!("{kind}: connection reset")
    } else {
        format!("{kind}: {detail}")
    }
}

/// Coder's message, or a placeholder when it sent none.
pub fn or_none(message: &str) -> &str {
    if message.is_empty() {
        "(no message)"
    } else {
        message
    }
}

/// Coder's message followed by the fields its validations name, if any.
pub fn with_fields(message: &str, validations: &[Validation]) -> String {
    if validations.is_empty() {
        return or_none(message).to_owned();
    }
    let fields: Vec<&str> = validations.iter().map(|v| v.field.as_str()).collect();
    format!("{}; fields: {}", or_none(message), fields.join(", "))
}

/// As [`with_fields`]; without validations, Coder's detail follows its message when it adds
/// something: wsbuilder answers a refused build with a generic message ("resolve
/// parameters", "Unable to validate parameter \"region\"") and the cause in the detail.
pub fn with_fields_or_detail(message: &str, detail: &str, validations: &[Validation]) -> String {
    if !validations.is_empty() || detail.is_empty() || detail == message {
        return with_fields(message, validations);
    }
    format!("{} ({detail})", or_none(message))
}

/// `4 MiB`, `512 KiB` or `100 bytes`.
pub fn human_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}
