//! The checked-in CRDs must be exactly what `workspace-start-operator crd` prints.

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let generated = workspace_start_operator::api::crd::crd_yaml().expect("render CRD");
    for path in [
        "crds/workspacestartrequests.coder.com.yaml",
        "charts/workspace-start-operator/crds/workspacestartrequests.coder.com.yaml",
    ] {
        let file =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + path)
                .unwrap_or_else(|e| panic!("read {path}: {e}"));
        assert!(
            file == generated,
            "{path} is stale: run `make crd` and commit the result"
        );
    }
}

#[test]
fn checked_in_policy_crd_matches_the_rust_types() {
    let generated = workspace_start_operator::api::policy::crd_yaml().expect("render CRD");
    for path in [
        "crds/workspacestartpolicies.coder.com.yaml",
        "charts/workspace-start-operator/crds/workspacestartpolicies.coder.com.yaml",
    ] {
        let file =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + path)
                .unwrap_or_else(|e| panic!("read {path}: {e}"));
        assert!(
            file == generated,
            "{path} is stale: run `make crd` and commit the result"
        );
    }
}
