//! HTTP answers in Coder's shapes (`codersdk.Response` errors), shared by
//! the API routes and the admin API.

#![allow(clippy::result_large_err)] // helpers return `Response` as their error type

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use uuid::Uuid;

use crate::json;

/// Coder's message for a missing or bad session.
pub(crate) const SIGNED_OUT: &str =
    "You are signed out or your session has expired. Please sign in again to continue.";
/// `httpapi.ResourceNotFoundResponse`.
pub(crate) const NOT_FOUND: &str = "Resource not found or you do not have access to this resource";
/// `httpapi.ResourceForbiddenResponse.Detail`.
pub(crate) const FORBIDDEN_DETAIL: &str = "You don't have permission to view this content. If you believe this is a mistake, please contact your administrator or try signing in with different credentials.";

/// JSON response with a status.
pub(crate) fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// `{"message":…,"detail"?:…}` error response.
pub(crate) fn error(status: StatusCode, message: &str, detail: Option<&str>) -> Response {
    reply(status, json::response(message, detail))
}

pub(crate) fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, NOT_FOUND, None)
}

pub(crate) fn route_not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Route not found.", None)
}

/// Parses a UUID path parameter like `httpmw.ParseUUIDParam`.
pub(crate) fn parse_uuid(raw: &str) -> Result<Uuid, Response> {
    Uuid::parse_str(raw).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid UUID {raw:?}."),
            Some(&e.to_string()),
        )
    })
}
