//! The Coder clients the operator keeps, one per credential (URL, token and extra CA), so the
//! requests of one credential share its rate limit, connection pool and what it knows about
//! users. Bounded: at most [`CacheLimits::max_clients`] entries, and an entry no request used
//! for [`CacheLimits::idle`] is dropped, so the memory of a `coderRef` token comes back once
//! its requests and Secret are gone (the sweep also hands the freed pages back to the OS). A
//! request still holding an evicted client keeps it until it finishes; its next reconcile gets
//! a new one.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::sync::Cache;

use crate::coder::credentials::SessionToken;
use crate::coder::{CaError, ClientOptions, CoderClient, CoderError, Trust};
use crate::process::memory;

/// Default [`CacheLimits::max_clients`].
pub const DEFAULT_MAX_CLIENTS: u64 = 1024;
/// Default [`CacheLimits::idle`]: 10 minutes.
pub const DEFAULT_CLIENT_IDLE: Duration = Duration::from_secs(600);

/// How many clients are kept and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// The most clients kept; beyond it the least useful is dropped.
    pub max_clients: u64,
    /// A client no request used for this long is dropped.
    pub idle: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_clients: DEFAULT_MAX_CLIENTS,
            idle: DEFAULT_CLIENT_IDLE,
        }
    }
}

/// What tells one credential from another. Holds the token (memory only, never shown).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Credential {
    url: String,
    token: String,
    /// Fingerprint of the extra CA bundle, if any (0: none).
    ca: u64,
}

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The extra CA bundle cannot be used.
    #[error("{0}")]
    Ca(#[from] CaError),
    /// The client cannot be made (URL, TLS setup).
    #[error("{0}")]
    Coder(#[from] CoderError),
}

/// A client and the key that names its credential without showing it.
#[derive(Clone)]
struct Entry {
    client: CoderClient,
    key: String,
}

/// The client cache (see the module documentation).
pub struct ClientCache {
    clients: Cache<Credential, Entry>,
    opts: ClientOptions,
    /// Keys fingerprints with a per-process secret, so a fingerprint says nothing about a
    /// token, and no token can be chosen to collide with another's.
    hasher: RandomState,
    /// Runs the expiry of idle clients while nothing else touches the cache.
    _sweeper: Option<Sweeper>,
}

/// Every `every`, drops the clients due; a tick after some were dropped (`dropped` counts them),
/// when the connections they held have closed too, hands the memory they freed back to the OS
/// (mimalloc keeps it otherwise; see [`memory`]).
async fn sweep(clients: Cache<Credential, Entry>, dropped: Arc<AtomicU64>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut release_due) = (0, false);
    loop {
        tick.tick().await;
        clients.run_pending_tasks();
        if release_due {
            memory::release_freed_memory();
        }
        let now = dropped.load(Ordering::Relaxed);
        release_due = now != seen;
        seen = now;
    }
}

/// Aborts the expiry task when the cache is dropped.
struct Sweeper(tokio::task::JoinHandle<()>);

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ClientCache {
    /// An empty cache of clients made with `opts`. Within a tokio runtime it starts the task
    /// that drops idle clients even while no request comes (else they go on the next use).
    pub fn new(opts: ClientOptions, limits: CacheLimits) -> ClientCache {
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&dropped);
        let clients: Cache<Credential, Entry> = Cache::builder()
            .max_capacity(limits.max_clients)
            .time_to_idle(limits.idle)
            .eviction_listener(move |_, entry: Entry, cause| {
                counted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(connection = %entry.key, ?cause, "dropped a Coder client");
            })
            .build();
        let sweeper = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let every =
                (limits.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
            Sweeper(rt.spawn(sweep(clients.clone(), dropped, every)))
        });
        ClientCache {
            clients,
            opts,
            hasher: RandomState::new(),
            _sweeper: sweeper,
        }
    }

    /// The client for `url` and `token`, trusting also the CA certificates in `ca` (a PEM
    /// bundle) when given, made on first use; and its key (`url#fingerprint`, never the
    /// token). The bundle is read only when the client is made.
    pub fn client(
        &self,
        url: &str,
        token: SessionToken,
        ca: Option<&[u8]>,
    ) -> Result<(CoderClient, String), ClientError> {
        let url = url.trim_end_matches('/');
        let credential = Credential {
            url: url.to_owned(),
            token: token.expose().to_owned(),
            ca: ca.map_or(0, |pem| self.hasher.hash_one(pem) | 1),
        };
        let make = || -> Result<Entry, ClientError> {
            let mut opts = self.opts.clone();
            if let Some(pem) = ca {
                let base = match &opts.trust {
                    Some(t) => t.clone(),
                    None => Trust::platform()?,
                };
                opts.trust = Some(base.with_pem(pem)?);
            }
            let fingerprint = self.hasher.hash_one(&credential);
            Ok(Entry {
                client: CoderClient::new(url, token, &opts)?,
                key: format!("{url}#{fingerprint:016x}"),
            })
        };
        let entry = self
            .clients
            .try_get_with(credential.clone(), make)
            .map_err(|e| match e.as_ref() {
                ClientError::Ca(ca) => ClientError::Ca(ca.clone()),
                ClientError::Coder(c) => ClientError::Coder(CoderError::Config(c.to_string())),
            })?;
        Ok((entry.client, entry.key))
    }

    /// How many clients are kept now (after dropping those due).
    pub fn len(&self) -> u64 {
        self.clients.run_pending_tasks();
        self.clients.entry_count()
    }

    /// True when no client is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: &str) -> SessionToken {
        SessionToken::parse(t).expect("token")
    }

    #[tokio::test]
    async fn one_client_per_credential_and_idle_ones_are_dropped() {
        let cache = ClientCache::new(
            ClientOptions::default(),
            CacheLimits {
                max_clients: 100,
                idle: Duration::from_millis(300),
            },
        );
        let url = "http://127.0.0.1:9";
        let (a, key_a) = cache.client(url, token("secret-a"), None).expect("a");
        let (again, key_again) = cache
            .client("http://127.0.0.1:9/", token("secret-a"), None)
            .expect("a");
        assert_eq!(key_a, key_again, "same credential, same client");
        assert_eq!(a.base_url(), again.base_url());
        let (_, key_b) = cache.client(url, token("secret-b"), None).expect("b");
        assert_ne!(key_a, key_b);
        assert!(!key_a.contains("secret"), "no token in the key: {key_a}");
        assert!(
            matches!(
                cache.client(url, token("secret-a"), Some(b"no pem")),
                Err(ClientError::Ca(CaError::NoCertificate))
            ),
            "a CA bundle without certificates is refused"
        );
        assert_eq!(cache.len(), 2);
        // Nothing uses them: the sweeper drops both without another call to the cache.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cache.clients.entry_count() > 0 {
            assert!(std::time::Instant::now() < deadline, "idle clients kept");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn the_cache_never_holds_more_than_its_limit() {
        let cache = ClientCache::new(
            ClientOptions::default(),
            CacheLimits {
                max_clients: 10,
                idle: Duration::from_secs(600),
            },
        );
        for i in 0..300 {
            cache
                .client("http://127.0.0.1:9", token(&format!("token-{i}")), None)
                .expect("client");
        }
        assert!(cache.len() <= 10, "{} clients kept", cache.len());
    }
}
