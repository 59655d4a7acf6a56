//! `workspace-start-operator start` (also `kubectl wsr start` when installed as the kubectl
//! plugin `kubectl-wsr`): creates a request with the kubeconfig like kubectl does and, with
//! `--wait`, follows it with a live progress display on a terminal (plain lines otherwise) until it
//! is Ready, Failed, or the timeout passes. The exit code says which; `-o json|yaml` prints the
//! same result as the MCP tool.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use kube::api::Api;

use crate::api::crd::WorkspaceStartRequest;
use crate::cli::start::{Output, StartArgs};
use crate::client::idempotency::{self, Created, IdempotencyError, RequestKey};
use crate::client::result::{StartResult, humanize};
use crate::client::submit::{self, ArgError, NewRequest, Target, TargetArgs, Via};
use crate::client::track::{self, Followed, Progress};
use crate::process::kube_client;

/// Exit codes of `start`.
pub mod exit {
    /// The request was created (no `--wait`) or is Ready.
    pub const READY: u8 = 0;
    /// The request ended Failed.
    pub const FAILED: u8 = 1;
    /// Invalid arguments.
    pub const USAGE: u8 = 2;
    /// `--timeout` passed while the request was still in progress.
    pub const TIMEOUT: u8 = 3;
    /// The request could not be created or followed (kubeconfig, RBAC, API server).
    pub const KUBERNETES: u8 = 4;
}

