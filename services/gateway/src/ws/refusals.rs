//! How often refusals are logged: the first at once, the rest at most once
//! per interval with a count, so a client sending garbage (or opening
//! connection after connection over its limit) cannot fill the logs. Each
//! connection keeps one for its refused frames, and the gateway one for
//! connections refused over the per-user limit. What is logged never
//! includes the frame.

use std::time::Duration;
use tokio::time::Instant;

/// A connection logs one refusal line per this interval at most.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct Refusals {
    /// When the last line was logged.
    logged_at: Option<Instant>,
    /// Refusals since then that were not logged.
    suppressed: u64,
}

impl Refusals {
    /// Records a refusal at `now`; `Some(n)` when it is to be logged, with
    /// `n` the refusals left unlogged since the last line.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        match self.logged_at {
            Some(at) if now.saturating_duration_since(at) < LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.logged_at = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_then_one_line_per_interval_with_the_count_between() {
        let mut refusals = Refusals::default();
        let start = Instant::now();
        assert_eq!(refusals.note(start), Some(0));
        for i in 1..=100 {
            assert_eq!(refusals.note(start + Duration::from_millis(i)), None);
        }
        assert_eq!(refusals.note(start + LOG_INTERVAL), Some(100));
        assert_eq!(refusals.note(start + LOG_INTERVAL), None);
    }
}
