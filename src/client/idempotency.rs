//! Idempotent starts: a caller may give a `request_id` (MCP) or `--request-id` (`start`) so that
//! retrying a call (a model whose tool call timed out, a script run twice) finds the request the
//! first call created instead of starting another one.
//!
//! The key is a SHA-256 of the namespace, the caller's Kubernetes username and the request id,
//! so two callers never share a request and the request id itself (caller input) never becomes
//! part of a name. The request gets a deterministic name (`req-<key>`) and the label
//! `coder.com/request-id=<key>`; it is created with that name, so two racing calls meet at the API
//! server: one creates, the other gets `AlreadyExists` and reads the existing request. An existing
//! request is only returned when it is the same start (same target and parameters) asked by the
//! same caller; otherwise the call is refused, as an idempotency key reused for a different call.
//! A request deleted in between (e.g. by `ttlSecondsAfterFinished`) is created anew.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

use crate::api::crd::WorkspaceStartRequest;
use crate::client::submit::{ANNOTATION_REQUESTED_BY, ArgError, NewRequest};

/// Label: the idempotency key of a request created with a request id (40 hex characters).
pub const LABEL_REQUEST_ID: &str = "coder.com/request-id";
/// Annotation: the request id exactly as the caller gave it.
pub const ANNOTATION_REQUEST_ID: &str = "coder.com/request-id";
/// Longest request id accepted, in bytes.
pub const MAX_REQUEST_ID: usize = 128;
/// Hex characters of the key (160 bits of SHA-256; a valid label value).
const KEY_LEN: usize = 40;
/// Prefix of the deterministic request name.
const NAME_PREFIX: &str = "req-";

/// The idempotency key of one caller's request id in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    request_id: String,
    key: String,
}

impl RequestKey {
    /// Checks `request_id` (1 to 128 visible ASCII characters) and derives the key for `caller`
    /// (the Kubernetes username) in `namespace`.
    pub fn new(
        argument: &str,
        namespace: &str,
        caller: &str,
        request_id: &str,
    ) -> Result<RequestKey, ArgError> {
        if request_id.is_empty() || request_id.len() > MAX_REQUEST_ID {
            return Err(ArgError::new(
                argument,
                format!(
                    "must be 1 to {MAX_REQUEST_ID} characters, got {}",
                    request_id.len()
                ),
            ));
        }
        if !request_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ArgError::new(
                argument,
                "must be visible ASCII characters without spaces (a UUID or a tool call id)",
            ));
        }
        let mut hasher = Sha256::new();
        for part in [namespace, caller, request_id] {
            // Length-prefixed, so no two different triples hash the same input.
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        let mut key: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        key.truncate(KEY_LEN);
        Ok(RequestKey {
            request_id: request_id.to_owned(),
            key,
        })
    }

    /// The key as a label value.
    pub fn label_value(&self) -> &str {
        &self.key
    }

    /// The request id as the caller gave it.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The deterministic name of the request.
    pub fn object_name(&self) -> String {
        format!("{NAME_PREFIX}{}", self.key)
    }

    /// `new`'s object with the deterministic name, the key label and the request id annotation.
    pub fn object(&self, new: &NewRequest) -> WorkspaceStartRequest {
        let mut obj = new.object();
        let meta: &mut ObjectMeta = &mut obj.metadata;
        meta.generate_name = None;
        meta.name = Some(self.object_name());
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(LABEL_REQUEST_ID.to_owned(), self.key.clone());
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION_REQUEST_ID.to_owned(), self.request_id.clone());
        obj
    }

    /// Why `existing` is not the request `new` would create under this key, if it is not.
    pub fn mismatch(&self, new: &NewRequest, existing: &WorkspaceStartRequest) -> Option<String> {
        let labels = existing.metadata.labels.as_ref();
        if labels.and_then(|l| l.get(LABEL_REQUEST_ID)) != Some(&self.key) {
            return Some("it was not created with this request_id".to_owned());
        }
        let asked_by = existing
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_REQUESTED_BY));
        if asked_by != new.requested_by.as_ref() {
            return Some("it was created by another caller".to_owned());
        }
        let wanted = new.object().spec;
        let same = existing.spec.chat_id == wanted.chat_id
            && existing.spec.workspace == wanted.workspace
            && existing.spec.parameters == wanted.parameters;
        (!same).then(|| {
            "it starts a different workspace or with different parameters; use a new request_id"
                .to_owned()
        })
    }
}

/// Whether a create made a new request or found the one an earlier call made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// This call created it.
    New,
    /// An earlier call with the same request id created it.
    Existing,
}

