//! `GET /healthz` (the process serves) and `GET /readyz` (Redis answers).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiResult;
use super::AppState;

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    state.ops.store().ping().await.map_err(crate::error::Error::from)?;
    Ok(Json(json!({ "status": "ready" })))
}
