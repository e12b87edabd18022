//! Reading topics over HTTP: `GET /v1/topics`, `GET /v1/topics/{topic}`,
//! `GET /v1/topics/{topic}/messages`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;

use super::error::{query_error, ApiResult};
use super::extract::Granted;
use super::protocol::HistoryQuery;
use super::AppState;
use crate::ops::access::{Caller, Subscribe};
use crate::ops::topics::HistoryRequest;
use crate::wire::{HistoryResponse, TopicResponse, TopicsResponse};

pub(super) async fn history(
    State(state): State<Arc<AppState>>,
    Granted { grant, .. }: Granted<Subscribe>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Json<HistoryResponse>> {
    let Query(query) = query.map_err(query_error)?;
    let h = state.ops.history(&grant, &HistoryRequest { since: query.since, limit: query.limit }).await?;
    Ok(Json(HistoryResponse::new(h.page, query.since, query.epoch.as_deref(), h.expired, h.next_since)))
}

pub(super) async fn topic(
    State(state): State<Arc<AppState>>,
    Granted { grant, .. }: Granted<Subscribe>,
) -> ApiResult<Json<TopicResponse>> {
    let t = state.ops.topic_info(&grant).await?;
    Ok(Json(TopicResponse::new(grant.topic().to_string(), t.info, t.retention, crate::clock::now_ms())))
}

pub(super) async fn topics(State(state): State<Arc<AppState>>, caller: Caller) -> ApiResult<Json<TopicsResponse>> {
    let list = state.ops.list_topics(&caller, None).await?;
    Ok(Json(TopicsResponse { topics: list.topics, truncated: list.truncated }))
}
