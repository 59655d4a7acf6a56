//! [`Error`]: everything that can go wrong while running the control plane.

use std::{io, path::PathBuf, time::Duration};

use crate::BUILD_SCRIPT;

/// Everything that can go wrong while running the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required binary is missing from the binary directory.
    #[error(
        "control-plane binaries missing in {dir}: {missing:?}; build them with `{BUILD_SCRIPT}` \
         (or point $KUBEBUILDER_ASSETS at a directory holding them)"
    )]
    MissingBinaries {
        /// The directory that was searched.
        dir: PathBuf,
        /// Names of the binaries not found there.
        missing: Vec<String>,
    },
    /// A binary the node needs is missing from the binary directory.
    #[error(
        "node binaries missing in {dir}: {missing:?}; build them with `{}`",
        crate::node::NODE_BUILD_SCRIPT
    )]
    MissingNodeBinaries {
        /// The directory that was searched.
        dir: PathBuf,
        /// Names of the binaries not found there.
        missing: Vec<String>,
    },
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A helper command (e.g. `openssl`) failed.
    #[error("command `{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status and stderr.
        detail: String,
    },
    /// A control-plane process exited while it should be running.
    #[error("{process} exited early ({status}); last log lines:\n{log_tail}")]
    ProcessExited {
        /// `etcd`, `kube-apiserver` or `kube-controller-manager`.
        process: &'static str,
        /// Its exit status.
        status: String,
        /// The tail of its log.
        log_tail: String,
    },
    /// A port was taken between choosing it and the process binding it (retried internally).
    #[error("{process} could not bind its port (address already in use)")]
    PortInUse {
        /// `etcd`, `kube-apiserver` or `kube-controller-manager`.
        process: &'static str,
    },
    /// Something did not become ready in time.
    #[error("timed out after {timeout:?} waiting for {what}; last log lines:\n{log_tail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
        /// Log tails of the processes (may be empty).
        log_tail: String,
    },
    /// A Kubernetes API call failed.
    #[error("kubernetes API call failed while {context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: Box<kube::Error>,
    },
    /// A kubeconfig could not be turned into a client configuration.
    #[error("invalid kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// A YAML/JSON manifest could not be parsed.
    #[error("invalid manifest{location}: {detail}")]
    Manifest {
        /// Where (file and/or document index), possibly empty.
        location: String,
        /// What is wrong.
        detail: String,
    },
    /// Discovery did not know a kind (and it did not appear within the wait).
    #[error("kind {gvk} is not served by the API server: {source}")]
    UnknownKind {
        /// `group/version/Kind`.
        gvk: String,
        /// The last discovery error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The readiness probe's HTTP client could not be built.
    #[error("HTTP client error: {0}")]
    Http(#[from] reqwest::Error),
    /// The child-process spawner thread is gone (should not happen).
    #[error("the process spawner thread is not running")]
    SpawnerGone,
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub(crate) fn kube(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let context = context.into();
        move |source| Error::Kube {
            context,
            source: Box::new(source),
        }
    }
}
