//! The run's clock: scheduled send times as `Instant`s and as the Unix
//! timestamps carried in messages, each mapping back to the other.

use std::time::Duration;
use tokio::time::Instant;

/// The run's time origin, as an `Instant` and as Unix microseconds, so a
/// timestamp written into a message maps back to an `Instant`.
#[derive(Clone, Debug)]
pub struct Clock {
    pub t0: Instant,
    unix0_us: i64,
}

impl Clock {
    /// A clock whose origin is `delay` from now (time to get going).
    pub fn start(delay: Duration) -> Self {
        Self {
            t0: Instant::now() + delay,
            unix0_us: chrono::Utc::now().timestamp_micros() + delay.as_micros() as i64,
        }
    }

    pub fn unix_us(&self, at: Instant) -> i64 {
        match at.checked_duration_since(self.t0) {
            Some(after) => self.unix0_us + after.as_micros() as i64,
            None => self.unix0_us - self.t0.duration_since(at).as_micros() as i64,
        }
    }

    pub fn instant(&self, unix_us: i64) -> Instant {
        let delta = unix_us - self.unix0_us;
        if delta >= 0 {
            self.t0 + Duration::from_micros(delta as u64)
        } else {
            self.t0
                .checked_sub(Duration::from_micros(delta.unsigned_abs()))
                .unwrap_or(self.t0)
        }
    }
}
