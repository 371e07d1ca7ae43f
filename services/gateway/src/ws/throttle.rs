//! A token bucket: `rate` actions a second on average, bursts up to `burst`.

use std::time::Instant;

#[derive(Debug)]
pub struct Throttle {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Throttle {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut throttle = Throttle::new(2.0, 3.0);
        throttle.last = start;
        assert!((0..3).all(|_| throttle.allow_at(start)));
        assert!(!throttle.allow_at(start));
        assert!(throttle.allow_at(start + Duration::from_millis(500)));
        assert!(!throttle.allow_at(start + Duration::from_millis(600)));
    }
}
