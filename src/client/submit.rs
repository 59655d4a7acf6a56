//! New requests on behalf of a chat service or a person: the start target (a chat, a workspace
//! id, or a workspace by owner and name) checked argument by argument, and the
//! `WorkspaceStartRequest` created for it with `generateName` and labels saying who asked and
//! through what. Shared by the MCP server ([`crate::client::mcp`]) and the `start` command
//! ([`crate::client::start`]), which name the same arguments differently.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use uuid::Uuid;

use crate::api::bounds::{
    MAX_CODER_NAME, MAX_LABEL, MAX_OBJECT_NAME, MAX_PARAMETER_NAME, MAX_PARAMETER_VALUE,
    MAX_PARAMETERS,
};
use crate::api::crd::{
    BuildParameter, WorkspaceSelector, WorkspaceStartRequest, WorkspaceStartRequestSpec,
};
use crate::api::shard::{SHARD_LABEL, Shard};

/// Label: how the request was created (`mcp` or `start`).
pub const LABEL_VIA: &str = "coder.com/requested-via";
/// Label: namespace of the ServiceAccount that asked (MCP callers that are ServiceAccounts).
pub const LABEL_CALLER_NAMESPACE: &str = "coder.com/requested-by-namespace";
/// Label: name of the ServiceAccount that asked (when it is a valid label value).
pub const LABEL_CALLER_SERVICE_ACCOUNT: &str = "coder.com/requested-by-serviceaccount";
/// Annotation: the full Kubernetes username of whoever asked (MCP callers).
pub const ANNOTATION_REQUESTED_BY: &str = "coder.com/requested-by";

/// An argument that was refused, with the argument's name as the caller spelled it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{argument}: {problem}")]
pub struct ArgError {
    /// The argument (e.g. `chat_id` for MCP, `--chat` for the command line).
    pub argument: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ArgError {
    /// An error for `argument`.
    pub fn new(argument: impl Into<String>, problem: impl Into<String>) -> ArgError {
        ArgError {
            argument: argument.into(),
            problem: problem.into(),
        }
    }
}

/// Which workspace to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The workspace bound to this Coder chat.
    Chat(Uuid),
    /// A workspace by id.
    WorkspaceId(Uuid),
    /// A workspace by owner (username, user id or `me`) and name.
    WorkspaceName {
        /// Owner.
        owner: String,
        /// Workspace name.
        name: String,
    },
}

/// What an interface calls the target arguments (`chat_id` for MCP, `--chat` for the command).
#[derive(Debug, Clone, Copy)]
pub struct ArgNames {
    /// The chat UUID argument.
    pub chat: &'static str,
    /// The workspace UUID argument.
    pub workspace_id: &'static str,
    /// The owner argument.
    pub owner: &'static str,
    /// The workspace name argument.
    pub name: &'static str,
    /// How to say "exactly one of ..." in this interface.
    pub one_of: &'static str,
}

/// The target arguments of the MCP tool `start_workspace`.
pub const MCP_ARGS: ArgNames = ArgNames {
    chat: "chat_id",
    workspace_id: "workspace_id",
    owner: "owner",
    name: "name",
    one_of: "chat_id, workspace_id, or owner with name",
};

/// The target flags of the `start` command (`--workspace` takes an id or OWNER/NAME).
pub const CLI_ARGS: ArgNames = ArgNames {
    chat: "--chat",
    workspace_id: "--workspace",
    owner: "--workspace",
    name: "--workspace",
    one_of: "--chat or --workspace",
};

/// The target arguments as given.
#[derive(Debug, Clone, Copy)]
pub struct TargetArgs<'a> {
    /// Their names in this interface.
    pub names: ArgNames,
    /// Chat UUID.
    pub chat: Option<&'a str>,
    /// Workspace UUID.
    pub workspace_id: Option<&'a str>,
    /// Owner (username, user id or `me`).
    pub owner: Option<&'a str>,
    /// Workspace name.
    pub name: Option<&'a str>,
}

impl Target {
    /// Checks the arguments: exactly one target, UUIDs that parse, names Coder accepts.
    pub fn from_args(args: &TargetArgs<'_>) -> Result<Target, ArgError> {
        let n = args.names;
        let given = [
            args.chat.is_some(),
            args.workspace_id.is_some(),
            args.owner.is_some() || args.name.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(ArgError::new(
                "arguments",
                format!("give exactly one of {}", n.one_of),
            ));
        }
        if let Some(v) = args.chat {
            return parse_uuid(n.chat, v).map(Target::Chat);
        }
        if let Some(v) = args.workspace_id {
            return parse_uuid(n.workspace_id, v).map(Target::WorkspaceId);
        }
        match (args.owner, args.name) {
            (Some(owner), Some(name)) => {
                check_owner(n.owner, owner)?;
                check_coder_name(n.name, name)?;
                Ok(Target::WorkspaceName {
                    owner: owner.to_owned(),
                    name: name.to_owned(),
                })
            }
            (Some(_), None) => Err(ArgError::new(n.name, format!("required with {}", n.owner))),
            (None, _) => Err(ArgError::new(n.owner, format!("required with {}", n.name))),
        }
    }