/// Why `start` stopped before it had a result.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An argument was refused.
    #[error(transparent)]
    Argument(#[from] ArgError),
    /// No usable kubeconfig.
    #[error("cannot load the kubeconfig: {0}")]
    Kubeconfig(String),
    /// Creating the request failed.
    #[error("cannot create the request in namespace {namespace}: {source}")]
    Create {
        /// Namespace.
        namespace: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Creating the request under `--request-id` failed, or the id is used by another start.
    #[error("cannot create the request in namespace {namespace}: {source}")]
    Idempotent {
        /// Namespace.
        namespace: String,
        /// What failed.
        #[source]
        source: IdempotencyError,
    },
    /// Following the request failed.
    #[error(transparent)]
    Follow(#[from] track::FollowError),
    /// Writing the result failed.
    #[error("cannot print the result: {0}")]
    Print(String),
}

impl StartError {
    fn exit_code(&self) -> u8 {
        match self {
            StartError::Argument(_)
            | StartError::Idempotent {
                source: IdempotencyError::Conflict { .. },
                ..
            } => exit::USAGE,
            _ => exit::KUBERNETES,
        }
    }
}

/// Runs `start` and returns its exit code.
pub fn main(args: StartArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::KUBERNETES);
        }
    };
    match rt.block_on(run(&args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(args: &StartArgs) -> Result<u8, StartError> {
    let target = target(args)?;
    let parameters = parameters(&args.parameters)?;
    let timeout = args.timeout;
    let config = kube_client::load_config(args.kubeconfig.as_deref(), args.context.as_deref())
        .await
        .map_err(|e| StartError::Kubeconfig(e.to_string()))?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    submit::check_namespace("--namespace", &namespace)?;
    let client =
        kube::Client::try_from(config).map_err(|e| StartError::Kubeconfig(e.to_string()))?;
    let new = NewRequest {
        namespace: namespace.clone(),
        target,
        parameters,
        via: Via::Start,
        requested_by: None,
        shard: args.shard.clone(),
    };
    let created = match args.request_id.as_deref() {
        None => new
            .create(&client)
            .await
            .map_err(|source| StartError::Create { namespace, source })?,
        Some(id) => create_once(&client, &new, id).await?,
    };
    if !args.wait {
        print_result(args.output, &StartResult::of(&created), &created, None)?;
        return Ok(exit::READY);
    }
    let api: Api<WorkspaceStartRequest> = Api::namespaced(client, &new.namespace);
    let mut display = Display::new(&created);
    let followed = track::follow(api, created, timeout, |r, p| display.update(r, p)).await;
    display.finish();
    let (result, code) = match followed? {
        Followed::Finished(r) => {
            let result = StartResult::of(&r);
            let code = if result.is_failure() {
                exit::FAILED
            } else {
                exit::READY
            };
            (result, code)
        }
        Followed::TimedOut(r) => (StartResult::timed_out(&r, timeout), exit::TIMEOUT),
    };
    print_result(
        args.output,
        &result,
        display.last_request(),
        Some(display.elapsed()),
    )?;
    Ok(code)
}

/// Creates the request under `--request-id`, or finds the one an earlier run created.
async fn create_once(
    client: &kube::Client,
    new: &NewRequest,
    request_id: &str,
) -> Result<WorkspaceStartRequest, StartError> {
    // Checked before asking the API server who we are, so a bad value is a usage error.
    RequestKey::new("--request-id", &new.namespace, "", request_id)?;
    let idempotent = |source| StartError::Idempotent {
        namespace: new.namespace.clone(),
        source,
    };
    let user = idempotency::username(client).await.map_err(idempotent)?;
    let key = RequestKey::new("--request-id", &new.namespace, &user, request_id)?;
    let (request, created) = idempotency::create_once(client, new, &key)
        .await
        .map_err(idempotent)?;
    if created == Created::Existing {
        let name = request.metadata.name.as_deref().unwrap_or_default();
        eprintln!("--request-id seen before: following workspacestartrequest.coder.com/{name}");
    }
    Ok(request)
}

fn target(args: &StartArgs) -> Result<Target, ArgError> {
    let mut targets = TargetArgs {
        names: submit::CLI_ARGS,
        chat: args.chat.as_deref(),
        workspace_id: None,
        owner: None,
        name: None,
    };
    if let Some(ws) = args.workspace.as_deref() {
        match ws.split_once('/') {
            Some((owner, name)) => {
                targets.owner = Some(owner);
                targets.name = Some(name);
            }
            None => targets.workspace_id = Some(ws),
        }
    }
    Target::from_args(&targets)
}

fn parameters(raw: &[String]) -> Result<Vec<crate::api::crd::BuildParameter>, ArgError> {
    let mut map = std::collections::BTreeMap::new();
    for p in raw {
        let (name, value) = p.split_once('=').ok_or_else(|| {
            ArgError::new("--parameter", format!("expected NAME=VALUE, got {p:?}"))
        })?;
        map.insert(name.to_owned(), value.to_owned());
    }
    submit::parameters("--parameter", &map)
}

/// The result on stdout in the chosen format.
fn print_result(
    output: Output,
    result: &StartResult,
    request: &WorkspaceStartRequest,
    elapsed: Option<Duration>,
) -> Result<(), StartError> {
    let text = match output {
        Output::Json => {
            serde_json::to_string_pretty(result).map_err(|e| StartError::Print(e.to_string()))?
        }
        Output::Yaml => serde_yaml::to_string(result)
            .map_err(|e| StartError::Print(e.to_string()))?
            .trim_end()
            .to_owned(),
        Output::Text => text_line(result, request, elapsed),
    };
    println!("{text}");
    Ok(())
}

/// `workspacestartrequest.coder.com/NAME Ready after 7s: <message>`, in the manner of kubectl's
/// messages; a failure or timeout names the reason and the error.
fn text_line(
    result: &StartResult,
    request: &WorkspaceStartRequest,
    elapsed: Option<Duration>,
) -> String {
    let name = request.metadata.name.as_deref().unwrap_or_default();
    let object = format!("workspacestartrequest.coder.com/{name}");
    let Some(elapsed) = elapsed else {
        return format!("{object} created");
    };
    let phase = result.phase.as_deref().unwrap_or("Pending");
    let took = humanize(elapsed);
    match &result.error {
        Some(error) => {
            let reason = result.reason.as_deref().unwrap_or("Unknown");
            format!("{object} {phase} after {took}: {reason}: {error}")
        }
        None => {
            let message = result.message.as_deref().unwrap_or_default();
            format!("{object} {phase} after {took}: {message}")
        }
    }
}

/// Live progress on stderr: a spinner with history lines on a terminal, plain lines otherwise.
struct Display {
    started: Instant,
    bar: Option<ProgressBar>,
    last: WorkspaceStartRequest,
}

impl Display {
    fn new(created: &WorkspaceStartRequest) -> Display {
        let name = created.metadata.name.clone().unwrap_or_default();
        eprintln!("workspacestartrequest.coder.com/{name} created; waiting for it to be Ready");
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            let style = ProgressStyle::with_template("{spinner} [{elapsed:>4}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Display {
            started: Instant::now(),
            bar,
            last: created.clone(),
        }
    }

    fn update(&mut self, request: &WorkspaceStartRequest, progress: &Progress) {
        self.last = request.clone();
        let line = progress.summary();
        match &self.bar {
            Some(bar) => {
                bar.println(format!("  [{:>4}] {line}", humanize(self.elapsed())));
                bar.set_message(line);
            }
            None => eprintln!("[{:>6}] {line}", humanize(self.elapsed())),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn last_request(&self) -> &WorkspaceStartRequest {
        &self.last
    }
}
