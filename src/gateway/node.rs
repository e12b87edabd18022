//! `GET /v1/node`: this node's own figures (admin) — decode the caller, call
//! `Ops::node` with what only the gateway knows (open sessions, tail tasks), encode.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use super::error::ApiResult;
use super::AppState;
use crate::ops::access::Caller;
use crate::ops::node::{Local, NodeReport};

pub(super) async fn node(State(state): State<Arc<AppState>>, caller: Caller) -> ApiResult<Json<NodeReport>> {
    let max_sessions = state.ops.config().ws.max_connections;
    let local = Local {
        sessions: max_sessions.saturating_sub(state.connections.available_permits()),
        max_sessions,
        tails: state.hub.tail_count(),
    };
    Ok(Json(state.ops.node(&caller, local).await?))
}
