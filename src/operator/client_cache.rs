//! The Coder clients the operator keeps, one per credential (URL, token and extra CA), so the
//! requests of one credential share its rate limit and what it knows about users. Bounded: at
//! most [`CacheLimits::max_clients`] entries, and an entry no request used for
//! [`CacheLimits::idle`] is dropped, so the memory of a `coderRef` token comes back once its
//! requests and Secret are gone (the sweep also hands the freed pages back to the OS, and
//! replaces the cache, whose tables keep the room of a burst, once it is empty). A
//! request still holding an evicted client keeps it until it finishes; its next reconcile gets
//! a new one.
//!
//! The connections are not per credential: the clients of one URL and one extra CA share a
//! [`Transport`] (pools, connector, TLS setup; the request timeout is the cache's, the same for
//! all), which holds no token (see [`crate::coder::transport`]). Transports are kept only by
//! the clients using them ([`Transports`] holds them weakly), so there are never more than
//! clients, and a stream of distinct CA bundles costs no more than its clients do.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use moka::sync::Cache;

use crate::coder::credentials::SessionToken;
use crate::coder::{CaError, ClientOptions, CoderClient, CoderError, Transport, Trust};
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

/// What tells one transport from another: the URL and the extra CA, never a token.
#[derive(Clone, PartialEq, Eq, Hash)]
struct TransportKey {
    url: String,
    /// Fingerprint of the extra CA bundle, if any (0: none).
    ca: u64,
}

/// What tells one credential from another. Holds the token (memory only, never shown).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Credential {
    transport: TransportKey,
    token: String,
}

/// The transports clients use now, by key. Held weakly: a transport goes with the last client
/// using it, and its entry with the next [`Transports::prune`] (every sweep and every new
/// transport), so the map never holds more than the clients alive do.
#[derive(Default)]
struct Transports(Mutex<HashMap<TransportKey, Weak<Transport>>>);

