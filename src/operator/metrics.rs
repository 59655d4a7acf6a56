//! The operator's Prometheus metrics: controller-runtime-compatible names plus Coder call
//! counters, served by [`crate::process::http::serve`].

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;

use crate::api::crd::Phase;
use crate::api::shard::Shard;
use crate::process::http::Exposition;
use crate::process::listener::ListenerMetrics;

/// Controller name used in the controller-runtime metric labels.
pub const CONTROLLER: &str = "workspacestartrequest";

/// `{controller}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// Controller name.
    pub controller: &'static str,
}

/// `{controller, result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// Controller name.
    pub controller: &'static str,
    /// success, error, requeue, requeue_after.
    pub result: &'static str,
}

/// `{endpoint, code}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CoderCallLabels {
    /// Route template, e.g. `/api/v2/workspaces/{id}`.
    pub endpoint: &'static str,
    /// HTTP status or `timeout` / `connect_error`.
    pub code: String,
}

/// `{phase}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Request phase.
    pub phase: &'static str,
}

/// `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Condition reason.
    pub reason: String,
}

/// `{stage}` of the stage histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// queued, pending, running, agent_connecting, agent_starting, other or total.
    pub stage: &'static str,
}

/// `{result}` of a Coder probe.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// `answered` (the endpoint is back) or `unavailable`.
    pub result: &'static str,
}

/// All metrics of the operator.
pub struct Metrics {
    registry: Registry,
    /// `controller_runtime_reconcile_total{controller,result}`.
    pub reconcile_total: Family<ResultLabels, Counter>,
    /// `controller_runtime_reconcile_errors_total{controller}`.
    pub reconcile_errors: Family<ControllerLabels, Counter>,
    /// `controller_runtime_reconcile_time_seconds{controller}`.
    pub reconcile_time: Family<ControllerLabels, Histogram>,
    /// `controller_runtime_active_workers{controller}`.
    pub active_workers: Family<ControllerLabels, Gauge>,
    /// `controller_runtime_max_concurrent_reconciles{controller}`.
    pub max_concurrent: Family<ControllerLabels, Gauge>,
    /// `workspace_start_operator_coder_requests_total{endpoint,code}`.
    pub coder_requests: Family<CoderCallLabels, Counter>,
    /// `workspace_start_operator_requests{phase}`: requests in memory by phase.
    pub requests_by_phase: Family<PhaseLabels, Gauge>,
    /// `workspace_start_operator_time_to_ready_seconds`: creation to Ready.
    pub time_to_ready: Histogram,
    /// `workspace_start_operator_stage_seconds{stage}`: how long each stage of finished
    /// requests took (see [`crate::operator::timings`]).
    pub stage_seconds: Family<StageLabels, Histogram>,
    /// `workspace_start_operator_failures_total{reason}`.
    pub failures: Family<ReasonLabels, Counter>,
    /// `workspace_start_operator_start_builds_total`: start builds requested.
    pub start_builds: Counter,
    /// `workspace_start_operator_watch_streams`: live Coder watch streams.
    pub watch_streams: Gauge,
    /// `workspace_start_operator_leader`: 1 while this replica holds the lease.
    pub leader: Gauge,
    /// `workspace_start_operator_events_dropped_total`: Events dropped on a full queue, or
    /// Normal ones that found no spare write capacity in time.
    pub events_dropped: Counter,
    /// `workspace_start_operator_progress_writes_postponed_total`: progress writes left for a
    /// later pass because the API server was busy.
    pub progress_writes_postponed: Counter,
    /// `workspace_start_operator_requests_waiting_to_start`: new requests queued for a start slot.
    pub waiting_to_start: Gauge,
    /// `workspace_start_operator_reconcile_panics_total`: reconciles that panicked (each such
    /// request ended Failed/InternalError; the others went on).
    pub reconcile_panics: Counter,
    /// The build logs port's `workspace_start_operator_logs_auth_failures_total{reason}`,
    /// `…_token_reviews_total{result}`, `…_limited_total{limit}` and `…_connections`.
    pub logs_port: Arc<ListenerMetrics>,
    /// `workspace_start_operator_coder_endpoints_down`: Coder endpoints (base URLs) found
    /// unavailable that requests wait on (see [`crate::operator::coder_health`]).
    pub coder_endpoints_down: Gauge,
    /// `workspace_start_operator_requests_waiting_on_coder`: requests waiting for their Coder
    /// endpoint to answer again.
    pub requests_waiting_on_coder: Gauge,
    /// `workspace_start_operator_coder_probes_total{result}`: probes of down Coder endpoints.
    pub coder_probes: Family<ProbeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Observes each stage of a finished request's timings.
    pub fn observe_stages(&self, timings: Option<&crate::api::crd::StageTimings>) {
        for (stage, secs) in timings
            .map(crate::operator::timings::stages)
            .unwrap_or_default()
        {
            self.stage_seconds
                .get_or_create(&StageLabels { stage })
                .observe(secs);
        }
    }

