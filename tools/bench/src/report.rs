//! The figures of a run and how they are printed: one table per run, and the summary tables
//! (with the machine's core count and the commit).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::Args;
use crate::chaos::Faults;
use crate::measure;
use crate::run::Plan;

/// Restart with N finished requests present.
#[derive(Debug, Clone)]
pub struct Restart {
    /// Finished requests present.
    pub requests: usize,
    /// From spawn to /readyz 200.
    pub ready_after: Duration,
    /// Coder requests of any kind (the watch included) in the first seconds after.
    pub coder_calls: u64,
}

/// Restart with requests in flight.
#[derive(Debug, Clone)]
pub struct Resume {
    /// Requests in flight at the kill.
    pub requests: usize,
    /// From spawn to /readyz 200.
    pub ready_after: Duration,
    /// Coder requests by route (the watch excluded) until every request was Ready.
    pub by_route: BTreeMap<String, u64>,
    /// Their total.
    pub coder_total: u64,
    /// Watch streams opened.
    pub watch_streams: u64,
    /// Start builds beyond one per workspace.
    pub duplicate_builds: usize,
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub shape: String,
    pub n: usize,
    pub workspaces: usize,
    pub mode: String,
    pub chaos: bool,
    pub wall: Duration,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// Longest time any request had no status (the bench's watch), ms.
    pub no_status_max_ms: f64,
    pub coder_by_route: BTreeMap<String, u64>,
    pub coder_total: u64,
    pub watch_streams: u64,
    pub too_many: u64,
    /// API-server requests by `VERB resource`, the bench's own creates excluded; empty when
    /// not measured (chaos runs).
    pub api_by_kind: BTreeMap<String, f64>,
    /// Peak RSS of the operator (the largest process when sharded).
    pub rss_kib: u64,
    /// CPU of the operator (all processes when sharded).
    pub cpu_s: f64,
    /// Per operator process: (peak RSS KiB, CPU s).
    pub per_process: Vec<(u64, f64)>,
    pub start_builds: u64,
    pub duplicate_builds: usize,
    pub unstarted_workspaces: usize,
    pub lost: usize,
    pub faults: Option<Faults>,
    pub restart: Option<Restart>,
    pub floor_status_bytes: Option<usize>,
    pub operator_status_bytes: Option<usize>,
    /// When each workspace's build was created, after the first create (replayed by the floor).
    pub build_starts: Vec<Duration>,
}

impl RunResult {
    /// Empty figures for `plan`.
    pub fn new(plan: &Plan, workspaces: usize, wall: Duration) -> RunResult {
        RunResult {
            shape: plan.shape.clone(),
            n: plan.n,
            workspaces,
            mode: if plan.shards > 1 {
                format!("{} ×{} shards", plan.mode, plan.shards)
            } else {
                plan.mode.clone()
            },
            chaos: plan.chaos,
            wall,
            lag_p50_ms: f64::NAN,
            lag_p99_ms: f64::NAN,
            lag_max_ms: f64::NAN,
            no_status_max_ms: f64::NAN,
            coder_by_route: BTreeMap::new(),
            coder_total: 0,
            watch_streams: 0,
            too_many: 0,
            api_by_kind: BTreeMap::new(),
            rss_kib: 0,
            cpu_s: 0.0,
            per_process: Vec::new(),
            start_builds: 0,
            duplicate_builds: 0,
            unstarted_workspaces: 0,
            lost: 0,
            faults: None,
            restart: None,
            floor_status_bytes: None,
            operator_status_bytes: None,
            build_starts: Vec::new(),
        }
    }

    /// p50/p99/max of sorted `lags`.
    pub fn set_lags(&mut self, lags: &[f64]) {
        let pct = |p: f64| {
            if lags.is_empty() {
                f64::NAN
            } else {
                lags[((lags.len() as f64 * p).ceil() as usize).clamp(1, lags.len()) - 1]
            }
        };
        self.lag_p50_ms = pct(0.50);
        self.lag_p99_ms = pct(0.99);
        self.lag_max_ms = pct(1.0);
    }

    /// API-server requests during the run: `after − before`, without the bench's creates.
    pub fn set_api(&mut self, before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) {
        for (k, a) in after {
            if k == "POST workspacestartrequests" {
                continue;
            }
            let d = a - before.get(k).copied().unwrap_or(0.0);
            if d > 0.0 {
                self.api_by_kind.insert(k.clone(), d);
            }
        }
    }

    fn per_request(&self, v: f64) -> f64 {
        v / self.n.max(1) as f64
    }