    /// The prefix for `generateName`: says what is started, in lower-case DNS characters.
    pub fn name_prefix(&self) -> String {
        match self {
            Target::Chat(_) => "chat-".to_owned(),
            Target::WorkspaceId(_) => "workspace-".to_owned(),
            Target::WorkspaceName { owner, name } => {
                let base = format!("{owner}-{name}").to_ascii_lowercase();
                let mut prefix: String = base
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .take(50)
                    .collect();
                prefix.push('-');
                prefix
            }
        }
    }

    fn apply(&self, spec: &mut WorkspaceStartRequestSpec) {
        match self {
            Target::Chat(id) => spec.chat_id = Some(id.to_string()),
            Target::WorkspaceId(id) => {
                spec.workspace = Some(WorkspaceSelector {
                    id: Some(id.to_string()),
                    ..Default::default()
                })
            }
            Target::WorkspaceName { owner, name } => {
                spec.workspace = Some(WorkspaceSelector {
                    owner: Some(owner.clone()),
                    name: Some(name.clone()),
                    ..Default::default()
                })
            }
        }
    }
}

/// Parses a UUID argument.
pub fn parse_uuid(argument: &str, value: &str) -> Result<Uuid, ArgError> {
    Uuid::try_parse(value.trim()).map_err(|_| {
        ArgError::new(
            argument,
            format!(
                "must be a UUID such as 9d0c2f5e-1b7a-4c1e-9a51-3f0f6b2d8e11, got {:?}",
                shorten(value)
            ),
        )
    })
}

/// `Ok` when `valid`, else `argument` refused with `problem` (the refused value is appended).
fn require(valid: bool, argument: &str, problem: &str, value: &str) -> Result<(), ArgError> {
    if valid {
        Ok(())
    } else {
        Err(ArgError::new(
            argument,
            format!("{problem}, got {:?}", shorten(value)),
        ))
    }
}

/// Checks a workspace name as Coder's `codersdk.NameValid` does: 1 to 32 characters, letters and
/// digits in groups joined by single hyphens.
pub fn check_coder_name(argument: &str, value: &str) -> Result<(), ArgError> {
    if value.is_empty() || value.len() > MAX_CODER_NAME {
        return Err(ArgError::new(
            argument,
            format!(
                "must be 1 to {MAX_CODER_NAME} characters, got {}",
                value.len()
            ),
        ));
    }
    let valid = value
        .split('-')
        .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()));
    require(
        valid,
        argument,
        "must be letters and digits, optionally joined by single hyphens (as Coder names are)",
        value,
    )
}

/// Checks an owner: a username as Coder accepts it, a user UUID, or `me`.
pub fn check_owner(argument: &str, value: &str) -> Result<(), ArgError> {
    if value == "me" || Uuid::try_parse(value).is_ok() {
        return Ok(());
    }
    check_coder_name(argument, value)
}

/// Checks a namespace name (a DNS-1123 label).
pub fn check_namespace(argument: &str, value: &str) -> Result<(), ArgError> {
    let valid = !value.is_empty()
        && value.len() <= MAX_LABEL
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    require(
        valid,
        argument,
        "must be a namespace name (lower-case letters, digits and '-', at most 63)",
        value,
    )
}

/// Checks a request name (a DNS-1123 subdomain, as `kubectl get wsr` shows it).
pub fn check_request_name(argument: &str, value: &str) -> Result<(), ArgError> {
    let valid = !value.is_empty()
        && value.len() <= MAX_OBJECT_NAME
        && value
            .split('.')
            .all(|l| !l.is_empty() && check_namespace(argument, l).is_ok());
    require(
        valid,
        argument,
        "must be the name of a WorkspaceStartRequest",
        value,
    )
}

/// Rich parameters from a name → value map, bounded as the CRD bounds them.
pub fn parameters(
    argument: &str,
    values: &BTreeMap<String, String>,
) -> Result<Vec<BuildParameter>, ArgError> {
    if values.len() > MAX_PARAMETERS {
        return Err(ArgError::new(
            argument,
            format!("at most {MAX_PARAMETERS} parameters, got {}", values.len()),
        ));
    }
    values
        .iter()
        .map(|(name, value)| {
            if name.is_empty() || name.len() > MAX_PARAMETER_NAME {
                return Err(ArgError::new(
                    argument,
                    format!(
                        "parameter names must be 1 to {MAX_PARAMETER_NAME} characters, got {:?}",
                        shorten(name)
                    ),
                ));
            }
            if value.len() > MAX_PARAMETER_VALUE {
                return Err(ArgError::new(
                    argument,
                    format!("the value of {name:?} is longer than {MAX_PARAMETER_VALUE} bytes"),
                ));
            }
            Ok(BuildParameter {
                name: name.clone(),
                value: value.clone(),
            })
        })
        .collect()
}

