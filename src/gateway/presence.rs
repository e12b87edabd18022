//! Presence over HTTP: `GET /v1/topics/{topic}/presence`, `…/presence/stats`, and users'
//! status (`GET` / `PUT /v1/users/{user}/status`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{body_error, ApiResult};
use super::extract::Granted;
use super::AppState;
use crate::error::{Code, Error};
use crate::ops::access::{Caller, PresenceRead};

pub(super) async fn presence(
    State(state): State<Arc<AppState>>,
    Granted { grant, .. }: Granted<PresenceRead>,
) -> ApiResult<Json<Value>> {
    let p = state.ops.presence(&grant).await?;
    Ok(Json(json!({ "topic": grant.topic().as_str(), "clients": p.clients, "users": p.users, "members": p.members })))
}

pub(super) async fn stats(
    State(state): State<Arc<AppState>>,
    Granted { grant, .. }: Granted<PresenceRead>,
) -> ApiResult<Json<Value>> {
    let (clients, users) = state.ops.presence_stats(&grant).await?;
    Ok(Json(json!({ "topic": grant.topic().as_str(), "clients": clients, "users": users })))
}

pub(super) async fn user_status(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    let s = state.ops.user_status(&caller, &user).await?;
    let mut body = json!({ "user": user, "online": s.online, "sessions": s.sessions });
    if s.last_seen_ms > 0 {
        body["last_seen_ms"] = json!(s.last_seen_ms);
    }
    if !s.status.is_empty() {
        body["status"] = json!(s.status);
    }
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: String,
}

/// `PUT /v1/users/{user}/status`: a user sets its own status text.
pub(super) async fn set_status(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(user): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    if caller.principal.subject != user || caller.principal.kind == crate::auth::PrincipalKind::Anonymous {
        let code = if caller.principal.kind == crate::auth::PrincipalKind::Anonymous {
            Code::Unauthorized
        } else {
            Code::Forbidden
        };
        return Err(Error::new(code, format!("only {user} may set its own status")));
    }
    let body = body.map_err(body_error)?;
    let StatusBody { status } =
        serde_json::from_slice(&body).map_err(|e| Error::new(Code::InvalidRequest, e.to_string()))?;
    state.ops.set_status(&caller, &status).await?;
    Ok(Json(json!({ "user": user, "status": status })))
}
