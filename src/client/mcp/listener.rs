//! The MCP port's own defences, before any token is looked at: a cap on open connections, a
//! timeout for idle connections and for request headers, a cap on MCP requests in flight (HTTP 503
//! with `Retry-After` over it), and a size limit and a deadline for request bodies.
//!
//! Connections are served by hyper's HTTP/1.1 server (the transport of MCP's Streamable HTTP
//! clients). Its header read timer runs from the moment a connection waits for a request: on a
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
use tower::ServiceExt;

use super::auth::json_rpc_error;
use super::metrics::McpMetrics;

/// JSON-RPC error code of a request refused by a limit (implementation-defined range).
pub const LIMITED_CODE: i32 = -32002;

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
    /// MCP requests (tool calls included) in flight at once, over all callers.
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

/// Serves `app` on `listener` within `limits` until `shutdown` resolves, then lets open
/// connections finish (at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<McpMetrics>,
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
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
        let conn = graceful.watch(conn);
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _permit = permit;
            metrics.connections.inc();
            if let Err(e) = conn.await {
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
    metrics: Arc<McpMetrics>,
}

impl CallCap {
    /// At most `max` requests in flight.
    pub fn new(max: usize, metrics: Arc<McpMetrics>) -> CallCap {
        CallCap {
            permits: Arc::new(Semaphore::new(max)),
            metrics,
        }
    }
}

/// Axum middleware: a request over the cap of requests in flight is answered HTTP 503 with
/// `Retry-After`. A request's place is held until its response body ends (a waiting tool call
/// streams its result).
pub async fn cap_calls(State(cap): State<CallCap>, request: Request, next: Next) -> Response {
    let Ok(permit) = Arc::clone(&cap.permits).try_acquire_owned() else {
        cap.metrics.limited("calls");
        return json_rpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            LIMITED_CODE,
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
    metrics: Arc<McpMetrics>,
}

impl BodyBounds {
    /// Bodies within `limits`.
    pub fn new(limits: Limits, metrics: Arc<McpMetrics>) -> BodyBounds {
        BodyBounds { limits, metrics }
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
            let mut r = json_rpc_error(
                StatusCode::BAD_REQUEST,
                LIMITED_CODE,
                "cannot read the request body".to_owned(),
                None,
            );
            close(&mut r);
            return r;
        }
        Err(_) => {
            b.metrics.limited("body_timeout");
            let mut r = json_rpc_error(
                StatusCode::REQUEST_TIMEOUT,
                LIMITED_CODE,
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
    b.metrics.limited("body_size");
    let mut r = json_rpc_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        LIMITED_CODE,
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