    /// API writes per request (status applies, Event creates, lease updates, …).
    pub fn writes_per_request(&self) -> Option<f64> {
        (!self.api_by_kind.is_empty()).then(|| {
            self.per_request(
                self.api_by_kind
                    .iter()
                    .filter(|(k, _)| measure::is_write(k))
                    .map(|(_, v)| v)
                    .sum(),
            )
        })
    }

    fn api_total(&self) -> Option<f64> {
        (!self.api_by_kind.is_empty()).then(|| self.per_request(self.api_by_kind.values().sum()))
    }

    fn is_operator(&self) -> bool {
        self.mode != "floor"
    }
}

fn short_route(r: &str) -> String {
    r.replace("/api/v2/", "/")
        .replace("/api/experimental/", "/x/")
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

/// One run's table.
pub fn run_detail(r: &RunResult) -> String {
    let n = r.n as f64;
    let mut s = String::new();
    let chaos = if r.chaos { " under faults" } else { "" };
    let _ = writeln!(
        s,
        "\n### N={} {} ({} workspaces), {}{chaos}",
        r.n, r.shape, r.workspaces, r.mode
    );
    let _ = writeln!(s, "| figure | value |\n|---|---|");
    let _ = writeln!(
        s,
        "| wall time until all Ready | {:.2} s |",
        r.wall.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| Ready lag p50 / p99 / max | {:.0} / {:.0} / {:.0} ms |",
        r.lag_p50_ms, r.lag_p99_ms, r.lag_max_ms
    );
    let _ = writeln!(
        s,
        "| longest time a request had no status | {:.0} ms |",
        r.no_status_max_ms
    );
    for (route, c) in &r.coder_by_route {
        let _ = writeln!(
            s,
            "| Coder `{route}` per request | {:.3} ({c}) |",
            *c as f64 / n
        );
    }
    let _ = writeln!(
        s,
        "| Coder requests per request (total, excl. watch) | {:.3} ({}) |",
        r.coder_total as f64 / n,
        r.coder_total
    );
    let _ = writeln!(s, "| watch streams opened | {} |", r.watch_streams);
    let _ = writeln!(
        s,
        "| start builds (duplicates, workspaces never started) | {} ({}, {}) |",
        r.start_builds, r.duplicate_builds, r.unstarted_workspaces
    );
    let _ = writeln!(s, "| requests not Ready (lost) | {} |", r.lost);
    if r.is_operator() {
        let _ = writeln!(s, "| Coder 429 responses | {} |", r.too_many);
    }
    for (k, c) in &r.api_by_kind {
        let _ = writeln!(s, "| API server `{k}` per request | {:.3} ({c}) |", c / n);
    }
    let _ = writeln!(
        s,
        "| API-server writes per request / all requests per request | {} / {} |",
        opt(r.writes_per_request(), 2),
        opt(r.api_total(), 2)
    );
    if let Some(b) = r.floor_status_bytes {
        let _ = writeln!(s, "| floor: status bytes per apply | {b} |");
    }
    if let Some(b) = r.operator_status_bytes {
        let _ = writeln!(s, "| Ready status bytes (as stored) | {b} |");
    }
    if r.is_operator() {
        let _ = writeln!(
            s,
            "| operator peak RSS (VmHWM) | {:.1} MiB |",
            r.rss_kib as f64 / 1024.0
        );
        let _ = writeln!(
            s,
            "| operator CPU (user+sys) | {:.2} s ({:.2} ms per request) |",
            r.cpu_s,
            r.cpu_s * 1000.0 / n
        );
    }
    if let Some(f) = &r.faults {
        let _ = writeln!(
            s,
            "| faults | {} operator SIGKILLs, {} API server restarts |",
            f.kills, f.apiserver_restarts
        );
    }
    if let Some(rs) = &r.restart {
        let _ = writeln!(
            s,
            "| restart with {} finished requests: /readyz after, Coder calls | {:.2} s, {} |",
            rs.requests,
            rs.ready_after.as_secs_f64(),
            rs.coder_calls
        );
    }
    s
}

/// The resume run's table.
pub fn resume_detail(r: &Resume) -> String {
    let n = r.requests.max(1) as f64;
    let mut s = format!(
        "\n### Resume: operator SIGKILLed with {} requests in flight, restarted\n| figure | value |\n|---|---|\n",
        r.requests
    );
    let _ = writeln!(
        s,
        "| /readyz after restart | {:.2} s |",
        r.ready_after.as_secs_f64()
    );
    for (route, c) in &r.by_route {
        let _ = writeln!(
            s,
            "| Coder `{route}` per request | {:.3} ({c}) |",
            *c as f64 / n
        );
    }
    let _ = writeln!(
        s,
        "| Coder requests per request until all Ready (excl. watch) | {:.3} |",
        r.coder_total as f64 / n
    );
    let _ = writeln!(s, "| watch streams opened | {} |", r.watch_streams);
    let _ = writeln!(s, "| duplicate start builds | {} |", r.duplicate_builds);
    s
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

/// The summary tables.
pub fn summary(args: &Args, repo: &Path, rs: &[RunResult], resume: Option<&Resume>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Summary\n\nMachine: {} cores; commit {}. Script per build: pending {} ms, running {} ms, \
         agent connect {} ms + ready {} ms; requests name their workspace by `{}`; coder-sim rate \
         limit {}/min per user and URL path.\n",
        measure::cores(),
        measure::commit(repo),
        args.pending_ms,
        args.running_ms,
        args.agent_connect_ms,
        args.agent_ready_ms,
        args.target,
        args.sim_rate_limit
    );
    main_table(&mut s, rs);
    writes_table(&mut s, rs);
    restart_table(&mut s, rs, resume);
    chaos_table(&mut s, rs);
    poll_table(&mut s, rs);
    shards_table(&mut s, rs);
    s
}

fn floor_of<'a>(rs: &'a [RunResult], r: &RunResult) -> Option<&'a RunResult> {
    rs.iter()
        .find(|f| f.mode == "floor" && !f.chaos && f.n == r.n && f.shape == r.shape)
}

