//! Centrifugo's server HTTP API, for the libraries that publish into Centrifugo (the
//! Python `cent` package and its kind): `POST <centrifugo.api_prefix>/<method>` with a
//! JSON body, authenticated by a streamhub API key in `X-API-Key`, `Authorization: apikey
//! <key>` or `?api_key=`; answered `200 {"result": …}` or `200 {"error": {code, message}}`,
//! `401` with an empty body when the key is missing or unknown. Each method maps onto the
//! same operations as streamhub's own HTTP API, with the key's grants.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::codec::Format;
use super::codes;
use super::encode::client_info;
use super::history::{history, Refused};
use super::proto::StreamPosition;
use crate::auth::PrincipalKind;
use crate::gateway::extract::ClientAddr;
use crate::gateway::AppState;
use crate::message::NewMessage;
use crate::ops::access::{Budget, Caller, PresenceRead, Publish};

/// The key a request presents: `X-API-Key`, else `Authorization: apikey <key>`, else
/// `?api_key=`.
fn presented_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers.get("x-api-key") {
        return v.to_str().ok().map(|s| s.trim().to_string());
    }
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return v.get(..7).filter(|s| s.eq_ignore_ascii_case("apikey ")).map(|_| v[7..].trim().to_string());
    }
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == "api_key").map(|(_, v)| v.into_owned())
}

pub async fn api(
    State(state): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Only API keys: a service credential, as Centrifugo's API key is.
    let principal = presented_key(&headers, query.as_deref())
        .filter(|k| !k.is_empty())
        .and_then(|k| state.ops.access().principal(Some(&k)).ok())
        .filter(|p| p.kind == PrincipalKind::ApiKey);
    let Some(principal) = principal else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let caller = Caller { principal, ip: client, budget: Budget::Credential, client: None };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")).into_response(),
    };
    let answer = call(&state, &caller, &method, request).await;
    Json(answer).into_response()
}

/// One method call: `{"result": …}` or `{"error": …}` — but a batch answers
/// `{"replies": […]}` itself (as Centrifugo does).
async fn call(state: &AppState, caller: &Caller, method: &str, request: Value) -> Value {
    let result = match method {
        "batch" => {
            return batch(state, caller, request).await.unwrap_or_else(|refused| json!({ "error": refused.error }))
        }
        _ => one(state, caller, method, request).await,
    };
    match result {
        Ok(result) => json!({ "result": result }),
        Err(refused) => json!({ "error": refused.error }),
    }
}

async fn one(state: &AppState, caller: &Caller, method: &str, request: Value) -> Result<Value, Refused> {
    match method {
        // Two reads of one body: raw payloads cannot go through `#[serde(flatten)]`.
        "publish" => {
            let ChannelBody { channel } = decode(request.clone())?;
            publish_to(state, caller, &channel, decode(request)?).await
        }
        "broadcast" => {
            let Channels { channels } = decode(request.clone())?;
            broadcast(state, caller, channels, decode(request)?).await
        }
        "history" => {
            let r: HistoryBody = decode(request)?;
            let h =
                history(&state.ops, caller, Format::Json, &r.channel, r.limit.unwrap_or(0), r.since, r.reverse).await?;
            Ok(serde_json::to_value(h).unwrap_or_default())
        }
        "presence" => {
            let r: ChannelBody = decode(request)?;
            let grant = state.ops.access().grant::<PresenceRead>(caller, &r.channel)?;
            let list = state.ops.presence(&grant).await?;
            let presence: HashMap<String, super::proto::ClientInfo> =
                list.members.iter().map(|m| (m.client.clone(), client_info(m))).collect();
            Ok(json!({ "presence": presence }))
        }
        "presence_stats" => {
            let r: ChannelBody = decode(request)?;
            let grant = state.ops.access().grant::<PresenceRead>(caller, &r.channel)?;
            let (clients, users) = state.ops.presence_stats(&grant).await?;
            Ok(json!({ "num_clients": clients, "num_users": users }))
        }
        "info" => info(state, caller),
        "subscribe" | "unsubscribe" | "disconnect" | "refresh" | "channels" | "history_remove" => {
            Err(Refused::protocol(
                codes::NOT_AVAILABLE,
                &format!("not available: streamhub has no {method} method (docs/CENTRIFUGO.md)"),
            ))
        }
        _ => Err(Refused::protocol(codes::METHOD_NOT_FOUND, "method not found")),
    }
}

fn decode<T: serde::de::DeserializeOwned>(request: Value) -> Result<T, Refused> {
    // From text, not from the `Value`: raw JSON payloads are only read from text.
    serde_json::from_str(&request.to_string()).map_err(|e| Refused::protocol(107, &format!("bad request: {e}")))
}

