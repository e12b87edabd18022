//! `POST /v1/topics/{topic}/messages` (JSON or raw body) and `…/messages:batch`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::access;
use super::error::{ApiError, ApiResult};
use super::protocol::{is_json, BatchBody, BatchResult, PublishBody, PublishResult};
use super::AppState;
use crate::config::Scope;
use crate::message::{NewMessage, OutgoingMessage};
use crate::metrics;
use crate::store::Published;
use crate::topic::Topic;

/// Raw publish: the idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Raw publish: TTL in milliseconds.
pub const TTL_HEADER: &str = "x-streamhub-ttl-ms";
/// Raw publish: `X-Streamhub-Header-<name>: <value>` becomes message header `<name>`.
pub const HEADER_PREFIX: &str = "x-streamhub-header-";

pub(crate) fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body over limits.max_body_bytes")
    } else {
        ApiError::bad_request("invalid_request", rejection.body_text())
    }
}

fn json_error(e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => ApiError::bad_request("invalid_request", e.to_string()),
        _ => ApiError::bad_request("invalid_json", e.to_string()),
    }
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> ApiResult<Option<&'h str>> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::bad_request("invalid_header", format!("{name} is not visible ASCII"))),
    }
}

fn from_json(body: PublishBody, http_idempotency_key: Option<&str>) -> ApiResult<NewMessage> {
    let mut message = body.into_message();
    match (&message.idempotency_key, http_idempotency_key) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                "invalid_idempotency_key",
                "the Idempotency-Key header and the body's idempotency_key differ",
            ))
        }
        (None, Some(b)) => message.idempotency_key = Some(b.to_string()),
        _ => {}
    }
    Ok(message)
}

fn from_raw(content_type: &str, headers: &HeaderMap, body: Bytes) -> ApiResult<NewMessage> {
    let ttl_ms = match header_str(headers, TTL_HEADER)? {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::bad_request("invalid_request", format!("{TTL_HEADER} must be a whole number of milliseconds"))
        })?),
    };
    let mut message_headers = BTreeMap::new();
    for (name, value) in headers {
        if let Some(short) = name.as_str().strip_prefix(HEADER_PREFIX) {
            let value = value
                .to_str()
                .map_err(|_| ApiError::bad_request("invalid_header", format!("{name} is not visible ASCII")))?;
            message_headers.insert(short.to_string(), value.to_string());
        }
    }
    Ok(NewMessage {
        payload: body.to_vec(),
        content_type: content_type.to_string(),
        headers: message_headers,
        ttl_ms,
        idempotency_key: header_str(headers, IDEMPOTENCY_KEY)?.map(str::to_string),
    })
}

/// Stores `messages` (HTTP and WebSocket publishes) and records the publish metrics.
pub(super) async fn store(
    state: &AppState,
    topic: &Topic,
    messages: Vec<OutgoingMessage>,
) -> ApiResult<Vec<Published>> {
    let sizes: Vec<usize> = messages.iter().map(|m| m.envelope.payload.len()).collect();
    let started = Instant::now();
    let results = state.store.publish(topic, messages).await.map_err(|e| rejected(ApiError::from(e)))?;
    ::metrics::histogram!(metrics::PUBLISH_DURATION).record(started.elapsed().as_secs_f64());
    let (mut stored, mut duplicate) = ((0u64, 0u64), (0u64, 0u64));
    for (result, size) in results.iter().zip(sizes) {
        let slot = if result.duplicate { &mut duplicate } else { &mut stored };
        slot.0 += 1;
        slot.1 += size as u64;
    }
    for (outcome, (count, bytes)) in [("stored", stored), ("duplicate", duplicate)] {
        ::metrics::counter!(metrics::MESSAGES_PUBLISHED, "outcome" => outcome).increment(count);
        ::metrics::counter!(metrics::PUBLISHED_BYTES, "outcome" => outcome).increment(bytes);
    }
    Ok(results)
}

pub(super) fn rejected(e: ApiError) -> ApiError {
    ::metrics::counter!(metrics::PUBLISH_REJECTED, "code" => e.code).increment(1);
    e
}

pub(super) async fn publish_one(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let checked = async {
        let topic = Topic::parse(&topic, state.config.limits.max_topic_bytes)?;
        let principal = access::principal(&state, &headers, None)?;
        access::require(&state, &principal, Scope::Publish, topic.as_str())?;
        let body = body.map_err(body_error)?;
        let message = match content_type(&headers) {
            Some(ct) if is_json(ct) => {
                let parsed: PublishBody = serde_json::from_slice(&body).map_err(json_error)?;
                from_json(parsed, header_str(&headers, IDEMPOTENCY_KEY)?)?
            }
            Some(ct) => from_raw(ct, &headers, body)?,
            None => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "a Content-Type header is required (application/json, or the raw payload's type)",
                ))
            }
        };
        let message = message.check(&state.config.limits)?;
        // Only a valid publish spends the caller's rate budget.
        state.limiters.publish(&principal, peer.ip(), 1)?;
        Ok((topic, message))
    };
    let (topic, message) = checked.await.map_err(rejected)?;
    let result = store(&state, &topic, vec![message]).await?.into_iter().next();
    let result =
        result.ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"))?;
    let status = if result.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(PublishResult::from(result))))
}

pub(super) async fn publish_batch(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<BatchResult>> {
    let limits = &state.config.limits;
    let checked = async {
        let topic = Topic::parse(&topic, limits.max_topic_bytes)?;
        let principal = access::principal(&state, &headers, None)?;
        access::require(&state, &principal, Scope::Publish, topic.as_str())?;
        let body = body.map_err(body_error)?;
        if !content_type(&headers).is_some_and(is_json) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "a batch is JSON: Content-Type: application/json",
            ));
        }
        let batch: BatchBody = serde_json::from_slice(&body).map_err(json_error)?;
        if batch.messages.is_empty() {
            return Err(ApiError::bad_request("invalid_request", "a batch holds at least one message"));
        }
        if batch.messages.len() > limits.max_batch_messages {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                format!(
                    "{} messages, limit {} (limits.max_batch_messages)",
                    batch.messages.len(),
                    limits.max_batch_messages
                ),
            ));
        }
        let mut messages = Vec::with_capacity(batch.messages.len());
        for (i, body) in batch.messages.into_iter().enumerate() {
            let message = from_json(body, None).map_err(|e| e.at(i))?;
            messages.push(message.check(limits).map_err(|e| ApiError::from(e).at(i))?);
        }
        state.limiters.publish(&principal, peer.ip(), messages.len() as u32)?;
        Ok((topic, messages))
    };
    let (topic, messages) = checked.await.map_err(rejected)?;
    let results = store(&state, &topic, messages).await?;
    Ok(Json(BatchResult { results: results.into_iter().map(PublishResult::from).collect() }))
}