    /// Registers every metric (the default shard: no `shard` label).
    pub fn new() -> Metrics {
        Metrics::for_shard(&Shard::unlabelled())
    }

    /// Registers every metric, each labelled with `shard`'s constant labels (see
    /// [`Shard::metric_labels`]).
    pub fn for_shard(shard: &Shard) -> Metrics {
        let mut registry = Registry::with_labels(shard.metric_labels().into_iter());
        let reconcile_total = Family::<ResultLabels, Counter>::default();
        let reconcile_errors = Family::<ControllerLabels, Counter>::default();
        let reconcile_time = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ])
        });
        let active_workers = Family::<ControllerLabels, Gauge>::default();
        let max_concurrent = Family::<ControllerLabels, Gauge>::default();
        let coder_requests = Family::<CoderCallLabels, Counter>::default();
        let requests_by_phase = Family::<PhaseLabels, Gauge>::default();
        let time_to_ready = Histogram::new([
            1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
        ]);
        let failures = Family::<ReasonLabels, Counter>::default();
        let stage_seconds = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
            ])
        });
        let start_builds = Counter::default();
        let watch_streams = Gauge::default();
        let leader = Gauge::default();
        let events_dropped = Counter::default();
        let progress_writes_postponed = Counter::default();
        let waiting_to_start = Gauge::default();
        let reconcile_panics = Counter::default();
        let coder_endpoints_down = Gauge::default();
        let requests_waiting_on_coder = Gauge::default();
        let coder_probes = Family::<ProbeLabels, Counter>::default();
        registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            reconcile_total.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            reconcile_errors.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            reconcile_time.clone(),
        );
        registry.register(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            active_workers.clone(),
        );
        registry.register(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            max_concurrent.clone(),
        );
        registry.register(
            "workspace_start_operator_coder_requests",
            "Coder API requests by endpoint and status code",
            coder_requests.clone(),
        );
        registry.register(
            "workspace_start_operator_requests",
            "WorkspaceStartRequests known to this replica, by phase",
            requests_by_phase.clone(),
        );
        registry.register(
            "workspace_start_operator_time_to_ready_seconds",
            "Time from a request's creation until it was Ready",
            time_to_ready.clone(),
        );
        registry.register(
            "workspace_start_operator_stage_seconds",
            "How long each stage of finished requests took (queued, pending, running, agent_connecting, agent_starting, other, total)",
            stage_seconds.clone(),
        );
        registry.register(
            "workspace_start_operator_failures",
            "Requests that ended Failed, by reason",
            failures.clone(),
        );
        registry.register(
            "workspace_start_operator_start_builds",
            "Start builds requested from Coder",
            start_builds.clone(),
        );
        registry.register(
            "workspace_start_operator_watch_streams",
            "Live Coder workspace watch streams",
            watch_streams.clone(),
        );
        registry.register(
            "workspace_start_operator_leader",
            "1 while this replica is the leader",
            leader.clone(),
        );
        registry.register(
            "workspace_start_operator_events_dropped",
            "Events dropped because the event queue was full or no spare write capacity came in time",
            events_dropped.clone(),
        );
        registry.register(
            "workspace_start_operator_progress_writes_postponed",
            "Progress status writes left for a later pass because the API server was busy",
            progress_writes_postponed.clone(),
        );
        registry.register(
            "workspace_start_operator_requests_waiting_to_start",
            "New requests waiting for a start slot (--concurrency)",
            waiting_to_start.clone(),
        );
        registry.register(
            "workspace_start_operator_reconcile_panics",
            "Reconciles that panicked; the request ended Failed with reason InternalError",
            reconcile_panics.clone(),
        );
        registry.register(
            "workspace_start_operator_coder_endpoints_down",
            "Coder endpoints (base URLs) found unavailable that requests wait on",
            coder_endpoints_down.clone(),
        );
        registry.register(
            "workspace_start_operator_requests_waiting_on_coder",
            "Requests waiting for their Coder endpoint to answer again",
            requests_waiting_on_coder.clone(),
        );
        registry.register(
            "workspace_start_operator_coder_probes",
            "Probes of unavailable Coder endpoints (GET /api/v2/buildinfo), by result",
            coder_probes.clone(),
        );
        // Export every series at zero from the start, as controller-runtime does, so rates and
        // alerts (e.g. on reconcile errors) have a baseline instead of a missing series.
        let c = ControllerLabels {
            controller: CONTROLLER,
        };
        for result in ["success", "error", "requeue", "requeue_after"] {
            let _ = reconcile_total.get_or_create(&ResultLabels {
                controller: CONTROLLER,
                result,
            });
        }
        let _ = reconcile_errors.get_or_create(&c);
        let _ = reconcile_time.get_or_create(&c);
        let _ = active_workers.get_or_create(&c);
        for result in ["answered", "unavailable"] {
            let _ = coder_probes.get_or_create(&ProbeLabels { result });
        }
        for phase in Phase::ALL.map(Phase::as_str) {
            let _ = requests_by_phase.get_or_create(&PhaseLabels { phase });
        }
        let logs_port = Arc::new(ListenerMetrics::register(
            &mut registry,
            "workspace_start_operator_logs",
            "Build logs",
        ));
        Metrics {
            logs_port,
            registry,
            reconcile_total,
            reconcile_errors,
            reconcile_time,
            active_workers,
            max_concurrent,
            coder_requests,
            requests_by_phase,
            time_to_ready,
            stage_seconds,
            failures,
            start_builds,
            watch_streams,
            leader,
            events_dropped,
            progress_writes_postponed,
            waiting_to_start,
            reconcile_panics,
            coder_endpoints_down,
            requests_waiting_on_coder,
            coder_probes,
        }
    }

    /// Counts one Coder call.
    pub fn observe_coder_call(&self, endpoint: &'static str, code: &str) {
        self.coder_requests
            .get_or_create(&CoderCallLabels {
                endpoint,
                code: code.to_owned(),
            })
            .inc();
    }

    /// Records one finished reconcile.
    pub fn observe_reconcile(&self, result: &'static str, elapsed: Duration) {
        let c = ControllerLabels {
            controller: CONTROLLER,
        };
        self.reconcile_total
            .get_or_create(&ResultLabels {
                controller: CONTROLLER,
                result,
            })
            .inc();
        if result == "error" {
            self.reconcile_errors.get_or_create(&c).inc();
        }
        self.reconcile_time
            .get_or_create(&c)
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Exposition for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_controller_runtime_names() {
        let m = Metrics::new();
        m.observe_reconcile("success", Duration::from_millis(3));
        m.observe_coder_call("/api/v2/workspaces/{id}", "200");
        let text = m.render();
        for name in [
            "controller_runtime_reconcile_total{controller=\"workspacestartrequest\",result=\"success\"} 1",
            "controller_runtime_reconcile_time_seconds_bucket",
            "workspace_start_operator_coder_requests_total{endpoint=\"/api/v2/workspaces/{id}\",code=\"200\"} 1",
            // Zero-initialized like controller-runtime.
            "controller_runtime_reconcile_total{controller=\"workspacestartrequest\",result=\"error\"} 0",
            "controller_runtime_reconcile_errors_total{controller=\"workspacestartrequest\"} 0",
            "controller_runtime_active_workers{controller=\"workspacestartrequest\"} 0",
            "workspace_start_operator_requests{phase=\"Failed\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert!(
            !text.contains("shard="),
            "the default shard adds no label:\n{text}"
        );
    }

    #[test]
    fn a_named_shard_labels_every_series() {
        let m = Metrics::for_shard(&Shard::parse("team-a").expect("valid"));
        m.observe_coder_call("/api/v2/workspaces/{id}", "200");
        m.leader.set(1);
        let text = m.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert!(series.len() > 10, "{text}");
        for line in series {
            assert!(
                line.contains("shard=\"team-a\""),
                "unlabelled series: {line}"
            );
        }
        assert!(
            text.contains("workspace_start_operator_leader{shard=\"team-a\"} 1"),
            "{text}"
        );
    }
}
