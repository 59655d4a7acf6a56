//! The `WorkspaceStartPolicy` custom resource (`coder.com/v1alpha1`, cluster-scoped): which
//! Coder users the requests of a namespace may act for when they use a shared Coder identity
//! (the operator-wide token or a shard's), which parameters they may pass, whether they may only
//! start a chat's own workspace, and which shards serve them. Written only by cluster admins:
//! tenants cannot change it, also where they create their own namespaces.
//!
//! Also the tenancy switch ([`TenancyMode`]) and the opt-in that lets a Secret serve as a
//! request's `coderRef` ([`CODER_REF_LABEL`], [`CODER_REF_SECRET_TYPE`]).

use std::fmt;
use std::str::FromStr;

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// Most namespaces one policy may name.
pub const MAX_POLICY_NAMESPACES: usize = 256;
/// Most owners one policy may name.
pub const MAX_POLICY_OWNERS: usize = 256;
/// Most parameter names one policy may name.
pub const MAX_POLICY_PARAMETERS: usize = 64;
/// Most shards one policy may name.
pub const MAX_POLICY_SHARDS: usize = 64;
/// The owner entry that allows every Coder user.
pub const ANY_OWNER: &str = "*";

/// The label a Secret carries (value `"true"`) to be usable as a request's `coderRef`.
pub const CODER_REF_LABEL: &str = "coder.com/coder-ref";
/// The Secret type that makes a Secret usable as a request's `coderRef` (no label needed).
pub const CODER_REF_SECRET_TYPE: &str = "coder.com/coder-credentials";

/// CEL: a namespace name (DNS-1123 label).
const NAMESPACE_RULE: &str = "self.all(n, n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))";
/// CEL: a shard name (DNS-1123 label).
const SHARD_RULE: &str = "self.all(n, n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))";

/// Binds namespaces to the Coder users their requests may act for through a shared Coder
/// identity. Cluster-scoped; only cluster admins should be able to write it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "coder.com",
    version = "v1alpha1",
    kind = "WorkspaceStartPolicy",
    plural = "workspacestartpolicies",
    shortname = "wsp",
    category = "coder",
    doc = "WorkspaceStartPolicy binds namespaces to the Coder users their WorkspaceStartRequests may act for (cluster-scoped, written by cluster admins)."
)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStartPolicySpec {
    /// Namespaces bound by this policy, by name (no selectors: whoever creates a namespace sets
    /// its labels). Unique names; at most 256.
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 63)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new(NAMESPACE_RULE).message("namespaces must be namespace names (lower-case letters, digits and '-')"))]
    pub namespaces: Vec<String>,

    /// Coder users the namespaces' requests may act for: usernames or user ids (UUIDs); `*`
    /// allows every user. At most 256.
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 64)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub owners: Vec<String>,

    /// Parameter names requests may pass. Absent: any. Empty: none. At most 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 128)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub parameters: Option<Vec<String>>,

    /// Requests may only start a chat's own workspace (`spec.chatId`), never name a workspace
    /// (`spec.workspace`). For a central chat service serving many Coder users.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chats_only: bool,

    /// Named shards (`coder.com/shard` label values) that may serve these namespaces. Default:
    /// none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new(SHARD_RULE).message("shards must be shard names (lower-case letters, digits and '-')"))]
    pub shards: Vec<String>,

    /// Whether the default deployment (requests without the `coder.com/shard` label) may serve
    /// these namespaces with the operator-wide token. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_shard: Option<bool>,
}

