//! `workspace-start-operator logs` (also `kubectl wsr logs NAME [--follow] [--tail N]`): prints a
//! request's build logs, read page by page from the operator's logs endpoint with the caller's
//! own Kubernetes token (the operator checks `get workspacestartrequests/logs` for it). With
//! `--follow` it keeps polling for new lines until the build's job has ended.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::logs::LogsArgs;
use crate::client::submit::{self, ArgError};
use crate::coder::logs::LogLine;
use crate::process::kube_client;

/// Exit codes of `logs`.
pub mod exit {
    /// Printed.
    pub const OK: u8 = 0;
    /// The operator refused (no rights, no such request, no build yet).
    pub const REFUSED: u8 = 1;
    /// Invalid arguments.
    pub const USAGE: u8 = 2;
    /// No token, or the endpoint could not be reached.
    pub const UNAVAILABLE: u8 = 4;
}

/// Why `logs` stopped.
#[derive(Debug, thiserror::Error)]
pub enum LogsCmdError {
    /// An argument was refused.
    #[error(transparent)]
    Argument(#[from] ArgError),
    /// No token or kubeconfig.
    #[error("{0}")]
    Credentials(String),
    /// The endpoint could not be reached or answered nonsense.
    #[error("cannot read logs: {0}")]
    Transport(String),
    /// The operator refused.
    #[error("{0}")]
    Refused(String),
}

impl LogsCmdError {
    fn exit_code(&self) -> u8 {
        match self {
            LogsCmdError::Argument(_) => exit::USAGE,
            LogsCmdError::Refused(_) => exit::REFUSED,
            _ => exit::UNAVAILABLE,
        }
    }
}

/// One page as the endpoint sends it.
#[derive(Debug, serde::Deserialize)]
struct Page {
    #[serde(default)]
    logs: Vec<LogLine>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    next_after_id: Option<i64>,
    #[serde(default)]
    job_status: String,
}

/// Runs `logs` and returns its exit code.
pub fn main(args: LogsArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::UNAVAILABLE);
        }
    };
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `(namespace, token)` from the flags, else the kubeconfig.
async fn identity(args: &LogsArgs) -> Result<(String, String), LogsCmdError> {
    let from_file = match &args.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| LogsCmdError::Credentials(format!("--token-file: {e}")))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    if let (Some(ns), Some(token)) = (&args.namespace, &from_file) {
        return Ok((ns.clone(), token.clone()));
    }
    let config = kube_client::load_config(args.kubeconfig.as_deref(), args.context.as_deref())
        .await
        .map_err(|e| LogsCmdError::Credentials(format!("kubeconfig: {e}")))?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let token = match from_file {
        Some(t) => t,
        None => {
            use secrecy::ExposeSecret;
            let token = config
                .auth_info
                .token
                .as_ref()
                .map(|t| t.expose_secret().to_owned())
                .or_else(|| {
                    config
                        .auth_info
                        .token_file
                        .as_ref()
                        .and_then(|f| std::fs::read_to_string(f).ok())
                        .map(|t| t.trim().to_owned())
                });
            token.ok_or_else(|| {
                LogsCmdError::Credentials(
                    "the kubeconfig user has no bearer token; pass --token-file".to_owned(),
                )
            })?
        }
    };
    Ok((namespace, token))
}

async fn run(args: &LogsArgs) -> Result<(), LogsCmdError> {
    submit::check_request_name("NAME", &args.name)?;
    if let Some(ns) = &args.namespace {
        submit::check_namespace("--namespace", ns)?;
    }
    let (namespace, token) = identity(args).await?;
    let http = crate::process::tls::client(args.logs_ca_file.as_deref(), Duration::from_secs(30))
        .map_err(|e| LogsCmdError::Transport(format!("--logs-ca-file: {e}")))?;
    let base = format!(
        "{}/{namespace}/{}",
        args.logs_url.trim_end_matches('/'),
        args.name
    );
    let tail = args.tail.map(|n| n as usize);
    let mut kept: VecDeque<LogLine> = VecDeque::new();
    let mut after = 0i64;
    let mut printed_tail = tail.is_none();
    loop {
        let page = fetch(&http, &base, &token, after).await?;
        let last_id = page.logs.last().map(|l| l.id);
        for line in page.logs {
            match tail {
                Some(n) if !printed_tail => {
                    kept.push_back(line);
                    if kept.len() > n {
                        kept.pop_front();
                    }
                }
                _ => print_line(&line),
            }
        }
        after = page.next_after_id.or(last_id).unwrap_or(after);
        if page.has_more {
            continue;
        }
        if !printed_tail {
            kept.drain(..).for_each(|l| print_line(&l));
            printed_tail = true;
        }
        let active = matches!(
            page.job_status.as_str(),
            "pending" | "running" | "canceling"
        );
        if !(args.follow && active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn fetch(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    after: i64,
) -> Result<Page, LogsCmdError> {
    let resp = http
        .get(format!("{base}?after={after}"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| LogsCmdError::Transport(e.without_url().to_string()))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| LogsCmdError::Transport(e.without_url().to_string()))?;
    if !status.is_success() {
        let message = body["message"].as_str().unwrap_or("refused").to_owned();
        return Err(LogsCmdError::Refused(format!("{status}: {message}")));
    }
    serde_json::from_value(body).map_err(|e| LogsCmdError::Transport(e.to_string()))
}

fn print_line(l: &LogLine) {
    if l.output.is_empty() {
        println!("==> {}", l.stage);
    } else {
        println!("{}", l.output);
    }
}
