//! Rendering of Coder JSON (codersdk shapes) from the simulator state.

use jiff::{Timestamp, Unit};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::ChatEra;
use crate::model::{
    AgentView, BuildRec, ChatRec, JobStatus, Sim, State, Transition, UserRec, WorkspaceRec,
    select_chat_agent,
};

/// A timestamp as this deployment reports it: shifted by its clock offset.
pub(crate) fn at(st: &State, t: Timestamp) -> Value {
    ts(t.saturating_add(st.clock_offset).unwrap_or(t))
}

/// Formats like Go's `time.Time` JSON from Postgres (microseconds, UTC).
pub(crate) fn ts(t: Timestamp) -> Value {
    let t = t.round(Unit::Microsecond).unwrap_or(t);
    Value::String(t.to_string())
}

fn insert_opt(obj: &mut Value, key: &str, v: Option<Value>) {
    if let (Some(map), Some(v)) = (obj.as_object_mut(), v) {
        map.insert(key.to_owned(), v);
    }
}

/// `{"message": …, "detail"?: …}` (codersdk.Response).
pub(crate) fn response(message: &str, detail: Option<&str>) -> Value {
    let mut v = json!({ "message": message });
    insert_opt(&mut v, "detail", detail.map(|d| json!(d)));
    v
}

/// `GET /api/v2/buildinfo`.
pub(crate) fn buildinfo(st: &State) -> Value {
    json!({
        "external_url": format!("https://github.com/coder/coder/releases/tag/{}", st.version),
        "version": st.version,
        "dashboard_url": st.base_url,
        "workspace_proxy": false,
        "agent_api_version": "2.6",
        "provisioner_api_version": "1.9",
        "upgrade_message": "",
        "deployment_id": st.deployment_id,
        "telemetry": false,
        "webpush_public_key": "",
    })
}

/// codersdk.User.
pub(crate) fn user(st: &State, u: &UserRec) -> Value {
    let roles: Vec<Value> = if u.admin {
        vec![json!({ "name": "owner", "display_name": "Owner" })]
    } else {
        Vec::new()
    };
    json!({
        "id": u.id,
        "username": u.username,
        "name": "",
        "email": format!("{}@example.com", u.username),
        "created_at": at(st, u.created_at),
        "updated_at": at(st, u.created_at),
        "last_seen_at": at(st, u.created_at),
        "status": u.status,
        "login_type": "password",
        "theme_preference": "",
        "organization_ids": [st.org_id],
        "roles": roles,
        "avatar_url": "",
    })
}

fn job(st: &State, ws: &WorkspaceRec, b: &BuildRec, now: Timestamp) -> Value {
    let view = b.job(now);
    let pending = view.status == JobStatus::Pending;
    let mut v = json!({
        "id": b.job_id,
        "created_at": at(st, b.created_at),
        "status": view.status.as_str(),
        "file_id": b.file_id,
        "tags": { "owner": "", "scope": "organization" },
        "queue_position": if pending { 1 } else { 0 },
        "queue_size": if pending { 1 } else { 0 },
        "organization_id": st.org_id,
        "initiator_id": b.initiator,
        "input": { "workspace_build_id": b.id },
        "type": "workspace_build",
        "metadata": {
            "template_version_name": ws.template.version_name(b.template_version_id),
            "template_id": ws.template.id,
            "template_name": ws.template.name,
            "template_display_name": "",
            "template_icon": "",
            "workspace_id": ws.id,
            "workspace_name": ws.name,
            "workspace_build_transition": b.transition.as_str(),
        },
        "logs_overflowed": false,
    });
    insert_opt(&mut v, "started_at", view.started_at.map(|t| at(st, t)));
    insert_opt(&mut v, "completed_at", view.completed_at.map(|t| at(st, t)));
    insert_opt(&mut v, "canceled_at", view.canceled_at.map(|t| at(st, t)));
    insert_opt(&mut v, "error", view.error.map(Value::String));
    insert_opt(&mut v, "error_code", view.error_code.map(Value::String));
    // `worker_id`, `worker_name` and `available_workers` are omitempty in codersdk.
    if view.started_at.is_some() {
        insert_opt(&mut v, "worker_id", Some(json!(b.worker_id)));
        insert_opt(&mut v, "worker_name", Some(json!("coder-sim-provisioner")));
    }
    v
}

