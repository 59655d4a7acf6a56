//! Operability of the running operator against the real API server: `/healthz`, `/readyz` (503
//! until the caches sync), `/metrics` (controller-runtime names, Coder call counters, phases,
//! time to Ready; valid OpenMetrics text), JSON logs and the log level flag/env.

mod support;

use support::opproc;

use std::collections::BTreeMap;
use std::time::Duration;

use coder_sim::WorkspaceSeed;
use opproc::{Launch, Proc, eventually};
use support::{Env, RELEASE, ready, render_chart};
use workspace_start_operator::api::crd::{Phase, WorkspaceStartRequest};

const T: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The exposition is checked by `openmetrics-parser` (which passes the OpenMetrics project's own
// test cases) and flattened into samples for the assertions below.

/// Label pairs.
type Labels = Vec<(String, String)>;

/// One sample: sample name (`x_total`, `h_bucket`, ...), labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

/// Parses and validates OpenMetrics text; returns its samples.
fn check_exposition(text: &str) -> Result<Vec<Sample>, String> {
    use openmetrics_parser::{OpenMetricsValue, openmetrics::parse_openmetrics};
    let exposition = parse_openmetrics(text).map_err(|e| format!("invalid OpenMetrics: {e}"))?;
    let mut out = Vec::new();
    for family in exposition.families.values() {
        let name = &family.family_name;
        for s in family.iter_samples() {
            let labels: Labels = s
                .get_labelset()
                .map_err(|e| format!("{name}: {e}"))?
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut push = |suffix: &str, extra: Option<(&str, String)>, value: f64| {
                let mut labels = labels.clone();
                labels.extend(extra.map(|(k, v)| (k.to_owned(), v)));
                out.push(Sample {
                    name: format!("{name}{suffix}"),
                    labels,
                    value,
                });
            };
            match &s.value {
                OpenMetricsValue::Counter(c) => push("_total", None, c.value.as_f64()),
                OpenMetricsValue::Gauge(v) => push("", None, v.as_f64()),
                // Valid OpenMetrics, but the operator declares the type of every family.
                OpenMetricsValue::Unknown(_) => return Err(format!("{name}: no # TYPE")),
                OpenMetricsValue::Histogram(h) => {
                    for b in &h.buckets {
                        let le = if b.upper_bound.is_infinite() {
                            "+Inf".to_owned()
                        } else {
                            b.upper_bound.to_string()
                        };
                        push("_bucket", Some(("le", le)), b.count.as_f64());
                    }
                    let count = h
                        .count
                        .ok_or_else(|| format!("{name}: histogram without _count"))?;
                    push("_count", None, count as f64);
                    if let Some(sum) = &h.sum {
                        push("_sum", None, sum.as_f64());
                    }
                }
                other => return Err(format!("{name}: unexpected metric type {other:?}")),
            }
        }
    }
    Ok(out)
}

/// The value of the series `name` whose labels include `labels` (exactly one must match).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let m: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .collect();
    match m.as_slice() {
        [one] => Some(one.value),
        [] => None,
        many => panic!("{name}{labels:?} matches {} series: {many:?}", many.len()),
    }
}

