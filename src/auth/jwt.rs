//! JWT verification. A key is chosen by the token's `kid` (or the only key when there is
//! exactly one and the token names none), and the token's `alg` must be that key's
//! algorithm: `none` cannot be expressed, and an HS256 token can never be checked against
//! an RSA public key (no algorithm confusion).

use std::collections::HashMap;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use super::{AuthConfig, AuthError, Scope};

/// streamhub's claims (`streamhub` is a namespaced claim with the grants).
#[derive(Debug, Deserialize)]
pub(super) struct Claims {
    pub sub: Option<String>,
    pub exp: Option<u64>,
    /// Checked here, not by the library (which takes an array as a set of issuers): when
    /// `auth.issuer` is set it must be a string equal to it.
    #[serde(default)]
    iss: Option<serde_json::Value>,
    #[serde(default)]
    streamhub: Grants,
}

/// The `streamhub` claim: topic patterns per scope.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Grants {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consume: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub presence: Vec<String>,
}

/// Signs a token for `sub` with an `[[auth.hs256]]` key: the claims this module verifies
/// (`sub`, `exp`, the `streamhub` grants; `iss`/`aud` when configured). For development
/// and tests (`streamhub token`): production tokens come from the application's login.
pub fn sign_hs256(
    config: &AuthConfig,
    kid: Option<&str>,
    sub: &str,
    grants: &Grants,
    exp: u64,
) -> Result<String, String> {
    let key = match kid {
        Some(kid) => config
            .hs256
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| format!("no [[auth.hs256]] key with kid {kid:?}"))?,
        None => match config.hs256.as_slice() {
            [only] => only,
            [] => return Err("no [[auth.hs256]] key is configured".into()),
            _ => return Err("several [[auth.hs256]] keys: name one with --kid".into()),
        },
    };
    let mut claims = serde_json::json!({ "sub": sub, "exp": exp, "streamhub": grants });
    if !config.issuer.is_empty() {
        claims["iss"] = config.issuer.clone().into();
    }
    if !config.audience.is_empty() {
        claims["aud"] = config.audience.clone().into();
    }
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    let secret = jsonwebtoken::EncodingKey::from_secret(key.secret.as_bytes()).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&header, &claims, &secret).map_err(|e| e.to_string())
}

impl Claims {
    pub fn grants(&self) -> HashMap<Scope, Vec<String>> {
        HashMap::from([
            (Scope::Subscribe, self.streamhub.subscribe.clone()),
            (Scope::Publish, self.streamhub.publish.clone()),
            (Scope::Consume, self.streamhub.consume.clone()),
            (Scope::Presence, self.streamhub.presence.clone()),
        ])
    }
}

struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
}

pub(super) struct Keys {
    by_kid: HashMap<String, Key>,
    validation: Validation,
    /// `auth.issuer`, when set.
    issuer: Option<String>,
}

fn algorithm(name: &str) -> Result<Algorithm, String> {
    match name {
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => Err(format!("unsupported algorithm {other:?} (RS256, ES256 or EdDSA)")),
    }
}

impl Keys {
    pub fn load(config: &AuthConfig) -> Result<Keys, String> {
        let mut by_kid = HashMap::new();
        for k in &config.hs256 {
            if k.secret.len() < 32 {
                return Err(format!("auth.hs256 {}: the secret must be at least 32 bytes", k.kid));
            }
            let key =
                DecodingKey::from_secret(k.secret.as_bytes()).map_err(|e| format!("auth.hs256 {}: {e}", k.kid))?;
            by_kid.insert(k.kid.clone(), Key { algorithm: Algorithm::HS256, key });
        }
        for k in &config.public_key {
            let pem = std::fs::read(&k.pem_file)
                .map_err(|e| format!("auth.public_key {}: {}: {e}", k.kid, k.pem_file.display()))?;
            let alg = algorithm(&k.algorithm).map_err(|e| format!("auth.public_key {}: {e}", k.kid))?;
            let key = match alg {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                _ => DecodingKey::from_ed_pem(&pem),
            }
            .map_err(|e| format!("auth.public_key {}: {e}", k.kid))?;
            by_kid.insert(k.kid.clone(), Key { algorithm: alg, key });
        }
        if let Some(path) = config.jwks_file.as_ref().filter(|p| !p.as_os_str().is_empty()) {
            let text = std::fs::read_to_string(path).map_err(|e| format!("auth.jwks_file {}: {e}", path.display()))?;
            let set: JwkSet = serde_json::from_str(&text).map_err(|e| format!("auth.jwks_file: {e}"))?;
            for jwk in &set.keys {
                let kid = jwk.common.key_id.clone().ok_or("auth.jwks_file: every key needs a kid")?;
                let alg = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| algorithm(&format!("{a:?}")).ok())
                    .ok_or_else(|| format!("auth.jwks_file {kid}: alg must be RS256, ES256 or EdDSA"))?;
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("auth.jwks_file {kid}: {e}"))?;
                by_kid.insert(kid, Key { algorithm: alg, key });
            }
        }
        let mut kids: Vec<&str> = config
            .hs256
            .iter()
            .map(|k| k.kid.as_str())
            .chain(config.public_key.iter().map(|k| k.kid.as_str()))
            .collect();
        kids.sort_unstable();
        if let Some(w) = kids.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("auth: kid {:?} is used by two keys", w[0]));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway_secs;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp".to_string()].into();
        if !config.issuer.is_empty() {
            // Required by the library; compared in `verify` (a string equal to the issuer).
            validation.required_spec_claims.insert("iss".into());
        }
        if config.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[config.audience.as_str()]);
            validation.required_spec_claims.insert("aud".into());
        }
        Ok(Keys { by_kid, validation, issuer: (!config.issuer.is_empty()).then(|| config.issuer.clone()) })
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let key = match &header.kid {
            Some(kid) => self.by_kid.get(kid).ok_or(AuthError::UnknownKid)?,
            None if self.by_kid.len() == 1 => self.by_kid.values().next().ok_or(AuthError::UnknownKid)?,
            None => return Err(AuthError::UnknownKid),
        };
        if header.alg != key.algorithm {
            return Err(AuthError::WrongAlgorithm);
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![key.algorithm];
        let claims = decode::<Claims>(token, &key.key, &validation).map(|data| data.claims).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
                _ => AuthError::Malformed(e.to_string()),
            }
        })?;
        if let Some(issuer) = &self.issuer {
            match &claims.iss {
                Some(serde_json::Value::String(iss)) if iss == issuer => {}
                Some(serde_json::Value::String(_)) => return Err(AuthError::WrongIssuer),
                Some(_) => return Err(AuthError::Malformed("the iss claim must be a string".into())),
                None => return Err(AuthError::Malformed("the token has no iss claim".into())),
            }
        }
        Ok(claims)
    }
}
