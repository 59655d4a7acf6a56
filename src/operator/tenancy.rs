//! Tenancy: which Coder users a request may act for. A request served by a shared Coder identity
//! (the operator-wide token, or a shard's) may act only for the Coder users that the
//! [`WorkspaceStartPolicy`] objects naming its namespace allow; they also limit its parameters,
//! may make the namespace chats-only, and say which shards serve it. Policies are
//! cluster-scoped and written by cluster admins, so tenants cannot widen them.
//!
//! Every policy naming a namespace must allow a request (adding a policy never widens what a
//! namespace may do; the admission policy in the chart evaluates them the same way). In bound
//! mode a request served by a shared identity needs at least one policy; in open mode
//! ([`TenancyMode::Open`]) nothing here refuses anything.
//!
//! The checks are in two steps, both before any write to Coder:
//! - [`Tenancy::admit`], before any Coder call: the shard, chats-only, parameters, and whether
//!   the namespace is bound at all.
//! - [`Tenancy::vet`], on Coder's own answer: the workspace's and the chat's owner.

use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::ResourceExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use uuid::Uuid;

use crate::api::crd::{WorkspaceStartRequest, WorkspaceStartRequestStatus};
use crate::api::policy::{
    CODER_REF_LABEL, CODER_REF_SECRET_TYPE, TenancyMode, WorkspaceStartPolicy,
    WorkspaceStartPolicySpec,
};
use crate::api::reason::Reason;
use crate::api::shard::Shard;
use crate::coder::logs::WorkspaceBuildTimings;
use crate::coder::types::CreateWorkspaceBuildRequest;
use crate::operator::decide::{Observation, OwnerState};
use crate::operator::reconcile::{CoderPort, PostOutcome};

/// How many policy names or allowed values a message lists before "…".
const LISTED: usize = 5;
/// The longest piece of Coder's answer (a username) put into a message.
const MAX_ECHO: usize = 64;

/// A refusal: the reason and the message that say what a cluster admin sets to allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: Reason,
    /// User-facing message (names the namespace, the refused value and the fix).
    pub message: String,
}

impl From<Refusal> for Observation {
    fn from(r: Refusal) -> Observation {
        Observation::Failed {
            reason: r.reason,
            message: r.message,
        }
    }
}

/// The tenancy rules of one operator process: its mode, its shard and the policies it sees.
#[derive(Clone)]
pub struct Tenancy {
    mode: TenancyMode,
    shard: Shard,
    policies: Option<Store<WorkspaceStartPolicy>>,
}

impl Tenancy {
    /// Open mode: no policy needed, nothing refused (the behaviour before tenancy).
    pub fn open() -> Tenancy {
        Tenancy {
            mode: TenancyMode::Open,
            shard: Shard::unlabelled(),
            policies: None,
        }
    }

    /// Bound mode for `shard`, with the policies `policies` (a reflector's store).
    pub fn bound(shard: Shard, policies: Store<WorkspaceStartPolicy>) -> Tenancy {
        Tenancy {
            mode: TenancyMode::Bound,
            shard,
            policies: Some(policies),
        }
    }

    /// The mode.
    pub fn mode(&self) -> TenancyMode {
        self.mode
    }

    /// True when a `coderRef` Secret must opt in (bound mode).
    pub fn requires_secret_opt_in(&self) -> bool {
        self.mode == TenancyMode::Bound
    }

