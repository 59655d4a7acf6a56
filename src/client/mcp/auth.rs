//! What only the MCP server adds to the shared token check ([`crate::process::auth`]): refusals
//! as JSON-RPC errors (which MCP clients surface with their message), the SubjectAccessReview of
//! a tool call on WorkspaceStartRequests, a per-caller rate limit (`governor`, keyed by username)
//! on tool calls, and [`CallSlots`], the calls a caller has in flight at once.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::authorization::v1::ResourceAttributes;

use crate::api::crd::GROUP;
pub use crate::process::auth::Caller;
use crate::process::auth::{self, Access};
use crate::process::listener::Refusal;

/// Resource name checked by the SubjectAccessReview.
const RESOURCE: &str = "workspacestartrequests";

/// JSON-RPC error code of a refused token (implementation-defined server error range).
pub const UNAUTHORIZED_CODE: i32 = -32001;

/// JSON-RPC error code of a request refused by a limit (implementation-defined range).
pub const LIMITED_CODE: i32 = -32002;

/// The MCP port's [`crate::process::listener::ErrorBody`]: a JSON-RPC error with `status`.
pub fn json_rpc_body(kind: Refusal, status: StatusCode, message: String) -> Response {
    let code = match kind {
        Refusal::Unauthenticated => UNAUTHORIZED_CODE,
        Refusal::Limited => LIMITED_CODE,
    };
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": code,
            "message": message,
            "data": {"status": status.as_u16()},
        },
    });
    (status, axum::Json(body)).into_response()
}

/// Asks whether `caller` may `verb` requests in `namespace` (on `name` if given): `Err` holds
/// the message of a refusal.
pub async fn may(
    client: &kube::Client,
    caller: &Caller,
    verb: &str,
    namespace: &str,
    name: Option<&str>,
) -> Result<Result<(), String>, kube::Error> {
    let attributes = ResourceAttributes {
        verb: Some(verb.to_owned()),
        group: Some(GROUP.to_owned()),
        resource: Some(RESOURCE.to_owned()),
        namespace: Some(namespace.to_owned()),
        name: name.map(str::to_owned),
        ..Default::default()
    };
    match auth::may(client, caller, attributes).await? {
        Access::Allowed => Ok(Ok(())),
        Access::Denied(reason) => {
            let mut message = format!(
                "{} may not {verb} {RESOURCE}.{GROUP} in namespace {namespace}",
                caller.username
            );
            if let Some(reason) = reason {
                message.push_str(&format!(" ({reason})"));
            }
            Ok(Err(message))
        }
    }
}

/// Tool calls per caller: a token bucket per username.
pub struct CallLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    per_minute: NonZeroU32,
    burst: NonZeroU32,
}

impl CallLimit {
    /// `per_minute` calls per caller on average, bursts of up to `burst`.
    pub fn new(per_minute: NonZeroU32, burst: NonZeroU32) -> CallLimit {
        CallLimit {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            per_minute,
            burst,
        }
    }

    /// Takes one call from `caller`'s bucket, or says when to retry.
    pub fn check(&self, caller: &Caller) -> Result<(), String> {
        use governor::clock::{Clock, DefaultClock};
        match self.limiter.check_key(&caller.username) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(format!(
                    "rate limit exceeded for {}: at most {} tool calls per minute (bursts of {}); retry in {}s",
                    caller.username,
                    self.per_minute,
                    self.burst,
                    wait.as_secs().max(1)
                ))
            }
        }
    }

    /// Drops the buckets of callers that are back to a full bucket (run periodically).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Runs [`CallLimit::forget_idle`] every minute until the process ends.
    pub fn spawn_cleanup(self: &Arc<Self>) {
        let limit = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                limit.forget_idle();
            }
        });
    }
}

/// Tool calls in flight per caller: a caller over its cap gets a `TooManyCalls` tool result.
pub struct CallSlots {
    max: usize,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// One call's place in its caller's [`CallSlots`]; freed on drop.
pub struct CallSlot {
    username: String,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl CallSlots {
    /// At most `max` calls in flight per caller.
    pub fn new(max: usize) -> CallSlots {
        CallSlots {
            max,
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for one more call of `caller`, or the message of a refusal.
    pub fn enter(&self, caller: &Caller) -> Result<CallSlot, String> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(caller.username.clone()).or_insert(0);
        if *n >= self.max {
            return Err(format!(
                "too many calls in flight for {}: at most {} at once; wait for one to finish \
                 (or call with wait=false and read the request later with get_workspace_start)",
                caller.username, self.max
            ));
        }
        *n += 1;
        Ok(CallSlot {
            username: caller.username.clone(),
            held: Arc::clone(&self.held),
        })
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.username) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.username);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_has_its_own_bucket() {
        let n = |v| NonZeroU32::new(v).expect("non-zero");
        let limit = CallLimit::new(n(1), n(2));
        let a = Caller::for_test("system:serviceaccount:a:bot");
        let b = Caller::for_test("system:serviceaccount:b:bot");
        assert!(limit.check(&a).is_ok());
        assert!(limit.check(&a).is_ok());
        let refused = limit.check(&a).expect_err("third call in a burst of two");
        assert!(
            refused.contains("rate limit exceeded for system:serviceaccount:a:bot"),
            "{refused}"
        );
        assert!(refused.contains("retry in"), "{refused}");
        assert!(
            limit.check(&b).is_ok(),
            "another caller is not limited by a"
        );
    }

    #[test]
    fn a_caller_over_its_call_cap_is_refused_until_a_call_ends() {
        let slots = CallSlots::new(2);
        let a = Caller::for_test("system:serviceaccount:a:bot");
        let first = slots.enter(&a).expect("first");
        let _second = slots.enter(&a).expect("second");
        let refused = slots.enter(&a).err().expect("third is over the cap");
        assert!(refused.contains("at most 2 at once"), "{refused}");
        assert!(
            slots.enter(&Caller::for_test("other")).is_ok(),
            "another caller has its own cap"
        );
        drop(first);
        assert!(slots.enter(&a).is_ok(), "a finished call frees its slot");
    }

    #[tokio::test]
    async fn refusals_are_json_rpc_errors_with_their_own_codes() {
        for (kind, code) in [
            (Refusal::Limited, LIMITED_CODE),
            (Refusal::Unauthenticated, UNAUTHORIZED_CODE),
        ] {
            let r = json_rpc_body(kind, StatusCode::SERVICE_UNAVAILABLE, "busy".into());
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            let body = axum::body::to_bytes(r.into_body(), 1 << 16)
                .await
                .expect("body");
            let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(v["error"]["code"], code, "{v}");
            assert_eq!(v["error"]["message"], "busy", "{v}");
            assert_eq!(v["error"]["data"]["status"], 503, "{v}");
        }
    }
}
