//! Who is calling a port that takes Kubernetes bearer tokens (the MCP server, the operator's build
//! logs): an HTTP middleware ([`authenticate`]) validates the token with a TokenReview (for the
//! configured audiences) before the request is read, and puts the [`Caller`] into the request;
//! handlers then ask [`may`] (a SubjectAccessReview) what the caller may do. Review answers are
//! cached by the token's SHA-256 (valid tokens until shortly before their JWT `exp`, at most a
//! configured cap; refused ones for [`INVALID_TOKEN_TTL`]); tokens over [`MAX_TOKEN_BYTES`] are
//! refused unreviewed, and each source address may cause only so many reviews a minute.
//! Unauthenticated callers get fixed messages, never the API server's. Tokens are never logged or
//! stored; [`guard`] puts a router behind these checks and the listener's limits.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

use super::listener::{self, BodyBounds, CallCap, Limits, Refusal, Refusals};

/// The authenticated caller of a request, as the TokenReview reported it.
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
        service_account_of(&self.username).map(|(ns, _)| ns)
    }
}

/// The namespace and name of a ServiceAccount username (`system:serviceaccount:NS:NAME`).
pub fn service_account_of(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty()).then_some((ns, name))
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

    /// HTTP 401 with a `WWW-Authenticate` challenge (429 when the address is rate limited, 503
    /// when the TokenReview failed, both with `Retry-After`), its body made by `refusals`.
    pub fn respond(&self, refusals: &Refusals) -> Response {
        let (status, retry_after) = match self {
            AuthError::Review(_) => (StatusCode::SERVICE_UNAVAILABLE, Some(REVIEW_RETRY_AFTER)),
            AuthError::TooManyAttempts(secs) => (StatusCode::TOO_MANY_REQUESTS, Some(*secs)),
            _ => (StatusCode::UNAUTHORIZED, None),
        };
        let mut resp = refusals.respond(
            Refusal::Unauthenticated,
            status,
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
    /// Tokens must be valid for one of these audiences (empty: the API server's own).
    pub audiences: Vec<String>,
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
/// (never the token), and limiting the reviews each source address can cause. Its refusals are
/// counted and worded by the port's [`Refusals`].
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    settings: AuthSettings,
    refusals: Refusals,
    cache: quick_cache::sync::Cache<[u8; 32], Cached>,
    sources: DefaultKeyedRateLimiter<IpAddr>,
}

impl Authenticator {
    /// An authenticator that reviews tokens as `client` with `settings`.
    pub fn new(client: kube::Client, settings: AuthSettings, refusals: Refusals) -> Self {
        let quota =
            Quota::per_minute(settings.reviews_per_minute).allow_burst(settings.review_burst);
        Authenticator {
            inner: Arc::new(Inner {
                client,
                settings,
                refusals,
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
        let audiences = &self.inner.settings.audiences;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: (!audiences.is_empty()).then(|| audiences.clone()),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.inner.client.clone());
        let metrics = &self.inner.refusals.metrics;
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
        if !audiences.is_empty()
            && !status
                .audiences
                .as_ref()
                .is_some_and(|got| got.iter().any(|a| audiences.contains(a)))
        {
            tracing::debug!(?audiences, "a token is not valid for the audiences");
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

/// Axum middleware: every request carries a token the API server accepts; the [`Caller`] goes
/// into the request's extensions, where the handlers find it.
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
            let refusals = &auth.inner.refusals;
            refusals.metrics.auth_failure(e.metric_reason());
            match &e {
                AuthError::Review(err) => {
                    tracing::warn!(error = %err, %source, "cannot review a token")
                }
                _ => tracing::info!(reason = e.metric_reason(), %source, "refused a request"),
            }
            e.respond(refusals)
        }
    }
}

/// The answer of a SubjectAccessReview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// RBAC allows it.
    Allowed,
    /// RBAC does not; the authorizer's reason, if it gave one.
    Denied(Option<String>),
}

/// Asks whether `caller` may do what `attributes` say (verb, group, resource, namespace, ...).
pub async fn may(
    client: &kube::Client,
    caller: &Caller,
    attributes: ResourceAttributes,
) -> Result<Access, kube::Error> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(caller.username.clone()),
            uid: caller.uid.clone(),
            groups: Some(caller.groups.clone()),
            extra: (!caller.extra.is_empty()).then(|| caller.extra.clone()),
            resource_attributes: Some(attributes),
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
        return Ok(Access::Allowed);
    }
    Ok(Access::Denied(status.reason.filter(|r| !r.is_empty())))
}

/// `app` behind the port's defences, outermost first: the cap of requests in flight, the token
/// check (from headers alone), then the body (read in full, bounded in size and time).
pub fn guard(app: Router, limits: Limits, auth: Authenticator) -> Router {
    let refusals = auth.inner.refusals.clone();
    app.layer(axum::middleware::from_fn_with_state(
        BodyBounds::new(limits, refusals.clone()),
        listener::bound_body,
    ))
    .layer(axum::middleware::from_fn_with_state(auth, authenticate))
    .layer(axum::middleware::from_fn_with_state(
        CallCap::new(limits.max_calls, refusals),
        listener::cap_calls,
    ))
}

#[cfg(test)]
impl Caller {
    /// A caller that is only `username`: no UID, groups or extra attributes.
    pub(crate) fn for_test(username: &str) -> Caller {
        Caller {
            username: username.into(),
            uid: None,
            groups: vec![],
            extra: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_callers_have_a_namespace() {
        assert_eq!(
            Caller::for_test("system:serviceaccount:bots:x").namespace(),
            Some("bots")
        );
        assert_eq!(Caller::for_test("alice").namespace(), None);
    }

    #[test]
    fn refusals_are_401_with_a_challenge_except_review_errors() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = listener::ListenerMetrics::register(&mut registry, "test", "test");
        let refusals = Refusals::new(Arc::new(metrics), listener::message_body);
        let r = AuthError::MissingToken.respond(&refusals);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
        let r = AuthError::InvalidToken.respond(&refusals);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = AuthError::TooManyAttempts(7).respond(&refusals);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            r.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(7u64))
        );
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