/// A value cut to a length fit for an error message (arguments are untrusted).
fn shorten(value: &str) -> String {
    value.chars().take(64).collect()
}

/// How a request came to be, for its labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The MCP server's `start_workspace` tool.
    Mcp,
    /// The `start` command (or `kubectl wsr start`).
    Start,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Mcp => "mcp",
            Via::Start => "start",
        }
    }
}

/// Everything a new request is made from.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// Namespace to create it in.
    pub namespace: String,
    /// What to start.
    pub target: Target,
    /// Rich parameters for the start build.
    pub parameters: Vec<BuildParameter>,
    /// How it was asked for.
    pub via: Via,
    /// The Kubernetes username of the caller, when known (MCP).
    pub requested_by: Option<String>,
    /// The operator shard to send it to (the `coder.com/shard` label); the default shard
    /// (no label) unless set.
    pub shard: Shard,
}

impl NewRequest {
    /// The object to create (`generateName`, labels, spec).
    pub fn object(&self) -> WorkspaceStartRequest {
        let mut spec = WorkspaceStartRequestSpec {
            parameters: self.parameters.clone(),
            ..Default::default()
        };
        self.target.apply(&mut spec);
        let mut labels = BTreeMap::from([(LABEL_VIA.to_owned(), self.via.label().to_owned())]);
        if let Some(shard) = self.shard.name() {
            labels.insert(SHARD_LABEL.to_owned(), shard.to_owned());
        }
        let mut annotations = BTreeMap::new();
        if let Some(user) = &self.requested_by {
            annotations.insert(ANNOTATION_REQUESTED_BY.to_owned(), user.clone());
            if let Some((ns, sa)) = service_account_of(user) {
                for (key, value) in [
                    (LABEL_CALLER_NAMESPACE, ns),
                    (LABEL_CALLER_SERVICE_ACCOUNT, sa),
                ] {
                    if is_label_value(value) {
                        labels.insert(key.to_owned(), value.to_owned());
                    }
                }
            }
        }
        let mut obj = WorkspaceStartRequest::new("", spec);
        obj.metadata = ObjectMeta {
            generate_name: Some(self.target.name_prefix()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        };
        obj
    }

    /// Creates the request; the returned object has its generated name.
    pub async fn create(
        &self,
        client: &kube::Client,
    ) -> Result<WorkspaceStartRequest, kube::Error> {
        let api: Api<WorkspaceStartRequest> = Api::namespaced(client.clone(), &self.namespace);
        api.create(&PostParams::default(), &self.object()).await
    }
}

pub use crate::process::auth::service_account_of;

/// Whether `v` may be a label value (at most 63 characters, alphanumerics with `-_.` inside).
fn is_label_value(v: &str) -> bool {
    v.len() <= MAX_LABEL
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && v.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && v.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = "9d0c2f5e-1b7a-4c1e-9a51-3f0f6b2d8e11";

    fn args(
        chat: Option<&'static str>,
        workspace_id: Option<&'static str>,
        owner: Option<&'static str>,
        name: Option<&'static str>,
    ) -> TargetArgs<'static> {
        TargetArgs {
            names: MCP_ARGS,
            chat,
            workspace_id,
            owner,
            name,
        }
    }

    #[test]
    fn targets_are_checked_argument_by_argument() {
        let long = "a-very-long-workspace-name-beyond-32";
        let cases: Vec<(TargetArgs<'static>, Result<Target, &str>)> = vec![
            (
                args(Some(CHAT), None, None, None),
                Ok(Target::Chat(Uuid::parse_str(CHAT).expect("uuid"))),
            ),
            (
                args(Some("nope"), None, None, None),
                Err("chat_id: must be a UUID"),
            ),
            (
                args(None, Some("1234"), None, None),
                Err("workspace_id: must be a UUID"),
            ),
            (
                args(None, None, None, None),
                Err("arguments: give exactly one of chat_id, workspace_id, or owner with name"),
            ),
            (
                args(Some(CHAT), Some(CHAT), None, None),
                Err("arguments: give exactly one of"),
            ),
            (
                args(Some(CHAT), None, Some("alice"), None),
                Err("arguments: give exactly one of"),
            ),
            (
                args(None, None, Some("alice"), None),
                Err("name: required with owner"),
            ),
            (
                args(None, None, None, Some("dev")),
                Err("owner: required with name"),
            ),
            (
                args(None, None, Some("alice"), Some("my dev")),
                Err("name: must be letters and digits"),
            ),
            (
                args(None, None, Some("al--ice"), Some("dev")),
                Err("owner: must be letters and digits"),
            ),
            (
                args(None, None, Some("alice"), Some(long)),
                Err("name: must be 1 to 32 characters"),
            ),
            (
                args(None, None, Some("me"), Some("dev-2")),
                Ok(Target::WorkspaceName {
                    owner: "me".into(),
                    name: "dev-2".into(),
                }),
            ),
        ];
        for (a, want) in cases {
            let got = Target::from_args(&a);
            match (&got, want) {
                (Ok(t), Ok(w)) => assert_eq!(t, &w),
                (Err(e), Err(w)) => {
                    assert!(e.to_string().starts_with(w), "{e} should start with {w}")
                }
                _ => panic!("{a:?}: got {got:?}"),
            }
        }
    }

