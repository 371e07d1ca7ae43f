//! `AUTH_RATE_PER_MIN`: login and signup attempts per client address and
//! per username (DESIGN.md §5), in tables whose size is capped.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys each table tracks at most. An entry is ~100 bytes, so both tables
/// stay under ~15 MB whatever the number of addresses and names seen.
pub const MAX_TRACKED: usize = 65_536;
/// Idle entries are dropped at least this often, so the tables shrink
/// back after a burst of distinct callers.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// A full table is pruned at most this often, so a flood of new keys
/// cannot turn every attempt into a scan of the table.
const PRUNE_WHEN_FULL_EVERY: Duration = Duration::from_secs(1);

/// An attempt refused: the caller may try again after this long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds, at least one, for the `Retry-After` header.
    pub fn secs(&self) -> u64 {
        self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0)
    }
}

/// Token buckets: `per_min` attempts in a burst, refilled at `per_min` a minute.
pub struct AttemptLimiter {
    per_min: f64,
    tables: Mutex<(Table<IpAddr>, Table<String>)>,
}

impl AttemptLimiter {
    pub fn new(per_min: u32, max_tracked: usize) -> Self {
        let now = Instant::now();
        Self {
            per_min: f64::from(per_min.max(1)),
            tables: Mutex::new((Table::new(max_tracked, now), Table::new(max_tracked, now))),
        }
    }

    /// Counts an attempt from `address` (already a limit key) for
    /// `username` (normalised), or refuses it. A refused attempt uses up
    /// nothing, so it never delays the other key further.
    pub fn attempt(&self, address: IpAddr, username: Option<&str>) -> Result<(), RetryAfter> {
        self.attempt_at(Instant::now(), address, username)
    }

    fn attempt_at(
        &self,
        now: Instant,
        address: IpAddr,
        username: Option<&str>,
    ) -> Result<(), RetryAfter> {
        let rule = Rule {
            burst: self.per_min,
            per_sec: self.per_min / 60.0,
        };
        // A poisoned lock only means another attempt panicked mid-count;
        // the counts are still usable.
        let mut tables = self
            .tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (addresses, names) = &mut *tables;
        let by_address = addresses.bucket(address, now, rule)?;
        let by_name = match username {
            Some(name) => Some(names.bucket(name.to_owned(), now, rule)?),
            None => None,
        };
        by_address.take(rule)?;
        if let Some(by_name) = by_name
            && let Err(wait) = by_name.take(rule)
        {
            // The name's refusal must not spend the address's attempt.
            addresses.refund(&address);
            return Err(wait);
        }
        Ok(())
    }

    /// Keys tracked now, addresses and names.
    pub fn tracked(&self) -> (usize, usize) {
        let tables = self
            .tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (tables.0.buckets.len(), tables.1.buckets.len())
    }
}

#[derive(Clone, Copy)]
struct Rule {
    burst: f64,
    per_sec: f64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rule: Rule) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rule.per_sec).min(rule.burst);
        self.last = now;
    }

    fn take(&mut self, rule: Rule) -> Result<(), RetryAfter> {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(RetryAfter(Duration::from_secs_f64(
                (1.0 - self.tokens) / rule.per_sec,
            )))
        }
    }

    /// A full bucket is the same as none: it can be forgotten.
    fn idle(&self, now: Instant, rule: Rule) -> bool {
        let mut bucket = *self;
        bucket.refill(now, rule);
        bucket.tokens >= rule.burst
    }
}

struct Table<K> {
    buckets: HashMap<K, Bucket>,
    max: usize,
    pruned: Instant,
}

impl<K: Hash + Eq> Table<K> {
    fn new(max: usize, now: Instant) -> Self {
        Self {
            buckets: HashMap::new(),
            max,
            pruned: now,
        }
    }

    /// `key`'s bucket, refilled to `now`. A new key in a table that is
    /// still full after pruning is refused: the table is bounded, and
    /// letting an untracked key through would lift the limit for anyone
    /// able to fill it.
    fn bucket(&mut self, key: K, now: Instant, rule: Rule) -> Result<&mut Bucket, RetryAfter> {
        let since_prune = now.saturating_duration_since(self.pruned);
        if since_prune >= PRUNE_EVERY
            || (self.buckets.len() >= self.max
                && since_prune >= PRUNE_WHEN_FULL_EVERY
                && !self.buckets.contains_key(&key))
        {
            self.buckets.retain(|_, bucket| !bucket.idle(now, rule));
            self.pruned = now;
        }
        if self.buckets.len() >= self.max && !self.buckets.contains_key(&key) {
            return Err(RetryAfter(PRUNE_WHEN_FULL_EVERY));
        }
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: rule.burst,
            last: now,
        });
        bucket.refill(now, rule);
        Ok(bucket)
    }

    fn refund(&mut self, key: &K) {
        if let Some(bucket) = self.buckets.get_mut(key) {
            bucket.tokens += 1.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(n))
    }

    #[test]
    fn allows_the_rate_per_address_then_says_when_to_retry() {
        let limiter = AttemptLimiter::new(6, 100);
        let start = Instant::now();
        for _ in 0..6 {
            assert_eq!(limiter.attempt_at(start, ip(1), None), Ok(()));
        }
        let refused = limiter.attempt_at(start, ip(1), None).unwrap_err();
        // 6 a minute: one more every 10 s.
        assert_eq!(refused.secs(), 10);
        assert!(
            limiter.attempt_at(start, ip(2), None).is_ok(),
            "another address"
        );
        let later = start + Duration::from_secs(11);
        assert!(limiter.attempt_at(later, ip(1), None).is_ok());
        assert!(limiter.attempt_at(later, ip(1), None).is_err());
    }

    #[test]
    fn limits_a_username_across_addresses_without_spending_the_address() {
        let limiter = AttemptLimiter::new(3, 100);
        let now = Instant::now();
        for n in 0..3 {
            assert!(limiter.attempt_at(now, ip(n), Some("alice")).is_ok());
        }
        assert!(limiter.attempt_at(now, ip(9), Some("alice")).is_err());
        // ip(9)'s refusal for alice cost it nothing.
        for _ in 0..3 {
            assert!(limiter.attempt_at(now, ip(9), Some("bob")).is_ok());
        }
        assert!(limiter.attempt_at(now, ip(9), Some("carol")).is_err());
    }

    #[test]
    fn tables_stay_bounded_and_forget_idle_keys() {
        let limiter = AttemptLimiter::new(60, 4);
        let now = Instant::now();
        for n in 0..4 {
            assert!(
                limiter
                    .attempt_at(now, ip(n), Some(&format!("u{n}")))
                    .is_ok()
            );
        }
        // Full, and nobody is idle yet: a new key is refused, not added.
        assert!(limiter.attempt_at(now, ip(99), None).is_err());
        assert_eq!(limiter.tracked(), (4, 4));
        // One attempt a minute at 60/min refills in a second: idle again.
        let later = now + Duration::from_secs(2);
        assert!(limiter.attempt_at(later, ip(99), None).is_ok());
        assert_eq!(limiter.tracked(), (1, 4));
        // Idle entries go on the periodic prune even below the cap.
        let much_later = later + PRUNE_EVERY;
        assert!(limiter.attempt_at(much_later, ip(7), Some("u7")).is_ok());
        assert_eq!(limiter.tracked(), (1, 1));
    }
}
