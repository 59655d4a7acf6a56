//! The `WorkspaceStartRequest` custom resource (`coder.com/v1alpha1`): spec, status and the
//! CRD schema rules (CEL) that make the API server refuse invalid requests.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::bounds::{
    MAX_AGENT_NAME, MAX_CODER_NAME, MAX_CODER_USER, MAX_DURATION_TEXT, MAX_OBJECT_NAME,
    MAX_PARAMETER_NAME, MAX_PARAMETER_VALUE, MAX_PARAMETERS, MAX_TTL_SECONDS,
};

/// API group of the custom resource.
pub const GROUP: &str = "coder.com";
/// Field manager used for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "workspace-start-operator";

/// CEL fragment: a lower- or upper-case hyphenated UUID.
const UUID_RULE: &str =
    "self.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')";

/// A Go-style duration as accepted here: at most 5 integer and 9 fraction digits per part and
/// at most 32 characters, so no accepted value can overflow a duration anywhere.
macro_rules! duration_regex {
    () => {
        "^([0-9]{1,5}([.][0-9]{1,9})?(ns|us|ms|s|m|h))+$"
    };
}

/// The duration format as an OpenAPI pattern.
const DURATION_PATTERN: &str = duration_regex!();

/// CEL: the value has the Go duration format of [`DURATION_PATTERN`].
const DURATION_FORMAT_RULE: &str = concat!("self.matches('", duration_regex!(), "')");

/// CEL: a duration above zero and at most [`crate::api::bounds::MAX_TIMEOUT`]. A malformed value passes this rule
/// (the format rule reports it), so `duration()` never meets a value it cannot convert.
const DURATION_RANGE_RULE: &str = concat!(
    "!self.matches('",
    duration_regex!(),
    "') || (duration(self) > duration('0s') && duration(self) <= duration('24h'))"
);

/// Coder's name rule (`codersdk/name.go`, `UsernameValidRegex`, used by `NameValid` for user
/// and workspace names), as a regular expression; Coder also limits names to 32 characters.
macro_rules! coder_name_regex {
    () => {
        "^[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*$"
    };
}

/// CEL: a Coder workspace name (the length is the schema's `maxLength`).
const CODER_NAME_RULE: &str = concat!("self.matches('", coder_name_regex!(), "')");

/// CEL: a Coder user as its API takes one in a path (`coderd/httpmw/userparam.go`): a username,
/// `me` (which is also a username's shape), or a user UUID.
const CODER_USER_RULE: &str = concat!(
    "(size(self) <= 32 && self.matches('",
    coder_name_regex!(),
    "')) || self.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')"
);

/// CEL: a Secret name (DNS-1123 subdomain).
const SECRET_NAME_RULE: &str =
    "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";

/// Asks the operator to start one Coder workspace, either the workspace bound to a chat or a
/// workspace named directly. A request is one-shot, like a Job: its spec cannot change.
// Several printcolumn(...) entries trip clippy::duplicated_attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "coder.com",
    version = "v1alpha1",
    kind = "WorkspaceStartRequest",
    plural = "workspacestartrequests",
    shortname = "wsr",
    category = "coder",
    namespaced,
    status = "WorkspaceStartRequestStatus",
    doc = "WorkspaceStartRequest asks for one Coder workspace to be started and reports when its agent is ready.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Workspace",
        type_ = "string",
        json_path = ".status.workspace.name"
    ),
    printcolumn(
        name = "Agent",
        type_ = "string",
        json_path = ".status.agent.lifecycleState"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Took",
        type_ = "string",
        json_path = ".status.timings.took",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.chatId) != has(self.workspace)").message("exactly one of spec.chatId or spec.workspace must be set"))]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: a WorkspaceStartRequest is one-shot; create a new request instead"))]
pub struct WorkspaceStartRequestSpec {
    /// Start the workspace bound to this Coder chat (UUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36))]
    #[x_kube(validation = Rule::new(UUID_RULE).message("chatId must be a UUID, e.g. 9d0c2f5e-1b7a-4c1e-9a51-3f0f6b2d8e11"))]
    pub chat_id: Option<String>,

    /// Start this workspace, by `id` or by `owner` and `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceSelector>,

    /// When set, the chat's and the workspace's owner must be this Coder user (UUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36))]
    #[x_kube(validation = Rule::new(UUID_RULE).message("ownerId must be a UUID"))]
    pub owner_id: Option<String>,

    /// Secret in this namespace holding `url` and `token` for the Coder deployment to use.
    /// Default: the operator-wide connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coder_ref: Option<CoderRef>,

    /// Rich parameter values passed to the start build (names unique, at most 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_PARAMETERS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.name == p.name))").message("parameter names must be unique"))]
    pub parameters: Vec<BuildParameter>,

    /// Agent that must become ready. Default: the chat tool's rule (root agents; the one whose
    /// name ends in `-coderd-chat`, else the first by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_AGENT_NAME))]
    pub agent_name: Option<String>,