fn agent(st: &State, resource_id: Uuid, a: &AgentView) -> Value {
    let (healthy, reason) = a.health();
    let mut health = json!({ "healthy": healthy });
    insert_opt(&mut health, "reason", reason.map(|r| json!(r)));
    let mut v = json!({
        "id": a.rec.id,
        "parent_id": a.rec.parent_id,
        "created_at": at(st, a.created_at),
        "updated_at": at(st, a.ready_at.or(a.started_at).unwrap_or(a.created_at)),
        "status": a.status,
        "lifecycle_state": a.lifecycle,
        "name": a.rec.name,
        "resource_id": resource_id,
        "architecture": "amd64",
        "environment_variables": {},
        "operating_system": "linux",
        "logs_length": 0,
        "logs_overflowed": false,
        "expanded_directory": "/home/coder",
        "version": st.version,
        "api_version": "2.6",
        "apps": [],
        "connection_timeout_seconds": a.rec.connection_timeout_secs,
        "troubleshooting_url": "",
        "subsystems": [],
        "health": health,
        "display_apps": ["vscode", "web_terminal", "ssh_helper", "port_forwarding_helper"],
        "log_sources": [],
        "scripts": [],
        "startup_script_behavior": "non-blocking",
    });
    insert_opt(
        &mut v,
        "first_connected_at",
        a.first_connected_at.map(|t| at(st, t)),
    );
    insert_opt(
        &mut v,
        "last_connected_at",
        a.last_connected_at.map(|t| at(st, t)),
    );
    insert_opt(
        &mut v,
        "disconnected_at",
        a.disconnected_at.map(|t| at(st, t)),
    );
    insert_opt(&mut v, "started_at", a.started_at.map(|t| at(st, t)));
    insert_opt(&mut v, "ready_at", a.ready_at.map(|t| at(st, t)));
    v
}

/// Terraform resource type of an agent managed outside Coder.
pub(crate) const EXTERNAL_AGENT_RESOURCE: &str = "coder_external_agent";

/// codersdk.WorkspaceResource with `agents`.
fn resource(
    st: &State,
    b: &BuildRec,
    id: Uuid,
    type_: &str,
    name: &str,
    agents: &[&AgentView],
) -> Value {
    let mut r = json!({
        "id": id,
        "created_at": at(st, b.created_at),
        "job_id": b.job_id,
        "workspace_transition": b.transition.as_str(),
        "type": type_,
        "name": name,
        "hide": false,
        "icon": "",
        "daily_cost": 0,
    });
    // `agents` and `metadata` are omitempty in codersdk.WorkspaceResource.
    let agents: Vec<Value> = agents.iter().map(|a| agent(st, id, a)).collect();
    insert_opt(
        &mut r,
        "agents",
        (!agents.is_empty()).then(|| json!(agents)),
    );
    r
}

