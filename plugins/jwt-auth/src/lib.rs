//! `jwt-auth`: lets a request through only when it carries a valid JSON Web Token.
//!
//! The token comes as `Authorization: Bearer <jwt>` (the header is configurable). The plugin
//! checks, in this order:
//!
//! 1. the form: three base64url parts, a JSON header naming an `alg`;
//! 2. the algorithm: `alg` must be one of the configured `algorithms`, which can only name
//!    algorithms the configured key is for. `none` is never accepted, and an HS256 token cannot
//!    pass a plugin holding an RSA or EC key (no algorithm confusion);
//! 3. the signature: HS256 (HMAC-SHA256 with `secret`), RS256 (RSASSA-PKCS1-v1_5 with SHA-256)
//!    or ES256 (ECDSA P-256 with SHA-256, the JWS `r || s` form), with `public_key`;
//! 4. the claims: `exp` and `nbf` against the gateway's clock, give or take `leeway_s`; `iss`
//!    when `issuer` is set; `aud` (a string or a list) when `audience` is set.
//!
//! A valid token continues: chosen claims become request headers (`claims_to_headers`), one goes
//! to the request context as `consumer` (`context_claim`, for a rate limiter keyed by
//! `context:consumer`), and the token header is removed unless `forward_token` is set. Anything
//! else is answered with 401 and a `WWW-Authenticate` challenge; the reason goes to the log at
//! debug level, never to the client.
//!
//! Start at [`JwtAuth`]; the README lists every config key.

use std::collections::BTreeMap;

use base64ct::{Base64UrlUnpadded, Encoding};
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;
use sluice_sdk::check::is_header_name;
use sluice_sdk::prelude::*;

/// The request context key under which the `context_claim` of a valid token is stored.
pub const CONSUMER_KEY: &str = "consumer";

/// The shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least as long as the hash.
pub const MIN_SECRET_BYTES: usize = 32;

/// The smallest RSA key accepted for RS256 (RFC 7518 §3.3).
pub const MIN_RSA_BITS: usize = 2048;

/// The plugin, made from its config; see the crate docs for what it checks.
pub struct JwtAuth {
    /// The (lower-case) header carrying `Bearer <jwt>`.
    header: String,
    /// The key every signature is checked with.
    key: Key,
    /// The `alg` values accepted; each is one the key is for.
    algorithms: Vec<Algorithm>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    leeway_s: u64,
    /// The required `iss`, if any.
    issuer: Option<String>,
    /// The audience that must be in `aud`, if any.
    audience: Option<String>,
    /// (claim, lower-case header name) pairs to forward.
    claims_to_headers: Vec<(String, String)>,
    /// The claim stored in the context as `consumer`, if any.
    context_claim: Option<String>,
    /// Whether the token header reaches the backend.
    forward_token: bool,
}

/// The signature algorithms this plugin verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Hs256,
    Rs256,
    Es256,
}

impl Algorithm {
    const SUPPORTED: &str = "HS256, RS256, ES256";

    fn parse(name: &str) -> Option<Self> {
        match name {
            "HS256" => Some(Algorithm::Hs256),
            "RS256" => Some(Algorithm::Rs256),
            "ES256" => Some(Algorithm::Es256),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
        }
    }
}

/// A verification key; each kind serves exactly one algorithm.
enum Key {
    Secret(Vec<u8>),
    Rsa(rsa::pkcs1v15::VerifyingKey<Sha256>),
    P256(p256::ecdsa::VerifyingKey),
}

impl Key {
    /// Reads `public_key`: SPKI (`BEGIN PUBLIC KEY`, RSA or P-256) or PKCS#1 (`BEGIN RSA PUBLIC KEY`).
    fn from_pem(pem: &str) -> Result<Key, String> {
        use rsa::pkcs1::DecodeRsaPublicKey;
        use rsa::pkcs8::DecodePublicKey;
        use rsa::traits::PublicKeyParts;

        let pem = pem.trim();
        let rsa = if pem.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
            rsa::RsaPublicKey::from_pkcs1_pem(pem)
                .map_err(|e| format!("public_key is not a valid PKCS#1 RSA public key: {e}"))?
        } else if pem.starts_with("-----BEGIN PUBLIC KEY-----") {
            match rsa::RsaPublicKey::from_public_key_pem(pem) {
                Ok(key) => key,
                Err(_) => {
                    return p256::ecdsa::VerifyingKey::from_public_key_pem(pem).map(Key::P256).map_err(|_| {
                        "public_key is neither an RSA key of 2048 to 4096 bits (RS256) nor a P-256 key (ES256)".into()
                    });
                }
            }
        } else {
            return Err("public_key must be a PEM block starting with \"-----BEGIN PUBLIC KEY-----\" \
                        (RSA or P-256) or \"-----BEGIN RSA PUBLIC KEY-----\""
                .into());
        };
        let bits = rsa.size() * 8;
        if bits < MIN_RSA_BITS {
            return Err(format!("the RSA public_key has {bits} bits; RS256 needs at least {MIN_RSA_BITS}"));
        }
        Ok(Key::Rsa(rsa::pkcs1v15::VerifyingKey::new(rsa)))
    }

    /// The one algorithm this key is for.
    fn algorithm(&self) -> Algorithm {
        match self {
            Key::Secret(_) => Algorithm::Hs256,
            Key::Rsa(_) => Algorithm::Rs256,
            Key::P256(_) => Algorithm::Es256,
        }
    }

    /// Whether `signature` signs `message` under `alg` with this key; false for any other pairing.
    fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        match (self, alg) {
            (Key::Secret(secret), Algorithm::Hs256) => {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                    return false;
                };
                mac.update(message);
                mac.verify_slice(signature).is_ok() // constant-time comparison
            }
            (Key::Rsa(key), Algorithm::Rs256) => rsa::pkcs1v15::Signature::try_from(signature)
                .is_ok_and(|signature| key.verify(message, &signature).is_ok()),
            (Key::P256(key), Algorithm::Es256) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify(message, &signature).is_ok()),
            _ => false,
        }
    }
}

