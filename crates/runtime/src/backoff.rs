//! Waiting between retries: one exponential backoff for every retry loop in
//! natter, and the start-up loop that waits for a dependency to answer.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Doubling delays between `min` and `max`; [`Backoff::reset`] after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling to 3 s: what every natter retry loop uses unless it says otherwise.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(3))
    }
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait now; the one after it is twice as long, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Starts again from `min`, after an attempt succeeded.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// Sleeps for the next delay. `false` if `shutdown` fired first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// Runs `attempt` until it succeeds, logging each failure with the delay
/// before the next try. `None` if `shutdown` fired first.
///
/// Every failure is retried: errors that retrying cannot fix (bad
/// configuration) must be caught before this is called.
pub async fn until_ready<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::default();
    for tries in 1u64.. {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return None,
            outcome = attempt() => outcome,
        };
        match outcome {
            Ok(value) => {
                if tries > 1 {
                    tracing::info!(what, tries, "ready");
                }
                return Some(value);
            }
            Err(error) => {
                let delay = backoff.next;
                tracing::warn!(what, tries, error = %error, retry_in_ms = delay.as_millis() as u64, "not ready yet; retrying");
                if !backoff.wait(shutdown).await {
                    return None;
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn delays_double_up_to_the_cap_and_reset_to_the_floor() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn a_cap_below_the_floor_is_the_floor() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_millis(10));
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_gives_up_when_shutdown_fires() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!backoff.wait(&shutdown).await);
    }

    #[tokio::test(start_paused = true)]
    async fn until_ready_retries_until_the_attempt_succeeds() {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let value = until_ready("test dependency", &CancellationToken::new(), move || {
            let calls = counted.clone();
            async move {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=2 => Err("not yet"),
                    n => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(value, Some(3));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn until_ready_stops_on_shutdown() {
        let shutdown = CancellationToken::new();
        let stopper = shutdown.clone();
        let value: Option<()> = until_ready("never ready", &shutdown, move || {
            stopper.cancel();
            async { Err("down") }
        })
        .await;
        assert_eq!(value, None);
    }
}