impl WorkspaceStartPolicySpec {
    /// True when the policy names `namespace`.
    pub fn binds(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|n| n == namespace)
    }

    /// True when `owner_id` (a UUID) or `owner_name` (a username, compared case-insensitively
    /// as Coder does) is among the owners, or the owners hold `*`.
    pub fn allows_owner(&self, owner_id: &str, owner_name: Option<&str>) -> bool {
        self.owners.iter().any(|o| {
            o == ANY_OWNER
                || o.eq_ignore_ascii_case(owner_id)
                || owner_name.is_some_and(|n| !n.is_empty() && o.eq_ignore_ascii_case(n))
        })
    }

    /// True when the policy allows passing the parameter `name`.
    pub fn allows_parameter(&self, name: &str) -> bool {
        self.parameters
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p == name))
    }

    /// True when the shard `shard` (`None`: the default deployment) may serve the namespaces.
    pub fn allows_shard(&self, shard: Option<&str>) -> bool {
        match shard {
            None => self.default_shard.unwrap_or(true),
            Some(s) => self.shards.iter().any(|n| n == s),
        }
    }
}

/// Whether requests served by a shared Coder identity are bound to their namespace's policies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TenancyMode {
    /// A request acts only for the Coder users a [`WorkspaceStartPolicy`] binds its namespace
    /// to; shards serve only the namespaces bound to them; only opted-in Secrets serve as
    /// `coderRef`. The default.
    #[default]
    Bound,
    /// No policy is needed (the behaviour before tenancy): every request may act for any user
    /// the operator's token reaches. For single-tenant clusters.
    Open,
}

/// A `--tenancy` value that is neither `bound` nor `open`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenancy mode {0:?} is unknown: use bound (the default) or open")]
pub struct TenancyModeError(String);

impl FromStr for TenancyMode {
    type Err = TenancyModeError;

    fn from_str(s: &str) -> Result<TenancyMode, TenancyModeError> {
        match s {
            "bound" => Ok(TenancyMode::Bound),
            "open" => Ok(TenancyMode::Open),
            other => Err(TenancyModeError(other.chars().take(32).collect())),
        }
    }
}

impl fmt::Display for TenancyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TenancyMode::Bound => "bound",
            TenancyMode::Open => "open",
        })
    }
}

/// The policy CRD as YAML, exactly as checked in under `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let crd = WorkspaceStartPolicy::crd();
    Ok(format!(
        "# Generated by `workspace-start-operator crd workspacestartpolicies`; do not edit.\n{}",
        serde_yaml::to_string(&crd)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(owners: &[&str]) -> WorkspaceStartPolicySpec {
        WorkspaceStartPolicySpec {
            namespaces: vec!["team-a".into()],
            owners: owners.iter().map(|o| (*o).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn an_owner_is_allowed_by_username_id_or_star() {
        let id = "9d0c2f5e-1b7a-4c1e-9a51-3f0f6b2d8e11";
        assert!(policy(&["alice"]).allows_owner(id, Some("Alice")));
        assert!(policy(&[&id.to_uppercase()]).allows_owner(id, None));
        assert!(policy(&["*"]).allows_owner(id, None));
        assert!(!policy(&["alice"]).allows_owner(id, Some("bob")));
        assert!(
            !policy(&[""]).allows_owner(id, Some("")),
            "an empty name matches nothing"
        );
    }

    #[test]
    fn parameters_and_shards_default_to_any_parameter_and_the_default_shard_only() {
        let mut p = policy(&["alice"]);
        assert!(p.allows_parameter("region"));
        assert!(p.allows_shard(None));
        assert!(!p.allows_shard(Some("privileged")));
        p.parameters = Some(vec!["region".into()]);
        p.shards = vec!["team-a".into()];
        p.default_shard = Some(false);
        assert!(p.allows_parameter("region"));
        assert!(!p.allows_parameter("image"));
        assert!(!p.allows_shard(None));
        assert!(p.allows_shard(Some("team-a")));
        assert!(p.binds("team-a") && !p.binds("team-b"));
    }

    #[test]
    fn tenancy_mode_parses_bound_and_open_only() {
        assert_eq!("bound".parse(), Ok(TenancyMode::Bound));
        assert_eq!("open".parse(), Ok(TenancyMode::Open));
        assert!("Open".parse::<TenancyMode>().is_err());
        assert_eq!(TenancyMode::default().to_string(), "bound");
    }
}
