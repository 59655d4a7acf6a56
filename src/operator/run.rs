//! The operator process (`run`): the metrics and health server, the Coder connections, leader
//! election through a Lease, and the controller for as long as this replica leads.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use crate::cli::run::RunArgs;
use crate::coder::{ClientOptions, Trust};
use crate::operator::client_cache::CacheLimits;
use crate::operator::connect::{AllowedUrls, Connections};
use crate::operator::controller::{self, Context, Settings};
use crate::operator::metrics::Metrics;
use crate::operator::streams::Streams;
use crate::operator::tenancy;
use crate::operator::write_slots::Limits;
use crate::process::{self, http::Health};

/// Errors that stop the process.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot connect to Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("metrics server: {0}")]
    Metrics(#[from] std::io::Error),
    #[error("--coder-allowed-urls: {0}")]
    AllowedUrls(String),
    /// The `--coder-ca-file` cannot be read or used.
    #[error("--coder-ca-file {path}: {problem}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    #[error("lost leadership; exiting so a new leader takes over")]
    LostLease,
    /// The logs port's `--tls-cert-file` / `--tls-key-file` cannot be used.
    #[error("--tls-cert-file/--tls-key-file: {0}")]
    Tls(#[from] crate::process::tls::TlsError),
}

/// The certificates trusted for Coder: the platform's CA store plus `--coder-ca-file`.
fn coder_trust(ca_file: Option<&std::path::Path>) -> Result<Trust, RunError> {
    let fail = |path: &std::path::Path, problem: String| RunError::CaFile {
        path: path.display().to_string(),
        problem,
    };
    let platform = Trust::platform().map_err(|e| RunError::CaFile {
        path: "(platform store)".into(),
        problem: e.to_string(),
    })?;
    let Some(path) = ca_file else {
        tracing::info!(
            roots = platform.len(),
            origin = platform.origin(),
            "TLS trust for Coder"
        );
        return Ok(platform);
    };
    let pem = std::fs::read(path).map_err(|e| fail(path, e.to_string()))?;
    let trust = platform
        .with_pem(&pem)
        .map_err(|e| fail(path, format!("it {e}")))?;
    tracing::info!(roots = trust.len(), origin = trust.origin(), ca_file = %path.display(), "TLS trust for Coder");
    Ok(trust)
}

/// Runs the operator until shutdown or lost leadership.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    // A CA file that cannot be used stops the operator before anything else.
    let trust = coder_trust(args.coder_ca_file.as_deref())?;
    let shutdown = process::shutdown_signal().boxed().shared();
    let kube = process::kube_client::connect().await?;
    let metrics = Arc::new(Metrics::for_shard(&args.shard));
    let health = Health::default();
    let server = tokio::spawn(process::http::serve(
        args.process.metrics_addr,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    ));

    let observer_metrics = Arc::clone(&metrics);
    let opts = ClientOptions {
        request_timeout: Duration::from_millis(args.coder_timeout_ms),
        requests_per_minute: args.coder_requests_per_minute,
        observer: Some(Arc::new(move |endpoint, code| {
            observer_metrics.observe_coder_call(endpoint, code)
        })),
        max_body_bytes: args.coder_max_body_bytes,
        max_frame_bytes: args.coder_max_frame_bytes,
        watch_idle: Duration::from_millis(args.coder_watch_idle_ms),
        trust: Some(trust),
    };
    let settings = Settings {
        poll: Duration::from_millis(args.poll_ms),
        backstop_poll: Duration::from_millis(args.backstop_poll_ms),
        concurrency: args.concurrency,
        follow_concurrency: args.follow_concurrency,
        write_slots: Limits {
            per_namespace: usize::from(args.write_slots),
            total: usize::from(args.write_slots_total),
        },
        panic_on: args.test_panic_on.clone(),
        shard: args.shard.clone(),
    };
    let streams = Streams::new(
        args.coder_watch,
        Duration::from_millis(args.poll_ms / 2),
        Arc::clone(&metrics),
    );
    streams.set_max_streams(args.max_watch_streams);
    streams.set_backstop(Duration::from_millis(args.backstop_poll_ms));
    let allowed = AllowedUrls::new(&args.coder_allowed_urls, args.coder_url.as_deref())
        .map_err(RunError::AllowedUrls)?;
    tracing::info!(allowed = %allowed.describe(), "Coder URLs allowed in coderRef Secrets");
    let tenancy =
        match tenancy::start(kube.clone(), args.tenancy, &args.shard, shutdown.clone()).await {
            Some(t) => t,
            None => return stop_server(server).await,
        };
    let logs_tls = match args.logs_addr {
        Some(_) => args.logs_port.tls()?,
        None => None,
    };
    let _logs_server = args.logs_addr.map(|addr| {
        let conns = Connections::new(
            kube.clone(),
            args.coder_url.clone(),
            args.coder_token_file.clone(),
            opts.clone(),
            allowed.clone(),
            CacheLimits {
                max_clients: args.coder_client_cache_size,
                idle: Duration::from_millis(args.coder_client_idle_ms),
            },
        )
        .require_secret_opt_in(tenancy.requires_secret_opt_in());
        let server = Arc::new(crate::operator::logs_api::LogsServer::new(
            kube.clone(),
            conns,
        ));
        let guard = crate::operator::logs_api::Guard {
            limits: args.logs_port.limits(),
            auth: args
                .logs_port
                .auth(crate::cli::non_empty(&args.logs_audiences)),
            metrics: Arc::clone(&metrics.logs_port),
            tls: logs_tls,
        };
        tokio::spawn(server.serve(addr, guard, shutdown.clone()))
    });
    let connections = Connections::new(
        kube.clone(),
        args.coder_url.clone(),
        args.coder_token_file.clone(),
        opts,
        allowed,
        CacheLimits {
            max_clients: args.coder_client_cache_size,
            idle: Duration::from_millis(args.coder_client_idle_ms),
        },
    )
    .require_secret_opt_in(tenancy.requires_secret_opt_in());
    let ctx = Context::new(
        kube.clone(),
        connections,
        streams,
        Arc::clone(&metrics),
        settings,
        tenancy,
    );
    let namespaces = args.watched_namespaces();
    tracing::info!(
        namespaces = ?namespaces,
        shard = %args.shard,
        coder_url = args.coder_url.as_deref().unwrap_or("<per-request coderRef only>"),
        watch = args.coder_watch,
        leader_elect = args.leader_elect,
        "starting workspace-start-operator"
    );

    let result = if args.leader_elect {
        let identity = args
            .identity
            .clone()
            .unwrap_or_else(|| format!("wso-{}", uuid::Uuid::new_v4()));
        let lease_name = args.shard.lease_name(&args.lease_name);
        let manager = kube_lease_manager::LeaseManagerBuilder::new(kube.clone(), &lease_name)
            .with_namespace(&args.lease_namespace)
            .with_identity(&identity)
            .with_duration(args.lease_duration)
            .with_grace((args.lease_duration / 3).max(1))
            .build()
            .await?;
        let (mut leader, lease_task) = manager.watch().await;
        // A standby replica is healthy and ready (a rolling update must be able to proceed).
        health.set_ready(true);
        tracing::info!(identity = %identity, lease = %lease_name, "waiting to become leader");
        let became_leader = async {
            while !*leader.borrow_and_update() {
                if leader.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        let outcome = tokio::select! {
            l = became_leader => if l { Ok(()) } else { Err(RunError::LostLease) },
            _ = shutdown.clone() => { drop(leader); let _ = lease_task.await; return stop_server(server).await; }
        };
        outcome?;
        metrics.leader.set(1);
        tracing::info!(identity = %identity, "became leader; reconciling");
        let lost = {
            let mut leader = leader.clone();
            async move {
                while *leader.borrow_and_update() {
                    if leader.changed().await.is_err() {
                        break;
                    }
                }
            }
        };
        let stop = futures::future::select(lost.boxed(), shutdown.clone())
            .map(|_| ())
            .boxed()
            .shared();
        controller::run(Arc::clone(&ctx), namespaces, health.clone(), stop).await;
        let still_leader = *leader.borrow();
        metrics.leader.set(0);
        drop(leader);
        // Dropping the channel makes the lease task release the lease.
        let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
        if still_leader || shutdown.peek().is_some() {
            Ok(())
        } else {
            Err(RunError::LostLease)
        }
    } else {
        controller::run(
            Arc::clone(&ctx),
            namespaces,
            health.clone(),
            shutdown.clone(),
        )
        .await;
        Ok(())
    };
    result?;
    stop_server(server).await
}

async fn stop_server(server: tokio::task::JoinHandle<std::io::Result<()>>) -> Result<(), RunError> {
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(r)) => r.map_err(RunError::from),
        _ => Ok(()),
    }
}
