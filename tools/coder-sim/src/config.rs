//! Server configuration: version, chat API era and rate limit.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

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
