//! Argon2id hashing with bounded concurrency: each hash holds 19 MiB while
//! it runs, so at most a memory budget's worth run at once (DESIGN.md §5);
//! the rest wait in line, and those that would wait too long are refused.

use crate::error::ApiError;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use natter_core::Password;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// The memory one hash or verification holds while it runs: Argon2's
/// `m_cost`, in KiB blocks, of the parameters every natter hash is made with.
pub const HASH_MEMORY_BYTES: u64 = argon2::Params::DEFAULT_M_COST as u64 * 1024;

/// The hashing slots and the line in front of them.
pub struct PasswordHashing {
    slots: Arc<Semaphore>,
    size: usize,
    max_wait: Duration,
}

impl PasswordHashing {
    /// As many slots as `memory_budget` holds hashes, at least one and at
    /// most two per CPU (more only queue for a core while holding memory).
    pub fn new(memory_budget: u64, cpus: usize, max_wait: Duration) -> Self {
        let by_memory = usize::try_from(memory_budget / HASH_MEMORY_BYTES).unwrap_or(usize::MAX);
        let size = by_memory.clamp(1, cpus.max(1) * 2);
        Self {
            slots: Arc::new(Semaphore::new(size)),
            size,
            max_wait,
        }
    }

    /// Hashes run at once, at most.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Hashes a new password.
    pub async fn hash(&self, password: Password) -> Result<String, ApiError> {
        self.run(move || {
            Argon2::default()
                .hash_password(password.expose().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(ApiError::internal)
        })
        .await?
    }

    /// Checks `password` against `hash`, or against a decoy when the user is
    /// unknown: both cost a full verification, so the answer's timing does
    /// not tell whether a username exists.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        self.run(move || {
            let known = hash.is_some();
            let Some(hash) = hash.or_else(|| DECOY_HASH.clone()) else {
                return false;
            };
            let matches = Argon2::default()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok();
            known && matches
        })
        .await
    }

    /// Runs `work` on the blocking pool once a slot is free. A caller that
    /// would wait longer than `max_wait` is told `unavailable`: the gateway
    /// is busy, through no fault of this caller (`rate_limited` is for
    /// callers over their own limit).
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = tokio::time::timeout(self.max_wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::Unavailable("too many sign-ins at once; retry shortly".into()))?
            .map_err(ApiError::internal)?;
        // The slot moves into the blocking task: if the caller goes away,
        // the memory stays in use until the hash ends, and so does the slot.
        tokio::task::spawn_blocking(move || {
            let _slot = permit;
            work()
        })
        .await
        .map_err(ApiError::internal)
    }
}

/// A well-formed hash of a random password: verifying against it costs what a
/// real verification costs, so unknown usernames take as long as known ones.
static DECOY_HASH: LazyLock<Option<String>> = LazyLock::new(|| {
    Argon2::default()
        .hash_password(Uuid::new_v4().to_string().as_bytes())
        .ok()
        .map(|h| h.to_string())
});

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn slots_follow_the_memory_budget_within_twice_the_cpus() {
        let wait = Duration::from_secs(1);
        assert_eq!(HASH_MEMORY_BYTES, 19 * MIB);
        assert_eq!(PasswordHashing::new(96 * MIB, 8, wait).size(), 5);
        assert_eq!(PasswordHashing::new(96 * MIB, 2, wait).size(), 4);
        assert_eq!(PasswordHashing::new(MIB, 8, wait).size(), 1);
        assert_eq!(PasswordHashing::new(u64::MAX, 0, wait).size(), 2);
    }

    #[tokio::test]
    async fn refuses_a_caller_when_every_slot_stays_busy() {
        let hashing = PasswordHashing::new(HASH_MEMORY_BYTES, 4, Duration::ZERO);
        let held = hashing.slots.clone().acquire_owned().await.unwrap();
        let refused = hashing.verify("password-123".into(), None).await;
        assert!(
            matches!(refused, Err(ApiError::Unavailable(_))),
            "{refused:?}"
        );
        drop(held);
        assert_eq!(
            hashing.verify("password-123".into(), None).await.ok(),
            Some(false)
        );
    }
}