fn main_table(s: &mut String, rs: &[RunResult]) {
    let _ = writeln!(
        s,
        "| N | shape | mode | workspaces | wall s | lag p50 ms | lag p99 ms | p50 / floor | p99 / floor | Coder req/req | by endpoint (per request) | 429s | API writes/req | RSS MiB | CPU ms/req |\n\
         |---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    );
    for r in rs.iter().filter(|r| !r.chaos) {
        let n = r.n as f64;
        let by: Vec<String> = r
            .coder_by_route
            .iter()
            .map(|(k, c)| format!("{} {:.2}", short_route(k), *c as f64 / n))
            .collect();
        let (p50, p99) = match floor_of(rs, r) {
            Some(f) if r.is_operator() => (
                ratio(r.lag_p50_ms, f.lag_p50_ms),
                ratio(r.lag_p99_ms, f.lag_p99_ms),
            ),
            _ => ("–".into(), "–".into()),
        };
        let (too_many, rss, cpu) = if r.is_operator() {
            (
                r.too_many.to_string(),
                format!("{:.1}", r.rss_kib as f64 / 1024.0),
                format!("{:.2}", r.cpu_s * 1000.0 / n),
            )
        } else {
            ("–".into(), "–".into(), "–".into())
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {p50} | {p99} | {:.2} | {} | {too_many} | {} | {rss} | {cpu} |",
            r.n,
            r.shape,
            r.mode,
            r.workspaces,
            r.wall.as_secs_f64(),
            r.lag_p50_ms,
            r.lag_p99_ms,
            r.coder_total as f64 / n,
            by.join("<br>"),
            opt(r.writes_per_request(), 2),
        );
    }
}

fn writes_table(s: &mut String, rs: &[RunResult]) {
    let kinds: BTreeSet<&String> = rs
        .iter()
        .flat_map(|r| r.api_by_kind.keys())
        .filter(|k| measure::is_write(k))
        .collect();
    if kinds.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nAPI-server writes per request by verb and resource (all API requests, reads included, in the last column):\n"
    );
    let head: Vec<String> = kinds.iter().map(|k| format!("`{k}`")).collect();
    let _ = writeln!(
        s,
        "| N | shape | mode | {} | writes | all |\n|---:|---|---|{}---:|---:|",
        head.join(" | "),
        "---:|".repeat(kinds.len())
    );
    for r in rs.iter().filter(|r| !r.api_by_kind.is_empty()) {
        let cells: Vec<String> = kinds
            .iter()
            .map(|k| {
                format!(
                    "{:.2}",
                    r.per_request(r.api_by_kind.get(*k).copied().unwrap_or(0.0))
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.n,
            r.shape,
            r.mode,
            cells.join(" | "),
            opt(r.writes_per_request(), 2),
            opt(r.api_total(), 2)
        );
    }
}

fn restart_table(s: &mut String, rs: &[RunResult], resume: Option<&Resume>) {
    let restarts: Vec<&RunResult> = rs.iter().filter(|r| r.restart.is_some()).collect();
    if !restarts.is_empty() {
        let _ = writeln!(
            s,
            "\nOperator restart with the run's finished requests present:\n\n\
             | N finished | shape | /readyz after s | Coder calls (first 3 s) |\n|---:|---|---:|---:|"
        );
        for r in restarts {
            if let Some(x) = &r.restart {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.2} | {} |",
                    x.requests,
                    r.shape,
                    x.ready_after.as_secs_f64(),
                    x.coder_calls
                );
            }
        }
    }
    if let Some(x) = resume {
        let n = x.requests.max(1) as f64;
        let by: Vec<String> = x
            .by_route
            .iter()
            .map(|(k, c)| format!("{} {:.2}", short_route(k), *c as f64 / n))
            .collect();
        let _ = writeln!(
            s,
            "\nOperator SIGKILLed with requests in flight and restarted (resume):\n\n\
             | in flight | /readyz after s | Coder req/req until all Ready | by endpoint | watch streams | duplicate builds |\n\
             |---:|---:|---:|---|---:|---:|\n\
             | {} | {:.2} | {:.2} | {} | {} | {} |",
            x.requests,
            x.ready_after.as_secs_f64(),
            x.coder_total as f64 / n,
            by.join("<br>"),
            x.watch_streams,
            x.duplicate_builds
        );
    }
}

