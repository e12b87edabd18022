//! The one HTTP error type: a stable code, a status and a message that never leaks
//! internals. Every failure of the HTTP API becomes one of these.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::protocol::{ErrorBody, ErrorDetail};
use crate::message::InvalidMessage;
use crate::store::StoreError;
use crate::topic::InvalidTopic;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub index: Option<usize>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
    /// Send `WWW-Authenticate: Bearer` (401).
    pub www_authenticate: bool,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), index: None, retry_after: None, www_authenticate: false }
    }

    pub fn at(mut self, index: usize) -> ApiError {
        self.index = Some(index);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message, index: self.index } };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, super::access::retry_after_header(seconds));
        }
        if self.www_authenticate {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<InvalidTopic> for ApiError {
    fn from(e: InvalidTopic) -> ApiError {
        ApiError::bad_request("invalid_topic", e.to_string())
    }
}

impl From<InvalidMessage> for ApiError {
    fn from(e: InvalidMessage) -> ApiError {
        let status = match e {
            InvalidMessage::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "redis unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "redis_unavailable",
                    "the message store is unavailable; retry later",
                )
            }
            e @ StoreError::NotReplicated { .. } => {
                tracing::warn!(error = %e, "publish not confirmed by replicas");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_replicated",
                    format!("{e}; retry with the same idempotency key to avoid a duplicate"),
                )
            }
            StoreError::Refused { code, .. } if code == "group_not_found" => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "group_not_ready",
                "the group does not exist in Redis yet (it is being created); retry shortly",
            ),
            StoreError::Refused { code, message } => {
                tracing::warn!(%code, %message, "redis function refused a request streamhub had validated");
                ApiError::bad_request("invalid_request", message)
            }
            other => {
                tracing::error!(error = %other, "redis call failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}
