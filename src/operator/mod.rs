//! The operator (`run`): a kube-runtime controller that observes Coder, decides, acts and writes
//! status, one request at a time.
//!
//! - [`run`]: the process (leader election, metrics server, controller lifetime).
//! - [`controller`]: the kube-runtime controller and one reconcile pass.
//! - [`decide`]: the pure state machine (observed state → next status and action).
//! - [`connect`]: which Coder deployment and token serve a request; [`client_cache`]: the
//!   bounded cache of their clients.
//! - [`tenancy`]: which Coder users, parameters and shards a namespace's requests may use.
//! - [`streams`]: shared Coder watch streams and the per-workspace read cache.
//! - [`coder_health`]: one health signal per Coder endpoint; requests wait on it while Coder
//!   is down and are released together when it answers again.
//! - [`start_queue`]: how many requests not yet started are reconciled at once.
//! - [`round_robin`]: fairness across namespaces for the start and write slots.
//! - [`status`], [`events`], [`first_status`], [`write_slots`]: what is written to the API
//!   server, and in which order under load.
//! - [`triggers`], [`metrics`]: reconcile triggers and Prometheus metrics.
//! - [`timings`]: how long each stage of a finished request took (pure).
//! - [`logs_api`]: build logs on demand for callers RBAC allows (`--logs-addr`).

pub mod client_cache;
pub mod coder_failure;
pub mod coder_health;
pub mod coder_port;
pub mod connect;
pub mod controller;
pub mod decide;
pub mod events;
pub mod first_status;
pub mod logs_api;
pub mod metrics;

pub mod reconcile;
pub mod round_robin;
pub mod run;
pub mod start_queue;
pub mod status;
pub mod streams;
pub mod tenancy;
pub mod timings;
pub mod triggers;
pub mod write_slots;
