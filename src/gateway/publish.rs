//! `POST /v1/topics/{topic}/messages` (a JSON or raw body) and `…/messages:batch`:
//! decoding the HTTP forms of a publish into messages for `Ops::publish`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{body_error, ApiResult};
use super::extract::Granted;
use super::protocol::{BatchBody, PublishBody};
use super::AppState;
use crate::error::{Code, Error};
use crate::message::NewMessage;
use crate::ops::access::Publish;
use crate::ops::publish::refused;
use crate::wire::{is_json, BatchResult, PublishResult};

/// Raw publish: the idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Raw publish: TTL in milliseconds.
pub const TTL_HEADER: &str = "x-streamhub-ttl-ms";
/// Raw publish: `X-Streamhub-Header-<name>: <value>` becomes message header `<name>`.
pub const HEADER_PREFIX: &str = "x-streamhub-header-";

fn json_error(e: serde_json::Error) -> Error {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => Error::new(Code::InvalidRequest, e.to_string()),
        _ => Error::new(Code::InvalidJson, e.to_string()),
    }
}

/// A JSON body: checked as UTF-8 once, as a whole, then parsed as text (serde_json
/// parsing bytes checks every string it reads on its own, and the raw text of every
/// `data` again). A body that is not UTF-8 is `invalid_json` before any other fault.
fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> ApiResult<T> {
    let text = std::str::from_utf8(body).map_err(|e| {
        Error::new(Code::InvalidJson, format!("the body is not UTF-8 text (from byte {})", e.valid_up_to()))
    })?;
    serde_json::from_str(text).map_err(json_error)
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> ApiResult<Option<&'h str>> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => {
            v.to_str().map(Some).map_err(|_| Error::new(Code::InvalidHeader, format!("{name} is not visible ASCII")))
        }
    }
}

fn from_json(body: PublishBody, http_idempotency_key: Option<&str>) -> ApiResult<NewMessage> {
    let mut message = body.into_message().map_err(json_error)?;
    match (&message.idempotency_key, http_idempotency_key) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::new(
                Code::InvalidIdempotencyKey,
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
            Error::new(Code::InvalidRequest, format!("{TTL_HEADER} must be a whole number of milliseconds"))
        })?),
    };
    let mut message_headers = BTreeMap::new();
    for (name, value) in headers {
        if let Some(short) = name.as_str().strip_prefix(HEADER_PREFIX) {
            let value =
                value.to_str().map_err(|_| Error::new(Code::InvalidHeader, format!("{name} is not visible ASCII")))?;
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

/// What a single publish request asks for.
enum Publish1 {
    Message(NewMessage),
    /// `"ephemeral": true`: the data and headers, for the current subscribers only.
    Ephemeral(serde_json::Value, BTreeMap<String, String>),
}

/// The message a single publish request carries: a JSON document, or raw bytes with
/// their content type.
fn decode_one(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> ApiResult<Publish1> {
    let body = body.map_err(body_error)?;
    match content_type(headers) {
        Some(ct) if is_json(ct) => {
            let parsed: PublishBody = parse_json(&body)?;
            if parsed.ephemeral {
                if parsed.ttl_ms.is_some() || parsed.idempotency_key.is_some() {
                    return Err(Error::new(
                        Code::InvalidRequest,
                        "an ephemeral event has no ttl_ms or idempotency_key (it is never stored)",
                    ));
                }
                let data = serde_json::from_str(parsed.data.get()).map_err(json_error)?;
                return Ok(Publish1::Ephemeral(data, parsed.headers));
            }
            from_json(parsed, header_str(headers, IDEMPOTENCY_KEY)?).map(Publish1::Message)
        }
        Some(ct) => from_raw(ct, headers, body).map(Publish1::Message),
        None => Err(Error::new(
            Code::UnsupportedMediaType,
            "a Content-Type header is required (application/json, or the raw payload's type)",
        )),
    }
}

fn decode_batch(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> ApiResult<Vec<NewMessage>> {
    let body = body.map_err(body_error)?;
    if !content_type(headers).is_some_and(is_json) {
        return Err(Error::new(Code::UnsupportedMediaType, "a batch is JSON: Content-Type: application/json"));
    }
    let batch: BatchBody = parse_json(&body)?;
    if let Some(i) = batch.messages.iter().position(|m| m.ephemeral) {
        return Err(Error::new(Code::InvalidRequest, "a batch holds stored messages only, not ephemeral events").at(i));
    }
    batch.messages.into_iter().enumerate().map(|(i, m)| from_json(m, None).map_err(|e| e.at(i))).collect()
}

pub(super) async fn publish_one(
    State(state): State<Arc<AppState>>,
    Granted { caller, grant }: Granted<Publish>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    match decode_one(&headers, body).map_err(refused)? {
        Publish1::Message(message) => {
            let published = state.ops.publish(&caller, &grant, message).await?;
            let status = if published.duplicate { StatusCode::OK } else { StatusCode::CREATED };
            let mut body = Vec::with_capacity(128);
            PublishResult::from(published).write_json(&mut body);
            Ok(json_answer(status, body))
        }
        Publish1::Ephemeral(data, headers) => {
            state.ops.publish_ephemeral(&caller, &grant, data, headers).await?;
            Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "ephemeral": true }))).into_response())
        }
    }
}

pub(super) async fn publish_batch(
    State(state): State<Arc<AppState>>,
    Granted { caller, grant }: Granted<Publish>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let messages = decode_batch(&headers, body).map_err(refused)?;
    let published = state.ops.publish_batch(&caller, &grant, messages).await?;
    let answer = BatchResult { results: published.into_iter().map(PublishResult::from).collect() };
    Ok(json_answer(StatusCode::OK, answer.to_json()))
}

/// A publish's answer: JSON written by `wire` (axum's `Json` would grow a `BytesMut`
/// from 128 bytes and escape every string byte by byte through serde_json).
fn json_answer(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}
