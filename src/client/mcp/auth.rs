//! Who may call the MCP server: the caller sends its ServiceAccount token as a Bearer token; an
//! HTTP middleware validates it with a TokenReview (for the configured audience) before any MCP
//! message is read, and each tool call then asks a SubjectAccessReview whether that caller may
//! create (or get) WorkspaceStartRequests in the target namespace. A per-caller rate limit
//! (`governor`, keyed by username) bounds tool calls, and [`CallSlots`] the calls a caller has in
//! flight at once. Review answers are cached by the token's SHA-256 (valid tokens until shortly
//! before their JWT `exp`, at most a configured cap; refused ones for [`INVALID_TOKEN_TTL`]);
//! tokens over [`MAX_TOKEN_BYTES`] are refused unreviewed, and each source address may cause only
//! so many reviews a minute. Tokens are never logged, stored or passed on.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

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

/// Longest bearer token reviewed; longer ones are refused without a TokenReview. Kubernetes
/// ServiceAccount tokens are about 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// How long a token the API server refused is answered from the cache.
pub const INVALID_TOKEN_TTL: Duration = Duration::from_secs(10);

/// A cached valid token is reviewed again this long before its JWT `exp`.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// Tokens (by SHA-256) whose review is remembered.
const CACHE_ENTRIES: usize = 10_000;

/// Seconds a caller is told to wait (`Retry-After`) when the TokenReview could not be made.
const REVIEW_RETRY_AFTER: u64 = 5;

/// Why a request was refused (HTTP 401 or 429) or its token could not be checked (HTTP 503). The
/// messages are fixed: an unauthenticated caller never sees the API server's words.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error(
        "missing bearer token: send your ServiceAccount token as 'Authorization: Bearer <token>'"
    )]
    MissingToken,
    /// The API server did not authenticate the token (or not for the audience).
    #[error("invalid token")]
    InvalidToken,
    /// The token is longer than [`MAX_TOKEN_BYTES`]; it was not reviewed.
    #[error("invalid token")]
    OversizedToken,
    /// The caller's address sent too many tokens that needed a review.
    #[error("too many authentication attempts from this address; retry in {0}s")]
    TooManyAttempts(u64),
    /// The TokenReview could not be made.
    #[error("cannot validate the token now; retry in {REVIEW_RETRY_AFTER}s")]
    Review(#[source] kube::Error),
}

impl AuthError {
    fn metric_reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::InvalidToken => "invalid_token",
            AuthError::OversizedToken => "oversized_token",
            AuthError::TooManyAttempts(_) => "source_rate_limited",
            AuthError::Review(_) => "review_error",
        }
    }
}

/// JSON-RPC error code of a refused token (implementation-defined server error range).
pub const UNAUTHORIZED_CODE: i32 = -32001;

/// A JSON-RPC error body with `status`, as MCP clients surface it.
pub(super) fn json_rpc_error(
    status: StatusCode,
    code: i32,
    message: String,
    retry_after: Option<u64>,
) -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": code,
            "message": message,
            "data": {"status": status.as_u16()},
        },
    });
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

impl IntoResponse for AuthError {
    /// HTTP 401 (429 when the address is rate limited, 503 when the TokenReview failed) whose
    /// body is a JSON-RPC error, which MCP clients surface with its message.
    fn into_response(self) -> Response {
        let (status, retry_after) = match &self {
            AuthError::Review(_) => (StatusCode::SERVICE_UNAVAILABLE, Some(REVIEW_RETRY_AFTER)),
            AuthError::TooManyAttempts(secs) => (StatusCode::TOO_MANY_REQUESTS, Some(*secs)),
            _ => (StatusCode::UNAUTHORIZED, None),
        };
        let mut resp = json_rpc_error(
            status,
            UNAUTHORIZED_CODE,
            format!("unauthorized: {self}"),
            retry_after,
        );
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

/// How tokens are checked: audience, cache lifetimes and the per-address limit of reviews.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Tokens must be valid for this audience (`None`: the API server's own audiences).
    pub audience: Option<String>,
    /// Longest a valid token is answered from the cache (shorter when its JWT `exp` is sooner).
    pub valid_ttl: Duration,
    /// TokenReviews per minute one source address may cause (tokens not in the cache).
    pub reviews_per_minute: NonZeroU32,
    /// Burst of such reviews per address.
    pub review_burst: NonZeroU32,
}

/// What the cache remembers about one token (by its SHA-256).
#[derive(Clone)]
struct Cached {
    caller: Option<Arc<Caller>>,
    until: Instant,
}

/// Validates tokens with TokenReviews, remembering each answer for a while by a hash of the token
/// (never the token), and limiting the reviews each source address can cause.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    settings: AuthSettings,
    metrics: Arc<McpMetrics>,
    cache: quick_cache::sync::Cache<[u8; 32], Cached>,
    sources: DefaultKeyedRateLimiter<IpAddr>,
}