#[derive(Deserialize)]
struct ChannelBody {
    #[serde(default)]
    channel: String,
}

#[derive(Deserialize)]
struct HistoryBody {
    #[serde(default)]
    channel: String,
    limit: Option<i32>,
    since: Option<StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

/// What `publish` and `broadcast` carry besides their channel(s).
#[derive(Deserialize, Clone)]
struct Payload {
    #[serde(default)]
    data: Option<Box<serde_json::value::RawValue>>,
    /// Binary data, standard base64 (wins over `data`).
    #[serde(default)]
    b64data: Option<String>,
    /// Not stored: delivered to the current subscribers only (streamhub's ephemeral events).
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct Channels {
    #[serde(default)]
    channels: Vec<String>,
}

async fn publish_to(state: &AppState, caller: &Caller, channel: &str, p: Payload) -> Result<Value, Refused> {
    if channel.is_empty() {
        return Err(Refused::protocol(107, "bad request: channel required"));
    }
    let grant = state.ops.access().grant::<Publish>(caller, channel)?;
    let (payload, content_type) = match (&p.b64data, &p.data) {
        (Some(b64), _) => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| Refused::protocol(107, &format!("bad request: b64data: {e}")))?;
            let json = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
            (bytes, if json { "application/json" } else { "application/octet-stream" })
        }
        (None, Some(raw)) => (raw.get().as_bytes().to_vec(), "application/json"),
        (None, None) => return Err(Refused::protocol(107, "bad request: data or b64data required")),
    };
    if p.skip_history {
        let data: Value = serde_json::from_slice(&payload)
            .map_err(|_| Refused::protocol(107, "bad request: skip_history needs JSON data"))?;
        state.ops.publish_ephemeral(caller, &grant, data, p.tags).await?;
        return Ok(json!({}));
    }
    let message = NewMessage {
        payload,
        content_type: content_type.into(),
        headers: p.tags,
        ttl_ms: None,
        idempotency_key: p.idempotency_key.filter(|k| !k.is_empty()),
    };
    let published = state.ops.publish(caller, &grant, message).await?;
    Ok(json!({ "offset": published.seq, "epoch": published.epoch }))
}

async fn broadcast(
    state: &AppState,
    caller: &Caller,
    channels: Vec<String>,
    payload: Payload,
) -> Result<Value, Refused> {
    if channels.is_empty() {
        return Err(Refused::protocol(107, "bad request: channels required"));
    }
    let mut responses = Vec::with_capacity(channels.len());
    for channel in &channels {
        responses.push(match publish_to(state, caller, channel, payload.clone()).await {
            Ok(result) => json!({ "result": result }),
            Err(refused) => json!({ "error": refused.error }),
        });
    }
    Ok(json!({ "responses": responses }))
}

/// This node's figures, in the shape of Centrifugo's `info` (admin keys only): this node
/// alone (streamhub nodes do not know each other), `num_users` unknown (0).
fn info(state: &AppState, caller: &Caller) -> Result<Value, Refused> {
    static UID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    state.ops.access().require_admin(caller)?;
    let max = state.ops.config().ws.max_connections;
    let node = json!({
        "uid": UID.get_or_init(|| uuid::Uuid::now_v7().to_string()),
        "name": state.ops.config().server.listen.to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        "num_clients": max.saturating_sub(state.connections.available_permits()),
        "num_users": 0,
        "num_channels": state.hub.tail_count(),
        "num_subs": crate::metrics::figures().subscriptions,
        "uptime": crate::metrics::process().uptime_seconds as u64,
    });
    Ok(json!({ "nodes": [node] }))
}

/// `{"commands": [{"publish": {…}}, …]}` → `{"replies": [{"publish": {…}} | {"error": …}, …]}`,
/// in order (`parallel` is not honoured: they run one after the other).
async fn batch(state: &AppState, caller: &Caller, request: Value) -> Result<Value, Refused> {
    let commands = request
        .get("commands")
        .and_then(Value::as_array)
        .ok_or_else(|| Refused::protocol(107, "bad request: commands required"))?;
    let mut replies = Vec::with_capacity(commands.len());
    for command in commands {
        let Some((method, body)) = command.as_object().and_then(|o| o.iter().next()) else {
            replies.push(json!({ "error": Refused::protocol(107, "bad request: empty command").error }));
            continue;
        };
        replies.push(match Box::pin(one(state, caller, method, body.clone())).await {
            Ok(result) => json!({ method: result }),
            Err(refused) => json!({ "error": refused.error }),
        });
    }
    Ok(json!({ "replies": replies }))
}