    /// The policies naming `namespace`, by name.
    fn policies_for(&self, namespace: &str) -> Vec<(String, WorkspaceStartPolicySpec)> {
        let Some(store) = &self.policies else {
            return Vec::new();
        };
        let mut found: Vec<(String, WorkspaceStartPolicySpec)> = store
            .state()
            .iter()
            .filter(|p| p.spec.binds(namespace))
            .map(|p| (p.name_any(), p.spec.clone()))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Checks made before any Coder call: `Err` with the observation to fail the request with.
    pub fn admit(&self, wsr: &WorkspaceStartRequest) -> Result<(), Observation> {
        if self.mode == TenancyMode::Open {
            return Ok(());
        }
        let ns = wsr.namespace().unwrap_or_default();
        admit(&self.policies_for(&ns), &ns, self.shard.name(), wsr).map_err(Observation::from)
    }

    /// Checks Coder's answer: a workspace (or chat) whose owner the namespace is not bound to
    /// becomes a failure; anything else passes unchanged.
    pub fn vet(&self, wsr: &WorkspaceStartRequest, obs: Observation) -> Observation {
        if self.mode == TenancyMode::Open || wsr.spec.coder_ref.is_some() {
            return obs;
        }
        let Observation::Workspace {
            chat_owner,
            workspace,
            ..
        } = &obs
        else {
            return obs;
        };
        let ns = wsr.namespace().unwrap_or_default();
        let policies = self.policies_for(&ns);
        // The chat's owner is known by id only; when it is the workspace's owner, the
        // workspace's answer names it (and a different one ends in OwnerMismatch anyway).
        let owners = chat_owner
            .iter()
            .filter(|c| **c != workspace.owner_id)
            .map(|c| Owner {
                id: *c,
                name: None,
                what: "the chat's owner",
            })
            .chain(std::iter::once(Owner {
                id: workspace.owner_id,
                name: Some(workspace.owner_name.as_str()),
                what: "the workspace's owner",
            }));
        for owner in owners {
            if let Err(r) = check_owner(&policies, &ns, &owner) {
                return r.into();
            }
        }
        obs
    }
}

/// True when `secret` opted in to serve as a request's `coderRef`: labelled
/// `coder.com/coder-ref: "true"` or of type `coder.com/coder-credentials`. Looks at nothing
/// else of the Secret.
pub fn secret_opted_in(secret: &Secret) -> bool {
    secret.type_.as_deref() == Some(CODER_REF_SECRET_TYPE)
        || secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(CODER_REF_LABEL))
            .is_some_and(|v| v == "true")
}

/// The refusal of a Secret that did not opt in.
pub fn secret_not_allowed(name: &str) -> Refusal {
    Refusal {
        reason: Reason::SecretNotAllowed,
        message: format!(
            "Secret {:?} (spec.coderRef) has not opted in to serve as Coder credentials: label it {CODER_REF_LABEL}: \"true\" or create it with type {CODER_REF_SECRET_TYPE}; it was not read further",
            echo(name)
        ),
    }
}

/// The tenancy of this process: in bound mode, starts the watch of every
/// [`WorkspaceStartPolicy`] and waits until it has listed them all (no request is judged on a
/// partial list). Logs the mode. `None` when `shutdown` came first.
pub async fn start(
    kube: kube::Client,
    mode: TenancyMode,
    shard: &Shard,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Option<Tenancy> {
    if mode == TenancyMode::Open {
        tracing::warn!(
            tenancy = %mode,
            "tenancy is OPEN: requests may act for any Coder user the operator's token reaches, any shard serves any namespace and any Secret may serve as coderRef; use --tenancy=bound (chart value tenancy.mode=bound) on shared clusters"
        );
        return Some(Tenancy::open());
    }
    tracing::info!(tenancy = %mode, shard = %shard, "tenancy is bound: requests act only for the Coder users a WorkspaceStartPolicy binds their namespace to");
    let (reader, writer) = reflector::store();
    let api: Api<WorkspaceStartPolicy> = Api::all(kube);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|p: &mut WorkspaceStartPolicy| p.managed_fields_mut().clear())
        .reflect(writer)
        .for_each(|ev| {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "cannot watch WorkspaceStartPolicies (is the CRD workspacestartpolicies.coder.com installed, and may the operator list and watch it?); retrying");
            }
            futures::future::ready(())
        });
    let watch = tokio::spawn(async move {
        tokio::select! {
            () = stream => {}
            () = shutdown => {}
        }
    });
    let listed = {
        let ready = reader.wait_until_ready();
        tokio::pin!(ready);
        tokio::select! {
            r = &mut ready => r.is_ok(),
            _ = watch => false,
        }
    };
    if !listed {
        return None;
    }
    tracing::info!(
        policies = reader.state().len(),
        "WorkspaceStartPolicies listed"
    );
    Some(Tenancy::bound(shard.clone(), reader))
}

