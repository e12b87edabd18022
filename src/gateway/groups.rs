//! Consumer-group routes over HTTP: the pull target (`:fetch`, `:ack`, `:nack`), group
//! administration (state, create, delete, `:pause`, `:resume`) and the dead-letter queue
//! (list, show, `dlq:replay`, `dlq:purge`). Decode, call the operation, encode.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{body_error, query_error, ApiResult};
use super::extract::Granted;
use super::AppState;
use crate::error::{Code, Error};
use crate::groups::settle::Nack;
use crate::ops::access::{Admin, Caller, Consume};
use crate::ops::dlq::{DlqAction, Selection};
use crate::ops::groups::{FetchRequest, Fetched};
use crate::wire::{DeadLetterOut, DeliveryOut};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FetchBody {
    #[serde(default)]
    max: Option<usize>,
    #[serde(default)]
    wait_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    tokens: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NackBody {
    tokens: Vec<String>,
    #[serde(default)]
    error: Option<String>,
    /// Retry after this long instead of the group's backoff.
    #[serde(default)]
    retry_after_ms: Option<u64>,
    /// Dead-letter now instead of retrying.
    #[serde(default)]
    permanent: bool,
}

/// `{group}:fetch` etc. arrive as one path segment; split the action off.
fn split_action(segment: &str) -> Option<(&str, &str)> {
    segment.rsplit_once(':')
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let body = body.map_err(body_error)?;
    serde_json::from_slice(&body).map_err(|e| Error::new(Code::InvalidRequest, e.to_string()))
}

fn no_such_action() -> Error {
    Error::new(Code::NotFound, "expected …/groups/{group}:fetch, :ack, :nack, :pause or :resume")
}

/// `POST …/groups/{group}:<action>`: the pull target's `fetch`, `ack`, `nack` (the
/// `consume` scope) and the admin `pause`, `resume`.
pub(super) async fn post_action(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((topic, segment)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let ops = &state.ops;
    let (name, action) = split_action(&segment).unwrap_or((&segment, ""));
    if let paused @ ("pause" | "resume") = action {
        let grant = ops.access().grant::<Admin>(&caller, &topic)?;
        let g = ops.group(&grant, name)?;
        ops.set_paused(&grant, &g, paused == "pause").await?;
        return Ok(Json(json!({ "group": name, "paused": paused == "pause" })));
    }
    let grant = ops.access().grant::<Consume>(&caller, &topic)?;
    if !matches!(action, "fetch" | "ack" | "nack") {
        return Err(no_such_action());
    }
    let g = ops.group(&grant, name)?;
    match action {
        "fetch" => {
            let body: FetchBody = match body {
                Ok(b) if b.is_empty() => FetchBody::default(),
                other => parse_json(other)?,
            };
            let request = FetchRequest { max: body.max, wait: body.wait_ms.map(Duration::from_millis) };
            Ok(Json(match ops.fetch(&grant, &g, request).await? {
                Fetched::Paused => json!({ "deliveries": [], "paused": true }),
                Fetched::Deliveries(d) => {
                    json!({ "deliveries": d.into_iter().map(DeliveryOut::from).collect::<Vec<_>>() })
                }
            }))
        }
        "ack" => {
            let body: AckBody = parse_json(body)?;
            Ok(Json(json!({ "results": ops.ack(&grant, &g, body.tokens).await? })))
        }
        _ => {
            let body: NackBody = parse_json(body)?;
            let nack = Nack {
                error: body.error,
                retry_after: body.retry_after_ms.map(Duration::from_millis),
                permanent: body.permanent,
            };
            Ok(Json(json!({ "results": ops.nack(&grant, &g, body.tokens, &nack).await? })))
        }
    }
}

/// `GET …/groups`: the state of the topic's groups this node serves.
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    Granted { grant, .. }: Granted<Admin>,
) -> ApiResult<Json<Value>> {
    let groups = state.ops.group_states(&grant).await?;
    Ok(Json(json!({ "topic": grant.topic().as_str(), "groups": groups })))
}

/// `PUT …/groups/{group}`: create or replace a group (body: the `[[group]]` keys other
/// than topic and name, as JSON).
pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Granted { grant, .. }: Granted<Admin>,
    Path((_, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let settings: Value = parse_json(body)?;
    let created = state.ops.put_group(&grant, &name, settings).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({ "topic": grant.topic().as_str(), "group": name }))))
}

/// `DELETE …/groups/{group}`: delete a group created through the API.
pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Granted { grant, .. }: Granted<Admin>,
    Path((_, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.ops.delete_group(&grant, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DlqQuery {
    after: Option<String>,
    limit: Option<u64>,
}

pub(super) async fn dlq_list(
    State(state): State<Arc<AppState>>,
    Granted { grant, .. }: Granted<Admin>,
    Path((_, name)): Path<(String, String)>,
    query: Result<Query<DlqQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    state.ops.group(&grant, &name)?;
    let Query(q) = query.map_err(query_error)?;
    let page = state.ops.dlq_list(&grant, &name, q.after.as_deref(), q.limit).await?;
    let items: Vec<DeadLetterOut> = page.letters.into_iter().map(DeadLetterOut::from).collect();
    Ok(Json(json!({ "dead_letters": items, "next": page.next })))
}

pub(super) async fn dlq_show(
    State(state): State<Arc<AppState>>,
    Granted { grant, .. }: Granted<Admin>,
    Path((_, name, id)): Path<(String, String, String)>,
) -> ApiResult<Json<DeadLetterOut>> {
    state.ops.group(&grant, &name)?;
    Ok(Json(DeadLetterOut::from(state.ops.dlq_show(&grant, &name, &id).await?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DlqSelection {
    #[serde(default)]
    ids: Vec<String>,
    /// Every dead letter (ignored when `ids` is given).
    #[serde(default)]
    all: bool,
    /// Only dead letters whose error contains this text (with `all`).
    #[serde(default)]
    error_contains: Option<String>,
}

pub(super) async fn dlq_action(
    State(state): State<Arc<AppState>>,
    Granted { grant, .. }: Granted<Admin>,
    Path((_, name, action)): Path<(String, String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    state.ops.group(&grant, &name)?;
    let (action, key) = match action.as_str() {
        "dlq:replay" => (DlqAction::Replay, "replayed"),
        "dlq:purge" => (DlqAction::Purge, "purged"),
        _ => return Err(Error::new(Code::NotFound, "expected dlq:replay or dlq:purge")),
    };
    let sel: DlqSelection = parse_json(body)?;
    let selection = if !sel.ids.is_empty() || !sel.all {
        Selection::Ids(sel.ids)
    } else {
        Selection::All { error_contains: sel.error_contains }
    };
    let done = state.ops.dlq_apply(&grant, &name, &selection, action, |_, _| {}).await?;
    Ok(Json(json!({ key: done })))
}
