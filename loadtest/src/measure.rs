//! Latency and throughput as a run goes: totals and one bucket per second,
//! in microseconds, recorded from every task through one lock (tens of
//! thousands of events a second are no contention on two cores).

use crate::report::{Bucket, LatencySummary, Second};
use hdrhistogram::Histogram;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Upper bounds of the report's latency histogram, in milliseconds. The
/// last is the histogram's own ceiling (10 minutes; longer latencies are
/// recorded as that), finite so the report's JSON reads back.
const BUCKETS_MS: [f64; 15] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    600_000.0,
];

/// 1 µs to 10 minutes; values outside are clamped by `saturating_record`.
#[allow(clippy::expect_used)] // constant bounds that hdrhistogram accepts
fn histogram(significant: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, significant.clamp(1, 5))
        .expect("valid histogram bounds")
}

#[derive(Default)]
struct Tick {
    sent: u64,
    retried: u64,
    accepted: u64,
    delivered: u64,
    accept: Option<Histogram<u64>>,
    delivery: Option<Histogram<u64>>,
}

/// A gap between two accepts, or two first deliveries, at least this long
/// is a stall (at 1,000 messages a second the usual gap is a millisecond).
pub const STALL: Duration = Duration::from_millis(250);

/// A stall as recorded: see [`crate::report::Stall`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallAt {
    pub kind: &'static str,
    pub from: Instant,
    pub to: Instant,
}

struct Inner {
    accept: Histogram<u64>,
    delivery: Histogram<u64>,
    ticks: Vec<Tick>,
    last_accept: Option<Instant>,
    last_delivery: Option<Instant>,
    stalls: Vec<StallAt>,
}

impl Inner {
    fn stall(&mut self, kind: &'static str, at: Instant) {
        let last = match kind {
            "accept" => &mut self.last_accept,
            _ => &mut self.last_delivery,
        };
        let previous = last.replace(at);
        if let Some(from) = previous
            && at.saturating_duration_since(from) >= STALL
        {
            self.stalls.push(StallAt { kind, from, to: at });
        }
    }
}

/// What a run recorded; events before `from` (the warm-up) are ignored.
pub struct Collector {
    from: Instant,
    inner: Mutex<Inner>,
}

/// The collector's results.
pub struct Measured {
    pub sent: u64,
    pub accepted: u64,
    pub delivered: u64,
    pub accept: Option<LatencySummary>,
    pub delivery: Option<LatencySummary>,
    pub histogram: Vec<Bucket>,
    pub timeline: Vec<Second>,
    pub stalls: Vec<StallAt>,
}

impl Collector {
    pub fn new(from: Instant) -> Self {
        Self {
            from,
            inner: Mutex::new(Inner {
                accept: histogram(3),
                delivery: histogram(3),
                ticks: Vec::new(),
                last_accept: None,
                last_delivery: None,
                stalls: Vec::new(),
            }),
        }
    }

    /// When the measured part began: the timeline's second 0.
    pub fn from(&self) -> Instant {
        self.from
    }

    fn with_tick(&self, at: Instant, f: impl FnOnce(&mut Inner, usize)) {
        let Some(since) = at.checked_duration_since(self.from) else {
            return;
        };
        let second = since.as_secs() as usize;
        if let Ok(mut inner) = self.inner.lock() {
            if inner.ticks.len() <= second {
                inner.ticks.resize_with(second + 1, Tick::default);
            }
            f(&mut inner, second);
        }
    }

    pub fn sent(&self, at: Instant) {
        self.with_tick(at, |inner, s| inner.ticks[s].sent += 1);
    }

    /// A send went out again.
    pub fn retried(&self, at: Instant) {
        self.with_tick(at, |inner, s| inner.ticks[s].retried += 1);
    }

    pub fn accepted(&self, at: Instant, latency: Duration) {
        let us = latency.as_micros() as u64;
        self.with_tick(at, |inner, s| {
            inner.stall("accept", at);
            inner.accept.saturating_record(us);
            let tick = &mut inner.ticks[s];
            tick.accepted += 1;
            tick.accept
                .get_or_insert_with(|| histogram(2))
                .saturating_record(us);
        });
    }