impl Authenticator {
    /// An authenticator that reviews tokens as `client` with `settings`.
    pub fn new(client: kube::Client, settings: AuthSettings, metrics: Arc<McpMetrics>) -> Self {
        let quota =
            Quota::per_minute(settings.reviews_per_minute).allow_burst(settings.review_burst);
        Authenticator {
            inner: Arc::new(Inner {
                client,
                settings,
                metrics,
                cache: quick_cache::sync::Cache::new(CACHE_ENTRIES),
                sources: RateLimiter::keyed(quota),
            }),
        }
    }

    /// Drops the limiter state of quiet addresses every minute until the process ends.
    pub fn spawn_cleanup(&self) {
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                inner.sources.retain_recent();
                inner.sources.shrink_to_fit();
            }
        });
    }

    /// Who `token` (sent from `source`) belongs to: from the cache, else by a TokenReview that
    /// `source`'s budget allows. Concurrent checks of one new token share one review.
    pub async fn check(&self, token: &str, source: IpAddr) -> Result<Caller, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::OversizedToken);
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        loop {
            let guard = match self.inner.cache.get_value_or_guard_async(&key).await {
                Ok(cached) if cached.until > Instant::now() => {
                    return cached
                        .caller
                        .map(|c| (*c).clone())
                        .ok_or(AuthError::InvalidToken);
                }
                Ok(_) => {
                    self.inner.cache.remove(&key);
                    continue;
                }
                Err(guard) => guard,
            };
            self.charge(source)?;
            let caller = match self.review(token).await {
                Ok(caller) => caller,
                Err(AuthError::InvalidToken) => {
                    let until = Instant::now() + INVALID_TOKEN_TTL;
                    let _ = guard.insert(Cached {
                        caller: None,
                        until,
                    });
                    return Err(AuthError::InvalidToken);
                }
                Err(e) => return Err(e),
            };
            let ttl = valid_ttl(token, self.inner.settings.valid_ttl, jiff::Timestamp::now());
            if !ttl.is_zero() {
                let _ = guard.insert(Cached {
                    caller: Some(Arc::new(caller.clone())),
                    until: Instant::now() + ttl,
                });
            }
            return Ok(caller);
        }
    }

    /// Takes one review from `source`'s budget, or says how many seconds to wait.
    fn charge(&self, source: IpAddr) -> Result<(), AuthError> {
        use governor::clock::{Clock, DefaultClock};
        self.inner.sources.check_key(&source).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            AuthError::TooManyAttempts(wait.as_secs().max(1))
        })
    }

    /// Asks the API server who `token` belongs to. Its reasons for refusing are logged (at debug),
    /// never returned to the caller.
    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        let audience = &self.inner.settings.audience;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: audience.clone().map(|a| vec![a]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.inner.client.clone());
        let metrics = &self.inner.metrics;
        let status = match api.create(&PostParams::default(), &review).await {
            Ok(r) => r.status.unwrap_or_default(),
            Err(e) => {
                metrics.token_review("error");
                return Err(AuthError::Review(e));
            }
        };
        if status.authenticated != Some(true) {
            metrics.token_review("unauthenticated");
            tracing::debug!(
                why = status.error.as_deref().unwrap_or_default(),
                "the API server did not authenticate a token"
            );
            return Err(AuthError::InvalidToken);
        }
        metrics.token_review("authenticated");
        if let Some(aud) = audience
            && !status.audiences.as_ref().is_some_and(|a| a.contains(aud))
        {
            tracing::debug!(audience = %aud, "a token is not valid for the audience");
            return Err(AuthError::InvalidToken);
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

/// How long a token the API server accepted may be answered from the cache: `cap`, or less when
/// its JWT `exp` claim (read without verifying: it only shortens the cache lifetime, it never
/// authenticates) is within `cap` plus a margin; zero when it is about to expire.
fn valid_ttl(token: &str, cap: Duration, now: jiff::Timestamp) -> Duration {
    let Some(exp) = jwt_exp(token) else {
        return cap;
    };
    let left = exp - now.as_second() - EXPIRY_MARGIN.as_secs() as i64;
    if left <= 0 {
        return Duration::ZERO;
    }
    cap.min(Duration::from_secs(left.unsigned_abs()))
}

/// The `exp` claim of a JWT, if `token` is one.
fn jwt_exp(token: &str) -> Option<i64> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<i64>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Claims>(&bytes).ok()?.exp
}

