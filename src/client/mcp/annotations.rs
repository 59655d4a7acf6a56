//! MCP tool annotations (hints a client may use to decide whether to ask the user before a
//! call, or to retry one): what each tool changes, whether a repeated call changes more, and
//! whether it reaches beyond the server (Coder).

use rmcp::model::ToolAnnotations;

/// `start_workspace`: starts a Coder workspace (open world); not read-only, not destructive.
/// Not idempotent as such: every call without `request_id` creates a new request (though no
/// second Coder build for a running workspace). With the same `request_id` a repeated call
/// returns the first call's request, which the description says.
pub fn start_workspace() -> ToolAnnotations {
    ToolAnnotations::with_title("Start a Coder workspace")
        .read_only(false)
        .destructive(false)
        .idempotent(false)
        .open_world(true)
}

/// `get_workspace_start`: reads one request from Kubernetes; changes nothing.
pub fn get_workspace_start() -> ToolAnnotations {
    ToolAnnotations::with_title("Read a workspace start")
        .read_only(true)
        .destructive(false)
        .idempotent(true)
        .open_world(false)
}

/// `get_workspace_build_logs`: reads a build's logs from Coder (through the operator); changes
/// nothing.
pub fn get_workspace_build_logs() -> ToolAnnotations {
    ToolAnnotations::with_title("Read a workspace build's logs")
        .read_only(true)
        .destructive(false)
        .idempotent(true)
        .open_world(true)
}
