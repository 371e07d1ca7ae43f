//! Authentication: HS256 tokens with a pinned algorithm and a required
//! `exp`; password hashing in [`hashing`] and attempt limits in [`attempts`].

pub mod attempts;
pub mod hashing;

use crate::error::ApiError;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use natter_core::UserId;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// A verified token's claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub jti: Uuid,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("JWT_SECRET must be set (at least 32 bytes); use --dev for a throwaway secret")]
    Missing,
    #[error("JWT_SECRET is {0} bytes; at least 32 are required outside --dev")]
    TooShort(usize),
}

/// The token keys and rules.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl TokenKeys {
    pub fn new(secret: Option<&str>, dev: bool, ttl: Duration) -> Result<Self, KeyError> {
        let secret: Vec<u8> = match secret {
            Some(s) if s.len() >= 32 => s.as_bytes().to_vec(),
            Some(s) if dev => {
                tracing::warn!("JWT_SECRET is shorter than 32 bytes; accepted in --dev only");
                s.as_bytes().to_vec()
            }
            Some(s) => return Err(KeyError::TooShort(s.len())),
            None if dev => {
                tracing::warn!("no JWT_SECRET; --dev uses a random one for this process");
                let mut bytes = Uuid::new_v4().as_bytes().to_vec();
                bytes.extend_from_slice(Uuid::new_v4().as_bytes());
                bytes
            }
            None => return Err(KeyError::Missing),
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub", "nbf"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 5;
        Ok(Self {
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            validation,
            ttl,
        })
    }

    pub fn issue(&self, user: UserId) -> Result<String, ApiError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(ApiError::internal)?
            .as_secs();
        let claims = Claims {
            sub: user.0,
            jti: Uuid::now_v7(),
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| {
                tracing::debug!(error = %e, "token refused");
                ApiError::Unauthorized("invalid or expired token".into())
            })
    }
}

/// The token of an `Authorization: Bearer` header, if any.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(Some(&"k".repeat(32)), false, Duration::from_secs(60)).unwrap()
    }

    #[test]
    fn issued_token_verifies_and_names_the_user() {
        let user = UserId::generate();
        let token = keys().issue(user).unwrap();
        assert_eq!(keys().verify(&token).unwrap().sub, user.0);
    }

    #[test]
    fn rejects_short_or_missing_secret_outside_dev() {
        assert!(matches!(
            TokenKeys::new(Some("short"), false, Duration::from_secs(1)),
            Err(KeyError::TooShort(5))
        ));
        assert!(matches!(
            TokenKeys::new(None, false, Duration::from_secs(1)),
            Err(KeyError::Missing)
        ));
        assert!(TokenKeys::new(None, true, Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn rejects_alg_none_token() {
        use base64_engine::encode;
        let user = UserId::generate();
        let header = encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = encode(
            format!(
                r#"{{"sub":"{}","jti":"{}","iat":0,"nbf":0,"exp":9999999999}}"#,
                user, user
            )
            .as_bytes(),
        );
        assert!(keys().verify(&format!("{header}.{body}.")).is_err());
    }

    #[test]
    fn rejects_token_signed_with_another_key() {
        let other = TokenKeys::new(Some(&"x".repeat(32)), false, Duration::from_secs(60)).unwrap();
        let token = other.issue(UserId::generate()).unwrap();
        assert!(keys().verify(&token).is_err());
    }

    /// Unpadded URL-safe base64, enough to forge a token by hand.
    mod base64_engine {
        pub fn encode(input: &[u8]) -> String {
            const ALPHABET: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in input.chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for i in 0..=chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
    }
}
