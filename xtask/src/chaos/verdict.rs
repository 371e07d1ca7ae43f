//! The verdict of a chaos run: the load test's JSON read leniently (every field it may or may
//! not write yet is optional), Jepsen-style totals with the thresholds that make a run wrong,
//! and per fault how long sends and deliveries stalled and how slow delivery was.

use std::ops::Range;

use serde_json::Value;

use super::schedule::Fault;

/// Refused plus retried sends above this share of the attempted ones make a run wrong: each
/// fault may cost a few sends an `unavailable`, not a steady share of the traffic.
pub const MAX_REFUSED_OR_RETRIED: f64 = 0.03;
/// A stall counts for a fault when it covers the fault's start or begins within this much
/// after it (sends already in flight are answered after the fault began).
const STALL_GRACE_MS: i64 = 1_000;
/// How long after a fault ends its delivery latency still counts as its.
const AFTER_MS: i64 = 10_000;

/// The load test's counts, as its `accounting` and `extra` hold them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub attempted: u64,
    pub accepted: u64,
    pub refused: u64,
    pub unanswered: u64,
    pub delivered: u64,
    pub lost: u64,
    pub late: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    /// Sends that took more than one attempt; `None` from a load test that does not count them.
    pub retried: Option<u64>,
    pub reconnects: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallKind {
    Accept,
    Delivery,
}

/// A gap of at least 250 ms between two accepted sends, or two first deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    pub kind: StallKind,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// One second of the load test's timeline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Second {
    pub t: u32,
    pub accepted: u64,
    pub delivered: u64,
    pub delivery_p99_ms: Option<f64>,
}

/// What the verdict needs from `steady.json`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    pub totals: Totals,
    /// Unix ms of the timeline's t = 0, when the load test says.
    pub t0_unix_ms: Option<i64>,
    /// When it only gives the run's start (RFC 3339): close to t = 0 with no warm-up.
    pub started_at_ms: Option<i64>,
    /// `None` from a load test that does not report stalls.
    pub stalls: Option<Vec<Stall>>,
    pub timeline: Vec<Second>,
    pub problems: Vec<String>,
}