fn chaos_table(s: &mut String, rs: &[RunResult]) {
    let chaos: Vec<&RunResult> = rs.iter().filter(|r| r.chaos).collect();
    if chaos.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nUnder faults (operator SIGKILLed every 5 s and restarted at once, API server restarted once):\n\n\
         | N | shape | kills | API server restarts | duplicate builds | workspaces never started | lost | wall s | clean wall s | cost |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in chaos {
        let clean = rs
            .iter()
            .find(|c| !c.chaos && c.mode == "watch" && c.n == r.n && c.shape == r.shape);
        let f = r.faults.clone().unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} |",
            r.n,
            r.shape,
            f.kills,
            f.apiserver_restarts,
            r.duplicate_builds,
            r.unstarted_workspaces,
            r.lost,
            r.wall.as_secs_f64(),
            clean.map_or("–".into(), |c| format!("{:.1}", c.wall.as_secs_f64())),
            clean.map_or("–".into(), |c| format!(
                "+{:.1} s",
                r.wall.as_secs_f64() - c.wall.as_secs_f64()
            )),
        );
    }
}

fn poll_table(s: &mut String, rs: &[RunResult]) {
    let pairs: Vec<(&RunResult, &RunResult)> = rs
        .iter()
        .filter(|r| r.mode == "watch" && !r.chaos)
        .filter_map(|w| {
            rs.iter()
                .find(|p| p.mode == "poll" && p.n == w.n && p.shape == w.shape)
                .map(|p| (w, p))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nPoll only (`--coder-watch=false`) relative to the watch:\n\n\
         | N | shape | lag p50 poll/watch | lag p99 poll/watch | Coder req poll/watch | wall poll/watch |\n|---:|---|---:|---:|---:|---:|"
    );
    for (w, p) in pairs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            w.n,
            w.shape,
            ratio(p.lag_p50_ms, w.lag_p50_ms),
            ratio(p.lag_p99_ms, w.lag_p99_ms),
            ratio(p.coder_total as f64, w.coder_total as f64),
            ratio(p.wall.as_secs_f64(), w.wall.as_secs_f64())
        );
    }
}

/// Sharded runs (`BENCH_SHARDS`) beside the one-process run of the same size and shape.
fn shards_table(s: &mut String, rs: &[RunResult]) {
    let sharded: Vec<&RunResult> = rs.iter().filter(|r| r.per_process.len() > 1).collect();
    if sharded.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nThe same N split over operator processes (the default deployment and shards, requests of \
         one workspace in one shard) against one process:\n\n\
         | N | shape | processes | wall s | wall / one | lag p50 ms | lag p99 ms | CPU s per process | CPU s total | RSS MiB per process |\n\
         |---:|---|---:|---:|---:|---:|---:|---|---:|---|"
    );
    for r in sharded {
        let one = rs
            .iter()
            .find(|o| o.mode == "watch" && !o.chaos && o.n == r.n && o.shape == r.shape);
        for x in one.into_iter().chain([r]) {
            let cpu: Vec<String> = x
                .per_process
                .iter()
                .map(|p| format!("{:.1}", p.1))
                .collect();
            let rss: Vec<String> = x
                .per_process
                .iter()
                .map(|p| format!("{:.1}", p.0 as f64 / 1024.0))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {} | {:.0} | {:.0} | {} | {:.1} | {} |",
                x.n,
                x.shape,
                x.per_process.len(),
                x.wall.as_secs_f64(),
                one.map_or("–".into(), |o| ratio(
                    x.wall.as_secs_f64(),
                    o.wall.as_secs_f64()
                )),
                x.lag_p50_ms,
                x.lag_p99_ms,
                cpu.join(" + "),
                x.cpu_s,
                rss.join(" + "),
            );
        }
    }
}
