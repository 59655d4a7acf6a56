//! `envtest up --dir DIR [--crds DIR]`: runs a local etcd + kube-apiserver in the foreground
//! for the demo and the benchmark, writes `DIR/kubeconfig` and `DIR/env`, and tears everything
//! down on SIGINT/SIGTERM.

use std::{fs, path::PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use envtest::ControlPlane;
use tokio::signal::unix::{SignalKind, signal};

/// Local Kubernetes control plane (etcd + kube-apiserver) for tests and demos.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Subcommands.
#[derive(Subcommand)]
enum Cmd {
    /// Start the control plane and keep it running until SIGINT/SIGTERM.
    Up {
        /// Directory to write `kubeconfig` (admin) and `env` into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Apply every *.yaml in this directory and wait until the CRDs are served.
        #[arg(long)]
        crds: Option<PathBuf>,
        /// Also run a real node (kube-scheduler, containerd, kubelet, kube-proxy; needs root and
        /// scripts/node-bins.sh), see docs/node.md.
        #[arg(long)]
        node: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Cli {
        cmd: Cmd::Up { dir, crds, node },
    } = Cli::parse();

    // Install the handlers before starting so an early Ctrl-C still tears down.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = fs::canonicalize(&dir).with_context(|| format!("resolving {}", dir.display()))?;

    let plane = tokio::select! {
        r = async {
            if node { ControlPlane::start_with_node().await } else { ControlPlane::start().await }
        } => r.context("starting the control plane")?,
        _ = sigint.recv() => return Ok(()),
        _ = sigterm.recv() => return Ok(()),
    };
    eprintln!(
        "envtest: kube-apiserver {} up in {:.1}s (data in {})",
        plane.server_url(),
        plane.startup_duration().as_secs_f64(),
        plane.dir().display()
    );
    if let Some(crds) = &crds {
        plane
            .install_crds(crds)
            .await
            .with_context(|| format!("installing CRDs from {}", crds.display()))?;
        eprintln!("envtest: CRDs from {} installed", crds.display());
    }

    let kubeconfig = dir.join("kubeconfig");
    fs::copy(plane.admin_kubeconfig(), &kubeconfig)
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
    let env = format!(
        "KUBECONFIG={}\nKUBE_SERVER={}\nENVTEST_BIN_DIR={}\nENVTEST_PID={}\n",
        kubeconfig.display(),
        plane.server_url(),
        plane.bin_dir().display(),
        std::process::id()
    );
    fs::write(dir.join("env"), env).with_context(|| format!("writing {}/env", dir.display()))?;
    println!("envtest ready: KUBECONFIG={}", kubeconfig.display());

    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    eprintln!("envtest: shutting down");
    let _ = fs::remove_file(dir.join("env"));
    plane.stop();
    Ok(())
}
