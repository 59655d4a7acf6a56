//! Agents managed outside Coder ("external agents", a `coder_external_agent` resource in the
//! template): Coder provisions the workspace but cannot start the agent; the user runs it on
//! their own host. Coder's chat tools (`coderd/x/chatd/chattool/external_agents.go`) stop
//! waiting for such an agent once it is unreachable (connection `timeout` or `disconnected`; a
//! `connecting` agent may still be started by the user) and tell the user what to do, with
//! different words for "never connected" and "offline". The texts below are Coder's.

use super::types::{Agent, WorkspaceBuild};

/// Terraform resource type of an externally managed agent.
pub const EXTERNAL_AGENT_RESOURCE_TYPE: &str = "coder_external_agent";

/// Coder's guidance for an external agent that never connected.
pub const NOT_CONNECTED_MESSAGE: &str = "workspace uses an externally managed agent that has not connected yet. \
     The user needs to start the workspace externally and make sure the external agent is connected, then try again";

/// Coder's guidance for an external agent that connected once and is offline now.
pub const DISCONNECTED_MESSAGE: &str = "workspace uses an externally managed agent that is currently offline. \
     The user needs to reconnect the external agent on its host, then try again";

/// Whether `agent` belongs to a `coder_external_agent` resource of `build`.
pub fn is_external(build: &WorkspaceBuild, agent: &Agent) -> bool {
    build.resources.iter().any(|r| {
        r.resource_type == EXTERNAL_AGENT_RESOURCE_TYPE && r.agents.iter().any(|a| a.id == agent.id)
    })
}

/// Coder's guidance when `agent` is external and unreachable (status `timeout` or
/// `disconnected`); `None` while it may still connect, or when Coder manages it.
pub fn unavailable_message(build: &WorkspaceBuild, agent: &Agent) -> Option<&'static str> {
    let unreachable = matches!(agent.status.as_str(), "timeout" | "disconnected");
    if !unreachable || !is_external(build, agent) {
        return None;
    }
    Some(if agent.first_connected_at.is_some() {
        DISCONNECTED_MESSAGE
    } else {
        NOT_CONNECTED_MESSAGE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coder::types::Resource;

    fn build(resource_type: &str, status: &str, connected_once: bool) -> (WorkspaceBuild, Agent) {
        let agent: Agent = serde_json::from_value(serde_json::json!({
            "id": "6f1c2b7e-0000-4000-8000-000000000001",
            "name": "main",
            "status": status,
            "lifecycle_state": "created",
            "first_connected_at": connected_once.then_some("2026-01-01T00:00:00Z"),
        }))
        .expect("agent");
        let mut b: WorkspaceBuild = serde_json::from_value(serde_json::json!({
            "id": "6f1c2b7e-0000-4000-8000-000000000002",
            "build_number": 2,
            "transition": "start",
            "job": {"id": "6f1c2b7e-0000-4000-8000-000000000003", "status": "succeeded"},
        }))
        .expect("build");
        b.resources = vec![Resource {
            resource_type: resource_type.into(),
            agents: vec![agent.clone()],
        }];
        (b, agent)
    }

    #[test]
    fn an_unreachable_external_agent_gets_coders_guidance_by_connection_history() {
        let cases = [
            (
                EXTERNAL_AGENT_RESOURCE_TYPE,
                "timeout",
                false,
                Some(NOT_CONNECTED_MESSAGE),
            ),
            (
                EXTERNAL_AGENT_RESOURCE_TYPE,
                "disconnected",
                true,
                Some(DISCONNECTED_MESSAGE),
            ),
            // Still connecting: the user may be starting it right now.
            (EXTERNAL_AGENT_RESOURCE_TYPE, "connecting", false, None),
            (EXTERNAL_AGENT_RESOURCE_TYPE, "connected", true, None),
            // Coder starts this one: wait as usual.
            ("docker_container", "timeout", false, None),
        ];
        for (rt, status, once, want) in cases {
            let (b, a) = build(rt, status, once);
            assert_eq!(unavailable_message(&b, &a), want, "{rt} {status} {once}");
        }
    }
}