#[test]
fn exposition_checker_rejects_malformed_text() {
    let good = "# HELP x A counter.\n# TYPE x counter\nx_total{a=\"b\\\"c\"} 1\n# TYPE h histogram\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_count 2\nh_sum 3.5\n# EOF\n";
    let s = check_exposition(good).expect("valid");
    assert_eq!(value(&s, "x_total", &[("a", "b\"c")]), Some(1.0));
    for bad in [
        "# TYPE x counter\nx_total 1\n",             // no EOF
        "# TYPE x counter\nx 1\n# EOF\n",            // counter without _total
        "x_total 1\n# EOF\n",                        // no TYPE (ours: every family typed)
        "# TYPE x counter\nx_total{a=b} 1\n# EOF\n", // unquoted label
        "# TYPE x counter\nx_total one\n# EOF\n",    // bad value
        "# TYPE x gauge\nx 1\nx 2\n# EOF\n",         // duplicate series
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n# EOF\n", // not cumulative
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n# EOF\n", // +Inf != count
    ] {
        assert!(check_exposition(bad).is_err(), "accepted: {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------

const C: (&str, &str) = ("controller", "workspacestartrequest");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_after_a_request_is_ready() {
    let mut env = Env::new("obs-metrics").await;
    env.start_operator(&["--concurrency=7", "--follow-concurrency=5"])
        .await;
    let addr = env.operator().metrics_addr.clone();
    let get = |path: &'static str| {
        let url = format!("http://{addr}{path}");
        async move {
            let r = reqwest::get(url).await.expect("GET");
            let code = r.status().as_u16();
            let ctype = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (code, ctype, r.text().await.unwrap_or_default())
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 200);

    // Before any request: the controller's gauges and zeroed series are already exported.
    let (code, ctype, text) = get("/metrics").await;
    assert_eq!(code, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let s = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        value(&s, "controller_runtime_max_concurrent_reconciles", &[C]),
        Some(12.0),
        "{text}"
    );

    let sim = env.sim.sim();
    let ws = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "dev"));
    env.create_for_workspace("obs", ws).await;
    let w = env.wait_phase("obs", Phase::Ready, T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));

    // The Ready reconcile records its metrics right after writing the status: poll briefly.
    let op = env.operator.as_ref().expect("operator");
    let (s, text) = eventually("metrics of the finished request", T, || async {
        let text = op.metrics().await;
        let s = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        // Settled: no reconcile in flight, and every finished one fully recorded.
        let total: f64 = ["success", "error", "requeue", "requeue_after"]
            .iter()
            .filter_map(|r| {
                value(
                    &s,
                    "controller_runtime_reconcile_total",
                    &[C, ("result", r)],
                )
            })
            .sum();
        let ttr = value(
            &s,
            "workspace_start_operator_time_to_ready_seconds_count",
            &[],
        );
        let done = ttr == Some(1.0)
            && value(&s, "controller_runtime_active_workers", &[C]) == Some(0.0)
            && value(&s, "controller_runtime_reconcile_time_seconds_count", &[C]) == Some(total);
        done.then_some((s, text))
    })
    .await;
    let v = |name: &str, labels: &[(&str, &str)]| {
        value(&s, name, labels).unwrap_or_else(|| panic!("missing {name}{labels:?} in\n{text}"))
    };

    // controller-runtime names.
    let success = v(
        "controller_runtime_reconcile_total",
        &[C, ("result", "success")],
    );
    assert!(success >= 1.0, "{text}");
    let total: f64 = ["success", "error", "requeue", "requeue_after"]
        .iter()
        .map(|r| v("controller_runtime_reconcile_total", &[C, ("result", r)]))
        .sum();
    assert!(total >= 2.0, "a start takes several reconciles: {text}");
    assert_eq!(
        v("controller_runtime_reconcile_time_seconds_count", &[C]),
        total,
        "{text}"
    );
    assert!(
        v(
            "controller_runtime_reconcile_time_seconds_bucket",
            &[C, ("le", "+Inf")]
        ) == total
    );
    assert!(v("controller_runtime_reconcile_time_seconds_sum", &[C]) > 0.0);
    assert_eq!(
        v("controller_runtime_reconcile_errors_total", &[C]),
        0.0,
        "{text}"
    );
    assert_eq!(v("controller_runtime_active_workers", &[C]), 0.0);
    assert_eq!(
        v("controller_runtime_max_concurrent_reconciles", &[C]),
        12.0
    );

    // Coder calls by endpoint and status: exactly one start build POST, answered 201.
    let post = ("endpoint", "/api/v2/workspaces/{id}/builds");
    assert_eq!(
        v(
            "workspace_start_operator_coder_requests_total",
            &[post, ("code", "201")]
        ),
        1.0,
        "{text}"
    );
    assert!(
        v(
            "workspace_start_operator_coder_requests_total",
            &[("endpoint", "/api/v2/workspaces/{id}"), ("code", "200")]
        ) >= 1.0
    );
    assert_eq!(v("workspace_start_operator_start_builds_total", &[]), 1.0);

    // Requests by phase, time to Ready.
    assert_eq!(
        v("workspace_start_operator_requests", &[("phase", "Ready")]),
        1.0,
        "{text}"
    );
    for p in ["Pending", "Starting", "WaitingForAgent", "Failed"] {
        assert_eq!(
            value(&s, "workspace_start_operator_requests", &[("phase", p)]).unwrap_or(0.0),
            0.0,
            "{p}: {text}"
        );
    }
    assert_eq!(
        v("workspace_start_operator_time_to_ready_seconds_count", &[]),
        1.0
    );
    assert_eq!(
        v(
            "workspace_start_operator_time_to_ready_seconds_bucket",
            &[("le", "+Inf")]
        ),
        1.0
    );
    assert!(v("workspace_start_operator_time_to_ready_seconds_sum", &[]) < T.as_secs_f64());

    // Still healthy and ready afterwards.
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 200);
}

