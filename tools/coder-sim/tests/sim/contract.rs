//! Response shapes, status codes, headers and error bodies checked against
//! shared/reference/coder-api.md.

use coder_sim::{AgentSeed, ChatEra, InitialState, SimConfig, WorkspaceSeed};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

const NOT_FOUND: &str = "Resource not found or you do not have access to this resource";
const SIGNED_OUT: &str =
    "You are signed out or your session has expired. Please sign in again to continue.";

#[tokio::test]
async fn healthz_is_plain_ok_without_auth_or_rate_limit_headers() {
    let srv = server().await;
    let r = Api::new(&srv, None).get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text, "OK");
    assert_eq!(r.header("X-Coder-Build-Version"), Some("v2.37.0"));
    assert!(r.header("X-RateLimit-Limit").is_none());
    assert_eq!(srv.sim().count("GET /healthz"), 1);
}

#[tokio::test]
async fn buildinfo_needs_no_auth_and_has_all_fields() {
    let srv = server_with(SimConfig {
        version: "v2.36.1".into(),
        ..SimConfig::default()
    })
    .await;
    let r = Api::new(&srv, None).get("/api/v2/buildinfo").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_keys(
        &r.body,
        &[
            "external_url",
            "version",
            "dashboard_url",
            "workspace_proxy",
            "agent_api_version",
            "provisioner_api_version",
            "upgrade_message",
            "deployment_id",
            "telemetry",
            "webpush_public_key",
        ],
    );
    assert_eq!(r.body["version"], "v2.36.1");
    assert_eq!(r.body["dashboard_url"], srv.url());
    assert_eq!(r.header("X-Coder-Build-Version"), Some("v2.36.1"));
    assert_eq!(r.header("X-RateLimit-Limit"), Some("512"));
    assert_eq!(r.header("X-RateLimit-Remaining"), Some("511"));
    assert!(
        r.header("X-RateLimit-Reset")
            .and_then(|v| v.parse::<i64>().ok())
            .is_some()
    );
}

#[tokio::test]
async fn missing_and_invalid_tokens_get_401_with_coder_body() {
    let srv = server().await;
    let r = Api::new(&srv, None).get("/api/v2/users/me").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["message"], SIGNED_OUT);
    assert_eq!(
        r.body["detail"],
        "Cookie \"coder_session_token\" or query parameter must be provided."
    );
    assert_eq!(r.header("X-Coder-Build-Version"), Some("v2.37.0"));

    let r = Api::new(&srv, Some("nope")).get("/api/v2/users/me").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["message"], SIGNED_OUT);

    let alice = srv.sim().add_user("alice");
    srv.sim().set_user_status(alice.id, "suspended");
    let r = Api::new(&srv, Some(&alice.token))
        .get("/api/v2/users/me")
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.body["message"],
        "User is not active (status = \"suspended\"). Contact an admin to reactivate your account."
    );
}

