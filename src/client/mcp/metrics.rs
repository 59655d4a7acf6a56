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

/// `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    /// One of [`AUTH_FAILURE_REASONS`].
    pub reason: &'static str,
}

/// Why a request was refused before any tool ran.
pub const AUTH_FAILURE_REASONS: [&str; 5] = [
    "missing_token",
    "invalid_token",
    "oversized_token",
    "review_error",
    "source_rate_limited",
];

/// `{result}` of a TokenReview sent to the API server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// `authenticated`, `unauthenticated` or `error`.
    pub result: &'static str,
}

/// `{limit}` that refused a call or a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `calls_per_caller`, `calls`, `connections`, `body_size` or `body_timeout`.
    pub limit: &'static str,
}

/// The limits counted by [`McpMetrics::limited`].
pub const LIMITS: [&str; 5] = [
    "calls_per_caller",
    "calls",
    "connections",
    "body_size",
    "body_timeout",
];

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
    /// `workspace_start_operator_mcp_token_reviews_total{result}`: TokenReviews sent (cache
    /// misses only).
    pub token_reviews: Family<ReviewLabels, Counter>,
    /// `workspace_start_operator_mcp_limited_total{limit}`: calls, requests and connections
    /// refused by a limit.
    pub limited: Family<LimitLabels, Counter>,
    /// `workspace_start_operator_mcp_connections`: open client connections.
    pub connections: Gauge,
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
        for reason in AUTH_FAILURE_REASONS {
            let _ = auth_failures.get_or_create(&AuthLabels { reason });
        }
        let token_reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "workspace_start_operator_mcp_token_reviews",
            "TokenReviews sent to the API server (tokens not answered from the cache)",
            token_reviews.clone(),
        );
        for result in ["authenticated", "unauthenticated", "error"] {
            let _ = token_reviews.get_or_create(&ReviewLabels { result });
        }
        let limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "workspace_start_operator_mcp_limited",
            "Tool calls, requests and connections refused by a limit",
            limited.clone(),
        );
        for limit in LIMITS {
            let _ = limited.get_or_create(&LimitLabels { limit });
        }
        let connections = Gauge::default();
        registry.register(
            "workspace_start_operator_mcp_connections",
            "Open client connections to the MCP port",
            connections.clone(),
        );
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
            auth_failures,
            token_reviews,
            limited,
            connections,
            shared_watches,
            waiting_calls,
        }
    }

    /// Counts one refused request.
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&AuthLabels { reason })
            .inc();
    }

    /// Counts one TokenReview sent, by `result`.
    pub fn token_review(&self, result: &'static str) {
        self.token_reviews
            .get_or_create(&ReviewLabels { result })
            .inc();
    }

    /// Counts one refusal by `limit` (one of [`LIMITS`]).
    pub fn limited(&self, limit: &'static str) {
        self.limited.get_or_create(&LimitLabels { limit }).inc();
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
