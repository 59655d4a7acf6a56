//! Process plumbing shared by the programs (`run`, `mcp`, `start`): logging setup, the shutdown
//! signal, the Kubernetes client ([`kube_client`]), the health and metrics server ([`http`]),
//! handing freed memory back to the OS ([`memory`]), and what a port serving callers with bearer
//! tokens needs: the bounded listener ([`listener`]), the token check ([`auth`]) and TLS for it
//! ([`tls`]).

use tracing_subscriber::EnvFilter;

pub mod auth;
pub mod http;
pub mod kube_client;
pub mod listener;
pub mod memory;
pub mod tls;

/// Log output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber (stdout): `level` is a level or an `EnvFilter`
/// directive (an invalid one falls back to `info`).
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
}