/// codersdk.WorkspaceBuild.
pub(crate) fn build(st: &State, ws: &WorkspaceRec, b: &BuildRec, now: Timestamp) -> Value {
    let owner = st
        .users
        .get(&ws.owner)
        .map(|u| u.username.clone())
        .unwrap_or_default();
    let initiator = st
        .users
        .get(&b.initiator)
        .map(|u| u.username.clone())
        .unwrap_or_default();
    let agents = b.agents(now);
    let resources: Vec<Value> =
        if b.transition == Transition::Start && b.job(now).status == JobStatus::Succeeded {
            // Agents managed outside Coder belong to a `coder_external_agent` resource.
            let (external, own): (Vec<&AgentView>, Vec<&AgentView>) =
                agents.iter().partition(|a| a.rec.external);
            let mut out = Vec::new();
            if !own.is_empty() || external.is_empty() {
                out.push(resource(
                    st,
                    b,
                    b.resource_id,
                    "docker_container",
                    "workspace",
                    &own,
                ));
            }
            if !external.is_empty() {
                out.push(resource(
                    st,
                    b,
                    b.external_resource_id,
                    EXTERNAL_AGENT_RESOURCE,
                    "external",
                    &external,
                ));
            }
            out
        } else {
            Vec::new()
        };
    let view = b.job(now);
    let mut v = json!({
        "id": b.id,
        "created_at": at(st, b.created_at),
        "updated_at": at(st, view.completed_at.or(view.started_at).unwrap_or(b.created_at)),
        "workspace_id": ws.id,
        "workspace_name": ws.name,
        "workspace_owner_id": ws.owner,
        "workspace_owner_name": owner,
        "template_version_id": b.template_version_id,
        "template_version_name": ws.template.version_name(b.template_version_id),
        "template_version_preset_id": null,
        "build_number": b.number,
        "transition": b.transition.as_str(),
        "initiator_id": b.initiator,
        "initiator_name": initiator,
        "job": job(st, ws, b, now),
        "reason": b.reason,
        "resources": resources,
        "deadline": null,
        "max_deadline": null,
        "status": b.status(now),
        "daily_cost": 0,
        "matched_provisioners": {
            "count": 1,
            "available": 1,
            "most_recently_seen": at(st, b.created_at),
        },
    });
    // `*bool` with omitempty, known once the job completed.
    if view.completed_at.is_some() {
        insert_opt(&mut v, "has_ai_task", Some(json!(false)));
        insert_opt(
            &mut v,
            "has_external_agent",
            Some(json!(b.has_external_agent())),
        );
    }
    v
}

/// codersdk.Workspace.
pub(crate) fn workspace(st: &State, ws: &WorkspaceRec, now: Timestamp) -> Value {
    let owner = st
        .users
        .get(&ws.owner)
        .map(|u| u.username.clone())
        .unwrap_or_default();
    let latest = st.latest_build(ws);
    let latest_json = latest.map_or(Value::Null, |b| build(st, ws, b, now));
    let failing: Vec<Uuid> = latest
        .map(|b| {
            b.agents(now)
                .into_iter()
                .filter(|a| !a.health().0)
                .map(|a| a.rec.id)
                .collect()
        })
        .unwrap_or_default();
    let outdated = latest.is_some_and(|b| b.template_version_id != ws.template.active_version());
    json!({
        "id": ws.id,
        "created_at": at(st, ws.created_at),
        "updated_at": at(st, ws.updated_at),
        "owner_id": ws.owner,
        "owner_name": owner,
        "owner_avatar_url": "",
        "organization_id": st.org_id,
        "organization_name": "coder",
        "template_id": ws.template.id,
        "template_name": ws.template.name,
        "template_display_name": "Docker",
        "template_icon": "",
        "template_allow_user_cancel_workspace_jobs": true,
        "template_active_version_id": ws.template.active_version(),
        "template_require_active_version": ws.template.require_active_version,
        "template_use_classic_parameter_flow": false,
        "latest_build": latest_json,
        "latest_app_status": null,
        "outdated": outdated,
        "name": ws.name,
        "last_used_at": at(st, ws.updated_at),
        "deleting_at": null,
        "dormant_at": ws.dormant_at.map(|t| at(st, t)),
        "health": { "healthy": failing.is_empty(), "failing_agents": failing },
        "automatic_updates": "never",
        "allow_renames": false,
        "favorite": false,
        "next_start_at": null,
        "is_prebuild": false,
        "task_id": null,
    })
}

