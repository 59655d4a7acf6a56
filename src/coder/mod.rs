//! Everything about talking to Coder: JSON types, the REST client, its errors and rate limits.

pub mod accounts;
pub mod client;
pub mod credentials;
pub mod error;
pub mod external;
pub mod logs;
pub mod names;
pub mod ratelimit;
pub mod sse;
pub mod tls;
pub mod transport;
pub mod types;
pub mod users;

pub use client::{CallObserver, ClientOptions, CoderClient, WatchEvent};
pub use credentials::{SessionToken, TokenError, UrlError};
pub use error::CoderError;
pub use tls::{CaError, Trust};
pub use transport::Transport;
pub use users::OwnerAccount;