    #[test]
    fn namespaces_and_request_names_are_dns_names() {
        assert!(check_namespace("namespace", "team-a").is_ok());
        for bad in ["", "Team", "-a", "a-", "a_b", &"x".repeat(64)] {
            let e = check_namespace("namespace", bad).expect_err(bad);
            assert!(e.to_string().starts_with("namespace: "), "{e}");
        }
        assert!(check_request_name("name", "chat-x7k2p").is_ok());
        assert!(check_request_name("name", "a.b").is_ok());
        assert!(check_request_name("name", "a..b").is_err());
        assert!(check_request_name("name", "A").is_err());
    }

    #[test]
    fn parameters_are_bounded() {
        let ok = BTreeMap::from([("region".to_owned(), "eu".to_owned())]);
        assert_eq!(parameters("parameters", &ok).expect("ok").len(), 1);
        let long = BTreeMap::from([("r".to_owned(), "v".repeat(4097))]);
        assert!(parameters("parameters", &long).is_err());
        let many: BTreeMap<String, String> =
            (0..65).map(|i| (format!("p{i}"), String::new())).collect();
        assert!(
            parameters("parameters", &many)
                .expect_err("too many")
                .to_string()
                .contains("at most 64")
        );
    }

    #[test]
    fn new_request_is_labelled_with_its_caller() {
        let req = NewRequest {
            namespace: "team-a".into(),
            target: Target::WorkspaceName {
                owner: "Alice".into(),
                name: "dev".into(),
            },
            parameters: vec![],
            via: Via::Mcp,
            requested_by: Some("system:serviceaccount:bots:chat-bot".into()),
            shard: Shard::unlabelled(),
        };
        let obj = req.object();
        assert_eq!(obj.metadata.generate_name.as_deref(), Some("alice-dev-"));
        assert_eq!(obj.metadata.namespace.as_deref(), Some("team-a"));
        let labels = obj.metadata.labels.expect("labels");
        assert_eq!(labels[LABEL_VIA], "mcp");
        assert_eq!(labels[LABEL_CALLER_NAMESPACE], "bots");
        assert_eq!(labels[LABEL_CALLER_SERVICE_ACCOUNT], "chat-bot");
        let annotations = obj.metadata.annotations.expect("annotations");
        assert_eq!(
            annotations[ANNOTATION_REQUESTED_BY],
            "system:serviceaccount:bots:chat-bot"
        );
        let ws = obj.spec.workspace.expect("workspace");
        assert_eq!(
            (ws.owner.as_deref(), ws.name.as_deref()),
            (Some("Alice"), Some("dev"))
        );
        assert!(obj.spec.chat_id.is_none());
    }

    #[test]
    fn users_that_are_not_service_accounts_get_only_the_annotation() {
        let req = NewRequest {
            namespace: "team-a".into(),
            target: Target::Chat(Uuid::nil()),
            parameters: vec![],
            via: Via::Start,
            requested_by: Some("oidc:alice@example.com".into()),
            shard: Shard::unlabelled(),
        };
        let obj = req.object();
        let labels = obj.metadata.labels.expect("labels");
        assert_eq!(labels.len(), 1, "{labels:?}");
        assert_eq!(labels[LABEL_VIA], "start");
        assert_eq!(obj.metadata.generate_name.as_deref(), Some("chat-"));
        assert!(service_account_of("system:serviceaccount:ns").is_none());
    }

    #[test]
    fn a_request_for_a_shard_carries_its_label() {
        let req = NewRequest {
            namespace: "team-a".into(),
            target: Target::Chat(Uuid::nil()),
            parameters: vec![],
            via: Via::Start,
            requested_by: None,
            shard: Shard::parse("gpu").expect("shard"),
        };
        let labels = req.object().metadata.labels.expect("labels");
        assert_eq!(labels[SHARD_LABEL], "gpu");
        assert_eq!(labels[LABEL_VIA], "start");
    }
}
