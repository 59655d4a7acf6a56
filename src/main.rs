//! `workspace-start-operator run | mcp | start | crd` (also `kubectl wsr start` as a plugin).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use workspace_start_operator::coder::ClientOptions;
use workspace_start_operator::config::{Command, RunArgs};
use workspace_start_operator::connect::{AllowedUrls, Connections};
use workspace_start_operator::controller::{self, Context, Settings};
use workspace_start_operator::metrics::{self, Health, Metrics};
use workspace_start_operator::watch::Watches;
use workspace_start_operator::{crd, mcp, process, start};

/// mimalloc (v3, transparent huge pages off for the process): with the single-threaded runtime
/// below it cut the operator's CPU per request by about a quarter at N=1000 (glibc malloc
/// 3.3–4.4 ms, mimalloc 2.7–3.1 ms; README "Performance figures"). Huge pages stay off because
/// with them mimalloc's eagerly committed arena raised peak RSS from 34 to 53–60 MiB.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Errors that stop the process.
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error("cannot render the CRD: {0}")]
    Crd(#[from] serde_yaml::Error),
    #[error("cannot connect to Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("metrics server: {0}")]
    Metrics(#[from] std::io::Error),
    #[error("--coder-allowed-urls: {0}")]
    AllowedUrls(String),
    #[error("lost leadership; exiting so a new leader takes over")]
    LostLease,
}

fn main() -> ExitCode {
    let cli = start::parse_cli();
    let result = match cli.command {
        Command::Start(args) => return start::main(*args),
        Command::Mcp(args) => return mcp::main(*args),
        Command::Crd => crd::crd_yaml()
            .map(|y| print!("{y}"))
            .map_err(MainError::from),
        Command::Run(args) => {
            process::init_logging(args.log_format, &args.log_level);
            // One thread: the operator's work is many small I/O-bound tasks, and on one thread
            // no task is stolen or woken across threads and every free is thread-local (with the
            // multi-thread runtime mimalloc alone saved nothing: 4.0 ms per request). `mcp` and
            // `start` keep their own runtimes (src/mcp, src/start.rs).
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(run(*args)),
                Err(e) => Err(MainError::Metrics(e)),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("workspace-start-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<(), MainError> {
    let shutdown = process::shutdown_signal().boxed().shared();
    let kube = workspace_start_operator::kube_client::connect().await?;
    let metrics = Arc::new(Metrics::for_shard(&args.shard));
    let health = Health::default();
    let server = tokio::spawn(metrics::serve(
        args.metrics_addr,
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
    };
    let settings = Settings {
        poll: Duration::from_millis(args.poll_ms),
        backstop_poll: Duration::from_millis(args.backstop_poll_ms),
        concurrency: args.concurrency,
        follow_concurrency: args.follow_concurrency,
        write_slots: args.write_slots,
        panic_on: args.test_panic_on.clone(),
        shard: args.shard.clone(),
    };
    let watches = Watches::new(
        args.coder_watch,
        Duration::from_millis(args.poll_ms / 2),
        Arc::clone(&metrics),
    );
    watches.set_max_streams(args.max_watch_streams);
    watches.set_backstop(Duration::from_millis(args.backstop_poll_ms));
    let allowed = AllowedUrls::new(&args.coder_allowed_urls, args.coder_url.as_deref())
        .map_err(MainError::AllowedUrls)?;
    tracing::info!(allowed = %allowed.describe(), "Coder URLs allowed in coderRef Secrets");
    let connections = Connections::new(
        kube.clone(),
        args.coder_url.clone(),
        args.coder_token_file.clone(),
        opts,
        allowed,
    );
    let ctx = Context::new(
        kube.clone(),
        connections,
        watches,
        Arc::clone(&metrics),
        settings,
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
            l = became_leader => if l { Ok(()) } else { Err(MainError::LostLease) },
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
            Err(MainError::LostLease)
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

async fn stop_server(
    server: tokio::task::JoinHandle<std::io::Result<()>>,
) -> Result<(), MainError> {
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(r)) => r.map_err(MainError::from),
        _ => Ok(()),
    }
}
