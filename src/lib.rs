//! workspace-start-operator: a Kubernetes operator that starts Coder workspaces on request.
//!
//! Data flows one way: [`controller`] observes Coder through [`coder`], asks the pure
//! [`decide`] state machine what to do, acts, and writes the status (see [`conditions`]).

pub mod admission;
pub mod coder;
pub mod conditions;
pub mod config;
pub mod connect;
pub mod controller;
pub mod crd;
pub mod decide;
pub mod events;
pub mod metrics;
pub mod shard;
pub mod status;
pub mod triggers;
pub mod watch;
