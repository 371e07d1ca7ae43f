//! The verdict as text: the totals, the per-fault table, a line per second of the timeline
//! with the fault active then, and the RELIABILITY.md section made of them.

use std::fmt::Write as _;

use super::verdict::{FaultRow, FaultRun, LoadReport, Second, Totals, seconds_between};

/// Markdown table of the Jepsen-style totals.
pub fn totals_table(totals: &Totals) -> String {
    let optional = |value: Option<u64>| value.map_or_else(|| "n/a".to_owned(), |v| v.to_string());
    let rows = [
        ("attempted", totals.attempted.to_string()),
        ("accepted", totals.accepted.to_string()),
        ("refused", totals.refused.to_string()),
        ("unanswered", totals.unanswered.to_string()),
        ("retried", optional(totals.retried)),
        ("delivered", totals.delivered.to_string()),
        ("lost", totals.lost.to_string()),
        ("duplicated", totals.duplicated.to_string()),
        ("out of order", totals.out_of_order.to_string()),
        ("unexpected", totals.unexpected.to_string()),
        ("late", totals.late.to_string()),
        ("reconnects", optional(totals.reconnects)),
    ];
    let mut table = String::from("| | count |\n|---|---:|\n");
    for (what, count) in rows {
        let _ = writeln!(table, "| {what} | {count} |");
    }
    table
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |s| format!("{s:.1} s"))
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |ms| format!("{ms:.0} ms"))
}

/// Markdown table with a row per fault.
pub fn fault_table(rows: &[FaultRow]) -> String {
    let mut table = String::from(
        "| fault | at | lasted | first accept after | first delivery after | \
         stall after undo | delivery p99 during | delivery p99 10 s after |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let _ = writeln!(
            table,
            "| {} | {:.1} s | {:.1} s | {} | {} | {} | {} | {} |",
            row.fault,
            row.offset_s,
            row.duration_s,
            seconds(row.first_accept_s),
            seconds(row.first_delivery_s),
            seconds(row.stall_after_undo_s),
            ms(row.p99_during_ms),
            ms(row.p99_after_ms),
        );
    }
    table
}

/// What was broken during timeline second `t`, if anything.
fn active(t: u32, t0_ms: i64, faults: &[FaultRun]) -> Option<String> {
    let names: Vec<String> = faults
        .iter()
        .filter(|run| seconds_between(t0_ms, run.start_ms, run.end_ms).contains(&t))
        .map(|run| run.fault.to_string())
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// A line per second: accepted/s, delivered/s, delivery p99 and the fault active then.
pub fn timeline(report: &LoadReport, t0_ms: i64, faults: &[FaultRun]) -> String {
    let mut text = String::from("    t  accepted/s delivered/s  delivery p99  fault\n");
    for second in &report.timeline {
        let marker =
            active(second.t, t0_ms, faults).map_or_else(String::new, |f| format!("<< {f}"));
        let _ = writeln!(
            text,
            "{:>4}s  {:>10} {:>11}  {:>12}  {marker}",
            second.t,
            second.accepted,
            second.delivered,
            ms(second.delivery_p99_ms),
        );
    }
    text
}

/// The timeline in `width`-second buckets: the lowest rates, the highest p99 and the faults
/// in each; for a long run's record.
pub fn timeline_summary(
    report: &LoadReport,
    t0_ms: i64,
    faults: &[FaultRun],
    width: u32,
) -> String {
    let mut text =
        String::from("     t  min accepted/s  min delivered/s  max delivery p99  faults\n");
    for bucket in report
        .timeline
        .chunks(usize::try_from(width.max(1)).unwrap_or(1))
    {
        let (Some(first), Some(last)) = (bucket.first(), bucket.last()) else {
            continue;
        };
        let min = |pick: fn(&Second) -> u64| bucket.iter().map(pick).min().unwrap_or(0);
        let p99 = bucket
            .iter()
            .filter_map(|s| s.delivery_p99_ms)
            .reduce(f64::max);
        let mut names: Vec<String> = bucket
            .iter()
            .filter_map(|second| active(second.t, t0_ms, faults))
            .collect();
        names.dedup();
        let _ = writeln!(
            text,
            "{:>4}-{:<4} {:>10} {:>16} {:>17}  {}",
            first.t,
            last.t,
            min(|s| s.accepted),
            min(|s| s.delivered),
            ms(p99),
            names.join(", "),
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::super::schedule::Fault;
    use super::*;

    #[test]
    fn marks_the_seconds_a_fault_was_active() {
        let report = LoadReport {
            timeline: (0..4)
                .map(|t| Second {
                    t,
                    accepted: 100,
                    delivered: 90,
                    delivery_p99_ms: Some(12.0),
                })
                .collect(),
            ..LoadReport::default()
        };
        let faults = [FaultRun {
            fault: Fault::PauseNats(1),
            start_ms: 11_500,
            end_ms: 12_200,
        }];
        let text = timeline(&report, 10_000, &faults);
        let lines: Vec<&str> = text.lines().collect();
        assert!(!lines[1].contains("<<"), "{text}");
        assert!(lines[2].ends_with("<< SIGSTOP nats n1"), "{text}");
        assert!(lines[3].ends_with("<< SIGSTOP nats n1"), "{text}");
        assert!(!lines[4].contains("<<"), "{text}");
        let summary = timeline_summary(&report, 10_000, &faults, 2);
        assert_eq!(summary.lines().count(), 3, "{summary}");
        assert!(
            summary
                .lines()
                .nth(1)
                .is_some_and(|l| l.ends_with("SIGSTOP nats n1"))
        );
    }

    #[test]
    fn tables_say_what_the_load_test_did_not_report() {
        let table = totals_table(&Totals::default());
        assert!(table.contains("| retried | n/a |"), "{table}");
        let row = FaultRow {
            fault: "kill -9 nats n0".into(),
            offset_s: 10.0,
            duration_s: 8.25,
            first_accept_s: None,
            first_delivery_s: Some(1.25),
            stall_after_undo_s: Some(0.0),
            p99_during_ms: Some(812.4),
            p99_after_ms: None,
        };
        let table = fault_table(&[row]);
        assert!(
            table.contains(
                "| kill -9 nats n0 | 10.0 s | 8.2 s | n/a | 1.2 s | 0.0 s | 812 ms | – |"
            ),
            "{table}"
        );
    }
}