fn count(value: &Value, key: &str) -> u64 {
    value.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn extra(value: &Value, key: &str) -> Option<u64> {
    let number = value.get("extra")?.get(key)?.as_f64()?;
    // The load test's extras are floats; these are counts.
    Some(number.max(0.0).round() as u64)
}

impl LoadReport {
    pub fn parse(report: &Value) -> Self {
        let accounting = report.get("accounting").unwrap_or(&Value::Null);
        let totals = Totals {
            attempted: count(accounting, "attempted"),
            accepted: count(accounting, "accepted"),
            refused: count(accounting, "refused"),
            unanswered: count(accounting, "unanswered"),
            delivered: count(accounting, "delivered"),
            lost: count(accounting, "lost"),
            late: count(accounting, "late"),
            duplicated: count(accounting, "duplicated"),
            out_of_order: count(accounting, "out_of_order"),
            unexpected: count(accounting, "unexpected"),
            retried: extra(report, "retried_sends"),
            reconnects: extra(report, "reconnects"),
        };
        Self {
            totals,
            t0_unix_ms: report.get("t0_unix_ms").and_then(Value::as_i64),
            started_at_ms: report
                .get("started_at")
                .and_then(Value::as_str)
                .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
                .map(|time| time.timestamp_millis()),
            stalls: report
                .get("stalls")
                .and_then(Value::as_array)
                .map(|all| all.iter().filter_map(stall).collect()),
            timeline: report
                .get("timeline")
                .and_then(Value::as_array)
                .map(|all| all.iter().filter_map(second).collect())
                .unwrap_or_default(),
            problems: report
                .get("problems")
                .and_then(Value::as_array)
                .map(|all| {
                    all.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Unix ms of t = 0: the load test's own, else its start time, else `fallback_ms`
    /// (when xtask saw the load begin).
    pub fn t0_ms(&self, fallback_ms: i64) -> i64 {
        self.t0_unix_ms
            .or(self.started_at_ms)
            .unwrap_or(fallback_ms)
    }
}

fn stall(value: &Value) -> Option<Stall> {
    let kind = match value.get("kind")?.as_str()? {
        "accept" => StallKind::Accept,
        "delivery" => StallKind::Delivery,
        _ => return None,
    };
    Some(Stall {
        kind,
        from_ms: value.get("from_unix_ms")?.as_i64()?,
        to_ms: value.get("to_unix_ms")?.as_i64()?,
    })
}

fn second(value: &Value) -> Option<Second> {
    Some(Second {
        t: u32::try_from(value.get("t")?.as_u64()?).ok()?,
        accepted: count(value, "accepted"),
        delivered: count(value, "delivered"),
        delivery_p99_ms: value.get("delivery_p99_ms").and_then(Value::as_f64),
    })
}

/// A fault as it ran: Unix ms of its start and of its end (undone, the part back up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRun {
    pub fault: Fault,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// How long after a fault started the first `kind` event came: the end of the stall that
/// covers the start (or begins within a second of it), minus the start; 0 without one.
pub fn recovery_ms(stalls: &[Stall], kind: StallKind, fault: &FaultRun) -> i64 {
    let window_end = (fault.start_ms + STALL_GRACE_MS).min(fault.end_ms.max(fault.start_ms + 1));
    stalls
        .iter()
        .filter(|stall| stall.kind == kind)
        .filter(|stall| stall.from_ms < window_end && stall.to_ms > fault.start_ms)
        .map(|stall| stall.to_ms - fault.start_ms)
        .max()
        .unwrap_or(0)
}

/// How long after a fault was undone sends or deliveries (whichever longer) stalled: a
/// resumed or reconnected node may stall the cluster again. 0 without such a stall.
pub fn undo_stall_ms(stalls: &[Stall], fault: &FaultRun) -> i64 {
    let undone = FaultRun {
        start_ms: fault.end_ms,
        end_ms: fault.end_ms + STALL_GRACE_MS,
        ..*fault
    };
    [StallKind::Accept, StallKind::Delivery]
        .into_iter()
        .map(|kind| recovery_ms(stalls, kind, &undone))
        .max()
        .unwrap_or(0)
}

/// The timeline's seconds that overlap Unix ms `from..to`, given t = 0 at `t0_ms`.
pub fn seconds_between(t0_ms: i64, from_ms: i64, to_ms: i64) -> Range<u32> {
    let first = (from_ms - t0_ms).div_euclid(1_000).max(0);
    // A second overlaps when it starts before `to`.
    let end = (to_ms - t0_ms + 999).div_euclid(1_000).max(first);
    let clamp = |value: i64| u32::try_from(value).unwrap_or(u32::MAX);
    clamp(first)..clamp(end)
}

/// The highest delivery p99 of the timeline's seconds in `range`.
pub fn max_p99(timeline: &[Second], range: &Range<u32>) -> Option<f64> {
    timeline
        .iter()
        .filter(|second| range.contains(&second.t))
        .filter_map(|second| second.delivery_p99_ms)
        .reduce(f64::max)
}

/// A row of the per-fault table.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRow {
    pub fault: String,
    /// Seconds from t = 0 to the fault's start.
    pub offset_s: f64,
    pub duration_s: f64,
    /// `None` when the load test reports no stalls.
    pub first_accept_s: Option<f64>,
    pub first_delivery_s: Option<f64>,
    /// From the undo to the end of a stall that covers it.
    pub stall_after_undo_s: Option<f64>,
    pub p99_during_ms: Option<f64>,
    pub p99_after_ms: Option<f64>,
}

pub fn fault_row(report: &LoadReport, t0_ms: i64, run: &FaultRun) -> FaultRow {
    let seconds = |ms: i64| ms as f64 / 1_000.0;
    let during = seconds_between(t0_ms, run.start_ms, run.end_ms);
    let after = seconds_between(t0_ms, run.end_ms, run.end_ms + AFTER_MS);
    let recovery = |kind| {
        report
            .stalls
            .as_deref()
            .map(|stalls| seconds(recovery_ms(stalls, kind, run)))
    };
    FaultRow {
        fault: run.fault.to_string(),
        offset_s: seconds(run.start_ms - t0_ms),
        duration_s: seconds(run.end_ms - run.start_ms),
        first_accept_s: recovery(StallKind::Accept),
        first_delivery_s: recovery(StallKind::Delivery),
        stall_after_undo_s: report
            .stalls
            .as_deref()
            .map(|stalls| seconds(undo_stall_ms(stalls, run))),
        p99_during_ms: max_p99(&report.timeline, &during),
        p99_after_ms: max_p99(&report.timeline, &after),
    }
}

/// What made a run wrong (empty: right).
pub fn wrongs(
    totals: Option<&Totals>,
    loadtest_exit: Option<i32>,
    crashes: &[String],
) -> Vec<String> {
    let mut wrong: Vec<String> = crashes.to_vec();
    match loadtest_exit {
        Some(2) => wrong.push("natter-loadtest could not run (exit 2)".to_owned()),
        None => wrong.push("natter-loadtest did not exit by itself".to_owned()),
        Some(_) => {}
    }
    let Some(totals) = totals else {
        wrong.push("natter-loadtest wrote no usable report".to_owned());
        return wrong;
    };
    for (n, what) in [
        (totals.lost, "lost"),
        (totals.duplicated, "duplicated"),
        (totals.out_of_order, "out of order"),
        (totals.unexpected, "unexpected"),
    ] {
        if n > 0 {
            wrong.push(format!("{n} deliveries {what}"));
        }
    }
    let troubled = totals.refused + totals.retried.unwrap_or(0);
    if troubled as f64 > MAX_REFUSED_OR_RETRIED * totals.attempted as f64 {
        wrong.push(format!(
            "{troubled} of {} sends refused or retried (more than {} %)",
            totals.attempted,
            MAX_REFUSED_OR_RETRIED * 100.0
        ));
    }
    wrong
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals() -> Totals {
        Totals {
            attempted: 10_000,
            accepted: 9_990,
            refused: 10,
            delivered: 9_990,
            retried: Some(100),
            ..Totals::default()
        }
    }

    #[test]
    fn a_clean_run_within_the_refusal_budget_is_right() {
        assert!(wrongs(Some(&totals()), Some(0), &[]).is_empty());
        // Exit 1 alone is the load test's own judgement (late, unanswered): the counts decide.
        assert!(wrongs(Some(&totals()), Some(1), &[]).is_empty());
    }

    #[test]
    fn losses_duplicates_reorders_and_strangers_are_wrong() {
        for broken in [
            Totals {
                lost: 1,
                ..totals()
            },
            Totals {
                duplicated: 1,
                ..totals()
            },
            Totals {
                out_of_order: 1,
                ..totals()
            },
            Totals {
                unexpected: 1,
                ..totals()
            },
        ] {
            assert_eq!(wrongs(Some(&broken), Some(1), &[]).len(), 1, "{broken:?}");
        }
    }

    #[test]
    fn more_than_3_percent_refused_or_retried_is_wrong() {
        let at_limit = Totals {
            refused: 100,
            retried: Some(200),
            ..totals()
        };
        assert!(wrongs(Some(&at_limit), Some(0), &[]).is_empty());
        let over = Totals {
            refused: 101,
            retried: Some(200),
            ..totals()
        };
        let wrong = wrongs(Some(&over), Some(0), &[]);
        assert!(wrong[0].contains("301 of 10000"), "{wrong:?}");
    }

    #[test]
    fn a_crash_a_load_test_that_could_not_run_or_no_report_is_wrong() {
        let crash = ["natter-gateway g1 exited by itself".to_owned()];
        assert_eq!(wrongs(Some(&totals()), Some(0), &crash), crash);
        assert_eq!(wrongs(Some(&totals()), Some(2), &[]).len(), 1);
        assert_eq!(wrongs(None, Some(1), &[]).len(), 1);
        assert_eq!(wrongs(Some(&totals()), None, &[]).len(), 1);
    }

    fn fault(start_ms: i64, end_ms: i64) -> FaultRun {
        FaultRun {
            fault: Fault::KillNats(0),
            start_ms,
            end_ms,
        }
    }

    fn stall(kind: StallKind, from_ms: i64, to_ms: i64) -> Stall {
        Stall {
            kind,
            from_ms,
            to_ms,
        }
    }

    #[test]
    fn recovery_is_the_end_of_the_stall_over_the_fault_start() {
        let stalls = [
            stall(StallKind::Accept, 500, 900),
            stall(StallKind::Accept, 9_800, 12_300),
            stall(StallKind::Delivery, 10_400, 13_000),
            stall(StallKind::Accept, 30_000, 31_000),
        ];
        let run = fault(10_000, 18_000);
        assert_eq!(recovery_ms(&stalls, StallKind::Accept, &run), 2_300);
        // Begins 400 ms after the fault: in-flight deliveries arrived first.
        assert_eq!(recovery_ms(&stalls, StallKind::Delivery, &run), 3_000);
        assert_eq!(
            recovery_ms(&stalls, StallKind::Accept, &fault(20_000, 25_000)),
            0
        );
        // Too long after the start to be this fault's.
        assert_eq!(
            recovery_ms(&stalls, StallKind::Accept, &fault(28_000, 40_000)),
            0
        );
    }

    #[test]
    fn a_stall_when_a_fault_is_undone_is_its_own() {
        let run = fault(10_000, 20_000);
        let stalls = [
            stall(StallKind::Delivery, 10_100, 12_000),
            stall(StallKind::Accept, 20_400, 25_000),
            stall(StallKind::Delivery, 20_300, 26_000),
        ];
        assert_eq!(undo_stall_ms(&stalls, &run), 6_000);
        assert_eq!(undo_stall_ms(&stalls[..1], &run), 0);
    }

    #[test]
    fn maps_wall_clock_windows_onto_timeline_seconds() {
        let t0 = 1_000_000;
        assert_eq!(seconds_between(t0, t0 + 2_500, t0 + 4_000), 2..4);
        assert_eq!(seconds_between(t0, t0 + 2_500, t0 + 4_001), 2..5);
        assert_eq!(seconds_between(t0, t0 - 5_000, t0 + 1), 0..1);
        assert_eq!(seconds_between(t0, t0 + 3_000, t0 + 3_000), 3..3);
        let timeline: Vec<Second> = (0..6)
            .map(|t| Second {
                t,
                delivery_p99_ms: (t != 3).then_some(f64::from(t) * 10.0),
                ..Second::default()
            })
            .collect();
        assert_eq!(max_p99(&timeline, &(2..5)), Some(40.0));
        assert_eq!(max_p99(&timeline, &(3..4)), None);
    }

    #[test]
    fn reads_a_report_with_or_without_the_newer_fields() {
        let old = serde_json::json!({
            "started_at": "2025-01-02T03:04:05Z",
            "accounting": {"attempted": 5, "accepted": 4, "refused": 1},
            "timeline": [{"t": 0, "sent": 5, "accepted": 4, "delivered": 3,
                          "delivery_p99_ms": null}],
            "extra": {},
        });
        let report = LoadReport::parse(&old);
        assert_eq!(report.totals.accepted, 4);
        assert_eq!(report.totals.retried, None);
        assert_eq!(report.stalls, None);
        assert_eq!(report.t0_ms(7), 1_735_787_045_000);
        assert_eq!(report.timeline[0].delivery_p99_ms, None);

        let new = serde_json::json!({
            "t0_unix_ms": 1_000,
            "accounting": {"attempted": 5},
            "stalls": [{"kind": "delivery", "from_unix_ms": 1_200, "to_unix_ms": 1_900},
                       {"kind": "other", "from_unix_ms": 1, "to_unix_ms": 2}],
            "extra": {"retried_sends": 3.0, "reconnects": 2.0},
        });
        let report = LoadReport::parse(&new);
        assert_eq!(report.t0_ms(7), 1_000);
        assert_eq!(report.totals.retried, Some(3));
        assert_eq!(report.totals.reconnects, Some(2));
        assert_eq!(
            report.stalls,
            Some(vec![stall(StallKind::Delivery, 1_200, 1_900)])
        );
        assert_eq!(LoadReport::parse(&Value::Null).t0_ms(7), 7);
    }

    #[test]
    fn a_fault_row_reads_offsets_recoveries_and_latencies() {
        let report = LoadReport {
            t0_unix_ms: Some(100_000),
            stalls: Some(vec![stall(StallKind::Accept, 109_900, 111_500)]),
            timeline: (0..30)
                .map(|t| Second {
                    t,
                    delivery_p99_ms: Some(if t == 12 { 900.0 } else { 20.0 + f64::from(t) }),
                    ..Second::default()
                })
                .collect(),
            ..LoadReport::default()
        };
        let row = fault_row(&report, 100_000, &fault(110_000, 113_000));
        assert_eq!(row.offset_s, 10.0);
        assert_eq!(row.duration_s, 3.0);
        assert_eq!(row.first_accept_s, Some(1.5));
        assert_eq!(row.first_delivery_s, Some(0.0));
        assert_eq!(row.stall_after_undo_s, Some(0.0));
        assert_eq!(row.p99_during_ms, Some(900.0));
        assert_eq!(row.p99_after_ms, Some(42.0));
    }
}
