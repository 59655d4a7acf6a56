//! The Kubernetes client: kube's configuration (kubeconfig or in-cluster), spoken over HTTP/2
//! when the API server offers it, as client-go does.
//!
//! kube's default client speaks HTTP/1.1 only, so every request beyond the idle connections in
//! its pool opens a new TLS connection. When the agent of a workspace that ten requests wait on
//! becomes ready, ten Ready writes leave at once; on a busy API server the handshakes of the
//! extra connections took hundreds of milliseconds, so most of those requests turned Ready long
//! after the first. Over HTTP/2 they share one connection as concurrent streams.

use std::path::Path;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use kube::config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Config};
use tower::{BoxError, ServiceBuilder};

/// How often an otherwise idle HTTP/2 connection is pinged, so a dead peer is noticed (watch
/// streams can be quiet for minutes).
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// A client for the inferred configuration (`KUBECONFIG`, `~/.kube/config` or in-cluster).
pub async fn connect() -> Result<Client, kube::Error> {
    let config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    from_config(config)
}

/// Why [`load_config`] found no usable configuration (shown as kube words it, unchanged).
#[derive(Debug, thiserror::Error)]
pub enum LoadConfigError {
    /// The kubeconfig file could not be read or parsed, or the context is not in it.
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    /// Neither `$KUBECONFIG`/`~/.kube/config` nor an in-cluster ServiceAccount was usable.
    #[error(transparent)]
    Infer(#[from] InferConfigError),
}

/// The configuration a command-line client uses, picked as kubectl does: the file `kubeconfig`
/// when given, else `$KUBECONFIG` or `~/.kube/config`, each at `context` (default: the file's
/// current context). Only with neither a path nor a context does the pod's in-cluster
/// ServiceAccount serve as a last resort.
pub async fn load_config(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<Config, LoadConfigError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    Ok(match (kubeconfig, context) {
        (Some(path), _) => {
            Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options).await?,
        (None, None) => Config::infer().await?,
    })
}

/// A client for `config`: TLS settings, authentication and extra headers as kube's own client
/// has them; HTTP/2 when the server negotiates it by ALPN, HTTP/1.1 otherwise.
pub fn from_config(config: Config) -> Result<Client, kube::Error> {
    let tls = config.rustls_client_config()?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(KEEP_ALIVE)
        .http2_keep_alive_while_idle(true)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}
