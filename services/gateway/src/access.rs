//! Who may call: a token is valid when its signature and times check out
//! and it has not been revoked anywhere in the cluster.

use crate::auth::{Claims, TokenKeys};
use crate::error::ApiError;
use crate::revocation::Revocations;
use std::sync::Arc;

/// Verifies tokens against the keys and the cluster's revocations.
#[derive(Clone)]
pub struct Authenticator {
    keys: Arc<TokenKeys>,
    revocations: Arc<Revocations>,
}

impl Authenticator {
    pub fn new(keys: Arc<TokenKeys>, revocations: Arc<Revocations>) -> Self {
        Self { keys, revocations }
    }

    /// A token's claims if it is valid and not revoked.
    pub fn authenticate(&self, token: &str) -> Result<Claims, ApiError> {
        let claims = self.keys.verify(token)?;
        if self.revocations.is_revoked(claims.jti) {
            return Err(ApiError::Unauthorized("token revoked".into()));
        }
        Ok(claims)
    }
}
