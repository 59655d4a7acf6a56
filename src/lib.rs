//! workspace-start-operator: a Kubernetes operator that starts Coder workspaces on request.
//!
//! Four rooms, each importing only the ones listed before it:
//! - [`api`]: the shared vocabulary (the CRD types, conditions and reasons, the shard label, Go
//!   durations), without I/O.
//! - [`coder`]: the Coder REST client; it speaks HTTP and knows nothing of the CRD.
//! - [`process`]: plumbing every program shares (logging, shutdown, the Kubernetes client, the
//!   health and metrics server); [`cli`] parses the command line of every subcommand.
//! - [`operator`]: `run`. Data flows one way: observe Coder → [`operator::decide`] (pure) →
//!   act → status.
//! - [`client`]: `start` and `mcp`, which create requests and track them for people and chat
//!   services, reporting in the shape of Coder's own `start_workspace` tool.

pub mod api;
pub mod cli;
pub mod client;
pub mod coder;
pub mod operator;
pub mod process;
