//! Consumer-group endpoints: the HTTP pull target (fetch / ack / nack with lease tokens),
//! group state, and the dead-letter queue (list, show, replay, purge).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::access;
use super::error::{ApiError, ApiResult};
use super::protocol::MessageOut;
use super::publish::body_error;
use super::AppState;
use crate::config::Scope;
use crate::config::TargetKind;
use crate::groups::Group;
use crate::store::groups::{DeadLetter, Failure, GroupDelivery, Lease};
use crate::store::StoredMessage;

/// Longest pause between two polls of a waiting fetch.
const FETCH_POLL_MAX: Duration = Duration::from_millis(200);

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FetchBody {
    #[serde(default)]
    max: Option<usize>,
    #[serde(default)]
    wait_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub(super) struct DeliveryOut {
    token: String,
    attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    message: MessageOut,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AckBody {
    tokens: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NackBody {
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

#[derive(Debug, Serialize)]
pub(super) struct TokenResult {
    token: String,
    status: &'static str,
    /// nack: the number of the delivery that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
    /// nack with status "scheduled": when the retry is due (ms since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    due_ms: Option<u64>,
}

/// `{group}:fetch` etc. arrive as one path segment; split the action off.
fn split_action<'a>(segment: &'a str, action: &str) -> Option<&'a str> {
    segment.strip_suffix(action).and_then(|g| g.strip_suffix(':'))
}

fn group(state: &AppState, topic: &str, name: &str) -> ApiResult<Arc<Group>> {
    crate::topic::Topic::parse(topic, state.config.limits.max_topic_bytes)?;
    state
        .groups
        .get(topic, name)
        .ok_or_else(|| ApiError::not_found("group_not_found", format!("no group {name} is declared on topic {topic}")))
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let body = body.map_err(body_error)?;
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))
}

fn out(d: GroupDelivery) -> DeliveryOut {
    DeliveryOut {
        token: d.lease.token(),
        attempt: d.attempt,
        last_error: d.last_error,
        message: MessageOut::from(StoredMessage { seq: d.seq, envelope: d.envelope }),
    }
}

async fn screen(state: &AppState, g: &Group, batch: Vec<GroupDelivery>) -> ApiResult<Vec<GroupDelivery>> {
    Ok(crate::groups::screen(&state.store, g, batch).await?)
}

pub(super) async fn post_action(
    State(state): State<Arc<AppState>>,
    Path((topic, segment)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    crate::topic::Topic::parse(&topic, state.config.limits.max_topic_bytes)?;
    let principal = access::principal(&state, &headers, None)?;
    let is_admin_action = split_action(&segment, "pause").is_some() || split_action(&segment, "resume").is_some();
    if is_admin_action {
        access::require_admin(&principal)?;
    } else {
        access::require(&state, &principal, Scope::Consume, &topic)?;
    }
    if let Some(name) = split_action(&segment, "fetch") {
        let g = group(&state, &topic, name)?;
        let body = match body {
            Ok(b) if b.is_empty() => FetchBody::default(),
            other => parse_json(other)?,
        };
        if g.is_paused() {
            return Ok((StatusCode::OK, Json(serde_json::json!({ "deliveries": [], "paused": true }))));
        }
        return Ok((StatusCode::OK, Json(serde_json::json!({ "deliveries": fetch(&state, &g, body).await? }))));
    }
    for (action, paused) in [("pause", true), ("resume", false)] {
        if let Some(name) = split_action(&segment, action) {
            let g = group(&state, &topic, name)?;
            state.store.group_set_paused(&g.topic, name, paused).await?;
            g.set_paused(paused);
            return Ok((StatusCode::OK, Json(serde_json::json!({ "group": name, "paused": paused }))));
        }
    }
    if let Some(name) = split_action(&segment, "ack") {
        let g = group(&state, &topic, name)?;
        let body: AckBody = parse_json(body)?;
        return Ok((StatusCode::OK, Json(serde_json::json!({ "results": ack(&state, &g, body.tokens).await? }))));
    }
    if let Some(name) = split_action(&segment, "nack") {
        let g = group(&state, &topic, name)?;
        let body: NackBody = parse_json(body)?;
        return Ok((StatusCode::OK, Json(serde_json::json!({ "results": nack(&state, &g, body).await? }))));
    }
    Err(ApiError::not_found("not_found", "expected …/groups/{group}:fetch, :ack, :nack, :pause or :resume"))
}

async fn fetch(state: &AppState, g: &Group, body: FetchBody) -> ApiResult<Vec<DeliveryOut>> {
    if g.spec.target != TargetKind::Pull {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_a_pull_group",
            "this group is delivered by webhook; it cannot be fetched",
        ));
    }
    let limits = &state.config.groups;
    let max = body.max.unwrap_or(10).clamp(1, limits.max_fetch) as u64;
    let wait = Duration::from_millis(body.wait_ms.unwrap_or(0).min(limits.max_fetch_wait_ms));
    let deadline = Instant::now() + wait;
    let consumer = state.groups.consumer("pull");
    let client = state.store.pool_client();
    let mut pause = Duration::from_millis(10);
    let sweep = Duration::from_millis(limits.sweep_interval_ms);
    loop {
        let mut batch = Vec::new();
        if g.fetch_reclaim_due(sweep) {
            let (_, reclaimed) =
                state.store.group_reclaim(&g.topic, &g.spec.name, &consumer, g.ack_wait(), max).await?;
            batch = screen(state, g, reclaimed).await?;
        }
        if (batch.len() as u64) < max {
            let read = state
                .store
                .group_read(&client, &g.topic, &g.spec.name, &consumer, max - batch.len() as u64, None)
                .await?;
            batch.extend(screen(state, g, read).await?);
        }
        if !batch.is_empty() || Instant::now() >= deadline {
            return Ok(batch.into_iter().map(out).collect());
        }
        // Long poll: check again soon (the pause grows to FETCH_POLL_MAX), until wait_ms.
        tokio::select! {
            _ = state.shutdown.cancelled() => return Ok(Vec::new()),
            _ = tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))) => {}
        }
        pause = (pause * 2).min(FETCH_POLL_MAX);
    }
}