#[tokio::test]
async fn token_also_accepted_as_cookie_and_query_parameter() {
    let srv = server().await;
    let alice = srv.sim().add_user("alice");
    let api = Api::new(&srv, None);
    let r = api
        .send(
            api.req(reqwest::Method::GET, "/api/v2/users/me")
                .header("Cookie", format!("coder_session_token={}", alice.token)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api
        .get(&format!(
            "/api/v2/users/me?coder_session_token={}",
            alice.token
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn users_me_and_by_id_or_username() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let admin = sim.add_admin("admin");
    let api = Api::new(&srv, Some(&alice.token));
    let me = api.get("/api/v2/users/me").await;
    assert_eq!(me.status, StatusCode::OK);
    assert_keys(
        &me.body,
        &[
            "id",
            "username",
            "name",
            "email",
            "created_at",
            "updated_at",
            "last_seen_at",
            "status",
            "login_type",
            "organization_ids",
            "roles",
            "avatar_url",
        ],
    );
    assert_eq!(me.body["id"], json!(alice.id));
    assert_eq!(me.body["username"], "alice");
    assert_eq!(me.body["status"], "active");
    assert_eq!(me.body["roles"], json!([]));
    assert_time(&me.body["created_at"]);

    let by_name = api.get("/api/v2/users/admin").await;
    assert_eq!(by_name.body["id"], json!(admin.id));
    assert_eq!(by_name.body["roles"][0]["name"], "owner");
    let by_id = api.get(&format!("/api/v2/users/{}", admin.id)).await;
    assert_eq!(by_id.body["username"], "admin");

    let missing = api.get("/api/v2/users/nobody").await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        missing.body["message"],
        "\"user\" must be an existing uuid or username."
    );
}

fn running_seed(owner: uuid::Uuid) -> WorkspaceSeed {
    WorkspaceSeed::new(owner, "dev")
        .state(InitialState::Running)
        .agents(vec![
            AgentSeed::new("main"),
            AgentSeed::new("dev-coderd-chat"),
            AgentSeed::sub("devcontainer", "main"),
        ])
}

#[tokio::test]
async fn workspace_shape_matches_codersdk() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(running_seed(alice.id));
    let r = Api::new(&srv, Some(&alice.token))
        .get(&format!("/api/v2/workspaces/{ws}"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let w = &r.body;
    assert_keys(
        w,
        &[
            "id",
            "created_at",
            "updated_at",
            "owner_id",
            "owner_name",
            "organization_id",
            "organization_name",
            "template_id",
            "template_name",
            "template_active_version_id",
            "template_require_active_version",
            "outdated",
            "latest_build",
            "name",
            "dormant_at",
            "deleting_at",
            "health",
            "next_start_at",
            "last_used_at",
            "automatic_updates",
        ],
    );
    assert_eq!(w["id"], json!(ws));
    assert_eq!(w["owner_id"], json!(alice.id));
    assert_eq!(w["owner_name"], "alice");
    assert_eq!(w["name"], "dev");
    assert_eq!(w["outdated"], false);
    assert_eq!(w["template_require_active_version"], false);
    assert!(w["dormant_at"].is_null());
    assert_eq!(w["health"], json!({"healthy": true, "failing_agents": []}));
    // Pointer fields with omitempty in codersdk.Workspace are absent when unset.
    assert!(w.get("ttl_ms").is_none() && w.get("autostart_schedule").is_none());
    for k in [
        "id",
        "owner_id",
        "organization_id",
        "template_id",
        "template_active_version_id",
    ] {
        assert_uuid(&w[k]);
    }

    let b = &w["latest_build"];
    assert_keys(
        b,
        &[
            "id",
            "created_at",
            "updated_at",
            "workspace_id",
            "workspace_name",
            "workspace_owner_id",
            "workspace_owner_name",
            "template_version_id",
            "template_version_name",
            "build_number",
            "transition",
            "initiator_id",
            "initiator_name",
            "job",
            "reason",
            "resources",
            "deadline",
            "max_deadline",
            "status",
            "daily_cost",
            "matched_provisioners",
        ],
    );
    assert_eq!(b["status"], "running");
    assert_eq!(b["transition"], "start");
    assert_eq!(b["build_number"], 1);
    assert_eq!(b["reason"], "initiator");
    assert_eq!(b["workspace_owner_name"], "alice");
    assert_keys(
        &b["matched_provisioners"],
        &["count", "available", "most_recently_seen"],
    );

    let job = &b["job"];
    assert_keys(
        job,
        &[
            "id",
            "created_at",
            "started_at",
            "completed_at",
            "status",
            "file_id",
            "tags",
            "queue_position",
            "queue_size",
            "organization_id",
            "initiator_id",
            "input",
            "type",
            "metadata",
            "logs_overflowed",
        ],
    );
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["type"], "workspace_build");
    assert_eq!(job["input"]["workspace_build_id"], b["id"]);
    assert_eq!(job["metadata"]["workspace_build_transition"], "start");
    assert!(job.get("error").is_none(), "error omitted when empty");
    assert!(job.get("error_code").is_none());

    let res = b["resources"].as_array().expect("resources");
    assert_eq!(res.len(), 1);
    assert_keys(
        &res[0],
        &[
            "id",
            "job_id",
            "name",
            "type",
            "workspace_transition",
            "hide",
            "icon",
            "daily_cost",
            "agents",
        ],
    );
    let agents = res[0]["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 3);
    for a in agents {
        assert_keys(
            a,
            &[
                "id",
                "name",
                "resource_id",
                "parent_id",
                "status",
                "lifecycle_state",
                "health",
                "first_connected_at",
                "last_connected_at",
                "started_at",
                "ready_at",
                "connection_timeout_seconds",
                "scripts",
                "startup_script_behavior",
                "version",
                "api_version",
                "operating_system",
                "architecture",
                "expanded_directory",
                "apps",
                "display_apps",
                "log_sources",
                "logs_length",
                "logs_overflowed",
                "subsystems",
                "troubleshooting_url",
                "environment_variables",
            ],
        );
        assert_eq!(a["status"], "connected");
        assert_eq!(a["lifecycle_state"], "ready");
        assert_eq!(a["health"], json!({"healthy": true}));
        assert_eq!(a["resource_id"], res[0]["id"]);
    }
    let main = agents.iter().find(|a| a["name"] == "main").expect("main");
    let sub = agents
        .iter()
        .find(|a| a["name"] == "devcontainer")
        .expect("sub");
    assert!(main["parent_id"].is_null());
    assert_eq!(sub["parent_id"], main["id"]);

    // The same build by id.
    let build_id = b["id"].as_str().expect("id");
    let r2 = Api::new(&srv, Some(&alice.token))
        .get(&format!("/api/v2/workspacebuilds/{build_id}"))
        .await;
    assert_eq!(r2.status, StatusCode::OK);
    assert_eq!(r2.body["id"], b["id"]);
    assert_eq!(r2.body["status"], "running");

    // Agent by id.
    let r3 = Api::new(&srv, Some(&alice.token))
        .get(&format!(
            "/api/v2/workspaceagents/{}",
            main["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(r3.status, StatusCode::OK);
    assert_eq!(r3.body["name"], "main");
}

#[tokio::test]
async fn stopped_and_failed_seeds() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let stopped = sim.add_workspace(WorkspaceSeed::new(alice.id, "a"));
    let failed = sim.add_workspace(WorkspaceSeed::new(alice.id, "b").state(InitialState::Failed));
    let api = Api::new(&srv, Some(&alice.token));
    let w = api.get(&format!("/api/v2/workspaces/{stopped}")).await.body;
    assert_eq!(w["latest_build"]["status"], "stopped");
    assert_eq!(w["latest_build"]["transition"], "stop");
    assert_eq!(w["latest_build"]["build_number"], 2);
    assert_eq!(w["latest_build"]["resources"], json!([]));
    let w = api.get(&format!("/api/v2/workspaces/{failed}")).await.body;
    assert_eq!(w["latest_build"]["status"], "failed");
    assert_eq!(w["latest_build"]["job"]["status"], "failed");
    assert!(w["latest_build"]["job"]["error"].is_string());
    let hist = api
        .get(&format!("/api/v2/workspaces/{stopped}/builds"))
        .await
        .body;
    let nums: Vec<i64> = hist
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|b| b["build_number"].as_i64())
        .collect();
    assert_eq!(nums, vec![2, 1]);
}

#[tokio::test]
async fn workspace_by_owner_and_name() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let bob = sim.add_user("bob");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev"));
    let api = Api::new(&srv, Some(&alice.token));
    for user in ["me", "alice", &alice.id.to_string()] {
        let r = api
            .get(&format!("/api/v2/users/{user}/workspace/dev"))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{user}");
        assert_eq!(r.body["id"], json!(ws));
    }
    let r = api.get("/api/v2/users/me/workspace/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["message"], NOT_FOUND);
    // Bob cannot see alice's workspace by name or id.
    let bob_api = api.with_token(&bob.token);
    assert_eq!(
        bob_api
            .get("/api/v2/users/alice/workspace/dev")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = bob_api.get(&format!("/api/v2/workspaces/{ws}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["message"], NOT_FOUND);
}

#[tokio::test]
async fn deleted_workspace_is_410_by_id_and_404_by_name() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let seeded =
        sim.add_workspace(WorkspaceSeed::new(alice.id, "old").state(InitialState::Deleted));
    let live = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev"));
    sim.delete_workspace(live);
    let api = Api::new(&srv, Some(&alice.token));
    for (id, name) in [(seeded, "old"), (live, "dev")] {
        let r = api.get(&format!("/api/v2/workspaces/{id}")).await;
        assert_eq!(r.status, StatusCode::GONE);
        assert_eq!(
            r.body,
            json!({"message": format!("Workspace \"{id}\" was deleted, you can view this workspace by specifying '?deleted=true' and trying again.")})
        );
        let r = api.get(&format!("/api/v2/users/me/workspace/{name}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = api
            .get(&format!("/api/v2/workspaces/{id}?include_deleted=true"))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body["latest_build"]["status"], "deleted");
        let r = api
            .get(&format!(
                "/api/v2/users/me/workspace/{name}?include_deleted=true"
            ))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        // Starting a deleted workspace conflicts.
        let r = api.start(id).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
    }
}

#[tokio::test]
async fn invalid_uuid_is_400() {
    let srv = server().await;
    let alice = srv.sim().add_user("alice");
    let r = Api::new(&srv, Some(&alice.token))
        .get("/api/v2/workspaces/not-a-uuid")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["message"], "Invalid UUID \"not-a-uuid\".");
}

#[tokio::test]
async fn unknown_route_is_404_route_not_found() {
    let srv = server().await;
    let r = Api::new(&srv, None).get("/api/v2/nothing-here").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["message"], "Route not found.");
    assert_eq!(r.header("X-Coder-Build-Version"), Some("v2.37.0"));
}

#[tokio::test]
async fn chat_v2_era_is_bare_chat_with_repaired_binding() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let bob = sim.add_user("bob");
    let admin = sim.add_admin("admin");
    let ws = sim.add_workspace(running_seed(alice.id));
    let chat = sim.add_chat(alice.id, Some(ws));
    let lonely = sim.add_chat(alice.id, None);
    let api = Api::new(&srv, Some(&alice.token));
    let r = api.get(&format!("/api/v2/chats/{chat}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_keys(
        &r.body,
        &[
            "id",
            "organization_id",
            "owner_id",
            "workspace_id",
            "build_id",
            "agent_id",
            "last_model_config_id",
            "title",
            "status",
            "last_turn_summary",
            "summary",
            "archived",
            "shared",
            "client_type",
            "children",
            "pin_order",
            "labels",
            "mcp_server_ids",
            "has_unread",
            "created_at",
            "updated_at",
        ],
    );
    assert_eq!(r.body["workspace_id"], json!(ws));
    assert_eq!(r.body["owner_id"], json!(alice.id));
    assert_eq!(r.body["owner_username"], "alice");
    assert_eq!(r.body["status"], "waiting");
    // agent_id is repaired to the -coderd-chat agent of the latest build.
    let w = sim.workspace_json(ws);
    assert_eq!(r.body["build_id"], w["latest_build"]["id"]);
    let chat_agent = w["latest_build"]["resources"][0]["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .find(|a| a["name"] == "dev-coderd-chat")
        .cloned()
        .expect("chat agent");
    assert_eq!(r.body["agent_id"], chat_agent["id"]);

    let r = api.get(&format!("/api/v2/chats/{lonely}")).await;
    // codersdk.Chat's workspace_id is `*uuid.UUID` with omitempty: absent, not null.
    assert!(r.body.get("workspace_id").is_none(), "{}", r.text);

    // Wrong era path is 404; other users get 404; admins can read.
    assert_eq!(
        api.get(&format!("/api/experimental/chats/{chat}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = api
        .with_token(&bob.token)
        .get(&format!("/api/v2/chats/{chat}"))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["message"], NOT_FOUND);
    assert_eq!(
        api.with_token(&admin.token)
            .get(&format!("/api/v2/chats/{chat}"))
            .await
            .status,
        StatusCode::OK
    );
    let r = api
        .get(&format!("/api/v2/chats/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(api.get("/api/v2/experiments").await.body, json!([]));
}

#[tokio::test]
async fn chat_experimental_eras() {
    for (era, wrapped) in [
        (ChatEra::Experimental, false),
        (ChatEra::ExperimentalWrapped, true),
    ] {
        let srv = server_with(SimConfig {
            chat_era: era,
            version: "v2.31.0".into(),
            ..SimConfig::default()
        })
        .await;
        let sim = srv.sim();
        let alice = sim.add_user("alice");
        let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev"));
        let chat = sim.add_chat(alice.id, Some(ws));
        let api = Api::new(&srv, Some(&alice.token));
        assert_eq!(
            api.get(&format!("/api/v2/chats/{chat}")).await.status,
            StatusCode::NOT_FOUND
        );
        let r = api.get(&format!("/api/experimental/chats/{chat}")).await;
        assert_eq!(r.status, StatusCode::OK);
        let c = if wrapped {
            assert_keys(&r.body, &["chat", "messages", "queued_messages"]);
            assert_eq!(r.body["messages"], json!([]));
            r.body["chat"].clone()
        } else {
            assert!(r.body.get("chat").is_none());
            r.body.clone()
        };
        assert_eq!(c["id"], json!(chat));
        assert_eq!(c["workspace_id"], json!(ws));
        assert_eq!(api.get("/api/v2/experiments").await.body, json!(["agents"]));
    }
}

#[tokio::test]
async fn post_build_validation_errors() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev"));
    let api = Api::new(&srv, Some(&alice.token));
    let path = format!("/api/v2/workspaces/{ws}/builds");
    let r = api.post(&path, json!({"transition": "restart"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body,
        json!({"message": "Validation failed.", "validations": [{"field": "transition", "detail": "Validation failed for tag \"oneof\" with value: \"restart\""}]})
    );
    let r = api.post(&path, json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["validations"][0]["field"], "transition");
    let r = api
        .send(api.req(reqwest::Method::POST, &path).body("{nope"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["message"], "Request body must be valid JSON.");
    let r = api
        .post(
            &path,
            json!({"transition": "start", "template_version_id": uuid::Uuid::new_v4()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["message"], "template version does not exist");
    assert_eq!(sim.builds_created(ws), 0);
}

#[tokio::test]
async fn other_users_workspace_is_hidden_but_admin_may_start_it() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let bob = sim.add_user("bob");
    let admin = sim.add_admin("admin");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev").script(fast()));
    let api = Api::new(&srv, Some(&bob.token));
    let r = api.start(ws).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["message"], NOT_FOUND);
    assert_eq!(sim.builds_created(ws), 0);
    let r = api.with_token(&admin.token).start(ws).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["initiator_id"], json!(admin.id));
    assert_eq!(r.body["initiator_name"], "admin");
    assert_eq!(r.body["workspace_owner_name"], "alice");
}

#[tokio::test]
async fn rest_start_keeps_the_previous_version_unless_one_is_sent() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let admin = sim.add_admin("admin");
    let requiring = sim.add_workspace(
        WorkspaceSeed::new(alice.id, "dev")
            .require_active_version(true)
            .script(fast()),
    );
    let before = sim.workspace_json(requiring);
    assert_eq!(before["outdated"], true);
    assert_eq!(before["template_require_active_version"], true);
    let active = before["template_active_version_id"].clone();
    let previous = before["latest_build"]["template_version_id"].clone();
    assert_ne!(previous, active);
    // A member may not start it on the previous (outdated) version.
    let api = Api::new(&srv, Some(&alice.token));
    let r = api.start(requiring).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(sim.builds_created(requiring), 0);
    // Sending the active version works.
    let r = api
        .post(
            &format!("/api/v2/workspaces/{requiring}/builds"),
            json!({"transition": "start", "template_version_id": active}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["template_version_id"], active);

    // Without the requirement, REST reuses the previous build's version (never the active one
    // by itself); a template administrator may do so even when it is required.
    let free = sim.add_workspace(WorkspaceSeed::new(alice.id, "free").script(fast()));
    let old = sim.workspace_json(free)["latest_build"]["template_version_id"].clone();
    sim.publish_template_version(free).expect("published");
    let r = api.start(free).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["template_version_id"], old);
    let other = sim.add_workspace(
        WorkspaceSeed::new(alice.id, "other")
            .require_active_version(true)
            .script(fast()),
    );
    let prev = sim.workspace_json(other)["latest_build"]["template_version_id"].clone();
    let r = api.with_token(&admin.token).start(other).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["template_version_id"], prev);
}

#[tokio::test]
async fn template_version_id_is_honoured_and_parameters_recorded() {
    let srv = server().await;
    let sim = srv.sim();
    let alice = sim.add_user("alice");
    let ws = sim.add_workspace(WorkspaceSeed::new(alice.id, "dev").script(fast()));
    let old = sim.workspace_json(ws)["latest_build"]["template_version_id"].clone();
    let new = sim.publish_template_version(ws).expect("published");
    assert_eq!(sim.workspace_json(ws)["outdated"], true);
    let r = Api::new(&srv, Some(&alice.token))
        .post(
            &format!("/api/v2/workspaces/{ws}/builds"),
            json!({"transition": "start", "template_version_id": new, "reason": "cli",
                   "rich_parameter_values": [{"name": "region", "value": "eu"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["template_version_id"], json!(new));
    assert_ne!(r.body["template_version_id"], old);
    assert_eq!(r.body["reason"], "cli");
    let id: uuid::Uuid = r.body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id");
    assert_eq!(
        sim.build_parameters(id),
        vec![("region".to_owned(), "eu".to_owned())]
    );
}