    /// How long to wait for the build and for the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,

    /// Delete the request this many seconds after it finished (Ready or Failed); at most
    /// 2592000 (30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_TTL_SECONDS))]
    #[x_kube(validation = Rule::new("self <= 2592000").message("ttlSecondsAfterFinished must be at most 2592000 (30 days)"))]
    pub ttl_seconds_after_finished: Option<i64>,
}

/// Names a workspace by `id`, or by `owner` (username or id) and `name`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) ? !has(self.owner) && !has(self.name) : has(self.owner) && has(self.name)").message("workspace needs either id, or both owner and name"))]
pub struct WorkspaceSelector {
    /// Workspace UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36))]
    #[x_kube(validation = Rule::new(UUID_RULE).message("workspace.id must be a UUID"))]
    pub id: Option<String>,
    /// Owner: a Coder username, `me` (the token's user) or a user UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_CODER_USER))]
    #[x_kube(validation = Rule::new(CODER_USER_RULE).message("workspace.owner must be a Coder username (letters and digits joined by single hyphens, at most 32 characters, e.g. alice), me, or a user UUID"))]
    pub owner: Option<String>,
    /// Workspace name: letters and digits joined by single hyphens, at most 32 characters
    /// (Coder's rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_CODER_NAME))]
    #[x_kube(validation = Rule::new(CODER_NAME_RULE).message("workspace.name must be a Coder workspace name (letters and digits joined by single hyphens, at most 32 characters, e.g. dev)"))]
    pub name: Option<String>,
}

/// Reference to a Secret in the request's namespace with keys `url` and `token`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CoderRef {
    /// Secret name.
    #[schemars(length(min = 1, max = MAX_OBJECT_NAME))]
    #[x_kube(validation = Rule::new(SECRET_NAME_RULE).message("coderRef.name must be the name of a Secret in this namespace (lower-case letters, digits, '-' and '.'), e.g. coder-credentials"))]
    pub name: String,
}

/// One rich parameter value for the start build.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BuildParameter {
    /// Parameter name.
    #[schemars(length(min = 1, max = MAX_PARAMETER_NAME))]
    pub name: String,
    /// Parameter value.
    #[schemars(length(max = MAX_PARAMETER_VALUE))]
    pub value: String,
}

/// Deadlines, as Go-style durations such as `10m` or `90s`, each above zero and at most 24h.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Time allowed for the build, from the request's start. Default `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_DURATION_TEXT), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(DURATION_FORMAT_RULE).message("timeouts.build must be a duration such as 10m, 90s or 1h30m"))]
    #[x_kube(validation = Rule::new(DURATION_RANGE_RULE).message("timeouts.build must be more than 0s and at most 24h"))]
    pub build: Option<String>,
    /// Time allowed for the agent to become ready after the build succeeded. Default `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_DURATION_TEXT), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(DURATION_FORMAT_RULE).message("timeouts.agent must be a duration such as 10m, 90s or 1h30m"))]
    #[x_kube(validation = Rule::new(DURATION_RANGE_RULE).message("timeouts.agent must be more than 0s and at most 24h"))]
    pub agent: Option<String>,
}

/// Observed state, written only by the operator through the status subresource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStartRequestStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the request is: Pending, Starting, WaitingForAgent, Ready or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// How the workspace got started: Queued, InProgress or AlreadyRunning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Ready, Reconciling, Stalled, BuildSucceeded and AgentReady.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The workspace being started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceInfo>,
    /// The latest build observed (the one waited on once a build is running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildInfo>,
    /// Written before the start build is requested: after a crash the operator re-reads Coder
    /// and joins that build instead of requesting another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_requested_at: Option<Time>,
    /// The agent that must be ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentInfo>,
    /// When the operator first acted on the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the request became Ready or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Human-readable summary of the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// True when the start build moved the workspace to the template's active version (the
    /// template requires active versions), as Coder's `start_workspace` reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_to_active_version: Option<bool>,
    /// How long each stage took, written when the request finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<StageTimings>,
}