/// `/readyz` is 503 while the WorkspaceStartRequest cache cannot sync (here: the ServiceAccount
/// has no RBAC yet, so the initial list is Forbidden) while `/healthz` stays 200; it turns 200
/// once the chart's Role is applied and the watcher's retry lists successfully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_caches_sync() {
    let env = Env::new("obs-ready").await;
    let plane = env.plane;
    let ns = plane.create_namespace("obs-norbac").await.expect("ns");
    let (_, kubeconfig) = plane
        .service_account_client(&ns, RELEASE)
        .await
        .expect("SA");
    let op = Proc::spawn(Launch {
        kubeconfig: &kubeconfig,
        dir: env.dir.path(),
        args: vec![
            format!("--namespaces={ns}"),
            format!("--coder-url={}", env.sim.url()),
            format!("--coder-token-file={}", env.token_file().display()),
        ],
        env: vec![("POD_NAMESPACE".into(), ns.clone())],
    });
    op.wait_status("/healthz", 200, T).await;
    // Unready while the list is forbidden: wait for the failure in the log, then sample a while.
    eventually("the forbidden list in the log", T, || async {
        op.logs()
            .contains("watching WorkspaceStartRequests failed")
            .then_some(())
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            op.get("/readyz").await.map(|r| r.0),
            Some(503),
            "{}",
            op.logs()
        );
        assert_eq!(op.get("/healthz").await.map(|r| r.0), Some(200));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        op.get("/readyz")
            .await
            .is_some_and(|r| r.1.contains("not synced"))
    );

    plane
        .apply_yaml(&render_chart(&ns, &env.sim.url(), &[]), &ns)
        .await
        .expect("apply chart RBAC");
    // kube-runtime's default watcher backoff is at most 30 s between retries.
    op.wait_status("/readyz", 200, Duration::from_secs(45))
        .await;
    assert_eq!(op.get("/healthz").await.map(|r| r.0), Some(200));
}

/// Parses a JSON log: one object per line, each with `level`, `message`, `timestamp`, `target`.
fn json_lines(log: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            let o = v
                .as_object()
                .unwrap_or_else(|| panic!("not an object: {l:?}"))
                .clone();
            for k in ["level", "message", "timestamp", "target"] {
                assert!(o.contains_key(k), "no {k:?} in {l:?}");
            }
            assert!(o["message"].is_string() && o["level"].is_string(), "{l:?}");
            o
        })
        .collect()
}

