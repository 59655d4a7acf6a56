//! Metrics of the MCP server, served on its own `/metrics` next to `/healthz` and `/readyz` by
//! [`crate::process::http::serve`].

use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;

use crate::process::http::Exposition;

/// `{tool, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `start_workspace` or `get_workspace_start`.
    pub tool: String,
    /// `ready`, `failed`, `in_progress`, `timeout`, `forbidden`, `rate_limited`, `not_found`,
    /// `invalid_arguments` or `error`.
    pub outcome: &'static str,
}

/// `{tool}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    /// Tool name.
    pub tool: String,
}

/// `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    /// `missing_token`, `invalid_token` or `review_error`.
    pub reason: &'static str,
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
    /// `workspace_start_operator_mcp_auth_failures_total{reason}`.
    pub auth_failures: Family<AuthLabels, Counter>,
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
        let auth_failures = Family::<AuthLabels, Counter>::default();
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
        registry.register(
            "workspace_start_operator_mcp_auth_failures",
            "MCP requests refused before any tool ran, by reason",
            auth_failures.clone(),
        );
        for reason in ["missing_token", "invalid_token", "review_error"] {
            let _ = auth_failures.get_or_create(&AuthLabels { reason });
        }
        McpMetrics {
            registry,
            calls,
            duration,
            in_flight,
            auth_failures,
        }
    }

    /// Counts one refused request.
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&AuthLabels { reason })
            .inc();
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
