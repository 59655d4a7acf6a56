//! The defences of a port that serves callers with bearer tokens (the MCP server's `/mcp`, the
//! operator's build logs), before any token is looked at: a cap on open connections, a timeout
//! for idle connections and for request headers, a cap on requests in flight (HTTP 503 with
//! `Retry-After` over it), and a size limit and a deadline for request bodies. What a refusal's
//! body looks like is the program's ([`Refusals`]); what it counts is [`ListenerMetrics`].
//!
//! Connections are served by hyper's HTTP/1.1 server (the transport of MCP's Streamable HTTP
//! clients and of the logs clients). Its header read timer runs from the moment a connection waits for a request: on a
//! new connection, between keep-alive requests, and while headers trickle in. So one timeout,
//! [`Limits::idle_timeout`], closes connections that never send a request, idle keep-alive
//! connections and slow headers alike. It does not run while a response streams (a waiting tool
//! call holds its connection for as long as it waits).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;

/// Seconds a caller is told to wait (`Retry-After`) when the server is at its call cap.
pub const BUSY_RETRY_AFTER: u64 = 5;

/// How long shutdown waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open client connections at most; further ones are closed at once.
    pub max_connections: usize,
    /// A connection waiting this long for (the rest of) a request's headers is closed.
    pub idle_timeout: Duration,
    /// A request body must have arrived in full this long after its headers.
    pub body_timeout: Duration,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Requests in flight at once, over all callers (for MCP: tool calls included).
    pub max_calls: usize,
}

/// Pending connections the kernel queues for [`serve`] to accept (capped by the system's
/// `net.core.somaxconn`). A burst of new connections beyond the queue is not refused by the
/// kernel: the clients believe they are connected while the server never sees them.
const BACKLOG: u32 = 4096;

/// A listener on `addr` with [`BACKLOG`] pending connections.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves `app` on `listener` within `limits` (over TLS with `tls`) until `shutdown` resolves,
/// then lets open connections finish (at most [`SHUTDOWN_GRACE`]). A TLS handshake must end
/// within [`Limits::idle_timeout`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<ListenerMetrics>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            metrics.limited("connections");
            tracing::debug!(%peer, "connection cap reached; closing a new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app
            .clone()
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.map(Body::new)
            });
        let service = TowerToHyperService::new(app);
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let (metrics, tls) = (Arc::clone(&metrics), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            metrics.connections.inc();
            let served = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn).await
                }
                Some(tls) => {
                    match tokio::time::timeout(limits.idle_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(conn).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "no TLS handshake within the idle timeout");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, %peer, "connection ended");
            }
            metrics.connections.dec();
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace; closing them");
    }
    Ok(())
}

/// State of [`cap_calls`].
#[derive(Clone)]
pub struct CallCap {
    permits: Arc<Semaphore>,
    refusals: Refusals,
}

impl CallCap {
    /// At most `max` requests in flight.
    pub fn new(max: usize, refusals: Refusals) -> CallCap {
        CallCap {
            permits: Arc::new(Semaphore::new(max)),
            refusals,
        }
    }
}

