//! Reading topics: `GET /v1/topics`, `GET /v1/topics/{topic}`, `GET …/messages`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;

use super::access;
use super::error::{ApiError, ApiResult};
use super::protocol::{HistoryQuery, HistoryResponse, TopicResponse, TopicsResponse};
use super::AppState;
use crate::config::Scope;
use crate::metrics;
use crate::topic::Topic;

/// Messages per history page when the request names no `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_query", rejection.body_text())
}

pub(super) async fn history(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Json<HistoryResponse>> {
    let topic = Topic::parse(&topic, state.config.limits.max_topic_bytes)?;
    let principal = access::principal(&state, &headers, None)?;
    access::require(&state, &principal, Scope::Subscribe, topic.as_str())?;
    let Query(query) = query.map_err(query_error)?;
    let limit = query.limit.unwrap_or(DEFAULT_HISTORY_LIMIT).min(state.config.limits.max_history_limit);
    let page = state.store.read_since(&topic, query.since, limit).await?;
    if page.position.epoch.is_none() && page.position.first_retained == 0 {
        return Err(ApiError::not_found("topic_not_found", format!("topic {topic} has no messages")));
    }
    let response = HistoryResponse::new(page, query.since, query.epoch.as_deref());
    ::metrics::counter!(metrics::HISTORY_READS, "truncated" => if response.truncated { "true" } else { "false" })
        .increment(1);
    Ok(Json(response))
}

pub(super) async fn topic(
    State(state): State<Arc<AppState>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<TopicResponse>> {
    let topic = Topic::parse(&topic, state.config.limits.max_topic_bytes)?;
    let principal = access::principal(&state, &headers, None)?;
    access::require(&state, &principal, Scope::Subscribe, topic.as_str())?;
    let info = state.store.topic_info(&topic).await?;
    if info.position.epoch.is_none() && info.length == 0 && info.groups.is_empty() {
        return Err(ApiError::not_found("topic_not_found", format!("topic {topic} has no messages")));
    }
    Ok(Json(TopicResponse::new(topic.to_string(), info)))
}

pub(super) async fn topics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Json<TopicsResponse>> {
    access::require_admin(&access::principal(&state, &headers, None)?)?;
    let limit = state.config.limits.max_topics_listed;
    let mut topics = state.store.list_topics(limit + 1).await?;
    let truncated = topics.len() > limit;
    topics.truncate(limit);
    Ok(Json(TopicsResponse { topics, truncated }))
}