    pub fn delivered(&self, at: Instant, latency: Duration) {
        let us = latency.as_micros() as u64;
        self.with_tick(at, |inner, s| {
            inner.stall("delivery", at);
            inner.delivery.saturating_record(us);
            let tick = &mut inner.ticks[s];
            tick.delivered += 1;
            tick.delivery
                .get_or_insert_with(|| histogram(2))
                .saturating_record(us);
        });
    }

    /// Everything recorded, the timeline cut at `seconds`.
    pub fn finish(&self, seconds: u64) -> Measured {
        let Ok(inner) = self.inner.lock() else {
            return Measured {
                sent: 0,
                accepted: 0,
                delivered: 0,
                accept: None,
                delivery: None,
                histogram: Vec::new(),
                timeline: Vec::new(),
                stalls: Vec::new(),
            };
        };
        let timeline: Vec<Second> = inner
            .ticks
            .iter()
            .enumerate()
            .take(seconds.max(1) as usize)
            .map(|(t, tick)| Second {
                t: t as u32,
                sent: tick.sent,
                retried: tick.retried,
                accepted: tick.accepted,
                delivered: tick.delivered,
                accept_p50_ms: tick.accept.as_ref().map(|h| ms(h.value_at_quantile(0.5))),
                accept_p99_ms: tick.accept.as_ref().map(|h| ms(h.value_at_quantile(0.99))),
                delivery_p50_ms: tick.delivery.as_ref().map(|h| ms(h.value_at_quantile(0.5))),
                delivery_p99_ms: tick
                    .delivery
                    .as_ref()
                    .map(|h| ms(h.value_at_quantile(0.99))),
            })
            .collect();
        Measured {
            sent: timeline.iter().map(|s| s.sent).sum(),
            accepted: timeline.iter().map(|s| s.accepted).sum(),
            delivered: timeline.iter().map(|s| s.delivered).sum(),
            accept: summary(&inner.accept),
            delivery: summary(&inner.delivery),
            histogram: buckets(&inner.delivery),
            timeline,
            stalls: inner.stalls.clone(),
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Percentiles of a histogram of microseconds, or `None` if it is empty.
pub fn summary(h: &Histogram<u64>) -> Option<LatencySummary> {
    (!h.is_empty()).then(|| LatencySummary {
        count: h.len(),
        min_ms: ms(h.min()),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    })
}

fn buckets(h: &Histogram<u64>) -> Vec<Bucket> {
    let mut counts = vec![0u64; BUCKETS_MS.len()];
    for value in h.iter_recorded() {
        let v = ms(value.value_iterated_to());
        let i = BUCKETS_MS
            .iter()
            .position(|le| v <= *le)
            .unwrap_or(BUCKETS_MS.len() - 1);
        counts[i] += value.count_at_value();
    }
    BUCKETS_MS
        .iter()
        .zip(counts)
        .map(|(le, count)| Bucket { le_ms: *le, count })
        .collect()
}

/// A fresh histogram of microseconds for a scenario's own use.
pub fn micros() -> Histogram<u64> {
    histogram(3)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn warm_up_is_ignored_and_seconds_are_bucketed() {
        let start = Instant::now();
        let c = Collector::new(start + Duration::from_secs(1));
        c.delivered(start, Duration::from_millis(900)); // warm-up
        c.delivered(
            start + Duration::from_millis(1500),
            Duration::from_millis(2),
        );
        c.delivered(
            start + Duration::from_millis(2500),
            Duration::from_millis(4),
        );
        c.sent(start + Duration::from_millis(2600));
        let m = c.finish(10);
        assert_eq!(m.delivered, 2);
        assert_eq!(m.sent, 1);
        assert_eq!(m.timeline.len(), 2);
        assert_eq!(m.timeline[1].delivered, 1);
        let d = m.delivery.unwrap();
        assert_eq!(d.count, 2);
        assert!((d.max_ms - 4.0).abs() < 0.01, "{d:?}");
        assert_eq!(m.histogram.iter().map(|b| b.count).sum::<u64>(), 2);
        assert_eq!(m.histogram[2].count, 1, "2 ms lands in the ≤ 2 ms bucket");
        assert_eq!(m.histogram[3].count, 1, "4 ms lands in the ≤ 5 ms bucket");
        assert!(m.accept.is_none());
        assert_eq!(
            m.stalls,
            vec![StallAt {
                kind: "delivery",
                from: start + Duration::from_millis(1500),
                to: start + Duration::from_millis(2500),
            }],
            "the warm-up delivery starts no stall; the second's gap is one"
        );
    }
}
