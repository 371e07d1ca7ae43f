//! The dated history of the suite's headline run in BENCHMARKS.md: one row per published suite,
//! appended by `cargo xtask bench`, so a regression shows next to every earlier suite.

use std::fmt::Write as _;

use super::machine::Machine;
use super::results::{Markers, RunResult, ms, thousands};

/// The run whose row is kept: the 20,000 msg/s target's.
pub const HEADLINE: &str = "steady-20k";

pub const HISTORY_MARKERS: Markers = Markers {
    begin: "<!-- bench-history:begin -->",
    end: "<!-- bench-history:end -->",
    heading: "## History of the headline run",
};

const HEADER: &str = "| measured | commit | accepted msg/s | deliveries/s | delivery p99 (ms) \
                      | CPU µs per message |\n|---|---|--:|--:|--:|--:|";

/// The history section with the headline run of `runs` appended to the rows already in
/// `section` (the text between the markers now); `None` when the suite has no headline result.
pub fn appended(section: &str, machine: &Machine, runs: &[RunResult]) -> Option<String> {
    let run = runs.iter().find(|run| run.name == HEADLINE)?;
    let report = run.report.as_ref()?;
    let mut rows: Vec<String> = rows_of(section).map(str::to_owned).collect();
    let cell = |value: Option<String>| value.unwrap_or_else(|| "—".to_owned());
    rows.push(format!(
        "| {} | {} | {} | {} | {} | {} |",
        machine.date,
        machine.commit,
        thousands(report.accepted_per_s),
        thousands(report.delivered_per_s),
        cell(report.delivery_latency.as_ref().map(|l| ms(l.p99_ms))),
        cell(run.cost.as_ref().map(|cost| thousands(cost.total_us()))),
    ));
    let mut out = format!(
        "_Appended by `cargo xtask bench` each time it publishes a suite: the `{HEADLINE}` row \
         (`{}`), oldest first. CPU µs per message is all five processes together (the cost \
         table's **total**), measured since the cost table exists._\n\n{HEADER}\n",
        run.command
    );
    for row in rows {
        let _ = writeln!(out, "{row}");
    }
    Some(out)
}

/// The data rows of a history table: its `|` lines but the header and the rule below it.
fn rows_of(section: &str) -> impl Iterator<Item = &str> {
    section
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with('|'))
        .filter(|line| !line.starts_with("| measured |") && !line.starts_with("|---"))
}

/// The text between the history markers of `doc`, empty when they are absent.
pub fn section_of(doc: &str) -> &str {
    let Some(start) = doc.find(HISTORY_MARKERS.begin) else {
        return "";
    };
    let after = &doc[start + HISTORY_MARKERS.begin.len()..];
    after
        .find(HISTORY_MARKERS.end)
        .map_or("", |end| &after[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::cost::Cost;
    use crate::bench::results::{Latency, Outcome, Report};

    fn machine() -> Machine {
        Machine {
            date: "2026-12-01 10:00 UTC".into(),
            commit: "abcdef123456".into(),
            ..Machine::default()
        }
    }

    fn headline(accepted: f64, p99_ms: f64, cost: Option<Cost>) -> RunResult {
        RunResult {
            name: HEADLINE.into(),
            command: "steady --rate 20000".into(),
            outcome: Outcome::Correct,
            report: Some(Report {
                accepted_per_s: accepted,
                delivered_per_s: accepted - 1.0,
                delivery_latency: Some(Latency {
                    p99_ms,
                    ..Latency::default()
                }),
                ..Report::default()
            }),
            html: None,
            projection_lag: None,
            cost,
        }
    }

    #[test]
    fn a_published_suite_appends_its_headline_row_and_keeps_the_earlier_ones() {
        let earlier = "\n_Appended …_\n\n| measured | commit | accepted msg/s | deliveries/s \
                       | delivery p99 (ms) | CPU µs per message |\n|---|---|--:|--:|--:|--:|\n\
                       | 2026-11-24 13:07 UTC | 2de6ae7 | 0 | 0 | — | — |\n";
        let section = appended(earlier, &machine(), &[headline(12_853.0, 9_945.0, None)]).unwrap();
        let rows: Vec<&str> = rows_of(&section).collect();
        assert_eq!(
            rows,
            [
                "| 2026-11-24 13:07 UTC | 2de6ae7 | 0 | 0 | — | — |",
                "| 2026-12-01 10:00 UTC | abcdef123456 | 12,853 | 12,852 | 9,945 | — |",
            ]
        );
        assert_eq!(section.matches("| measured |").count(), 1);
        // Appending to its own output adds one row again.
        let again = appended(&section, &machine(), &[headline(20_000.0, 80.0, None)]).unwrap();
        assert_eq!(rows_of(&again).count(), 3);
    }

    #[test]
    fn no_row_without_a_headline_result() {
        let mut run = headline(1.0, 1.0, None);
        run.report = None;
        assert_eq!(appended("", &machine(), &[run]), None);
        assert_eq!(appended("", &machine(), &[]), None);
    }

    #[test]
    fn finds_the_section_between_its_markers() {
        let doc = "intro\n<!-- bench-history:begin -->\n| a |\n<!-- bench-history:end -->\nrest";
        assert_eq!(section_of(doc), "\n| a |\n");
        assert_eq!(section_of("no markers"), "");
    }
}
