//! Hostile input end to end (real kube-apiserver + etcd, coder-sim, the operator binary as the
//! chart's ServiceAccount): what a careless or malicious user, or a Coder URL answering
//! anything, can do to the operator. Each test checks that the operator stays up, that the
//! request concerned gets its own clear reason, and that other requests go on.

mod support;

use std::time::Duration;

use coder_sim::WorkspaceSeed;
use support::{Env, ready};
use workspace_start_operator::crd::Phase;

const T: Duration = Duration::from_secs(30);

/// The value of an unlabelled counter or gauge in `/metrics`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_reconcile_fails_only_that_request() {
    let mut env = Env::new("hostile-panic").await;
    env.start_operator(&["--test-panic-on=boom"]).await;
    let sim = env.sim.sim();
    let a = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "a"));
    let b = sim.add_workspace(WorkspaceSeed::new(env.alice.id, "b"));
    env.create_for_workspace("boom", a).await;
    env.create_for_workspace("fine", b).await;

    let w = env.wait_terminal("boom", T).await;
    assert_eq!(w.status.as_ref().and_then(|s| s.phase), Some(Phase::Failed));
    assert_eq!(ready(&w), ("False".into(), "InternalError".into()));
    let message = w.status.as_ref().and_then(|s| s.message.clone());
    assert_eq!(
        message.as_deref(),
        Some(
            "the operator hit an internal error while reconciling this request (details in the operator log); it is not retried"
        )
    );
    let events = env.events("boom").await;
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "InternalError"),
        "{events:?}"
    );
    let w = env.wait_terminal("fine", T).await;
    assert_eq!(ready(&w), ("True".into(), "Ready".into()));
    assert_eq!(
        sim.builds_created(a),
        0,
        "the panicking request started nothing"
    );

    let op = env.operator();
    assert!(op.is_running(), "the operator exited");
    let m = op.metrics().await;
    assert_eq!(
        metric(&m, "workspace_start_operator_reconcile_panics_total"),
        Some(1.0),
        "one panic counted, and not repeated after Failed"
    );
    assert!(
        op.logs()
            .contains("reconcile panicked; failing the request")
    );
}
