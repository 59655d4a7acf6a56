//! The client side: how people and chat services start workspaces through requests. [`submit`]
//! checks a start target and creates the request, [`track`] follows it until it finishes,
//! [`result`] reports it in the shape of Coder's own `start_workspace` tool; [`start`] is the
//! command (and `kubectl wsr` plugin) and [`mcp`] the MCP server built on them.

pub mod mcp;
pub mod result;
pub mod start;
pub mod submit;
pub mod track;