/// codersdk.Chat, in the configured era's shape.
pub(crate) fn chat(st: &State, c: &ChatRec, now: Timestamp) -> Value {
    let owner = st.users.get(&c.owner);
    let mut build_id: Option<Uuid> = None;
    let mut agent_id: Option<Uuid> = None;
    if st.chat_era == ChatEra::V2 {
        // Read-time repair (PR #28152): pair the latest build with its agent.
        if let Some(ws) = c.workspace_id.and_then(|id| st.workspaces.get(&id))
            && let Some(b) = st.latest_build(ws)
        {
            build_id = Some(b.id);
            let agents = b.agents(now);
            agent_id = select_chat_agent(&agents).map(|a| a.rec.id);
        }
    }
    let mut v = json!({
        "id": c.id,
        "organization_id": st.org_id,
        "owner_id": c.owner,
        "last_model_config_id": c.model_config_id,
        "title": c.title,
        "status": c.status,
        "last_turn_summary": null,
        "summary": null,
        "created_at": at(st, c.created_at),
        "updated_at": at(st, c.created_at),
        "archived": false,
        "shared": false,
        "pin_order": 0,
        "mcp_server_ids": [],
        "labels": {},
        "has_unread": false,
        "client_type": "api",
        "children": [],
    });
    // codersdk.Chat: the pointer fields are omitempty (absent, not null, when unset).
    insert_opt(&mut v, "workspace_id", c.workspace_id.map(|id| json!(id)));
    insert_opt(&mut v, "build_id", build_id.map(|id| json!(id)));
    insert_opt(&mut v, "agent_id", agent_id.map(|id| json!(id)));
    if st.chat_era == ChatEra::V2 {
        insert_opt(&mut v, "owner_username", owner.map(|u| json!(u.username)));
    }
    if st.chat_era == ChatEra::ExperimentalWrapped {
        return json!({ "chat": v, "messages": [], "queued_messages": [] });
    }
    v
}

/// Renderings of the current state, for tests and the admin API.
impl Sim {
    /// The workspace as `GET /api/v2/workspaces/{id}?include_deleted=true`
    /// renders it now (`Value::Null` if unknown).
    pub fn workspace_json(&self, workspace: Uuid) -> serde_json::Value {
        let st = self.lock();
        match st.workspaces.get(&workspace) {
            Some(ws) => self::workspace(&st, ws, Timestamp::now()),
            None => serde_json::Value::Null,
        }
    }

    /// The chat as `GET` renders it in the configured era (`Null` if unknown).
    pub fn chat_json(&self, chat: Uuid) -> serde_json::Value {
        let st = self.lock();
        match st.chats.get(&chat) {
            Some(c) => self::chat(&st, c, Timestamp::now()),
            None => serde_json::Value::Null,
        }
    }
}

/// `[]codersdk.ProvisionerJobLog`.
pub(crate) fn logs(st: &State, lines: &[crate::model::debug::LogLine]) -> Value {
    Value::Array(
        lines
            .iter()
            .map(|l| {
                json!({
                    "id": l.id,
                    "created_at": at(st, l.created_at),
                    "log_source": l.source,
                    "log_level": l.level,
                    "stage": l.stage,
                    "output": l.output,
                })
            })
            .collect(),
    )
}

/// `codersdk.WorkspaceBuildTimings` (every list present, empty when nothing was recorded).
pub(crate) fn timings(st: &State, b: &BuildRec, t: &crate::model::debug::Timings) -> Value {
    let provisioner: Vec<Value> = t
        .provisioner
        .iter()
        .map(|p| {
            json!({
                "job_id": b.job_id,
                "started_at": at(st, p.started_at),
                "ended_at": at(st, p.ended_at),
                "stage": p.stage,
                "source": p.source,
                "action": p.action,
                "resource": p.resource,
            })
        })
        .collect();
    // Go's zero time for a NULL end (an agent that never connected).
    let end = |e: Option<Timestamp>| e.map_or_else(|| json!("0001-01-01T00:00:00Z"), |e| at(st, e));
    let scripts: Vec<Value> = t
        .scripts
        .iter()
        .map(|s| {
            let (exit_code, status) = s.script.unwrap_or((0, "ok"));
            json!({
                "started_at": at(st, s.started_at),
                "ended_at": end(s.ended_at),
                "exit_code": exit_code,
                "stage": "start",
                "status": status,
                "display_name": "Startup Script",
                "workspace_agent_id": s.agent_id.to_string(),
                "workspace_agent_name": s.agent_name,
            })
        })
        .collect();
    let connections: Vec<Value> = t
        .connections
        .iter()
        .map(|c| {
            json!({
                "started_at": at(st, c.started_at),
                "ended_at": end(c.ended_at),
                "stage": "connect",
                "workspace_agent_id": c.agent_id.to_string(),
                "workspace_agent_name": c.agent_name,
            })
        })
        .collect();
    json!({
        "provisioner_timings": provisioner,
        "agent_script_timings": scripts,
        "agent_connection_timings": connections,
    })
}
