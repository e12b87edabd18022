//! Errors as HTTP answers: the status from the code's one table, a JSON body with the
//! stable code and a message that never leaks internals, and the headers some codes carry
//! (`WWW-Authenticate` on 401, `Retry-After` on 429, `Sec-WebSocket-Version` on 426).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::{Code, Error};
use crate::wire::{ErrorBody, ErrorDetail};

pub type ApiResult<T> = Result<T, Error>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.as_str().to_string(), message: self.message, index: self.index },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.code == Code::UnsupportedWebSocketVersion {
            // The versions this server speaks (RFC 6455 §4.4).
            response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        response
    }
}

/// A request body that could not be read: over `limits.max_body_bytes`, or broken.
pub fn body_error(rejection: axum::extract::rejection::BytesRejection) -> Error {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::new(Code::PayloadTooLarge, "request body over limits.max_body_bytes")
    } else {
        Error::new(Code::InvalidRequest, rejection.body_text())
    }
}

/// A query string that does not parse into the route's parameters.
pub fn query_error(rejection: axum::extract::rejection::QueryRejection) -> Error {
    Error::new(Code::InvalidQuery, rejection.body_text())
}