/// Axum middleware: a request over the cap of requests in flight is answered HTTP 503 with
/// `Retry-After`. A request's place is held until its response body ends (a waiting tool call
/// streams its result).
pub async fn cap_calls(State(cap): State<CallCap>, request: Request, next: Next) -> Response {
    let Ok(permit) = Arc::clone(&cap.permits).try_acquire_owned() else {
        cap.refusals.metrics.limited("calls");
        return cap.refusals.respond(
            Refusal::Limited,
            StatusCode::SERVICE_UNAVAILABLE,
            format!("server busy: too many calls in flight; retry in {BUSY_RETRY_AFTER}s"),
            Some(BUSY_RETRY_AFTER),
        );
    };
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |frame| {
        let _held = &permit;
        frame
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// State of [`bound_body`].
#[derive(Clone)]
pub struct BodyBounds {
    limits: Limits,
    refusals: Refusals,
}

impl BodyBounds {
    /// Bodies within `limits`.
    pub fn new(limits: Limits, refusals: Refusals) -> BodyBounds {
        BodyBounds { limits, refusals }
    }
}

/// Axum middleware: reads the request body in full, refusing one larger than
/// [`Limits::max_body_bytes`] (HTTP 413) or not complete within [`Limits::body_timeout`] (HTTP
/// 408, and the connection is closed).
pub async fn bound_body(State(b): State<BodyBounds>, request: Request, next: Next) -> Response {
    let max = b.limits.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large(&b, max);
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(b.limits.body_timeout, Limited::new(body, max).collect());
    let bytes = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(&b, max),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot read a request body");
            let mut r = b.refusals.respond(
                Refusal::Limited,
                StatusCode::BAD_REQUEST,
                "cannot read the request body".to_owned(),
                None,
            );
            close(&mut r);
            return r;
        }
        Err(_) => {
            b.refusals.metrics.limited("body_timeout");
            let mut r = b.refusals.respond(
                Refusal::Limited,
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {}s",
                    b.limits.body_timeout.as_secs()
                ),
                None,
            );
            close(&mut r);
            return r;
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn too_large(b: &BodyBounds, max: usize) -> Response {
    b.refusals.metrics.limited("body_size");
    let mut r = b.refusals.respond(
        Refusal::Limited,
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body over {max} bytes"),
        None,
    );
    close(&mut r);
    r
}

/// Asks hyper to close the connection after this response (the rest of the body is not read).
fn close(r: &mut Response) {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// What kind of refusal a response carries (programs may word or code them differently, e.g.
/// MCP's JSON-RPC error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The caller was not authenticated (or could not be, now).
    Unauthenticated,
    /// A limit of the listener refused the request.
    Limited,
}

/// Builds the body of a refusal: `(kind, status, message)` to a response with that status.
pub type ErrorBody = fn(Refusal, StatusCode, String) -> Response;

/// The default [`ErrorBody`]: `{"message": "..."}` with the status.
pub fn message_body(_kind: Refusal, status: StatusCode, message: String) -> Response {
    use axum::response::IntoResponse;
    (
        status,
        axum::Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}

/// How a port refuses: the body its clients understand, and the counters of refusals.
#[derive(Clone)]
pub struct Refusals {
    /// What the port counts.
    pub metrics: Arc<ListenerMetrics>,
    body: ErrorBody,
}

impl Refusals {
    /// Refusals counted in `metrics`, with bodies made by `body`.
    pub fn new(metrics: Arc<ListenerMetrics>, body: ErrorBody) -> Refusals {
        Refusals { metrics, body }
    }

    /// A refusal with `status` and `message`, and `Retry-After` when `retry_after` is given.
    pub fn respond(
        &self,
        kind: Refusal,
        status: StatusCode,
        message: String,
        retry_after: Option<u64>,
    ) -> Response {
        let mut resp = (self.body)(kind, status, message);
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    /// One of [`AUTH_FAILURE_REASONS`].
    pub reason: &'static str,
}

/// Why a request was refused before it was served.
pub const AUTH_FAILURE_REASONS: [&str; 5] = [
    "missing_token",
    "invalid_token",
    "oversized_token",
    "review_error",
    "source_rate_limited",
];

/// `{result}` of a TokenReview sent to the API server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// `authenticated`, `unauthenticated` or `error`.
    pub result: &'static str,
}

/// `{limit}` that refused a request or a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// One of [`LIMITS`], or a program's own (the MCP server's `calls_per_caller`).
    pub limit: &'static str,
}

/// The limits of the listener counted by [`ListenerMetrics::limited`].
pub const LIMITS: [&str; 4] = ["calls", "connections", "body_size", "body_timeout"];

/// What a guarded port counts, registered under a program's prefix (`PREFIX_auth_failures_total`,
/// `PREFIX_token_reviews_total`, `PREFIX_limited_total`, `PREFIX_connections`).
pub struct ListenerMetrics {
    /// `{prefix}_auth_failures_total{reason}`: requests refused before they were served.
    pub auth_failures: Family<AuthLabels, Counter>,
    /// `{prefix}_token_reviews_total{result}`: TokenReviews sent (cache misses only).
    pub token_reviews: Family<ReviewLabels, Counter>,
    /// `{prefix}_limited_total{limit}`: requests and connections refused by a limit.
    pub limited: Family<LimitLabels, Counter>,
    /// `{prefix}_connections`: open client connections.
    pub connections: Gauge,
}

impl ListenerMetrics {
    /// Registers the metrics in `registry` as `prefix_…`, the port named `port` in help texts;
    /// every series of a known label starts at zero.
    pub fn register(registry: &mut Registry, prefix: &str, port: &str) -> ListenerMetrics {
        let m = ListenerMetrics {
            auth_failures: Family::default(),
            token_reviews: Family::default(),
            limited: Family::default(),
            connections: Gauge::default(),
        };
        registry.register(
            format!("{prefix}_auth_failures"),
            format!("{port} requests refused before they were served, by reason"),
            m.auth_failures.clone(),
        );
        registry.register(
            format!("{prefix}_token_reviews"),
            "TokenReviews sent to the API server (tokens not answered from the cache)",
            m.token_reviews.clone(),
        );
        registry.register(
            format!("{prefix}_limited"),
            format!("{port} requests and connections refused by a limit"),
            m.limited.clone(),
        );
        registry.register(
            format!("{prefix}_connections"),
            format!("Open client connections to the {port} port"),
            m.connections.clone(),
        );
        for reason in AUTH_FAILURE_REASONS {
            let _ = m.auth_failures.get_or_create(&AuthLabels { reason });
        }
        for result in ["authenticated", "unauthenticated", "error"] {
            let _ = m.token_reviews.get_or_create(&ReviewLabels { result });
        }
        for limit in LIMITS {
            let _ = m.limited.get_or_create(&LimitLabels { limit });
        }
        m
    }

    /// Counts one request refused before it was served.
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&AuthLabels { reason })
            .inc();
    }

    /// Counts one TokenReview sent, by `result`.
    pub fn token_review(&self, result: &'static str) {
        self.token_reviews
            .get_or_create(&ReviewLabels { result })
            .inc();
    }

    /// Counts one refusal by `limit`.
    pub fn limited(&self, limit: &'static str) {
        self.limited.get_or_create(&LimitLabels { limit }).inc();
    }
}
