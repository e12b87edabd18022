//! The opening every route shares, as axum extractors: who the caller is
//! ([`Caller`], from `Authorization: Bearer …`; for sessions also `?token=`), and the
//! caller's grant on the route's `{topic}` ([`Granted`]) — credentials, then the scope,
//! then the topic name, in that order, through `Access::grant`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use super::client_addr::client_addr;
pub use super::client_addr::ClientAddr;
use super::AppState;
use crate::error::Error;
use crate::ops::access::{Access, Budget, Caller, Grant, Needs};

/// The credential of a request: `Authorization: Bearer …` (the scheme in any case), else
/// the `token` query parameter when `query_token` allows it. An `Authorization` header
/// that is not `Bearer <credential>` is refused.
pub fn credential(headers: &HeaderMap, query_token: Option<&str>) -> Result<Option<String>, Error> {
    match headers.get(header::AUTHORIZATION) {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.get(..7).filter(|s| s.eq_ignore_ascii_case("bearer ")).map(|_| v[7..].trim().to_string()))
            .map(Some)
            .ok_or_else(Access::malformed_authorization),
        None => Ok(query_token.map(str::to_string)),
    }
}

/// The `token` query parameter, read on its own (a session's other parameters may not
/// parse, and credentials are checked before them).
fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(name, _)| name == "token").map(|(_, value)| value.into_owned())
}

/// The client's address, as `observe_requests` resolved it (`client_addr`); resolved
/// here when a request did not pass that layer. Without a TCP peer (a router driven
/// in-process): 127.0.0.1.
fn client(parts: &Parts, state: &AppState) -> IpAddr {
    if let Some(ClientAddr(ip)) = parts.extensions.get::<ClientAddr>() {
        return *ip;
    }
    let peer =
        parts.extensions.get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::from([127, 0, 0, 1]), |ConnectInfo(a)| a.ip());
    client_addr(&state.ops.config().proxies, peer, &parts.headers)
}

impl FromRequestParts<Arc<AppState>> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<ClientAddr, Self::Rejection> {
        Ok(ClientAddr(client(parts, state)))
    }
}

fn caller(state: &AppState, headers: &HeaderMap, query_token: Option<&str>, ip: IpAddr) -> Result<Caller, Error> {
    let principal = state.ops.access().principal(credential(headers, query_token)?.as_deref())?;
    Ok(Caller { principal, ip, budget: Budget::Credential, client: None })
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Caller, Error> {
        caller(state, &parts.headers, None, client(parts, state))
    }
}

/// The caller of a session route (WebSocket, SSE): browsers cannot set headers on those,
/// so the credential may also come as `?token=` (the header wins). Called by the route
/// after its `Origin` check.
pub fn session_caller(state: &AppState, headers: &HeaderMap, query: Option<&str>, ip: IpAddr) -> Result<Caller, Error> {
    caller(state, headers, query_token(query).as_deref(), ip)
}

/// The caller and its grant of scope `S` on the route's `{topic}`.
pub struct Granted<S> {
    pub caller: Caller,
    pub grant: Grant<S>,
}

/// The raw `{topic}` path parameter, percent-decoded ("" when the route has none).
pub async fn topic_param(parts: &mut Parts) -> String {
    match RawPathParams::from_request_parts(parts, &()).await {
        Ok(params) => params.iter().find(|(name, _)| *name == "topic").map(|(_, v)| v.to_string()).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

impl<S: Needs + Send + Sync> FromRequestParts<Arc<AppState>> for Granted<S> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Granted<S>, Error> {
        let caller = caller(state, &parts.headers, None, client(parts, state))?;
        let topic = topic_param(parts).await;
        let grant = state.ops.access().grant::<S>(&caller, &topic)?;
        Ok(Granted { caller, grant })
    }
}