/// Axum middleware: every request to the MCP endpoint carries a token the API server accepts;
/// the [`Caller`] goes into the request's extensions, where the tools find it.
pub async fn authenticate(
    State(auth): State<Authenticator>,
    mut request: Request,
    next: Next,
) -> Response {
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
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
        Some(token) => auth.check(token, source).await,
    };
    match result {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => {
            auth.inner.metrics.auth_failure(e.metric_reason());
            match &e {
                AuthError::Review(err) => {
                    tracing::warn!(error = %err, %source, "cannot review a token")
                }
                _ => tracing::info!(reason = e.metric_reason(), %source, "refused an MCP request"),
            }
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

/// Tool calls in flight per caller: a caller over its cap gets a `TooManyCalls` tool result.
pub struct CallSlots {
    max: usize,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// One call's place in its caller's [`CallSlots`]; freed on drop.
pub struct CallSlot {
    username: String,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl CallSlots {
    /// At most `max` calls in flight per caller.
    pub fn new(max: usize) -> CallSlots {
        CallSlots {
            max,
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for one more call of `caller`, or the message of a refusal.
    pub fn enter(&self, caller: &Caller) -> Result<CallSlot, String> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(caller.username.clone()).or_insert(0);
        if *n >= self.max {
            return Err(format!(
                "too many calls in flight for {}: at most {} at once; wait for one to finish \
                 (or call with wait=false and read the request later with get_workspace_start)",
                caller.username, self.max
            ));
        }
        *n += 1;
        Ok(CallSlot {
            username: caller.username.clone(),
            held: Arc::clone(&self.held),
        })
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.username) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.username);
            }
        }
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
        let r = AuthError::InvalidToken.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = AuthError::TooManyAttempts(7).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            r.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(7u64))
        );
    }

    #[test]
    fn a_caller_over_its_call_cap_is_refused_until_a_call_ends() {
        let slots = CallSlots::new(2);
        let a = caller("system:serviceaccount:a:bot");
        let first = slots.enter(&a).expect("first");
        let _second = slots.enter(&a).expect("second");
        let refused = slots.enter(&a).err().expect("third is over the cap");
        assert!(refused.contains("at most 2 at once"), "{refused}");
        assert!(
            slots.enter(&caller("other")).is_ok(),
            "another caller has its own cap"
        );
        drop(first);
        assert!(slots.enter(&a).is_ok(), "a finished call frees its slot");
    }

    fn jwt(claims: &str) -> String {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(claims))
    }

    #[test]
    fn valid_tokens_are_cached_until_shortly_before_their_exp_at_most_the_cap() {
        let now = jiff::Timestamp::from_second(1_000_000).expect("time");
        let cap = Duration::from_secs(300);
        let soon = jwt(r#"{"exp":1000100}"#);
        assert_eq!(valid_ttl(&soon, cap, now), Duration::from_secs(70));
        let later = jwt(r#"{"exp":1003600}"#);
        assert_eq!(valid_ttl(&later, cap, now), cap);
        let expiring = jwt(r#"{"exp":1000010}"#);
        assert_eq!(valid_ttl(&expiring, cap, now), Duration::ZERO);
        assert_eq!(valid_ttl("not-a-jwt", cap, now), cap);
        assert_eq!(valid_ttl("a.%%%.c", cap, now), cap);
    }

    #[test]
    fn unauthenticated_callers_see_a_fixed_message() {
        for e in [AuthError::InvalidToken, AuthError::OversizedToken] {
            assert_eq!(e.to_string(), "invalid token");
        }
    }
}