fn levels(lines: &[serde_json::Map<String, serde_json::Value>]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry(l["level"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let env = Env::new("obs-json").await;
    let mut op = Proc::spawn(Launch {
        kubeconfig: &env.sa_kubeconfig,
        dir: env.dir.path(),
        args: vec![
            format!("--namespaces={}", env.ns),
            format!("--coder-url={}", env.sim.url()),
            format!("--coder-token-file={}", env.token_file().display()),
            "--poll-ms=300".into(),
            "--log-format=json".into(),
            "--log-level=info".into(),
        ],
        env: vec![("POD_NAMESPACE".into(), env.ns.clone())],
    });
    op.wait_status("/readyz", 200, T).await;
    let ws = env
        .sim
        .sim()
        .add_workspace(WorkspaceSeed::new(env.alice.id, "dev"));
    env.create_for_workspace("j", ws).await;
    env.wait_phase("j", Phase::Ready, T).await;
    eventually("the finish log line", T, || async {
        op.logs().contains("request finished").then_some(())
    })
    .await;
    let status = op.terminate().await;
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit on SIGTERM: {status:?}"
    );

    let lines = json_lines(&op.logs());
    let msgs: Vec<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
    for m in [
        "starting workspace-start-operator",
        "caches synced; ready",
        "request finished",
        "shutdown requested",
    ] {
        assert!(msgs.contains(&m), "missing {m:?} in {msgs:?}");
    }
    // Event fields are flattened next to the message (queryable in log stores).
    let fin = lines
        .iter()
        .find(|l| l["message"] == "request finished")
        .expect("finish line");
    assert!(
        fin.get("request")
            .and_then(|v| v.as_str())
            .is_some_and(|r| r.contains('j')),
        "{fin:?}"
    );
    let lv = levels(&lines);
    assert!(
        lv.keys()
            .all(|l| ["INFO", "WARN", "ERROR"].contains(&l.as_str())),
        "info level: {lv:?}"
    );
}

/// `--log-level` and `WSO_LOG_LEVEL` (and `WSO_LOG_FORMAT`): debug lines appear only at debug,
/// and the flag wins over the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_from_flag_and_env() {
    let env = Env::new("obs-level").await;
    let base = |extra: &[&str]| {
        let mut args = vec![
            format!("--namespaces={}", env.ns),
            format!("--coder-url={}", env.sim.url()),
            format!("--coder-token-file={}", env.token_file().display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let env_vars = |level: Option<&str>| {
        let mut v = vec![
            ("POD_NAMESPACE".to_owned(), env.ns.clone()),
            ("WSO_LOG_FORMAT".to_owned(), "json".to_owned()),
        ];
        if let Some(l) = level {
            v.push(("WSO_LOG_LEVEL".to_owned(), l.to_owned()));
        }
        v
    };
    // No request is created: three operators on one namespace only list and watch.
    let mut procs = vec![
        // (name, process, expect debug lines)
        (
            "WSO_LOG_LEVEL=debug",
            Proc::spawn(Launch {
                kubeconfig: &env.sa_kubeconfig,
                dir: env.dir.path(),
                args: base(&[]),
                env: env_vars(Some("debug")),
            }),
            true,
        ),
        (
            "--log-level=debug",
            Proc::spawn(Launch {
                kubeconfig: &env.sa_kubeconfig,
                dir: env.dir.path(),
                args: base(&["--log-level=debug"]),
                env: env_vars(None),
            }),
            true,
        ),
        (
            "--log-level=info over WSO_LOG_LEVEL=debug",
            Proc::spawn(Launch {
                kubeconfig: &env.sa_kubeconfig,
                dir: env.dir.path(),
                args: base(&["--log-level=info"]),
                env: env_vars(Some("debug")),
            }),
            false,
        ),
        (
            "default level",
            Proc::spawn(Launch {
                kubeconfig: &env.sa_kubeconfig,
                dir: env.dir.path(),
                args: base(&[]),
                env: env_vars(None),
            }),
            false,
        ),
    ];
    for (_, p, _) in &procs {
        p.wait_status("/readyz", 200, T).await;
    }
    // Give every process the same work after readiness (a few scrapes), then stop them.
    for (_, p, _) in &procs {
        for _ in 0..3 {
            let _ = p.get("/metrics").await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (name, p, debug) in &mut procs {
        p.terminate().await;
        let lines = json_lines(&p.logs());
        let lv = levels(&lines);
        assert!(lv.contains_key("INFO"), "{name}: {lv:?}");
        assert_eq!(lv.contains_key("DEBUG"), *debug, "{name}: levels {lv:?}");
    }
}

/// The operator's Kubernetes client speaks HTTP/2 to the API server (concurrent writes share
/// one connection instead of each opening a TLS connection), with the kubeconfig's TLS and
/// authentication, like kube's own client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_client_speaks_http2_to_the_api_server() {
    let env = Env::new("obs-h2").await;
    let client = workspace_start_operator::process::kube_client::from_config(
        env.plane.admin_config().clone(),
    )
    .expect("client");
    let req = http::Request::get("/version")
        .body(Vec::new())
        .expect("request");
    let resp = client
        .send(req.map(Into::into))
        .await
        .expect("GET /version");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    // Authenticated as the kubeconfig's user: listing requests in the namespace is allowed.
    let listed = env
        .wsrs()
        .list(&Default::default())
        .await
        .expect("list with the admin credentials");
    assert!(listed.items.is_empty());
    // Many writes at once over the one connection.
    let api = kube::Api::<WorkspaceStartRequest>::namespaced(client, &env.ns);
    let creates = (0..20).map(|i| {
        let api = api.clone();
        async move {
            let obj: WorkspaceStartRequest = serde_json::from_value(serde_json::json!({
                "apiVersion": "coder.com/v1alpha1",
                "kind": "WorkspaceStartRequest",
                "metadata": {"name": format!("h2-{i}")},
                "spec": {"workspace": {"id": uuid::Uuid::new_v4().to_string()}},
            }))
            .expect("object");
            api.create(&Default::default(), &obj).await
        }
    });
    for r in futures::future::join_all(creates).await {
        r.expect("concurrent create");
    }
}
