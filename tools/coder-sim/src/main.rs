//! `coder-sim` binary: serves the simulator, optionally seeded from a
//! scenario file, until SIGINT/SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use coder_sim::scenario::Scenario;
use coder_sim::{ChatEra, SimConfig, SimServer};

/// Coder REST API simulator.
#[derive(Debug, Parser)]
#[command(name = "coder-sim", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CODER_SIM_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Scenario file (YAML, or JSON when it ends in .json) to seed from.
    #[arg(long, env = "CODER_SIM_SCENARIO")]
    scenario: Option<PathBuf>,
    /// buildinfo version (overrides the scenario's `server.version`).
    #[arg(long = "coder-version", env = "CODER_SIM_VERSION")]
    coder_version: Option<String>,
    /// Chat API era: v2, experimental or experimental-wrapped.
    #[arg(long, env = "CODER_SIM_CHAT_ERA", value_parser = parse_era)]
    chat_era: Option<ChatEra>,
    /// Requests per user per URL path per minute (<= 0 disables).
    #[arg(long, env = "CODER_SIM_RATE_LIMIT", allow_negative_numbers = true)]
    rate_limit: Option<i64>,
}

fn parse_era(s: &str) -> Result<ChatEra, String> {
    match s.replace('-', "_").as_str() {
        "v2" => Ok(ChatEra::V2),
        "experimental" => Ok(ChatEra::Experimental),
        "experimental_wrapped" => Ok(ChatEra::ExperimentalWrapped),
        _ => Err(format!(
            "unknown chat era {s:?} (v2, experimental, experimental-wrapped)"
        )),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "coder_sim=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let scenario = match &args.scenario {
        Some(p) => Scenario::from_path(p)?,
        None => Scenario::default(),
    };
    let mut cfg = SimConfig {
        addr: Some(args.listen),
        ..SimConfig::default()
    };
    if let Some(server) = &scenario.server {
        server.apply_to(&mut cfg);
    }
    if let Some(v) = args.coder_version {
        cfg.version = v;
    }
    if let Some(e) = args.chat_era {
        cfg.chat_era = e;
    }
    if let Some(r) = args.rate_limit {
        cfg.rate_limit_per_minute = r;
    }
    let server = SimServer::start(cfg).await?;
    scenario.apply(&server.sim())?;
    let mut out = std::io::stdout();
    writeln!(out, "coder-sim listening on {}", server.url())?;
    out.flush()?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