fn leases(tokens: &[String], max: usize) -> ApiResult<Vec<Option<Lease>>> {
    if tokens.is_empty() || tokens.len() > max {
        return Err(ApiError::bad_request("invalid_request", format!("1 to {max} tokens")));
    }
    Ok(tokens.iter().map(|t| Lease::parse(t)).collect())
}

async fn ack(state: &AppState, g: &Group, tokens: Vec<String>) -> ApiResult<Vec<TokenResult>> {
    let parsed = leases(&tokens, state.config.groups.max_fetch)?;
    let valid: Vec<Lease> = parsed.iter().flatten().cloned().collect();
    let mut statuses =
        if valid.is_empty() { Vec::new() } else { state.store.group_ack(&g.topic, &g.spec.name, &valid).await? }
            .into_iter();
    Ok(tokens
        .into_iter()
        .zip(parsed)
        .map(|(token, lease)| {
            let status = match lease {
                None => "invalid_token",
                Some(_) => statuses.next().map(|s| s.as_str()).unwrap_or("unknown"),
            };
            crate::metrics::group_outcome(&g.label, status, 1);
            TokenResult { token, status, attempt: None, due_ms: None }
        })
        .collect())
}

async fn nack(state: &AppState, g: &Group, body: NackBody) -> ApiResult<Vec<TokenResult>> {
    let parsed = leases(&body.tokens, state.config.groups.max_fetch)?;
    let error = body.error.unwrap_or_else(|| "nacked by the consumer".into());
    let error: String = error.chars().take(1024).collect();
    let failure = if body.permanent {
        Failure::Permanent
    } else {
        Failure::Retry(body.retry_after_ms.map(Duration::from_millis))
    };
    let mut results = Vec::with_capacity(parsed.len());
    for (token, lease) in body.tokens.into_iter().zip(parsed) {
        let result = match lease {
            None => TokenResult { token, status: "invalid_token", attempt: None, due_ms: None },
            Some(lease) => {
                let failed = state.store.group_fail(&g.topic, &g.spec.name, &lease, failure, &g.policy, &error).await?;
                let due_ms = (failed.due_ms > 0).then_some(failed.due_ms);
                let attempt = (failed.attempt > 0).then_some(failed.attempt);
                TokenResult { token, status: failed.status.as_str(), attempt, due_ms }
            }
        };
        crate::metrics::group_outcome(&g.label, result.status, 1);
        results.push(result);
    }
    Ok(results)
}

