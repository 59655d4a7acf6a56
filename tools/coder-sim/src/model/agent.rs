//! Agents as seen at one instant, their health, and the chat tool's agent
//! selection.

use jiff::Timestamp;

use super::build::AgentRec;

/// An agent as seen at one instant.
#[derive(Debug, Clone)]
pub(crate) struct AgentView {
    pub rec: AgentRec,
    pub created_at: Timestamp,
    pub status: &'static str,
    pub lifecycle: &'static str,
    pub first_connected_at: Option<Timestamp>,
    pub last_connected_at: Option<Timestamp>,
    pub disconnected_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub ready_at: Option<Timestamp>,
}

impl AgentView {
    /// `health` as computed by Coder's db2sdk: (healthy, reason).
    pub fn health(&self) -> (bool, Option<&'static str>) {
        if self.status != "connected" && self.lifecycle == "off" {
            return (false, Some("agent is not running"));
        }
        match self.status {
            "connecting" => return (false, Some("agent has not yet connected")),
            "timeout" => return (false, Some("agent is taking too long to connect")),
            "disconnected" => return (false, Some("agent has lost connection")),
            _ => {}
        }
        if self.lifecycle == "start_error" {
            return (false, Some("agent startup script exited with an error"));
        }
        if self.lifecycle.starts_with("shutting_down") || self.lifecycle.starts_with("shutdown") {
            return (false, Some("agent is shutting down"));
        }
        (true, None)
    }
}

/// Selects the chat agent like `agentselect.FindChatAgent`: root agents, sorted by display
/// order, then name case-insensitively; the single `-coderd-chat` agent, else the first;
/// `None` when none or several match the suffix.
pub(crate) fn select_chat_agent(agents: &[AgentView]) -> Option<&AgentView> {
    let mut roots: Vec<&AgentView> = agents
        .iter()
        .filter(|a| a.rec.parent_id.is_none())
        .collect();
    roots.sort_by_key(|a| (a.rec.display_order, a.rec.name.to_lowercase()));
    let suffixed: Vec<&&AgentView> = roots
        .iter()
        .filter(|a| a.rec.name.to_lowercase().ends_with("-coderd-chat"))
        .collect();
    match suffixed.len() {
        0 => roots.first().copied(),
        1 => Some(*suffixed[0]),
        _ => None,
    }
}
