//! `coder-sim`: a Coder REST API simulator for tests, the demo and the
//! benchmark.
//!
//! It speaks the JSON of `shared/reference/coder-api.md`: buildinfo, users,
//! chats (per API era), workspaces, builds with a clock-driven provisioner
//! job and agent lifecycle, the `/watch` SSE stream, per-user per-path rate
//! limiting, fault injection and request counters.
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
mod faults;
mod json;
mod model;
mod ratelimit;
mod routes;
pub mod scenario;

use std::net::SocketAddr;

use axum::http::HeaderValue;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use faults::{Fault, FaultSpec};
pub use model::{
    AgentSeed, BuildOutcome, BuildScript, ChatSpec, InitialState, LifecycleState, Sim, SimUser,
    Transition, UserSpec, WorkspaceSeed,
};

/// `buildinfo.version` used when [`SimConfig::version`] is empty.
pub const DEFAULT_VERSION: &str = "v2.37.0";
/// Coder's default `--api-rate-limit`.
pub const DEFAULT_RATE_LIMIT: i64 = 512;

/// Where chats are served and in which shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatEra {
    /// `/api/v2/chats/{id}` answering a bare `Chat` (v2.37+); the
    /// experimental path answers 404.
    #[default]
    V2,
    /// Only `/api/experimental/chats/{id}`, bare `Chat`.
    Experimental,
    /// Only `/api/experimental/chats/{id}`, answering
    /// `{"chat":{…},"messages":[],"queued_messages":[]}` (early March 2026).
    ExperimentalWrapped,
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to bind; `None` = `127.0.0.1:0` (a free port).
    pub addr: Option<SocketAddr>,
    /// `buildinfo.version` and `X-Coder-Build-Version` (default `v2.37.0`;
    /// empty also means the default).
    pub version: String,
    /// Chat API era.
    pub chat_era: ChatEra,
    /// Requests per user (or IP) per URL path per minute; default 512, `<= 0`
    /// disables rate limiting.
    pub rate_limit_per_minute: i64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            addr: None,
            version: DEFAULT_VERSION.to_owned(),
            chat_era: ChatEra::V2,
            rate_limit_per_minute: DEFAULT_RATE_LIMIT,
        }
    }
}

/// Shared router state.
#[derive(Clone)]
pub(crate) struct App {
    pub sim: Sim,
    pub shutdown: watch::Receiver<bool>,
    pub version: HeaderValue,
}

/// A running simulator; shuts down when dropped.
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    sim: Sim,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn add_version(
    axum::extract::State(app): axum::extract::State<App>,
    mut resp: Response,
) -> Response {
    resp.headers_mut()
        .insert("X-Coder-Build-Version", app.version.clone());
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
        let sim = Sim::new(&cfg);
        sim.set_base_url(&format!("http://{addr}"));
        let version = HeaderValue::from_str(&sim.lock().version)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let app = App {
            sim: sim.clone(),
            shutdown: shutdown_rx.clone(),
            version,
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
            faults::SimListener::new(listener),
            router.into_make_service_with_connect_info::<faults::ConnInfo>(),
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
            sim,
            shutdown,
            task: Some(task),
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
