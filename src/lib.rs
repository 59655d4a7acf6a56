//! workspace-start-operator: a Kubernetes operator that starts Coder workspaces on request.
//!
//! Data flows one way: [`controller`] observes Coder through [`coder`], asks the pure
//! [`decide`] state machine what to do, acts, and writes the status (see [`conditions`]).
//!
//! Chat services and people start workspaces through requests too: [`mcp`] (an MCP server) and
//! [`start`] (a command and kubectl plugin) create one with [`submit`], follow it with [`follow`]
//! and report it as [`start_result`], in the shape of Coder's own `start_workspace` tool.

pub mod admission;
pub mod coder;
pub mod conditions;
pub mod config;
pub mod connect;
pub mod controller;
pub mod crd;
pub mod decide;
pub mod events;
pub mod first_status;
pub mod follow;
pub mod kube_client;
pub mod mcp;
pub mod metrics;
pub mod process;
pub mod shard;
pub mod start;
pub mod start_result;
pub mod status;
pub mod submit;
pub mod triggers;
pub mod watch;
pub mod write_slots;
