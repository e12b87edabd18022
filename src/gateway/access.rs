//! Access control at the HTTP boundary: who the caller is (bearer credentials), whether
//! they may act on a topic, and the per-credential / per-IP limits with their answers
//! (401, 403, 429 + Retry-After).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;
use super::AppState;
use crate::auth::{AuthError, Principal, PrincipalKind};
use crate::config::{HttpConfig, Scope};

/// The credential of a request: `Authorization: Bearer …`, else `?token=`.
pub fn credential(headers: &HeaderMap, query_token: Option<&str>) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(..7).filter(|s| s.eq_ignore_ascii_case("bearer ")).map(|_| &v[7..]))
        .map(|t| t.trim().to_string())
        .or_else(|| query_token.map(str::to_string))
}

pub fn auth_error(e: AuthError) -> ApiError {
    let mut error = ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string());
    error.www_authenticate = true;
    error
}

/// The caller: anonymous without credentials; 401 for credentials that do not verify.
pub fn principal(state: &AppState, headers: &HeaderMap, query_token: Option<&str>) -> Result<Principal, ApiError> {
    if headers.contains_key(header::AUTHORIZATION) && credential(headers, None).is_none() {
        return Err(auth_error(AuthError::Malformed(
            "only `Authorization: Bearer <token or key>` is understood".into(),
        )));
    }
    match credential(headers, query_token) {
        None => Ok(state.auth.anonymous()),
        Some(c) => state.auth.authenticate(&c).map_err(auth_error),
    }
}

/// 401 for an anonymous caller lacking a grant, 403 for an identified one.
pub fn require(state: &AppState, principal: &Principal, scope: Scope, topic: &str) -> Result<(), ApiError> {
    if state.auth.allows(principal, scope, topic) {
        return Ok(());
    }
    Err(denied(principal, &format!("{} on {topic}", scope_name(scope))))
}

pub fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Subscribe => "subscribe",
        Scope::Publish => "publish",
        Scope::Consume => "consume",
        Scope::Admin => "admin",
    }
}

pub fn denied(principal: &Principal, what: &str) -> ApiError {
    if principal.kind == PrincipalKind::Anonymous {
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", format!("credentials required for {what}"));
        e.www_authenticate = true;
        e
    } else {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("{} may not {what}", principal.subject))
    }
}

pub fn require_admin(principal: &Principal) -> Result<(), ApiError> {
    if principal.admin {
        Ok(())
    } else {
        Err(denied(principal, "use admin endpoints (an API key with the admin scope is needed)"))
    }
}

/// Per-credential publish rates, per-IP session rates and open sessions per IP.
pub struct Limiters {
    publish: DefaultKeyedRateLimiter<String>,
    connect: DefaultKeyedRateLimiter<IpAddr>,
    open: Mutex<HashMap<IpAddr, usize>>,
    max_open_per_ip: usize,
    publish_quota: Quota,
}

/// One open session of an IP; dropping it frees the slot.
pub struct IpSlot {
    limiters: Arc<Limiters>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.limiters.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

fn per_second(n: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

fn rate_limited(wait: Duration, what: &str) -> ApiError {
    let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("{what}; retry later"));
    e.retry_after = Some(wait.as_secs().max(1));
    e
}

impl Limiters {
    pub fn new(config: &HttpConfig) -> Limiters {
        Limiters {
            publish: RateLimiter::keyed(per_second(config.publish_rate_per_sec)),
            connect: RateLimiter::keyed(per_second(config.connection_rate_per_ip)),
            open: Mutex::new(HashMap::new()),
            max_open_per_ip: config.max_connections_per_ip,
            publish_quota: per_second(config.publish_rate_per_sec),
        }
    }

    /// A direct limiter for one WebSocket connection's publishes.
    pub fn connection_publish_limiter(&self) -> governor::DefaultDirectRateLimiter {
        RateLimiter::direct(self.publish_quota)
    }

    /// Takes `n` publishes from the caller's budget (credential, or IP when anonymous).
    pub fn publish(&self, principal: &Principal, ip: IpAddr, n: u32) -> Result<(), ApiError> {
        let key = match principal.kind {
            PrincipalKind::Anonymous => format!("ip:{ip}"),
            PrincipalKind::ApiKey => format!("key:{}", principal.subject),
            PrincipalKind::Token => format!("sub:{}", principal.subject),
        };
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        match self.publish.check_key_n(&key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(rate_limited(
                not_until.wait_time_from(DefaultClock::default().now()),
                "publish rate (http.publish_rate_per_sec) exceeded",
            )),
            Err(_) => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                "a batch larger than http.publish_rate_per_sec can never pass the rate limit",
            )),
        }
    }

    /// Admits a new session from `ip`: within the per-IP rate and the per-IP open count.
    pub fn open_session(self: &Arc<Self>, ip: IpAddr) -> Result<IpSlot, ApiError> {
        if let Err(not_until) = self.connect.check_key(&ip) {
            return Err(rate_limited(
                not_until.wait_time_from(DefaultClock::default().now()),
                "new sessions per IP (http.connection_rate_per_ip) exceeded",
            ));
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max_open_per_ip {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                format!("at most {} sessions per client IP (http.max_connections_per_ip)", self.max_open_per_ip),
            );
            e.retry_after = Some(1);
            return Err(e);
        }
        *n += 1;
        Ok(IpSlot { limiters: self.clone(), ip })
    }

    /// Forgets idle keys so the limiters' memory stays bounded.
    pub fn maintain(&self) {
        self.publish.retain_recent();
        self.connect.retain_recent();
        self.publish.shrink_to_fit();
        self.connect.shrink_to_fit();
    }
}

/// Checks the Origin of a browser session against `http.ws_origins`.
pub fn check_origin(config: &HttpConfig, headers: &HeaderMap) -> Result<(), ApiError> {
    if config.ws_origins.is_empty() {
        return Ok(());
    }
    // Browsers always send Origin with WebSocket and EventSource requests; a client
    // without one (a service, `streamhub tail`) is not a browser page and passes.
    let Some(origin) = headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("")) else { return Ok(()) };
    if config.ws_origins.iter().any(|o| o == origin) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!("origin {origin:?} is not in http.ws_origins"),
        ))
    }
}

/// The Retry-After header value for an error that carries one.
pub fn retry_after_header(seconds: u64) -> HeaderValue {
    HeaderValue::from(seconds)
}
