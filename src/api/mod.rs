//! The shared vocabulary of every program, without I/O: the `WorkspaceStartRequest` resource
//! ([`crd`]), its conditions and reasons ([`conditions`]), the shard label ([`shard`]), Go
//! durations ([`duration`]) and the tenancy policy resource ([`policy`]). Everything here is
//! data and pure functions; the Coder client, the operator and the client side all build on it,
//! and it imports none of them.

pub mod bounds;
pub mod conditions;
pub mod crd;
pub mod duration;
pub mod policy;
pub mod reason;
pub mod shard;