impl Transports {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TransportKey, Weak<Transport>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transport for `key` in use, else a new one from `make` (made without the lock; if
    /// another one was made meanwhile, that one is used).
    fn get_or_make(
        &self,
        key: &TransportKey,
        make: impl FnOnce() -> Result<Transport, ClientError>,
    ) -> Result<Arc<Transport>, ClientError> {
        if let Some(t) = self.lock().get(key).and_then(Weak::upgrade) {
            return Ok(t);
        }
        let made = Arc::new(make()?);
        let mut map = self.lock();
        map.retain(|_, t| t.strong_count() > 0);
        if let Some(t) = map.get(key).and_then(Weak::upgrade) {
            return Ok(t);
        }
        map.insert(key.clone(), Arc::downgrade(&made));
        Ok(made)
    }

    /// Forgets the transports no client uses any more; returns how many are in use.
    fn prune(&self) -> usize {
        let mut map = self.lock();
        map.retain(|_, t| t.strong_count() > 0);
        map.len()
    }
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

/// A cache that held at least this many clients is rebuilt once all are gone (see
/// [`Clients::shrink`]).
const REBUILD_FROM: u64 = 64;

/// The moka cache of clients, replaced by a fresh one after a burst: moka's tables keep the room
/// of the most entries they ever held, and a removed entry leaves its key (with its token) in
/// them until they are rehashed. Measured after 300 `coderRef` tokens came and went: 0.25 MiB
/// of tables and the 300 keys (tokens included) still live, scattered over pages the
/// allocator could then not return.
struct Clients {
    cache: RwLock<Cache<Credential, Entry>>,
    limits: CacheLimits,
    /// How many clients were dropped (the eviction listener counts them).
    dropped: Arc<AtomicU64>,
}

impl Clients {
    fn new(limits: CacheLimits) -> Clients {
        let dropped = Arc::new(AtomicU64::new(0));
        Clients {
            cache: RwLock::new(Clients::build(limits, &dropped)),
            limits,
            dropped,
        }
    }

    /// An empty moka cache bounded by `limits` that counts and logs every client it drops.
    fn build(limits: CacheLimits, dropped: &Arc<AtomicU64>) -> Cache<Credential, Entry> {
        let counted = Arc::clone(dropped);
        Cache::builder()
            .max_capacity(limits.max_clients)
            .time_to_idle(limits.idle)
            .eviction_listener(move |_, entry: Entry, cause| {
                counted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(connection = %entry.key, ?cause, "dropped a Coder client");
            })
            .build()
    }

    /// The cache now (a handle; cheap).
    fn current(&self) -> Cache<Credential, Entry> {
        self.cache.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// When the cache held at least [`REBUILD_FROM`] clients (`peak`) and none is left, replaces
    /// it with a new one, dropping its tables; returns whether it did. Only an empty cache is
    /// replaced: moving clients over would lose those expired but not yet dropped (moka's
    /// iterator skips them) without their log line. A client made through a handle taken
    /// before the swap (by another thread; the operator has one) is not kept: its request
    /// holds it, the next makes another.
    fn shrink(&self, peak: u64) -> bool {
        let mut slot = self.cache.write().unwrap_or_else(|p| p.into_inner());
        slot.run_pending_tasks();
        if peak < REBUILD_FROM || slot.entry_count() > 0 {
            return false;
        }
        *slot = Clients::build(self.limits, &self.dropped);
        true
    }
}

/// The client cache (see the module documentation).
pub struct ClientCache {
    clients: Arc<Clients>,
    transports: Arc<Transports>,
    opts: ClientOptions,
    /// Keys fingerprints with a per-process secret, so a fingerprint says nothing about a
    /// token, and no token can be chosen to collide with another's.
    hasher: RandomState,
    /// Runs the expiry of idle clients while nothing else touches the cache.
    _sweeper: Option<Sweeper>,
}

/// Every `every`, drops the clients due, rebuilds the cache after a burst ([`Clients::shrink`])
/// and forgets the transports none uses; a tick after some clients were dropped or the cache
/// rebuilt, when the connections they held have closed too, hands the memory they freed back
/// to the OS (mimalloc keeps it otherwise; see [`memory`]).
async fn sweep(clients: Arc<Clients>, transports: Arc<Transports>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut release_due, mut peak) = (0, false, 0);
    loop {
        tick.tick().await;
        let cache = clients.current();
        cache.run_pending_tasks();
        peak = peak.max(cache.entry_count());
        drop(cache);
        let rebuilt = clients.shrink(peak);
        if rebuilt {
            peak = 0;
        }
        transports.prune();
        if release_due {
            memory::release_freed_memory();
        }
        let now = clients.dropped.load(Ordering::Relaxed);
        release_due = now != seen || rebuilt;
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
        let clients = Arc::new(Clients::new(limits));
        let transports = Arc::new(Transports::default());
        let sweeper = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let every =
                (limits.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
            let swept = (Arc::clone(&clients), Arc::clone(&transports));
            Sweeper(rt.spawn(sweep(swept.0, swept.1, every)))
        });
        ClientCache {
            clients,
            transports,
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
            transport: TransportKey {
                url: url.to_owned(),
                ca: ca.map_or(0, |pem| self.hasher.hash_one(pem) | 1),
            },
            token: token.expose().to_owned(),
        };
        let make = || -> Result<Entry, ClientError> {
            let transport = self
                .transports
                .get_or_make(&credential.transport, || self.transport(ca))?;
            let fingerprint = self.hasher.hash_one(&credential);
            Ok(Entry {
                client: CoderClient::with_transport(url, token, &self.opts, transport)?,
                key: format!("{url}#{fingerprint:016x}"),
            })
        };
        let entry = self
            .clients
            .current()
            .try_get_with(credential.clone(), make)
            .map_err(|e| match e.as_ref() {
                ClientError::Ca(ca) => ClientError::Ca(ca.clone()),
                ClientError::Coder(c) => ClientError::Coder(CoderError::Config(c.to_string())),
            })?;
        Ok((entry.client, entry.key))
    }

    /// A new transport trusting the cache's certificates plus those in `ca` (a PEM bundle).
    fn transport(&self, ca: Option<&[u8]>) -> Result<Transport, ClientError> {
        let timeout = self.opts.request_timeout;
        let Some(pem) = ca else {
            return Ok(Transport::new(timeout, self.opts.trust.as_ref())?);
        };
        let base = match &self.opts.trust {
            Some(t) => t.clone(),
            None => Trust::platform()?,
        };
        Ok(Transport::new(timeout, Some(&base.with_pem(pem)?))?)
    }

    /// How many transports clients use now (see the module documentation).
    pub fn transports(&self) -> usize {
        self.transports.prune()
    }

    /// How many clients are kept now (after dropping those due).
    pub fn len(&self) -> u64 {
        let cache = self.clients.current();
        cache.run_pending_tasks();
        cache.entry_count()
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
        while cache.clients.current().entry_count() > 0 {
            assert!(std::time::Instant::now() < deadline, "idle clients kept");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn clients_share_a_transport_per_url_and_ca_until_the_last_is_dropped() {
        let cache = ClientCache::new(
            ClientOptions::default(),
            CacheLimits {
                max_clients: 100,
                idle: Duration::from_millis(300),
            },
        );
        let ca = coder_sim::TestCa::generate("Tenant CA").expect("CA");
        let ca = Some(ca.ca_pem.as_bytes());
        let url = "http://127.0.0.1:9";
        for i in 0..20 {
            cache
                .client(url, token(&format!("t{i}")), None)
                .expect("client");
        }
        assert_eq!(cache.transports(), 1, "one URL, no extra CA");
        cache.client(url, token("t0"), ca).expect("with CA");
        cache.client(url, token("t1"), ca).expect("with CA");
        cache
            .client("http://127.0.0.1:10", token("t0"), None)
            .expect("other URL");
        assert_eq!(cache.transports(), 3, "per URL and CA, not per token");
        let (held, _) = cache.client(url, token("held"), None).expect("client");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cache.transports() > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "unused transports kept"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(held);
        assert_eq!(cache.transports(), 0, "gone with the last client using it");
    }

    #[tokio::test]
    async fn a_shared_transport_sends_each_client_its_own_token() {
        let srv = coder_sim::SimServer::start(coder_sim::SimConfig::default())
            .await
            .expect("sim");
        let sim = srv.sim();
        let (alice, bob) = (sim.add_user("alice"), sim.add_user("bob"));
        let cache = ClientCache::new(ClientOptions::default(), CacheLimits::default());
        let (a, _) = cache
            .client(&srv.url(), token(&alice.token), None)
            .expect("a");
        let (b, _) = cache
            .client(&srv.url(), token(&bob.token), None)
            .expect("b");
        assert_eq!(cache.transports(), 1);
        // Alternating over the same pooled connection: each request is its own client's.
        for _ in 0..3 {
            assert_eq!(a.me().await.expect("alice").username, "alice");
            assert_eq!(b.me().await.expect("bob").username, "bob");
        }
        let (stranger, _) = cache
            .client(&srv.url(), token("not-a-token"), None)
            .expect("c");
        assert!(
            matches!(stranger.me().await, Err(CoderError::Unauthorized { .. })),
            "a connection that served alice and bob lends no identity"
        );
    }

    #[tokio::test]
    async fn a_cache_emptied_after_a_burst_is_rebuilt() {
        let clients = Clients::new(CacheLimits::default());
        let cache = ClientCache::new(ClientOptions::default(), CacheLimits::default());
        let credential = |i: usize| Credential {
            transport: TransportKey {
                url: "http://127.0.0.1:9".into(),
                ca: 0,
            },
            token: format!("token-{i}"),
        };
        for i in 0..100 {
            let (client, key) = cache
                .client("http://127.0.0.1:9", token(&format!("token-{i}")), None)
                .expect("client");
            clients
                .current()
                .insert(credential(i), Entry { client, key });
        }
        let old = clients.current();
        for i in 1..100 {
            old.invalidate(&credential(i));
        }
        assert!(!clients.shrink(100), "one client left: kept as it is");
        assert!(old.get(&credential(0)).is_some());
        old.invalidate(&credential(0));
        assert!(!clients.shrink(40), "a small burst: kept as it is");
        assert!(clients.shrink(100), "all gone after a burst: rebuilt");
        assert_eq!(clients.current().entry_count(), 0);
        assert_eq!(
            clients.dropped.load(Ordering::Relaxed),
            100,
            "each client dropped is counted (and logged) once"
        );
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
