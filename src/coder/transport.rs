//! The HTTP transport to a Coder deployment: connection pools, connector and TLS setup, shared
//! by every [`CoderClient`](super::CoderClient) of that deployment that trusts the same
//! certificates, whatever its token.
//!
//! A transport carries no identity. The session token is a header of each request (set by the
//! client, never a default header of the transport); reqwest is built without its cookie store
//! (no `cookies` feature), TLS presents no client certificate, and redirects are not followed,
//! so nothing a connection or the pool keeps can make one credential's request go out as
//! another's: a pooled connection reused by another tenant's client carries that client's
//! token and nothing of the previous one. What a pooled connection does carry is the server
//! verification it passed, which is why a transport is shared only by clients that trust the
//! same certificates.

use std::time::Duration;

use super::error::CoderError;
use super::tls::Trust;

/// How long connecting to Coder may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a watch stream may stay silent at the socket before the read fails (Coder pings
/// every 15 s; the client's `watch_idle` closes silent streams sooner).
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(45);

/// Idle connections kept per host in each pool.
const MAX_IDLE_PER_HOST: usize = 16;

/// Two reqwest clients, one for requests (with a timeout) and one for watch streams (no overall
/// timeout), each with its own pool. Cheap to share (`Arc`); dropped,
/// with its pooled connections, when its last client is.
pub struct Transport {
    pub(crate) http: reqwest::Client,
    pub(crate) stream_http: reqwest::Client,
    /// The timeout `http` applies, for messages.
    pub(crate) request_timeout: Duration,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// A transport whose requests time out after `request_timeout`, trusting `trust` (`None`:
    /// the platform's CA store).
    pub fn new(request_timeout: Duration, trust: Option<&Trust>) -> Result<Transport, CoderError> {
        let trust = match trust {
            Some(t) => t.clone(),
            None => Trust::platform()
                .map_err(|e| CoderError::Config(format!("the platform's CA store {e}")))?,
        };
        // Redirects are not followed: the session token must reach only the configured URL.
        let client = |builder: reqwest::ClientBuilder| {
            builder
                .connect_timeout(CONNECT_TIMEOUT)
                .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
                .redirect(reqwest::redirect::Policy::none())
                .use_preconfigured_tls(trust.client_config())
                .build()
                .map_err(|e| CoderError::Config(format!("http client: {e}")))
        };
        let http = client(reqwest::Client::builder().timeout(request_timeout))?;
        let stream_http = client(reqwest::Client::builder().read_timeout(STREAM_READ_TIMEOUT))?;
        Ok(Transport {
            http,
            stream_http,
            request_timeout,
        })
    }
}