#[derive(Debug, Serialize)]
struct GroupOut {
    name: String,
    target: TargetKind,
    /// Declared in configuration (else created through the admin API).
    declared: bool,
    paused: bool,
    exists: bool,
    lag: Option<u64>,
    pending: u64,
    scheduled: u64,
    retry_ready: u64,
    dead_letters: u64,
    consumers: u64,
    counters: std::collections::HashMap<String, u64>,
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    access::require_admin(&access::principal(&state, &headers, None)?)?;
    let t = crate::topic::Topic::parse(&topic, state.config.limits.max_topic_bytes)?;
    let mut groups = Vec::new();
    for g in state.groups.of_topic(&topic) {
        let info = state.store.group_info(&t, &g.spec.name).await?;
        groups.push(GroupOut {
            name: g.spec.name.clone(),
            target: g.spec.target,
            declared: g.declared,
            paused: info.counters.get("paused") == Some(&1),
            exists: info.exists,
            lag: info.lag,
            pending: info.pending,
            scheduled: info.scheduled,
            retry_ready: info.retry_ready,
            dead_letters: info.dead_letters,
            consumers: info.consumers,
            counters: info.counters,
        });
    }
    Ok(Json(serde_json::json!({ "topic": topic, "groups": groups })))
}

#[derive(Debug, Serialize)]
pub(super) struct DeadLetterOut {
    id: String,
    seq: u64,
    attempts: u32,
    error: String,
    dead_ms: u64,
    reason: String,
    message: MessageOut,
}