/// The `[plugin.config]` table as written; see the README for each key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_header")]
    header: String,
    secret: Option<String>,
    public_key: Option<String>,
    algorithms: Option<Vec<String>>,
    #[serde(default = "default_leeway_s")]
    leeway_s: u64,
    issuer: Option<String>,
    audience: Option<String>,
    #[serde(default)]
    claims_to_headers: BTreeMap<String, String>,
    #[serde(default = "default_context_claim")]
    context_claim: String,
    #[serde(default)]
    forward_token: bool,
}

fn default_header() -> String {
    "authorization".into()
}

fn default_leeway_s() -> u64 {
    30
}

fn default_context_claim() -> String {
    "sub".into()
}

impl Plugin for JwtAuth {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.json()?;
        let key = match (settings.secret, settings.public_key) {
            (Some(secret), None) => {
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(format!(
                        "jwt-auth: secret has {} bytes; HS256 needs at least {MIN_SECRET_BYTES}",
                        secret.len()
                    ));
                }
                Key::Secret(secret.into_bytes())
            }
            (None, Some(pem)) => Key::from_pem(&pem).map_err(|e| format!("jwt-auth: {e}"))?,
            (Some(_), Some(_)) => {
                return Err("jwt-auth: give either secret (HS256) or public_key (RS256, ES256), not both".into());
            }
            (None, None) => {
                return Err("jwt-auth: a key is required: secret (HS256) or public_key (RS256, ES256)".into());
            }
        };
        let algorithms = match settings.algorithms {
            None => vec![key.algorithm()],
            Some(names) => allowed_algorithms(&names, &key)?,
        };
        let header = header_name(&settings.header)
            .ok_or_else(|| format!("jwt-auth: header {:?} is not a valid header name", settings.header))?;
        let mut claims_to_headers = Vec::new();
        for (claim, name) in settings.claims_to_headers {
            let name = header_name(&name)
                .ok_or_else(|| format!("jwt-auth: claims_to_headers.{claim} = {name:?} is not a valid header name"))?;
            claims_to_headers.push((claim, name));
        }
        Ok(JwtAuth {
            header,
            key,
            algorithms,
            leeway_s: settings.leeway_s,
            issuer: settings.issuer,
            audience: settings.audience,
            claims_to_headers,
            context_claim: Some(settings.context_claim).filter(|claim| !claim.is_empty()),
            forward_token: settings.forward_token,
        })
    }

    fn on_request(&mut self, req: &mut Request) -> Action {
        let Some(token) = req.header_str(&self.header).and_then(bearer_token) else {
            host::debug("request rejected: no bearer token");
            return missing_token();
        };
        let claims = match self.verify(token, host::now_ms()) {
            Ok(claims) => claims,
            Err(reason) => {
                host::debug(&format!("request rejected: invalid token: {reason}"));
                return invalid_token();
            }
        };
        if !self.forward_token {
            req.remove_header(&self.header);
        }
        for (claim, header) in &self.claims_to_headers {
            // Set or remove: a client must not smuggle in a header that the token does not back.
            match claims.get(claim).and_then(|value| claim_text(claim, value)) {
                Some(text) => req.set_header(header, text),
                None => req.remove_header(header),
            }
        }
        if let Some(claim) = &self.context_claim
            && let Some(consumer) = claims.get(claim).and_then(|value| claim_text(claim, value))
        {
            req.set_context(CONSUMER_KEY, consumer);
        }
        Action::Continue
    }
}