/// Why an idempotent create failed.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// The API server refused or failed a call.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The name is taken by a request this call may not return.
    #[error("request_id {request_id:?} is already used by {name}, and {why}")]
    Conflict {
        /// The request id.
        request_id: String,
        /// The existing request's name.
        name: String,
        /// What differs.
        why: String,
    },
    /// The API server did not say who the caller is, so there is no key to derive.
    #[error("the API server did not report a username for these credentials (SelfSubjectReview)")]
    Anonymous,
    /// The existing request was deleted while this call read it, again and again.
    #[error("the request {name} keeps being deleted and created; try again")]
    Vanished {
        /// Its name.
        name: String,
    },
}

/// Creates `new` under `key`, or returns the request an earlier call with the same key created.
pub async fn create_once(
    client: &kube::Client,
    new: &NewRequest,
    key: &RequestKey,
) -> Result<(WorkspaceStartRequest, Created), IdempotencyError> {
    let api: Api<WorkspaceStartRequest> = Api::namespaced(client.clone(), &new.namespace);
    let object = key.object(new);
    let name = key.object_name();
    // A request deleted between the conflicting create and the read: try again a few times.
    for _ in 0..3 {
        match api.create(&PostParams::default(), &object).await {
            Ok(created) => return Ok((created, Created::New)),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let Some(existing) = api.get_opt(&name).await? else {
            continue;
        };
        return match key.mismatch(new, &existing) {
            None => Ok((existing, Created::Existing)),
            Some(why) => Err(IdempotencyError::Conflict {
                request_id: key.request_id().to_owned(),
                name,
                why,
            }),
        };
    }
    Err(IdempotencyError::Vanished { name })
}

/// The Kubernetes username `client` authenticates as (a SelfSubjectReview, which every
/// authenticated user may create), for callers that do not know it (the `start` command).
pub async fn username(client: &kube::Client) -> Result<String, IdempotencyError> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .ok_or(IdempotencyError::Anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::shard::Shard;
    use crate::client::submit::{Target, Via};

    fn new(requested_by: Option<&str>) -> NewRequest {
        NewRequest {
            namespace: "team".into(),
            target: Target::WorkspaceName {
                owner: "alice".into(),
                name: "dev".into(),
            },
            parameters: vec![],
            via: Via::Mcp,
            requested_by: requested_by.map(str::to_owned),
            shard: Shard::default(),
        }
    }

    #[test]
    fn the_key_depends_on_namespace_caller_and_request_id_only() {
        let k = |ns: &str, who: &str, id: &str| RequestKey::new("request_id", ns, who, id);
        let base = k("team", "alice", "call-1").expect("valid");
        assert_eq!(base, k("team", "alice", "call-1").expect("valid"));
        for other in [
            k("other", "alice", "call-1"),
            k("team", "bob", "call-1"),
            k("team", "alice", "call-2"),
            // Length prefixes: moving a boundary changes the key.
            k("team", "alicec", "all-1"),
        ] {
            assert_ne!(base.label_value(), other.expect("valid").label_value());
        }
        assert_eq!(base.label_value().len(), KEY_LEN);
        assert!(base.object_name().len() <= 63);
    }

    #[test]
    fn hostile_request_ids_are_refused_naming_the_argument() {
        let long = "x".repeat(MAX_REQUEST_ID + 1);
        for bad in ["", "has space", "tab\t", "ünïcode", long.as_str()] {
            let e = RequestKey::new("request_id", "ns", "me", bad).expect_err(bad);
            assert_eq!(e.argument, "request_id");
        }
        assert!(RequestKey::new("request_id", "ns", "me", &"x".repeat(MAX_REQUEST_ID)).is_ok());
    }

    #[test]
    fn an_existing_request_is_returned_only_for_the_same_caller_and_start() {
        let key = RequestKey::new("request_id", "team", "alice", "c1").expect("valid");
        let mine = new(Some("alice"));
        let existing = key.object(&mine);
        assert_eq!(key.mismatch(&mine, &existing), None);
        assert!(key.mismatch(&new(Some("mallory")), &existing).is_some());
        let mut other_target = mine.clone();
        other_target.target = Target::WorkspaceName {
            owner: "alice".into(),
            name: "prod".into(),
        };
        assert!(key.mismatch(&other_target, &existing).is_some());
        let mut squatted = existing.clone();
        squatted.metadata.labels = None;
        assert!(key.mismatch(&mine, &squatted).is_some());
    }
}