/// A [`CoderPort`] whose observations pass through [`Tenancy::vet`]: every workspace (and chat)
/// the reconcile pass decides on, first read or re-read after a 409, has had its owner checked
/// before the pass can ask for a start build.
pub struct Vetted<'a, C> {
    tenancy: &'a Tenancy,
    wsr: &'a WorkspaceStartRequest,
    inner: C,
}

impl<'a, C: CoderPort> Vetted<'a, C> {
    /// Wraps `inner` for `wsr`.
    pub fn new(tenancy: &'a Tenancy, wsr: &'a WorkspaceStartRequest, inner: C) -> Self {
        Vetted {
            tenancy,
            wsr,
            inner,
        }
    }

    /// The wrapped port.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C: CoderPort> CoderPort for Vetted<'_, C> {
    async fn observe(&mut self, status: &WorkspaceStartRequestStatus, fresh: bool) -> Observation {
        let obs = self.inner.observe(status, fresh).await;
        self.tenancy.vet(self.wsr, obs)
    }

    async fn owner_state(&mut self, owner: Uuid) -> Result<OwnerState, Observation> {
        self.inner.owner_state(owner).await
    }

    async fn start_build(
        &mut self,
        workspace: Uuid,
        request: &CreateWorkspaceBuildRequest,
    ) -> PostOutcome {
        self.inner.start_build(workspace, request).await
    }

    async fn build_timings(&mut self, build: Uuid) -> Option<WorkspaceBuildTimings> {
        self.inner.build_timings(build).await
    }

    fn poll(&self) -> Duration {
        self.inner.poll()
    }

    fn now(&self) -> Timestamp {
        self.inner.now()
    }
}

/// A Coder user as Coder named it.
struct Owner<'a> {
    id: Uuid,
    name: Option<&'a str>,
    what: &'static str,
}

/// `s` cut to [`MAX_ECHO`] characters.
fn echo(s: &str) -> String {
    s.chars().take(MAX_ECHO).collect()
}