impl JwtAuth {
    /// The token's claims if it is valid at `now_ms`; else why not (for the log only).
    fn verify(&self, token: &str, now_ms: u64) -> Result<Map<String, Value>, String> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not three dot-separated parts".into());
        };
        let header_json = decode_object(header).map_err(|e| format!("header: {e}"))?;
        let alg = header_json.get("alg").and_then(Value::as_str).ok_or("the header has no alg")?;
        let alg = Algorithm::parse(alg)
            .filter(|alg| self.algorithms.contains(alg))
            .ok_or_else(|| format!("alg {alg:?} is not allowed"))?;
        if header_json.contains_key("crit") {
            return Err("the header has critical extensions (crit), which are not supported".into());
        }
        let signature = Base64UrlUnpadded::decode_vec(signature).map_err(|_| "the signature is not base64url")?;
        let signed = &token[..header.len() + 1 + payload.len()];
        if !self.key.verify(alg, signed.as_bytes(), &signature) {
            return Err(format!("bad {} signature", alg.name()));
        }
        let claims = decode_object(payload).map_err(|e| format!("claims: {e}"))?;
        self.check_claims(&claims, now_ms)?;
        Ok(claims)
    }

    /// Checks the registered claims this plugin knows: `exp`, `nbf`, `iss`, `aud`.
    fn check_claims(&self, claims: &Map<String, Value>, now_ms: u64) -> Result<(), String> {
        let now = now_ms as f64 / 1000.0;
        let leeway = self.leeway_s as f64;
        if let Some(exp) = numeric_date(claims, "exp")?
            && now >= exp + leeway
        {
            return Err(format!("expired: exp {exp}, now {now}"));
        }
        if let Some(nbf) = numeric_date(claims, "nbf")?
            && now < nbf - leeway
        {
            return Err(format!("not valid yet: nbf {nbf}, now {now}"));
        }
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
        {
            return Err(format!("iss {:?} is not {issuer:?}", claims.get("iss")));
        }
        if let Some(audience) = &self.audience {
            let listed = match claims.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(audience.as_str())),
                _ => false,
            };
            if !listed {
                return Err(format!("aud {:?} does not include {audience:?}", claims.get("aud")));
            }
        }
        Ok(())
    }
}

/// The names in `algorithms`, each checked against the key.
fn allowed_algorithms(names: &[String], key: &Key) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Err(format!("jwt-auth: algorithms is empty; list at least {}", key.algorithm().name()));
    }
    names
        .iter()
        .map(|name| {
            let alg = Algorithm::parse(name).ok_or_else(|| {
                if name.eq_ignore_ascii_case("none") {
                    "jwt-auth: algorithm \"none\" (unsigned tokens) is never allowed".to_string()
                } else {
                    format!("jwt-auth: unknown algorithm {name:?}; supported: {}", Algorithm::SUPPORTED)
                }
            })?;
            if alg != key.algorithm() {
                let needs = match alg {
                    Algorithm::Hs256 => "a secret",
                    Algorithm::Rs256 => "an RSA public_key",
                    Algorithm::Es256 => "a P-256 public_key",
                };
                return Err(format!(
                    "jwt-auth: algorithm {name} needs {needs}, but the configured key is for {}",
                    key.algorithm().name()
                ));
            }
            Ok(alg)
        })
        .collect()
}

/// The token from `Bearer <token>` (scheme in any case); `None` for other schemes or no token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A base64url (unpadded) part holding a JSON object.
fn decode_object(part: &str) -> Result<Map<String, Value>, String> {
    let bytes = Base64UrlUnpadded::decode_vec(part).map_err(|_| "not base64url")?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not a JSON object: {e}"))
}

/// The claim `name` as seconds since the epoch, if present.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value.as_f64().map(Some).ok_or_else(|| format!("{name} is not a number")),
    }
}

/// A claim as header or context text: strings as they are, other values as JSON text; `None` for
/// `null` and for text with control characters, which no header may carry.
fn claim_text(claim: &str, value: &Value) -> Option<String> {
    let text = match value {
        Value::Null => return None,
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    if text.chars().any(char::is_control) {
        host::warn(&format!("claim {claim:?} has control characters; not forwarded"));
        return None;
    }
    Some(text)
}

/// `name` lower-cased, if it is a valid header name (an RFC 9110 token).
fn header_name(name: &str) -> Option<String> {
    is_header_name(name).then(|| name.to_ascii_lowercase())
}

/// 401 for a request without a bearer token (RFC 6750 §3.1: no error code).
fn missing_token() -> Action {
    Action::respond(401)
        .header("www-authenticate", r#"Bearer realm="sluice""#)
        .header("content-type", "application/json")
        .body(r#"{"error":"missing token"}"#)
}

/// 401 for a token that fails any check; the reason is logged, never sent.
fn invalid_token() -> Action {
    Action::respond(401)
        .header("www-authenticate", r#"Bearer realm="sluice", error="invalid_token""#)
        .header("content-type", "application/json")
        .body(r#"{"error":"invalid token"}"#)
}

export_plugin!(JwtAuth);

#[cfg(test)]
mod tests;
