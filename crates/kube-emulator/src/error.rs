//! Failures of emulated API calls, rendered as Kubernetes `Status` objects so that kube-rs and
//! kubectl see exactly the error shapes a real API server produces.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One field-level problem reported inside a `422 Invalid` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub field: String,
    pub message: String,
}

/// An API error as the API server would report it: HTTP code, machine `reason`, human message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    pub details: Option<Value>,
    /// `metadata.continue` of the Status (an expired list's way on).
    pub list_continue: Option<String>,
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
            list_continue: None,
        }
    }

    /// The `reason` a real server uses for a bare HTTP code (used by fault injection).
    pub fn for_code(code: u16, message: impl Into<String>) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            409 => "Conflict",
            410 => "Expired",
            415 => "UnsupportedMediaType",
            422 => "Invalid",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "Unknown",
        };
        ApiError::new(code, reason, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let qualified = qualified(resource, group);
        let mut err = ApiError::new(404, "NotFound", format!("{qualified} \"{name}\" not found"));
        err.details = Some(json!({"name": name, "group": group, "kind": resource}));
        err
    }

    /// A path no served resource matches: real servers answer a bare 404 Status.
    pub fn no_route(path: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let qualified = qualified(resource, group);
        let mut err = ApiError::new(
            409,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
        );
        err.details = Some(json!({"name": name, "group": group, "kind": resource}));
        err
    }

    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        let qualified = qualified(resource, group);
        let mut err = ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {qualified} \"{name}\": {why}"),
        );
        err.details = Some(json!({"name": name, "group": group, "kind": resource}));
        err
    }

    pub fn gone(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    pub fn invalid(group: &str, kind: &str, name: &str, causes: &[Cause]) -> Self {
        let listed: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let qualified = qualified(kind, group);
        let mut err = ApiError::new(
            422,
            "Invalid",
            format!("{qualified} \"{name}\" is invalid: {}", listed.join(", ")),
        );
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": "FieldValueInvalid", "message": c.message, "field": c.field}))
            .collect();
        err.details = Some(json!({"name": name, "group": group, "kind": kind, "causes": causes}));
        err
    }

    /// `413`: a request body over [`crate::limits::MAX_REQUEST_BODY_BYTES`].
    pub fn body_too_large() -> Self {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!(
                "Request entity too large: limit is {}",
                crate::limits::MAX_REQUEST_BODY_BYTES
            ),
        )
    }

    /// etcd's refusal of an object over [`crate::limits::MAX_OBJECT_BYTES`], which the API
    /// server passes through as an error without a reason.
    pub fn object_too_large() -> Self {
        ApiError::new(500, "", "etcdserver: request is too large")
    }

    /// `422` for one field of an object, with the API server's `Type: detail` wording.
    pub fn invalid_field(group: &str, kind: &str, name: &str, field: &str, message: &str) -> Self {
        ApiError::invalid(
            group,
            kind,
            name,
            &[Cause {
                field: field.to_string(),
                message: message.to_string(),
            }],
        )
    }

    /// `415` for a patch type the resource does not take.
    pub fn unsupported_patch(accepted: &[&str]) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    /// The `meta.k8s.io/v1` `Status` body for this error.
    pub fn status_body(&self) -> Value {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "code": self.code,
        });
        // An error the API server did not classify has no reason at all (`omitempty`).
        if !self.reason.is_empty() {
            body["reason"] = Value::String(self.reason.clone());
        }
        if let Some(details) = &self.details {
            body["details"] = details.clone();
        }
        if let Some(token) = &self.list_continue {
            body["metadata"]["continue"] = Value::String(token.clone());
        }
        body
    }
}

fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.status_body())).into_response()
    }
}
