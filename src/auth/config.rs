//! The `[auth]` section of the configuration: keys, API keys, anonymous rules. Defined
//! here, with the verifier that uses it, so that `config` depends on `auth` and not the
//! other way round.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Scope;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Seconds of clock skew accepted on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Required `iss` ("" = not checked).
    pub issuer: String,
    /// Required `aud` ("" = not checked).
    pub audience: String,
    /// Topics a token's subject may subscribe and publish to without listing them.
    pub personal_topics: Vec<String>,
    /// JWKS file of public keys (by `kid`).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// WebSocket: time to send an `auth` frame when the upgrade carried no credentials.
    pub auth_timeout_ms: u64,
    #[serde(default)]
    pub hs256: Vec<HsKey>,
    #[serde(default)]
    pub public_key: Vec<PublicKey>,
    #[serde(default)]
    pub api_key: Vec<ApiKeySpec>,
    #[serde(default)]
    pub anonymous: Vec<AnonymousRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsKey {
    pub kid: String,
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKey {
    pub kid: String,
    /// RS256, ES256 or EdDSA.
    pub algorithm: String,
    pub pem_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    pub name: String,
    /// Hex SHA-256 of the key (`streamhub hash-key` prints it); never the key itself.
    pub sha256: String,
    pub scopes: Vec<Scope>,
    /// Topic patterns the subscribe/publish/consume scopes apply to.
    #[serde(default = "all_topics")]
    pub topics: Vec<String>,
}

fn all_topics() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnonymousRule {
    pub topics: Vec<String>,
    pub scopes: Vec<Scope>,
}
