//! Table tests of the tenancy checks: which requests a namespace's policies admit, and which
//! owners Coder's answer may name.

use super::*;
use crate::api::crd::{BuildParameter, CoderRef, WorkspaceSelector, WorkspaceStartRequestSpec};
use crate::coder::types::{JobStatus, ProvisionerJob, Transition, Workspace, WorkspaceBuild};
use crate::operator::decide::OwnerState;
use kube::runtime::{reflector, watcher};

const ALICE: &str = "a11c0000-0000-4000-8000-000000000001";
const BOB: &str = "b0b00000-0000-4000-8000-000000000002";

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).expect("uuid")
}

fn policy(owners: &[&str]) -> WorkspaceStartPolicySpec {
    WorkspaceStartPolicySpec {
        namespaces: vec!["team-a".into()],
        owners: owners.iter().map(|o| (*o).to_owned()).collect(),
        ..Default::default()
    }
}

fn named(p: WorkspaceStartPolicySpec) -> Vec<(String, WorkspaceStartPolicySpec)> {
    vec![("team-a".to_owned(), p)]
}

fn request(spec: WorkspaceStartRequestSpec) -> WorkspaceStartRequest {
    let mut wsr = WorkspaceStartRequest::new("r", spec);
    wsr.metadata.namespace = Some("team-a".into());
    wsr
}

fn by_name(owner: &str) -> WorkspaceStartRequestSpec {
    WorkspaceStartRequestSpec {
        workspace: Some(WorkspaceSelector {
            owner: Some(owner.into()),
            name: Some("dev".into()),
            id: None,
        }),
        ..Default::default()
    }
}

fn by_chat() -> WorkspaceStartRequestSpec {
    WorkspaceStartRequestSpec {
        chat_id: Some("c4a70000-0000-4000-8000-000000000003".into()),
        ..Default::default()
    }
}

fn with_params(mut spec: WorkspaceStartRequestSpec, names: &[&str]) -> WorkspaceStartRequestSpec {
    spec.parameters = names
        .iter()
        .map(|n| BuildParameter {
            name: (*n).into(),
            value: "v".into(),
        })
        .collect();
    spec
}

fn with_secret(mut spec: WorkspaceStartRequestSpec) -> WorkspaceStartRequestSpec {
    spec.coder_ref = Some(CoderRef {
        name: "coder".into(),
    });
    spec
}

fn reason(r: Result<(), Refusal>) -> Option<Reason> {
    r.err().map(|r| r.reason)
}

/// One row: name, the policies naming the namespace, the shard, the request, the refusal.
type AdmitCase<'a> = (
    &'a str,
    Vec<(String, WorkspaceStartPolicySpec)>,
    Option<&'a str>,
    WorkspaceStartRequestSpec,
    Option<Reason>,
);

