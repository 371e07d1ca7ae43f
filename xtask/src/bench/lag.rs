//! Projection lag (accept → committed) of one run, read from the persister's
//! `natter_persister_projection_lag_seconds` histogram: scraped before and
//! after the run, the difference of the cumulative buckets is the run's own
//! distribution, and its quantiles are interpolated within a bucket as
//! Prometheus' `histogram_quantile` does.

pub const METRIC: &str = "natter_persister_projection_lag_seconds";

/// Cumulative bucket counts by upper bound (seconds), `+Inf` last.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    buckets: Vec<(f64, f64)>,
}

/// What a run's projection lag was.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lag {
    /// Records committed during the run (its warm-up included).
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Histogram {
    /// The `<name>_bucket` samples of a Prometheus text exposition (one
    /// label set: the persister's histogram has no other labels).
    pub fn parse(text: &str, name: &str) -> Self {
        let prefix = format!("{name}_bucket{{");
        let mut buckets: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(&prefix)?;
                let (labels, value) = rest.split_once('}')?;
                let le = labels
                    .split(',')
                    .find_map(|label| label.trim().strip_prefix("le="))?
                    .trim_matches('"');
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, value.trim().parse().ok()?))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self { buckets }
    }

    /// What was observed after `earlier` was scraped. A histogram that is
    /// older than `earlier` (the persister restarted) counts from zero.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let restarted = earlier.total() > self.total();
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, count)| {
                let before = if restarted {
                    0.0
                } else {
                    earlier
                        .buckets
                        .iter()
                        .find(|(l, _)| *l == le)
                        .map_or(0.0, |(_, c)| *c)
                };
                (le, (count - before).max(0.0))
            })
            .collect();
        Histogram { buckets }
    }

    pub fn total(&self) -> f64 {
        self.buckets.last().map_or(0.0, |(_, count)| *count)
    }

    /// The `q` quantile in seconds, linear within its bucket; a quantile in
    /// the `+Inf` bucket is reported as the largest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let within = count - lower.1;
                let share = if within > 0.0 {
                    (rank - lower.1) / within
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * share);
            }
            lower = (le, count);
        }
        Some(lower.0)
    }

    pub fn lag(&self) -> Option<Lag> {
        Some(Lag {
            count: self.total() as u64,
            p50_ms: self.quantile(0.5)? * 1000.0,
            p99_ms: self.quantile(0.99)? * 1000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(counts: &[(&str, u64)]) -> String {
        let mut text = format!("# TYPE {METRIC} histogram\n");
        for (le, count) in counts {
            text.push_str(&format!("{METRIC}_bucket{{le=\"{le}\"}} {count}\n"));
        }
        let total = counts.last().map_or(0, |(_, c)| *c);
        text.push_str(&format!("{METRIC}_sum 1.5\n{METRIC}_count {total}\n"));
        text
    }

    #[test]
    fn a_runs_quantiles_come_from_the_difference_of_two_scrapes() {
        let before = Histogram::parse(
            &exposition(&[("0.1", 100), ("0.25", 100), ("0.5", 100), ("+Inf", 100)]),
            METRIC,
        );
        // The run adds 100 observations: 50 under 0.1 s, 49 in (0.1, 0.25],
        // 1 in (0.25, 0.5].
        let after = Histogram::parse(
            &exposition(&[("0.1", 150), ("0.25", 199), ("0.5", 200), ("+Inf", 200)]),
            METRIC,
        );
        let run = after.since(&before);
        assert_eq!(run.total(), 100.0);
        let lag = run.lag().unwrap();
        assert_eq!(lag.count, 100);
        // Rank 50 is the top of the first bucket; rank 99 the top of the second.
        assert!((lag.p50_ms - 100.0).abs() < 1e-6, "{lag:?}");
        assert!((lag.p99_ms - 250.0).abs() < 1e-6, "{lag:?}");
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket_and_cap_at_the_last_bound() {
        let h = Histogram::parse(&exposition(&[("1", 0), ("2", 10), ("+Inf", 10)]), METRIC);
        assert_eq!(h.quantile(0.5), Some(1.5));
        let overflow = Histogram::parse(&exposition(&[("1", 1), ("2", 1), ("+Inf", 10)]), METRIC);
        assert_eq!(overflow.quantile(0.99), Some(2.0));
    }

    #[test]
    fn no_observations_no_lag_and_a_restart_counts_from_zero() {
        let empty = Histogram::parse("", METRIC);
        assert_eq!(empty.lag(), None);
        let before = Histogram::parse(&exposition(&[("1", 50), ("+Inf", 50)]), METRIC);
        let after = Histogram::parse(&exposition(&[("1", 5), ("+Inf", 5)]), METRIC);
        assert_eq!(after.since(&before).total(), 5.0);
    }

    #[test]
    fn other_metrics_and_labels_are_not_mistaken_for_the_histogram() {
        let text = format!(
            "{}natter_persister_batch_duration_seconds_bucket{{le=\"1\"}} 7\n",
            exposition(&[("1", 3), ("+Inf", 4)])
        );
        let h = Histogram::parse(&text, METRIC);
        assert_eq!(h.total(), 4.0);
        assert_eq!(h.buckets.len(), 2);
    }
}
