//! Who may call the MCP server: the caller sends its ServiceAccount token as a Bearer token; an
//! HTTP middleware validates it with a TokenReview (for the configured audience) before any MCP
//! message is read, and each tool call then asks a SubjectAccessReview whether that caller may
//! create (or get) WorkspaceStartRequests in the target namespace. A per-caller rate limit
//! (`governor`, keyed by username) bounds tool calls. Tokens are never logged, stored or passed on.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::metrics::McpMetrics;
use crate::api::crd::GROUP;

/// Resource name checked by the SubjectAccessReview.
const RESOURCE: &str = "workspacestartrequests";

/// The authenticated caller of an MCP request, as the TokenReview reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Username, e.g. `system:serviceaccount:bots:chat-bot`.
    pub username: String,
    /// UID of the user.
    pub uid: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (e.g. the pod a bound token belongs to).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Caller {
    /// The namespace of a ServiceAccount caller (its default request namespace).
    pub fn namespace(&self) -> Option<&str> {
        crate::client::submit::service_account_of(&self.username).map(|(ns, _)| ns)
    }
}

/// Why a token was refused (HTTP 401) or could not be checked (HTTP 503).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error(
        "missing bearer token: send your ServiceAccount token as 'Authorization: Bearer <token>'"
    )]
    MissingToken,
    /// The API server did not authenticate the token.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The TokenReview could not be made.
    #[error("cannot validate the token: {0}")]
    Review(#[source] kube::Error),
}

impl AuthError {
    fn metric_reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::Review(_) => "review_error",
        }
    }
}

/// JSON-RPC error code of a refused token (implementation-defined server error range).
pub const UNAUTHORIZED_CODE: i32 = -32001;

impl IntoResponse for AuthError {
    /// HTTP 401 (503 when the TokenReview failed) whose body is a JSON-RPC error, which MCP
    /// clients surface with its message.
    fn into_response(self) -> Response {
        let status = match self {
            AuthError::Review(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": {
                "code": UNAUTHORIZED_CODE,
                "message": format!("unauthorized: {self}"),
                "data": {"status": status.as_u16()},
            },
        });
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer realm=\"workspace-start-operator\", error=\"invalid_token\"",
                ),
            );
        }
        resp
    }
}

/// Validates tokens with TokenReviews.
#[derive(Clone)]
pub struct Authenticator {
    client: kube::Client,
    audience: Option<String>,
    metrics: Arc<McpMetrics>,
}

impl Authenticator {
    /// Tokens must be valid for `audience` (`None`: the API server's own audiences).
    pub fn new(client: kube::Client, audience: Option<String>, metrics: Arc<McpMetrics>) -> Self {
        Authenticator {
            client,
            audience,
            metrics,
        }
    }

    /// Asks the API server who `token` belongs to.
    pub async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: self.audience.clone().map(|a| vec![a]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let status = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(AuthError::Review)?
            .status
            .unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".to_owned());
            return Err(AuthError::InvalidToken(why));
        }
        if let Some(aud) = &self.audience
            && !status.audiences.as_ref().is_some_and(|a| a.contains(aud))
        {
            return Err(AuthError::InvalidToken(format!(
                "token is not valid for audience {aud:?}"
            )));
        }
        let user = status.user.unwrap_or_default();
        Ok(Caller {
            username: user.username.unwrap_or_default(),
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        })
    }
}

/// Axum middleware: every request to the MCP endpoint carries a token the API server accepts;
/// the [`Caller`] goes into the request's extensions, where the tools find it.
pub async fn authenticate(
    State(auth): State<Authenticator>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let result = match token {
        None => Err(AuthError::MissingToken),
        Some(token) => auth.review(token).await,
    };
    match result {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => {
            auth.metrics.auth_failure(e.metric_reason());
            tracing::info!(reason = e.metric_reason(), error = %e, "refused an MCP request");
            e.into_response()
        }
    }
}

/// Asks whether `caller` may `verb` requests in `namespace` (on `name` if given).
pub async fn may(
    client: &kube::Client,
    caller: &Caller,
    verb: &str,
    namespace: &str,
    name: Option<&str>,
) -> Result<Result<(), String>, kube::Error> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(caller.username.clone()),
            uid: caller.uid.clone(),
            groups: Some(caller.groups.clone()),
            extra: (!caller.extra.is_empty()).then(|| caller.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(GROUP.to_owned()),
                resource: Some(RESOURCE.to_owned()),
                namespace: Some(namespace.to_owned()),
                name: name.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let status = api
        .create(&PostParams::default(), &review)
        .await?
        .status
        .unwrap_or_default();
    if status.allowed {
        return Ok(Ok(()));
    }
    let mut message = format!(
        "{} may not {verb} {RESOURCE}.{GROUP} in namespace {namespace}",
        caller.username
    );
    if let Some(reason) = status.reason.filter(|r| !r.is_empty()) {
        message.push_str(&format!(" ({reason})"));
    }
    Ok(Err(message))
}

/// Tool calls per caller: a token bucket per username.
pub struct CallLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    per_minute: NonZeroU32,
    burst: NonZeroU32,
}

impl CallLimit {
    /// `per_minute` calls per caller on average, bursts of up to `burst`.
    pub fn new(per_minute: NonZeroU32, burst: NonZeroU32) -> CallLimit {
        CallLimit {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            per_minute,
            burst,
        }
    }

    /// Takes one call from `caller`'s bucket, or says when to retry.
    pub fn check(&self, caller: &Caller) -> Result<(), String> {
        use governor::clock::{Clock, DefaultClock};
        match self.limiter.check_key(&caller.username) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(format!(
                    "rate limit exceeded for {}: at most {} tool calls per minute (bursts of {}); retry in {}s",
                    caller.username,
                    self.per_minute,
                    self.burst,
                    wait.as_secs().max(1)
                ))
            }
        }
    }

    /// Drops the buckets of callers that are back to a full bucket (run periodically).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Runs [`CallLimit::forget_idle`] every minute until the process ends.
    pub fn spawn_cleanup(self: &Arc<Self>) {
        let limit = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                limit.forget_idle();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str) -> Caller {
        Caller {
            username: name.into(),
            uid: None,
            groups: vec![],
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn each_caller_has_its_own_bucket() {
        let n = |v| NonZeroU32::new(v).expect("non-zero");
        let limit = CallLimit::new(n(1), n(2));
        let a = caller("system:serviceaccount:a:bot");
        let b = caller("system:serviceaccount:b:bot");
        assert!(limit.check(&a).is_ok());
        assert!(limit.check(&a).is_ok());
        let refused = limit.check(&a).expect_err("third call in a burst of two");
        assert!(
            refused.contains("rate limit exceeded for system:serviceaccount:a:bot"),
            "{refused}"
        );
        assert!(refused.contains("retry in"), "{refused}");
        assert!(
            limit.check(&b).is_ok(),
            "another caller is not limited by a"
        );
    }

    #[test]
    fn service_account_callers_have_a_namespace() {
        assert_eq!(
            caller("system:serviceaccount:bots:x").namespace(),
            Some("bots")
        );
        assert_eq!(caller("alice").namespace(), None);
    }

    #[test]
    fn refusals_are_401_with_a_challenge_except_review_errors() {
        let r = AuthError::MissingToken.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
        let r = AuthError::InvalidToken("expired".into()).into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
}
