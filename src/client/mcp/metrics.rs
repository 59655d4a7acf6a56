//! Metrics of the MCP server, served on its own `/metrics` next to `/healthz` and `/readyz` by
//! [`crate::process::http::serve`].

use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;

use std::sync::Arc;

use crate::process::http::Exposition;
use crate::process::listener::{LimitLabels, ListenerMetrics};

/// Prefix of the MCP server's metric names.
const PREFIX: &str = "workspace_start_operator_mcp";

/// `{tool, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `start_workspace` or `get_workspace_start`.
    pub tool: String,
    /// `ready`, `failed`, `in_progress`, `timeout`, `forbidden`, `rate_limited`,
    /// `too_many_calls`, `not_found`, `invalid_arguments` or `error`.
    pub outcome: &'static str,
}

/// `{tool}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    /// Tool name.
    pub tool: String,
}

/// Tool calls, their duration, and refused requests.
pub struct McpMetrics {
    registry: Registry,
    /// `workspace_start_operator_mcp_tool_calls_total{tool,outcome}`.
    pub calls: Family<CallLabels, Counter>,
    /// `workspace_start_operator_mcp_tool_call_duration_seconds{tool}`.
    pub duration: Family<ToolLabels, Histogram>,
    /// `workspace_start_operator_mcp_tool_calls_in_flight`.
    pub in_flight: Gauge,
    /// The port's `workspace_start_operator_mcp_auth_failures_total{reason}`,
    /// `…_token_reviews_total{result}`, `…_limited_total{limit}` (with `calls_per_caller`, the
    /// MCP server's own limit) and `…_connections`.
    pub port: Arc<ListenerMetrics>,
    /// `workspace_start_operator_mcp_shared_watches`: namespaces with a shared watch open.
    pub shared_watches: Gauge,
    /// `workspace_start_operator_mcp_waiting_calls`: tool calls waiting on a shared watch.
    pub waiting_calls: Gauge,
}

impl Default for McpMetrics {
    fn default() -> Self {
        McpMetrics::new()
    }
}

impl McpMetrics {
    /// Registers every metric (each series starts at zero).
    pub fn new() -> McpMetrics {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        let duration = Family::<ToolLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
            ])
        });
        let in_flight = Gauge::default();
        registry.register(
            "workspace_start_operator_mcp_tool_calls",
            "MCP tool calls by tool and outcome",
            calls.clone(),
        );
        registry.register(
            "workspace_start_operator_mcp_tool_call_duration_seconds",
            "Duration of MCP tool calls, including the wait for the workspace",
            duration.clone(),
        );
        registry.register(
            "workspace_start_operator_mcp_tool_calls_in_flight",
            "MCP tool calls being served",
            in_flight.clone(),
        );
        let port = ListenerMetrics::register(&mut registry, PREFIX, "MCP");
        let _ = port.limited.get_or_create(&LimitLabels {
            limit: "calls_per_caller",
        });
        let shared_watches = Gauge::default();
        registry.register(
            "workspace_start_operator_mcp_shared_watches",
            "Namespaces whose requests are watched for waiting tool calls (one watch each)",
            shared_watches.clone(),
        );
        let waiting_calls = Gauge::default();
        registry.register(
            "workspace_start_operator_mcp_waiting_calls",
            "Tool calls waiting for a request on a shared watch",
            waiting_calls.clone(),
        );
        McpMetrics {
            registry,
            calls,
            duration,
            in_flight,
            port: Arc::new(port),
            shared_watches,
            waiting_calls,
        }
    }

    /// Counts one refusal by `limit`.
    pub fn limited(&self, limit: &'static str) {
        self.port.limited(limit);
    }

    /// Records one finished tool call.
    pub fn call(&self, tool: &str, outcome: &'static str, seconds: f64) {
        let tool = tool.to_owned();
        self.calls
            .get_or_create(&CallLabels {
                tool: tool.clone(),
                outcome,
            })
            .inc();
        self.duration
            .get_or_create(&ToolLabels { tool })
            .observe(seconds);
    }
}

impl Exposition for McpMetrics {
    fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
