//! Per-user rate limits: a token bucket for each user, shared by all of
//! the user's connections and REST calls on this gateway (DESIGN.md §5).

use natter_core::UserId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept before the first sweep of idle ones.
const MIN_SWEEP: usize = 1024;

/// `rate` actions a second on average, bursts up to `burst`.
#[derive(Debug)]
struct Throttle {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Throttle {
    fn starting_at(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            last: now,
        }
    }

    /// Takes a token, or says how long until there is one.
    #[cfg(test)]
    fn take_at(&mut self, now: Instant) -> Result<(), Duration> {
        self.take_n_at(1.0, now)
    }

    /// Takes `cost` tokens (at most a burst's worth, so whatever one action
    /// costs it can always happen), or says how long until there are.
    fn take_n_at(&mut self, cost: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let cost = cost.clamp(0.0, self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            Ok(())
        } else if self.rate > 0.0 {
            Err(Duration::from_secs_f64((cost - self.tokens) / self.rate))
        } else {
            Err(Duration::MAX)
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Full again by `now`: as good as a bucket never used.
    fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// One [`Throttle`] per user, made at a user's first action. A bucket that
/// has filled up again is forgotten at the next sweep, so memory follows
/// the users active in the last `burst / rate` seconds, not all users ever.
pub struct PerUser {
    rate: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    by_user: HashMap<UserId, Throttle>,
    /// Sweep when a new user would make the map this large: twice what
    /// survived the last sweep, so sweeping costs O(1) a call on average.
    sweep_at: usize,
}

impl PerUser {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: Mutex::new(Buckets {
                by_user: HashMap::new(),
                sweep_at: MIN_SWEEP,
            }),
        }
    }

    /// Takes one of `user`'s tokens, or says how long until there is one.
    pub fn check(&self, user: UserId) -> Result<(), Duration> {
        self.check_at(user, Instant::now())
    }

    /// Takes `cost` of `user`'s tokens (an action that weighs more than
    /// one), or says how long until there are.
    pub fn check_cost(&self, user: UserId, cost: f64) -> Result<(), Duration> {
        self.check_cost_at(user, cost, Instant::now())
    }

    fn check_at(&self, user: UserId, now: Instant) -> Result<(), Duration> {
        self.check_cost_at(user, 1.0, now)
    }

    fn check_cost_at(&self, user: UserId, cost: f64, now: Instant) -> Result<(), Duration> {
        // A poisoned lock only means another caller panicked mid-update;
        // the buckets are still usable numbers.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.by_user.contains_key(&user) && buckets.by_user.len() >= buckets.sweep_at {
            buckets.by_user.retain(|_, bucket| !bucket.is_full_at(now));
            buckets.sweep_at = (buckets.by_user.len() * 2).max(MIN_SWEEP);
        }
        buckets
            .by_user
            .entry(user)
            .or_insert_with(|| Throttle::starting_at(self.rate, self.burst, now))
            .take_n_at(cost, now)
    }

    /// Users with a bucket in memory.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.lock().map(|b| b.by_user.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut throttle = Throttle::starting_at(2.0, 3.0, start);
        assert!((0..3).all(|_| throttle.take_at(start).is_ok()));
        assert_eq!(throttle.take_at(start), Err(Duration::from_millis(500)));
        assert!(throttle.take_at(start + Duration::from_millis(500)).is_ok());
        assert!(
            throttle
                .take_at(start + Duration::from_millis(600))
                .is_err()
        );
    }

    #[test]
    fn a_heavy_action_takes_its_weight_and_one_heavier_than_a_burst_takes_a_burst() {
        let start = Instant::now();
        let limits = PerUser::new(100.0, 1_000.0);
        let user = UserId::generate();
        assert!(limits.check_cost_at(user, 600.0, start).is_ok());
        assert_eq!(
            limits.check_cost_at(user, 600.0, start),
            Err(Duration::from_secs(2))
        );
        assert!(limits.check_cost_at(user, 400.0, start).is_ok());
        let later = start + Duration::from_secs(10);
        assert!(
            limits.check_cost_at(user, 5_000.0, later).is_ok(),
            "capped at a burst"
        );
        assert!(limits.check_cost_at(user, 1.0, later).is_err());
    }

    #[test]
    fn a_user_shares_one_bucket_and_other_users_have_their_own() {
        let start = Instant::now();
        let limits = PerUser::new(1.0, 2.0);
        let (alice, bob) = (UserId::generate(), UserId::generate());
        assert!(limits.check_at(alice, start).is_ok());
        assert!(limits.check_at(alice, start).is_ok());
        let wait = limits.check_at(alice, start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(limits.check_at(bob, start).is_ok());
        assert!(limits.check_at(alice, start + wait).is_ok());
    }

    #[test]
    fn buckets_of_idle_users_are_dropped() {
        let start = Instant::now();
        let limits = PerUser::new(10.0, 20.0);
        for _ in 0..MIN_SWEEP {
            limits.check_at(UserId::generate(), start).unwrap();
        }
        let busy = UserId::generate();
        let later = start + Duration::from_secs(1);
        // The sweep runs when a new user arrives at the threshold: every
        // bucket above has refilled by then.
        assert!(limits.check_at(busy, later).is_ok());
        assert_eq!(limits.tracked(), 1);
        // A bucket still refilling is kept: forgetting it would reset the
        // user's limit.
        for _ in 0..20 {
            let _ = limits.check_at(busy, later);
        }
        for _ in 0..MIN_SWEEP {
            limits.check_at(UserId::generate(), later).unwrap();
        }
        assert!(limits.check_at(busy, later).is_err());
    }
}
