//! Authentication and permissions.
//!
//! Clients present a JWT (HS256 with configured secrets by `kid`; RS256, ES256 or EdDSA with
//! public keys from PEM files or a JWKS file); services present API keys, stored in the
//! configuration only as SHA-256 hashes and compared in constant time. A principal's
//! grants are topic patterns per scope (subscribe, publish, consume); `admin` is an API-key
//! scope only. Anonymous requests get exactly what `[[auth.anonymous]]` rules grant —
//! nothing by default.

pub mod config;
pub mod jwt;
pub mod pattern;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use config::AuthConfig;

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Subscribe,
    Publish,
    Consume,
    /// See who is present on a topic (presence list, stats, join/leave events), and the
    /// status of the users whose pseudo-topic `@<user>` matches.
    Presence,
    /// Admin endpoints (API keys only).
    Admin,
}

impl Scope {
    /// The scope's name, as in configuration and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Subscribe => "subscribe",
            Scope::Publish => "publish",
            Scope::Consume => "consume",
            Scope::Presence => "presence",
            Scope::Admin => "admin",
        }
    }
}

/// Who is asking, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// JWT `sub`, API key name, or "anonymous".
    pub subject: String,
    pub kind: PrincipalKind,
    grants: HashMap<Scope, Vec<String>>,
    pub admin: bool,
    /// Unix seconds after which the credentials are no longer valid (JWT `exp`).
    pub expires_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    Anonymous,
    Token,
    ApiKey,
    /// The CLI acting on Redis directly (`Auth::operator`).
    Operator,
}

/// Why credentials were refused (HTTP 401, WebSocket close 4002). The text is safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed credentials: {0}")]
    Malformed(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("no key with this kid")]
    UnknownKid,
    #[error("the token's algorithm is not the one of its key")]
    WrongAlgorithm,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("unknown API key")]
    UnknownApiKey,
}

impl AuthError {
    /// The stable error code.
    pub fn code(&self) -> crate::error::Code {
        match self {
            AuthError::Expired => crate::error::Code::TokenExpired,
            _ => crate::error::Code::Unauthorized,
        }
    }
}

impl From<AuthError> for crate::error::Error {
    fn from(e: AuthError) -> crate::error::Error {
        crate::error::Error::new(e.code(), e.to_string())
    }
}

struct ApiKey {
    name: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
    topics: Vec<String>,
}

/// The node's verifier of credentials.
pub struct Auth {
    keys: jwt::Keys,
    api_keys: Vec<ApiKey>,
    anonymous: HashMap<Scope, Vec<String>>,
    personal: Vec<String>,
    /// Seconds of clock skew accepted on `exp` (sessions close this long after it).
    pub leeway_secs: u64,
}

/// Hex SHA-256 of an API key, as stored in `[[auth.api_key]]`.
pub fn hash_api_key(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Auth {
    /// Loads keys (PEM and JWKS files are read here); errors name the offending key.
    pub fn new(config: &AuthConfig) -> Result<Auth, String> {
        let keys = jwt::Keys::load(config)?;
        let mut api_keys = Vec::new();
        for k in &config.api_key {
            let hash = parse_hex32(&k.sha256)
                .ok_or_else(|| format!("auth.api_key {}: sha256 must be 64 hex digits", k.name))?;
            api_keys.push(ApiKey { name: k.name.clone(), hash, scopes: k.scopes.clone(), topics: k.topics.clone() });
        }
        let mut anonymous: HashMap<Scope, Vec<String>> = HashMap::new();
        for rule in &config.anonymous {
            // Admin is for API keys only; in an anonymous rule it grants nothing.
            for scope in rule.scopes.iter().filter(|s| **s != Scope::Admin) {
                anonymous.entry(*scope).or_default().extend(rule.topics.iter().cloned());
            }
        }
        Ok(Auth {
            keys,
            api_keys,
            anonymous,
            personal: config.personal_topics.clone(),
            leeway_secs: config.leeway_secs,
        })
    }

    /// Whether anonymous requests are granted anything at all.
    pub fn anonymous_allowed(&self) -> bool {
        !self.anonymous.is_empty()
    }

    pub fn anonymous(&self) -> Principal {
        Principal {
            subject: "anonymous".into(),
            kind: PrincipalKind::Anonymous,
            grants: HashMap::new(),
            admin: false,
            expires_at: None,
        }
    }

    /// The operator: whoever runs the CLI against Redis directly (they hold Redis access,
    /// which bypasses access control anyway, ARCHITECTURE.md §15.6). Every scope on every
    /// topic, and admin.
    pub fn operator(&self) -> Principal {
        let all = vec!["*".to_string()];
        Principal {
            subject: "operator".into(),
            kind: PrincipalKind::Operator,
            grants: HashMap::from([
                (Scope::Subscribe, all.clone()),
                (Scope::Publish, all.clone()),
                (Scope::Consume, all.clone()),
                (Scope::Presence, all),
            ]),
            admin: true,
            expires_at: None,
        }
    }

    /// Verifies a bearer credential: a JWT (three dot-separated parts) or an API key.
    pub fn authenticate(&self, credential: &str) -> Result<Principal, AuthError> {
        if credential.split('.').count() == 3 {
            let claims = self.keys.verify(credential)?;
            let mut grants = claims.grants();
            // A subject with glob characters would widen its personal grant: none then.
            if let Some(sub) = claims.sub.as_ref().filter(|s| !s.is_empty() && !s.contains(['*', '?'])) {
                for rule in &self.personal {
                    let topic = rule.replace("{sub}", sub);
                    grants.entry(Scope::Subscribe).or_default().push(topic.clone());
                    grants.entry(Scope::Publish).or_default().push(topic);
                }
            }
            return Ok(Principal {
                subject: claims.sub.clone().unwrap_or_default(),
                kind: PrincipalKind::Token,
                grants,
                admin: false,
                expires_at: claims.exp,
            });
        }
        let digest: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
        // Every configured key is compared, in constant time, whichever matches.
        let mut found: Option<&ApiKey> = None;
        for key in &self.api_keys {
            if bool::from(key.hash.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        let key = found.ok_or(AuthError::UnknownApiKey)?;
        let mut grants: HashMap<Scope, Vec<String>> = HashMap::new();
        for scope in &key.scopes {
            if *scope != Scope::Admin {
                grants.insert(*scope, key.topics.clone());
            }
        }
        Ok(Principal {
            subject: key.name.clone(),
            kind: PrincipalKind::ApiKey,
            grants,
            admin: key.scopes.contains(&Scope::Admin),
            expires_at: None,
        })
    }

    /// Whether `principal` may act with `scope` on `topic` (its own grants or an
    /// anonymous rule).
    pub fn allows(&self, principal: &Principal, scope: Scope, topic: &str) -> bool {
        if scope == Scope::Admin {
            return principal.admin;
        }
        let granted =
            |patterns: Option<&Vec<String>>| patterns.is_some_and(|ps| ps.iter().any(|p| pattern::matches(p, topic)));
        granted(principal.grants.get(&scope)) || granted(self.anonymous.get(&scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_hashes_round_trip() {
        let hex = hash_api_key("secret");
        assert_eq!(hex.len(), 64);
        assert!(parse_hex32(&hex).is_some());
        assert!(parse_hex32("xyz").is_none());
    }
}
