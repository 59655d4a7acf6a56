//! `start_workspace` with a `request_id`: the request is created under the caller's idempotency
//! key ([`crate::client::idempotency`]), so a retried call follows the first call's request.

use rmcp::ErrorData;

use super::auth::Caller;
use crate::api::crd::WorkspaceStartRequest;
use crate::client::idempotency::{self, Created, IdempotencyError, RequestKey};
use crate::client::submit::NewRequest;

/// Creates `new` for `caller` under `request_id`, or returns the request an earlier call with the
/// same request id created. A request id reused for another start is an invalid argument.
pub(super) async fn create(
    client: &kube::Client,
    new: &NewRequest,
    request_id: &str,
    caller: &Caller,
) -> Result<WorkspaceStartRequest, ErrorData> {
    let key = RequestKey::new("request_id", &new.namespace, &caller.username, request_id).map_err(
        |e| {
            ErrorData::invalid_params(
                format!("invalid argument {e}"),
                Some(serde_json::json!({"argument": e.argument, "problem": e.problem})),
            )
        },
    )?;
    match idempotency::create_once(client, new, &key).await {
        Ok((request, created)) => {
            if created == Created::Existing {
                tracing::info!(
                    caller = %caller.username,
                    namespace = %new.namespace,
                    name = request.metadata.name.as_deref().unwrap_or_default(),
                    "request_id seen before: returning the existing request"
                );
            }
            Ok(request)
        }
        Err(e @ IdempotencyError::Conflict { .. }) => Err(ErrorData::invalid_params(
            format!("invalid argument request_id: {e}"),
            Some(serde_json::json!({"argument": "request_id", "problem": e.to_string()})),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "creating the request failed");
            Err(ErrorData::internal_error(
                format!("creating the request failed: {e}"),
                None,
            ))
        }
    }
}
