//! `coder-sim`: a Coder REST API simulator for tests, the demo and the
//! benchmark.
//!
//! It speaks the JSON of `shared/reference/coder-api.md`: buildinfo, users,
//! chats (per API era), workspaces, builds with a clock-driven provisioner
//! job and agent lifecycle, the `/watch` SSE stream, per-user per-path rate
//! limiting, fault injection and request counters; over `http`, or `https` with a
//! certificate the caller gives ([`SimTls`]).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use coder_sim::{SimConfig, SimServer, WorkspaceSeed};
//! let server = SimServer::start(SimConfig::default()).await?;
//! let sim = server.sim();
//! let alice = sim.add_user("alice");
//! let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev"));
//! let chat = sim.add_chat(alice.id, Some(ws));
//! println!("{} {} {}", server.url(), alice.token, chat);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod admin;
mod config;
mod duration;
mod faults;
mod feed;
mod http;
mod json;
mod listener;
mod model;
mod ratelimit;
mod routes;
pub mod scenario;

use std::net::SocketAddr;

use axum::http::HeaderValue;
use axum::response::Response;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::routes::App;

pub use config::{ChatEra, DEFAULT_RATE_LIMIT, DEFAULT_VERSION, SimConfig, SimTls, TestCa};
pub use faults::{ANY_ROUTE, Fault};
pub use feed::StateChange;
pub use model::debug::LOG_SECRET;
pub use model::{
    AgentSeed, BuildOutcome, BuildScript, ChatSpec, DormantStart, InitialState, LifecycleState,
    Sim, SimUser, Transition, UserSpec, WorkspaceSeed,
};

/// A running simulator; shuts down when dropped.
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    scheme: &'static str,
    sim: Sim,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Every answer carries `X-Coder-Build-Version` (the running version: it may be upgraded).
async fn add_version(
    axum::extract::State(app): axum::extract::State<App>,
    mut resp: Response,
) -> Response {
    let version = app.sim.lock().version.clone();
    if let Ok(v) = HeaderValue::from_str(&version) {
        resp.headers_mut().insert("X-Coder-Build-Version", v);
    }
    resp
}

impl SimServer {
    /// Binds `cfg.addr` (default `127.0.0.1:0`) and serves in the background
    /// on the current tokio runtime.
    pub async fn start(cfg: SimConfig) -> anyhow::Result<SimServer> {
        let addr = cfg
            .addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let tls = cfg
            .tls
            .as_ref()
            .map(crate::listener::acceptor)
            .transpose()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let sim = Sim::new(&cfg);
        sim.set_base_url(&format!("{scheme}://{addr}"));
        HeaderValue::from_str(&sim.lock().version)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let app = App {
            sim: sim.clone(),
            shutdown: shutdown_rx.clone(),
        };
        let router = routes::router(app.clone())
            .merge(admin::router())
            .layer(axum::middleware::map_response_with_state(
                app.clone(),
                add_version,
            ))
            .with_state(app);
        let mut stop = shutdown_rx;
        let serve = axum::serve(
            crate::listener::SimListener::new(listener, tls),
            router.into_make_service_with_connect_info::<crate::listener::ConnInfo>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|v| *v).await;
        });
        let task = tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "coder-sim server stopped");
            }
        });
        Ok(SimServer {
            addr,
            scheme,
            sim,
            shutdown,
            task: Some(task),
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (`https://…` when serving TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Handle to the simulator state.
    pub fn sim(&self) -> Sim {
        self.sim.clone()
    }

    /// Stops accepting, ends watch streams and hanging requests, and waits
    /// (at most 5 s) for open connections to finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