/// `items` quoted, at most [`LISTED`] of them.
fn listed<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let mut out = String::new();
    for (i, item) in items.into_iter().enumerate() {
        if i == LISTED {
            out.push_str(", …");
            break;
        }
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{:?}", echo(item));
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

/// The message part that tells a namespace is bound to nothing.
fn unbound(ns: &str) -> String {
    format!(
        "namespace {ns:?} is bound to no Coder users, so its requests may not use the operator's shared Coder token: a cluster admin creates a WorkspaceStartPolicy with spec.namespaces [{ns}] and spec.owners (Coder usernames or user ids), or the request uses spec.coderRef with the namespace's own Coder token; nothing was started"
    )
}

/// The pure pre-Coder check for a request in `ns` served by `shard` (`None`: the default
/// deployment), given the policies naming `ns`.
pub fn admit(
    policies: &[(String, WorkspaceStartPolicySpec)],
    ns: &str,
    shard: Option<&str>,
    wsr: &WorkspaceStartRequest,
) -> Result<(), Refusal> {
    let shared = wsr.spec.coder_ref.is_none();
    match shard {
        Some(s) => {
            if policies.is_empty() {
                return Err(Refusal {
                    reason: Reason::ShardNotAllowed,
                    message: format!(
                        "shard {s:?} does not serve namespace {ns:?}: no WorkspaceStartPolicy names it; a cluster admin creates one with spec.namespaces [{ns}] and spec.shards [{s}], or remove the request's coder.com/shard label; nothing was started"
                    ),
                });
            }
            if let Some((name, _)) = policies.iter().find(|(_, p)| !p.allows_shard(Some(s))) {
                return Err(Refusal {
                    reason: Reason::ShardNotAllowed,
                    message: format!(
                        "shard {s:?} does not serve namespace {ns:?}: WorkspaceStartPolicy {name:?} does not list it in spec.shards; a cluster admin adds it, or remove the request's coder.com/shard label; nothing was started"
                    ),
                });
            }
        }
        None if shared => {
            if let Some((name, _)) = policies.iter().find(|(_, p)| !p.allows_shard(None)) {
                return Err(Refusal {
                    reason: Reason::ShardNotAllowed,
                    message: format!(
                        "the default deployment does not serve namespace {ns:?}: WorkspaceStartPolicy {name:?} sets spec.defaultShard: false; label the request coder.com/shard with one of its spec.shards ({}); nothing was started",
                        listed(policies.iter().flat_map(|(_, p)| p.shards.iter()))
                    ),
                });
            }
        }
        None => {}
    }
    if !shared {
        // The namespace's own token: Coder authorises it; no owner or parameter binding.
        return Ok(());
    }
    if policies.is_empty() {
        return Err(Refusal {
            reason: Reason::OwnerNotAllowed,
            message: unbound(ns),
        });
    }
    if wsr.spec.workspace.is_some()
        && let Some((name, _)) = policies.iter().find(|(_, p)| p.chats_only)
    {
        return Err(Refusal {
            reason: Reason::ChatRequired,
            message: format!(
                "namespace {ns:?} is chats-only (WorkspaceStartPolicy {name:?} sets spec.chatsOnly): start a chat's workspace with spec.chatId instead of naming one with spec.workspace; nothing was started"
            ),
        });
    }
    for param in &wsr.spec.parameters {
        if let Some((name, p)) = policies
            .iter()
            .find(|(_, p)| !p.allows_parameter(&param.name))
        {
            return Err(Refusal {
                reason: Reason::ParameterNotAllowed,
                message: format!(
                    "parameter {:?} is not allowed in namespace {ns:?}: WorkspaceStartPolicy {name:?} allows only {} (spec.parameters); a cluster admin adds it there, or remove it from the request; nothing was started",
                    echo(&param.name),
                    listed(p.parameters.iter().flatten())
                ),
            });
        }
    }
    Ok(())
}

/// The pure owner check: every policy naming `ns` allows `owner`, and there is at least one.
fn check_owner(
    policies: &[(String, WorkspaceStartPolicySpec)],
    ns: &str,
    owner: &Owner<'_>,
) -> Result<(), Refusal> {
    if policies.is_empty() {
        return Err(Refusal {
            reason: Reason::OwnerNotAllowed,
            message: unbound(ns),
        });
    }
    let id = owner.id.to_string();
    let Some((name, p)) = policies
        .iter()
        .find(|(_, p)| !p.allows_owner(&id, owner.name))
    else {
        return Ok(());
    };
    let who = match owner.name.filter(|n| !n.is_empty()) {
        Some(n) => format!("{:?} ({id})", echo(n)),
        None => id.clone(),
    };
    let add = owner
        .name
        .filter(|n| !n.is_empty())
        .map_or_else(|| id.clone(), echo);
    Err(Refusal {
        reason: Reason::OwnerNotAllowed,
        message: format!(
            "namespace {ns:?} may not act for Coder user {who}, {}: WorkspaceStartPolicy {name:?} allows only {} (spec.owners); a cluster admin adds {add:?} to spec.owners of the WorkspaceStartPolicy naming {ns:?}, or the request uses spec.coderRef with that user's own token; nothing was started",
            owner.what,
            listed(&p.owners)
        ),
    })
}

#[cfg(test)]
mod tests;
