//! The client side: how people and chat services start workspaces through requests. [`submit`]
//! checks a start target and creates the request, [`track`] follows it until it finishes,
//! [`result`] reports it in the shape of Coder's own `start_workspace` tool, [`idempotency`] makes a
//! retried start with the same request id find the first one's request; [`start`] is the
//! command (and `kubectl wsr` plugin) and [`mcp`] the MCP server built on them.

pub mod idempotency;
pub mod logs;
pub mod mcp;
pub mod result;
pub mod start;
pub mod submit;
pub mod track;