/// How long each stage of a finished request took, in milliseconds. Each figure is measured on
/// one clock (the cluster's for `queuedMs` and `totalMs`, Coder's for the build and agent
/// stages) and clamped into the total, so the figures add up to `totalMs` whatever the clocks
/// say. A stage Coder did not reach (or that belongs to a build this request did not follow)
/// is absent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StageTimings {
    /// From the operator first seeing the request to requesting the start build.
    #[schemars(range(min = 0, max = 2_592_000_000_i64))]
    pub queued_ms: i64,
    /// Coder's provisioner job waiting for a provisioner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2_592_000_000_i64))]
    pub pending_ms: Option<i64>,
    /// The provisioner job running (Terraform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2_592_000_000_i64))]
    pub running_ms: Option<i64>,
    /// The agent connecting after the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2_592_000_000_i64))]
    pub agent_connecting_ms: Option<i64>,
    /// The agent's startup scripts: their span as the agent timed them (Coder's build timings),
    /// or from the agent connecting to reporting ready when Coder does not serve them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2_592_000_000_i64))]
    pub agent_starting_ms: Option<i64>,
    /// Coder's Terraform stages within `runningMs`, from Coder's build timings (absent when
    /// Coder does not serve them, e.g. an older Coder, or did not answer in time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioner_stages: Option<ProvisionerStages>,
    /// The rest: the operator's and the API server's own latency, and the agent's own work
    /// around its startup scripts.
    #[schemars(range(min = 0, max = 2_592_000_000_i64))]
    pub other_ms: i64,
    /// From the operator first seeing the request to Ready or Failed.
    #[schemars(range(min = 0, max = 2_592_000_000_i64))]
    pub total_ms: i64,
    /// `totalMs` for people, e.g. `12.3s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub took: Option<String>,
}

/// Coder's Terraform stages of the followed build, in milliseconds, each measured on the
/// provisioner's clock and clamped into `runningMs` (latest stage first), so they never add up
/// to more than it. A stage Coder did not time is absent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionerStages {
    /// `terraform init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2_592_000_000_i64))]
    pub init_ms: Option<i64>,
    /// `terraform plan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2_592_000_000_i64))]
    pub plan_ms: Option<i64>,
    /// Building Terraform's dependency graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2_592_000_000_i64))]
    pub graph_ms: Option<i64>,
    /// `terraform apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2_592_000_000_i64))]
    pub apply_ms: Option<i64>,
}

impl StageTimings {
    /// The figures that add up to `totalMs`, in order: `queuedMs`, `pendingMs`, `runningMs`,
    /// `agentConnectingMs`, `agentStartingMs`, `otherMs` (`None` for a stage that did not
    /// happen). `provisionerStages` lie within `runningMs` and are not among them.
    pub fn parts(&self) -> [Option<i64>; 6] {
        [
            Some(self.queued_ms),
            self.pending_ms,
            self.running_ms,
            self.agent_connecting_ms,
            self.agent_starting_ms,
            Some(self.other_ms),
        ]
    }
}

impl ProvisionerStages {
    /// `initMs`, `planMs`, `graphMs`, `applyMs`, in order (`None` for a stage Coder did not
    /// time); together at most `runningMs`.
    pub fn parts(&self) -> [Option<i64>; 4] {
        [self.init_ms, self.plan_ms, self.graph_ms, self.apply_ms]
    }
}

/// Request phase.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// Accepted, nothing observed yet.
    #[default]
    Pending,
    /// A build is pending or running.
    Starting,
    /// The build succeeded; waiting for the agent.
    WaitingForAgent,
    /// The workspace is running and its agent is ready.
    Ready,
    /// The request ended without a ready workspace.
    Failed,
}

impl Phase {
    /// Every phase, in the order a request moves through them.
    pub const ALL: [Phase; 5] = [
        Phase::Pending,
        Phase::Starting,
        Phase::WaitingForAgent,
        Phase::Ready,
        Phase::Failed,
    ];

    /// The phase as `status.phase` spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Starting => "Starting",
            Phase::WaitingForAgent => "WaitingForAgent",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
        }
    }

    /// Ready and Failed are terminal.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Ready | Phase::Failed)
    }
}

/// How the workspace got started.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The operator requested the start build.
    Queued,
    /// The operator joined a build already in progress.
    InProgress,
    /// The workspace was already running.
    AlreadyRunning,
}

/// Workspace identity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceInfo {
    /// Workspace UUID.
    pub id: String,
    /// Workspace name.
    pub name: String,
    /// Owner's username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_name: Option<String>,
}

/// A workspace build.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    /// Build UUID.
    pub id: String,
    /// Build number (starts at 1).
    pub number: i64,
    /// start, stop or delete.
    pub transition: String,
    /// Provisioner job status: pending, running, succeeded, canceling, canceled, failed, unknown.
    pub job_status: String,
    /// Coder's job error code (for example INSUFFICIENT_QUOTA); never the job's error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Template version the build used (UUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36))]
    pub template_version_id: Option<String>,
}

/// The agent being waited on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AgentInfo {
    /// Agent UUID (empty when the workspace has no agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Agent name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Connection status: connecting, connected, disconnected, timeout, or no_agent.
    pub status: String,
    /// Lifecycle state: created, starting, ready, start_error, start_timeout, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_state: Option<String>,
}

/// The CRD as YAML, exactly as checked in under `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let crd = WorkspaceStartRequest::crd();
    Ok(format!(
        "# Generated by `workspace-start-operator crd`; do not edit.\n{}",
        serde_yaml::to_string(&crd)?
    ))
}