#[test]
fn pre_coder_checks_refuse_what_the_namespace_policies_do_not_allow() {
    let chats_only = WorkspaceStartPolicySpec {
        chats_only: true,
        ..policy(&["*"])
    };
    let region_only = WorkspaceStartPolicySpec {
        parameters: Some(vec!["region".into()]),
        ..policy(&["*"])
    };
    let team_shard = WorkspaceStartPolicySpec {
        shards: vec!["team-a".into()],
        default_shard: Some(false),
        ..policy(&["*"])
    };
    let cases: Vec<AdmitCase<'_>> = vec![
        (
            "unbound namespace, shared token",
            vec![],
            None,
            by_name("alice"),
            Some(Reason::OwnerNotAllowed),
        ),
        (
            "unbound namespace, own token",
            vec![],
            None,
            with_secret(by_name("bob")),
            None,
        ),
        (
            "bound namespace, shared token",
            named(policy(&["alice"])),
            None,
            by_name("alice"),
            None,
        ),
        (
            "chats-only namespace naming a workspace",
            named(chats_only.clone()),
            None,
            by_name("alice"),
            Some(Reason::ChatRequired),
        ),
        (
            "chats-only namespace with a chat",
            named(chats_only),
            None,
            by_chat(),
            None,
        ),
        (
            "allowed parameter",
            named(region_only.clone()),
            None,
            with_params(by_chat(), &["region"]),
            None,
        ),
        (
            "parameter outside the policy",
            named(region_only.clone()),
            None,
            with_params(by_chat(), &["region", "image"]),
            Some(Reason::ParameterNotAllowed),
        ),
        (
            "own token ignores parameter limits",
            named(region_only),
            None,
            with_secret(with_params(by_chat(), &["image"])),
            None,
        ),
        (
            "unbound namespace on a named shard",
            vec![],
            Some("privileged"),
            by_chat(),
            Some(Reason::ShardNotAllowed),
        ),
        (
            "own token on an unbound named shard",
            vec![],
            Some("privileged"),
            with_secret(by_chat()),
            Some(Reason::ShardNotAllowed),
        ),
        (
            "named shard not in the policy",
            named(policy(&["*"])),
            Some("privileged"),
            by_chat(),
            Some(Reason::ShardNotAllowed),
        ),
        (
            "named shard in the policy",
            named(team_shard.clone()),
            Some("team-a"),
            by_chat(),
            None,
        ),
        (
            "default shard turned off",
            named(team_shard.clone()),
            None,
            by_chat(),
            Some(Reason::ShardNotAllowed),
        ),
        (
            "default shard off, own token",
            named(team_shard),
            None,
            with_secret(by_chat()),
            None,
        ),
    ];
    for (name, policies, shard, spec, want) in cases {
        let got = reason(admit(&policies, "team-a", shard, &request(spec)));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn every_policy_naming_the_namespace_must_allow_the_request() {
    let policies = vec![
        ("a".to_owned(), policy(&["*"])),
        (
            "b".to_owned(),
            WorkspaceStartPolicySpec {
                parameters: Some(vec![]),
                ..policy(&["*"])
            },
        ),
    ];
    let refusal = admit(
        &policies,
        "team-a",
        None,
        &request(with_params(by_chat(), &["region"])),
    )
    .expect_err("policy b allows no parameters");
    assert_eq!(refusal.reason, Reason::ParameterNotAllowed);
    assert_eq!(
        refusal.message,
        "parameter \"region\" is not allowed in namespace \"team-a\": WorkspaceStartPolicy \"b\" allows only none (spec.parameters); a cluster admin adds it there, or remove it from the request; nothing was started"
    );
}

fn workspace(owner: &str, name: &str) -> Workspace {
    Workspace {
        id: Uuid::from_u128(7),
        name: "dev".into(),
        owner_id: uuid(owner),
        owner_name: name.into(),
        template_active_version_id: None,
        template_require_active_version: false,
        dormant_at: None,
        latest_build: WorkspaceBuild {
            id: Uuid::from_u128(8),
            build_number: 1,
            transition: Transition::Stop,
            status: String::new(),
            template_version_id: None,
            created_at: None,
            job: ProvisionerJob {
                id: Uuid::from_u128(9),
                status: JobStatus::Succeeded,
                error_code: None,
                started_at: None,
                completed_at: None,
            },
            resources: vec![],
        },
    }
}

fn seen(chat_owner: Option<&str>, owner: &str, name: &str) -> Observation {
    Observation::Workspace {
        chat_owner: chat_owner.map(uuid),
        workspace: Box::new(workspace(owner, name)),
        owner: OwnerState::Unchecked,
    }
}

fn bound_to(policies: &[WorkspaceStartPolicySpec]) -> Tenancy {
    let (reader, mut writer) = reflector::store();
    for (i, spec) in policies.iter().enumerate() {
        let p = WorkspaceStartPolicy::new(&format!("p{i}"), spec.clone());
        writer.apply_watcher_event(&watcher::Event::Apply(p));
    }
    Tenancy::bound(Shard::unlabelled(), reader)
}

fn failed_reason(obs: &Observation) -> Option<Reason> {
    match obs {
        Observation::Failed { reason, .. } => Some(*reason),
        _ => None,
    }
}

#[test]
fn the_owner_in_coders_answer_must_be_bound_to_the_namespace() {
    let alice_only = bound_to(&[policy(&["alice"])]);
    let alice_by_id = bound_to(&[policy(&[ALICE])]);
    let cases = [
        (
            "alice's workspace by name",
            &alice_only,
            seen(None, ALICE, "alice"),
            None,
        ),
        (
            "alice's workspace, bound by id",
            &alice_by_id,
            seen(None, ALICE, "alice"),
            None,
        ),
        (
            "bob's workspace",
            &alice_only,
            seen(None, BOB, "bob"),
            Some(Reason::OwnerNotAllowed),
        ),
        (
            "bob's chat on alice's workspace",
            &alice_only,
            seen(Some(BOB), ALICE, "alice"),
            Some(Reason::OwnerNotAllowed),
        ),
        (
            "bob's chat on bob's workspace",
            &alice_only,
            seen(Some(BOB), BOB, "bob"),
            Some(Reason::OwnerNotAllowed),
        ),
        (
            "alice's chat and workspace",
            &alice_only,
            seen(Some(ALICE), ALICE, "alice"),
            None,
        ),
    ];
    for (name, tenancy, obs, want) in cases {
        let got = tenancy.vet(&request(by_chat()), obs);
        assert_eq!(failed_reason(&got), want, "{name}");
    }
}

#[test]
fn an_owner_refusal_names_the_namespace_the_owner_and_the_fix() {
    let got = bound_to(&[policy(&["alice"])]).vet(&request(by_name("bob")), seen(None, BOB, "bob"));
    let Observation::Failed { reason, message } = got else {
        panic!("want a failure: {got:?}");
    };
    assert_eq!(reason, Reason::OwnerNotAllowed);
    assert_eq!(
        message,
        format!(
            "namespace \"team-a\" may not act for Coder user \"bob\" ({BOB}), the workspace's owner: WorkspaceStartPolicy \"p0\" allows only \"alice\" (spec.owners); a cluster admin adds \"bob\" to spec.owners of the WorkspaceStartPolicy naming \"team-a\", or the request uses spec.coderRef with that user's own token; nothing was started"
        )
    );
}

#[test]
fn open_mode_and_own_tokens_pass_any_owner() {
    let bob = seen(None, BOB, "bob");
    assert_eq!(
        Tenancy::open().vet(&request(by_name("bob")), bob.clone()),
        bob
    );
    assert_eq!(Tenancy::open().admit(&request(by_name("bob"))), Ok(()));
    let unbound = bound_to(&[]);
    assert_eq!(
        unbound.vet(&request(with_secret(by_name("bob"))), bob.clone()),
        bob
    );
    assert_eq!(
        failed_reason(&unbound.vet(&request(by_name("bob")), bob)),
        Some(Reason::OwnerNotAllowed)
    );
}

#[test]
fn a_hostile_owner_name_is_cut_in_the_message() {
    let long = "x".repeat(10_000);
    let got = bound_to(&[policy(&["alice"])]).vet(&request(by_chat()), seen(None, BOB, &long));
    let Observation::Failed { message, .. } = got else {
        panic!("want a failure: {got:?}");
    };
    assert!(message.len() < 1_000, "message is {} bytes", message.len());
}

#[test]
fn only_a_label_or_the_type_opts_a_secret_in() {
    use serde_json::{Value, json};
    let secret = |labels: Value, type_: &str| -> Secret {
        serde_json::from_value(json!({
            "metadata": {"name": "s", "labels": labels},
            "type": type_,
        }))
        .expect("secret")
    };
    assert!(secret_opted_in(&secret(
        json!({"coder.com/coder-ref": "true"}),
        "Opaque"
    )));
    assert!(secret_opted_in(&secret(
        json!({}),
        "coder.com/coder-credentials"
    )));
    assert!(!secret_opted_in(&secret(json!({}), "Opaque")));
    assert!(!secret_opted_in(&secret(
        json!({"coder.com/coder-ref": "yes"}),
        "Opaque"
    )));
    assert_eq!(secret_not_allowed("s").reason, Reason::SecretNotAllowed);
}