impl From<DeadLetter> for DeadLetterOut {
    fn from(d: DeadLetter) -> Self {
        DeadLetterOut {
            message: MessageOut::from(StoredMessage { seq: d.seq, envelope: d.envelope }),
            id: d.id,
            seq: d.seq,
            attempts: d.attempts,
            error: d.error,
            dead_ms: d.dead_ms,
            reason: d.reason,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DlqQuery {
    after: Option<String>,
    limit: Option<u64>,
}

fn valid_entry_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok())
}

pub(super) async fn dlq_list(
    State(state): State<Arc<AppState>>,
    Path((topic, name)): Path<(String, String)>,
    headers: HeaderMap,
    query: Result<Query<DlqQuery>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    access::require_admin(&access::principal(&state, &headers, None)?)?;
    let g = group(&state, &topic, &name)?;
    let Query(q) = query.map_err(|r| ApiError::bad_request("invalid_query", r.body_text()))?;
    if q.after.as_deref().is_some_and(|a| !valid_entry_id(a)) {
        return Err(ApiError::bad_request("invalid_query", "after is a dead-letter id like 1700000000000-0"));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, state.config.limits.max_history_limit as u64);
    let page = state.store.dlq_list(&g.topic, &name, q.after.as_deref(), limit).await?;
    let next = if page.len() as u64 == limit { page.last().map(|d| d.id.clone()) } else { None };
    let items: Vec<DeadLetterOut> = page.into_iter().map(DeadLetterOut::from).collect();
    Ok(Json(serde_json::json!({ "dead_letters": items, "next": next })))
}

pub(super) async fn dlq_show(
    State(state): State<Arc<AppState>>,
    Path((topic, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<DeadLetterOut>> {
    access::require_admin(&access::principal(&state, &headers, None)?)?;
    let g = group(&state, &topic, &name)?;
    if !valid_entry_id(&id) {
        return Err(ApiError::bad_request("invalid_request", "a dead-letter id looks like 1700000000000-0"));
    }
    let (ms, n) = id.split_once('-').unwrap_or(("0", "0"));
    let before = match n.parse::<u64>().unwrap_or(0) {
        0 => format!("{}-{}", ms.parse::<u64>().unwrap_or(1).saturating_sub(1), u64::MAX),
        n => format!("{ms}-{}", n - 1),
    };
    let page = state.store.dlq_list(&g.topic, &name, Some(&before), 1).await?;
    page.into_iter()
        .find(|d| d.id == id)
        .map(|d| Json(DeadLetterOut::from(d)))
        .ok_or_else(|| ApiError::not_found("dead_letter_not_found", format!("no dead letter {id}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DlqSelection {
    #[serde(default)]
    ids: Vec<String>,
    /// Every dead letter (ignored when `ids` is given).
    #[serde(default)]
    all: bool,
    /// Only dead letters whose error contains this text (with `all`).
    #[serde(default)]
    error_contains: Option<String>,
}

/// The ids a selection names, walking the dead letters in pages for `all`.
async fn selected(state: &AppState, g: &Group, sel: &DlqSelection) -> ApiResult<Vec<String>> {
    if !sel.ids.is_empty() {
        if let Some(bad) = sel.ids.iter().find(|id| !valid_entry_id(id)) {
            return Err(ApiError::bad_request("invalid_request", format!("{bad} is not a dead-letter id")));
        }
        return Ok(sel.ids.clone());
    }
    if !sel.all {
        return Err(ApiError::bad_request("invalid_request", "give ids, or all: true"));
    }
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = state.store.dlq_list(&g.topic, &g.spec.name, after.as_deref(), 1000).await?;
        let Some(last) = page.last().map(|d| d.id.clone()) else { break };
        ids.extend(
            page.into_iter()
                .filter(|d| sel.error_contains.as_deref().is_none_or(|needle| d.error.contains(needle)))
                .map(|d| d.id),
        );
        after = Some(last);
    }
    Ok(ids)
}

pub(super) async fn dlq_action(
    State(state): State<Arc<AppState>>,
    Path((topic, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    access::require_admin(&access::principal(&state, &headers, None)?)?;
    let g = group(&state, &topic, &name)?;
    if action != "dlq:replay" && action != "dlq:purge" {
        return Err(ApiError::not_found("not_found", "expected dlq:replay or dlq:purge"));
    }
    let sel: DlqSelection = parse_json(body)?;
    let ids = selected(&state, &g, &sel).await?;
    let mut done = 0;
    for chunk in ids.chunks(500) {
        done += match action.as_str() {
            "dlq:replay" => state.store.dlq_replay(&g.topic, &name, chunk).await?,
            "dlq:purge" => state.store.dlq_purge(&g.topic, &name, chunk).await?,
            _ => return Err(ApiError::not_found("not_found", "expected dlq:replay or dlq:purge")),
        };
    }
    let key = if action == "dlq:replay" { "replayed" } else { "purged" };
    Ok(Json(serde_json::json!({ key: done })))
}

fn admin_error(e: crate::groups::AdminError) -> ApiError {
    use crate::groups::AdminError;
    match e {
        AdminError::Invalid(m) => ApiError::bad_request("invalid_group", m),
        e @ AdminError::Declared(_) => ApiError::new(StatusCode::CONFLICT, "declared_in_config", e.to_string()),
        e @ AdminError::NotFound(_) => ApiError::not_found("group_not_found", e.to_string()),
        AdminError::Store(e) => e.into(),
    }
}

/// `PUT /v1/topics/{topic}/groups/{group}`: create or replace a group (body: the
/// `[[group]]` keys other than topic and name, as JSON).
pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    Path((topic, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    access::require_admin(&access::principal(&state, &headers, None)?)?;
    crate::topic::Topic::parse(&topic, state.config.limits.max_topic_bytes)?;
    let mut spec: serde_json::Value = parse_json(body)?;
    let Some(fields) = spec.as_object_mut() else {
        return Err(ApiError::bad_request("invalid_group", "the body is a JSON object of group settings"));
    };
    fields.insert("topic".into(), topic.clone().into());
    fields.insert("name".into(), name.clone().into());
    let spec: crate::config::GroupSpec =
        serde_json::from_value(spec).map_err(|e| ApiError::bad_request("invalid_group", e.to_string()))?;
    let existed = state.groups.get(&topic, &name).is_some();
    state.groups.create(spec).await.map_err(admin_error)?;
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(serde_json::json!({ "topic": topic, "group": name }))))
}

/// `DELETE /v1/topics/{topic}/groups/{group}`: delete a group created through the API.
pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Path((topic, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    access::require_admin(&access::principal(&state, &headers, None)?)?;
    let t = crate::topic::Topic::parse(&topic, state.config.limits.max_topic_bytes)?;
    state.groups.delete(&t, &name).await.map_err(admin_error)?;
    Ok(StatusCode::NO_CONTENT)
}
