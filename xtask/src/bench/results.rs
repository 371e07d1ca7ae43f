//! What each run produced — read back from `natter-loadtest`'s JSON — and the results section
//! of BENCHMARKS.md made from it, between markers so the hand-written text around it survives.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::cost::{self, Cost, Work};
use super::lag::Lag;
use super::machine::Machine;

pub const BEGIN: &str = "<!-- bench:begin -->";
pub const END: &str = "<!-- bench:end -->";
pub const HEADING: &str = "## Standard suite (cargo xtask bench)";

/// The part of `loadtest/src/report.rs`'s `Report` the table shows. Its own copy, so xtask does
/// not build the load generator; unknown fields are ignored.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub duration_s: f64,
    pub accounting: Accounting,
    pub sent_per_s: f64,
    pub accepted_per_s: f64,
    pub delivered_per_s: f64,
    pub accept_latency: Option<Latency>,
    pub delivery_latency: Option<Latency>,
    #[serde(default)]
    pub extra: BTreeMap<String, f64>,
    #[serde(default)]
    pub problems: Vec<String>,
    /// When the measured window began (Unix ms); absent for runs without one.
    #[serde(default)]
    pub t0_unix_ms: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Accounting {
    pub attempted: u64,
    pub accepted: u64,
    pub refused: u64,
    pub unanswered: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Owed and still arriving when the run ended (natter fell behind).
    #[serde(default)]
    pub late: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
}

/// Percentiles in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Report {
    /// What the run did, for its cost.
    pub fn work(&self) -> Work {
        Work {
            t0_unix_ms: self.t0_unix_ms,
            duration_s: self.duration_s,
            accepted_per_s: self.accepted_per_s,
            delivered_per_s: self.delivered_per_s,
            connections: self.extra.get("connections").copied(),
        }
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The load test finished and found every message delivered once, in order.
    Correct,
    /// The load test finished and found messages lost, duplicated, misordered or unexpected
    /// (its exit code 1); the report says which.
    Incorrect,
    /// No verdict: the load test failed, was stopped, or never ran; the text says why.
    Failed(String),
}

/// One entry of the suite, as it ran.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    pub name: String,
    /// The loadtest subcommand and its flags, e.g. `steady --users 200 …`.
    pub command: String,
    pub outcome: Outcome,
    /// The run's JSON, when it wrote one.
    pub report: Option<Report>,
    /// The HTML report, relative to the workspace root, when the run wrote one.
    pub html: Option<String>,
    /// Accept → committed in PostgreSQL, from the persister's histogram.
    pub projection_lag: Option<Lag>,
    /// CPU per unit of work and peak memory, by process.
    pub cost: Option<Cost>,
}

impl RunResult {
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Correct
    }
}

/// The text between the markers: when, where and how the suite ran, a row per run, and what
/// went wrong.
pub fn render_results(machine: &Machine, runs: &[RunResult]) -> String {
    let mut out = String::new();
    // `write!` to a String cannot fail.
    let _ = writeln!(
        out,
        "_Written by `cargo xtask bench`: rerun it to refresh; edits between the markers are \
         lost._\n"
    );
    let _ = writeln!(
        out,
        "Measured {} at commit {}.\n",
        machine.date, machine.commit
    );
    let _ = writeln!(
        out,
        "- Machine: {} cores ({}), {} memory; {}, kernel {}; open-files limit {}",
        machine.cores, machine.cpu, machine.memory, machine.os, machine.kernel, machine.open_files
    );
    let _ = writeln!(
        out,
        "- Build: {}, {} profile",
        machine.rustc, machine.profile
    );
    let _ = writeln!(
        out,
        "- NATS: {}; JetStream fsync: {}",
        machine.nats_server, machine.fsync
    );
    let _ = writeln!(out, "- PostgreSQL: {}", machine.postgres);
    let _ = writeln!(
        out,
        "- Everything (NATS, PostgreSQL, natter and the load generator) on this one machine"
    );
    let _ = writeln!(out, "- Command: `{}`\n", machine.command);

    out.push_str(
        "| run | result | parameters | accepted msg/s | deliveries/s | accept p50 / p99 (ms) \
         | delivery p50 / p99 / p999 (ms) | projection lag p50 / p99 (ms) \
         | lost / dup / misordered | extras | report |\n",
    );
    out.push_str("|---|---|---|--:|--:|--:|--:|--:|--:|---|---|\n");
    for run in runs {
        let _ = writeln!(out, "| {} |", row(run).join(" | "));
    }

    let costs: Vec<_> = runs
        .iter()
        .filter_map(|run| Some((run.name.as_str(), run.cost.as_ref()?)))
        .collect();
    if !costs.is_empty() {
        out.push_str("\n**Where the CPU went** (µs per message):\n\n");
        out.push_str(&cost::render(costs));
    }

    let failures: Vec<_> = runs.iter().filter(|run| !run.passed()).collect();
    if !failures.is_empty() {
        out.push_str("\nWhat went wrong:\n\n");
        for run in failures {
            let _ = writeln!(out, "- **{}**: {}", run.name, escape(&what_went_wrong(run)));
        }
    }

    out.push_str(
        "\nLatencies: accept is send → `message_sent`; delivery is the scheduled send → the \
         recipient's frame (for `fanout`, the group's last member; for `storm`, reconnect → \
         device complete). Projection lag is accept → committed in PostgreSQL, from the persister's \
         `natter_persister_projection_lag_seconds` histogram scraped before and after the run \
         (warm-up included), interpolated within its buckets (…, 50, 100, 250, 500 ms, 1 s, …). \
         The HTML reports (charts, timeline) open offline: a published \
         suite keeps a copy of each in `loadtest/reports/`, linked above; every run also writes \
         its HTML and JSON to `target/bench/<run>/`.\n",
    );
    out
}

fn row(run: &RunResult) -> Vec<String> {
    let result = match &run.outcome {
        Outcome::Correct => "ok".to_owned(),
        Outcome::Incorrect => "**WRONG**".to_owned(),
        Outcome::Failed(_) => "**failed**".to_owned(),
    };
    let report_link = run
        .html
        .as_ref()
        .map_or_else(|| "—".to_owned(), |path| format!("[html]({path})"));
    let mut cells = vec![
        run.name.clone(),
        result,
        format!("`{}`", escape(&run.command)),
    ];
    match &run.report {
        Some(report) => {
            let [rates @ .., wrong, extra] = measurements(report);
            cells.extend(rates);
            cells.push(run.projection_lag.map_or_else(
                || "—".to_owned(),
                |lag| format!("{} / {}", ms(lag.p50_ms), ms(lag.p99_ms)),
            ));
            cells.extend([wrong, extra]);
        }
        None => cells.extend(std::iter::repeat_n("—".to_owned(), 7)),
    }
    cells.push(report_link);
    cells
}

/// Rates, latencies, correctness counts and extras: six cells.
fn measurements(report: &Report) -> [String; 6] {
    let counts = &report.accounting;
    // Scenarios that send nothing (`connections`) have no rates to speak of.
    let traffic = counts.attempted > 0 || counts.delivered > 0;
    let rate = |value: f64| {
        if traffic {
            thousands(value)
        } else {
            "—".to_owned()
        }
    };
    let accept = report.accept_latency.as_ref().map_or_else(
        || "—".to_owned(),
        |l| format!("{} / {}", ms(l.p50_ms), ms(l.p99_ms)),
    );
    let delivery = report.delivery_latency.as_ref().map_or_else(
        || "—".to_owned(),
        |l| format!("{} / {} / {}", ms(l.p50_ms), ms(l.p99_ms), ms(l.p999_ms)),
    );
    let mut wrong = format!(
        "{} / {} / {}",
        counts.lost, counts.duplicated, counts.out_of_order
    );
    if counts.unexpected > 0 {
        let _ = write!(wrong, " (+{} unexpected)", counts.unexpected);
    }
    if counts.late > 0 {
        let _ = write!(wrong, " (+{} late)", counts.late);
    }
    [
        rate(report.accepted_per_s),
        rate(report.delivered_per_s),
        accept,
        delivery,
        wrong,
        escape(&extras(report)),
    ]
}

fn extras(report: &Report) -> String {
    let counts = &report.accounting;
    let mut parts = Vec::new();
    for (name, count) in [
        ("refused", counts.refused),
        ("unanswered", counts.unanswered),
    ] {
        if count > 0 {
            parts.push(format!("{name} {}", thousands(count as f64)));
        }
    }
    parts.extend(
        report
            .extra
            .iter()
            .map(|(name, value)| format!("{name} {}", number(*value))),
    );
    if parts.is_empty() {
        "—".to_owned()
    } else {
        parts.join(", ")
    }
}

fn what_went_wrong(run: &RunResult) -> String {
    let problems = run.report.as_ref().and_then(problems);
    match (&run.outcome, problems) {
        (Outcome::Failed(reason), Some(problems)) => format!("{reason} ({problems})"),
        (Outcome::Failed(reason), None) => reason.clone(),
        (_, Some(problems)) => problems,
        (_, None) => "the load test reported an incorrect run (exit 1) without details".to_owned(),
    }
}

/// The report's own list of problems, else what its counts show.
fn problems(report: &Report) -> Option<String> {
    if !report.problems.is_empty() {
        return Some(report.problems.join("; "));
    }
    let counts = &report.accounting;
    let counted: Vec<_> = [
        (counts.lost, "lost"),
        (counts.late, "late"),
        (counts.duplicated, "duplicated"),
        (counts.out_of_order, "out of order"),
        (counts.unexpected, "unexpected"),
    ]
    .into_iter()
    .filter(|(count, _)| *count > 0)
    .map(|(count, what)| format!("{count} deliveries {what}"))
    .collect();
    (!counted.is_empty()).then(|| counted.join(", "))
}

/// A table cell must not contain `|` or a line break.
fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// `12,345`: rounded to a whole number, thousands separated.
pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let rounded = format!("{:.0}", value.abs());
    let mut grouped = String::new();
    for (i, digit) in rounded.chars().enumerate() {
        if i > 0 && (rounded.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if value < 0.0 && rounded != "0" {
        format!("-{grouped}")
    } else {
        grouped
    }
}

/// Milliseconds with about three significant digits.
pub fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2}")
    } else if value < 100.0 {
        format!("{value:.1}")
    } else {
        thousands(value)
    }
}

/// Whole numbers and large values without decimals, small fractions with two.
fn number(value: f64) -> String {
    if value.abs() >= 100.0 || value.fract() == 0.0 {
        thousands(value)
    } else {
        format!("{value:.2}")
    }
}

/// The markers of a generated section, and the heading put above them when they are absent.
pub struct Markers {
    pub begin: &'static str,
    pub end: &'static str,
    pub heading: &'static str,
}

/// BENCHMARKS.md's.
pub const BENCH_MARKERS: Markers = Markers {
    begin: BEGIN,
    end: END,
    heading: HEADING,
};

/// `doc` with the text between [`BEGIN`] and [`END`] replaced by `new_section`. Without the
/// markers, they are inserted under [`HEADING`] at the end of the intro, i.e. before the first
/// `## ` heading (or at the end of a document without one). Everything else is kept byte for
/// byte. One marker without the other, or either twice, is an error: guessing could eat
/// hand-written text.
#[cfg(test)]
pub fn replace_between_markers(doc: &str, new_section: &str) -> anyhow::Result<String> {
    replace_between(doc, new_section, &BENCH_MARKERS)
}

/// [`replace_between_markers`] with other markers.
pub fn replace_between(doc: &str, new_section: &str, markers: &Markers) -> anyhow::Result<String> {
    let Markers {
        begin,
        end,
        heading,
    } = *markers;
    let block = format!("{begin}\n{}\n{end}", new_section.trim_matches('\n'));
    match (doc.matches(begin).count(), doc.matches(end).count()) {
        (1, 1) => {
            let (Some(start), Some(stop)) = (doc.find(begin), doc.find(end)) else {
                unreachable!("both markers were counted once")
            };
            if stop < start {
                bail!("{end} comes before {begin}; put them in order by hand");
            }
            Ok(format!(
                "{}{block}{}",
                &doc[..start],
                &doc[stop + end.len()..]
            ))
        }
        (0, 0) => {
            let inserted = format!("{heading}\n\n{block}\n");
            Ok(match first_section_heading(doc) {
                Some(at) => format!("{}{inserted}\n{}", &doc[..at], &doc[at..]),
                None if doc.is_empty() => inserted,
                None => format!("{}\n\n{inserted}", doc.trim_end_matches('\n')),
            })
        }
        (begins, ends) => bail!(
            "expected {begin} and {end} once each, found {begins} and {ends}; fix them by hand"
        ),
    }
}

/// The byte offset of the first line starting with `## ` outside a fenced code block.
fn first_section_heading(doc: &str) -> Option<usize> {
    let mut offset = 0;
    let mut in_fence = false;
    for line in doc.split_inclusive('\n') {
        if line.starts_with("```") || line.starts_with("~~~") {
            in_fence = !in_fence;
        } else if !in_fence && line.starts_with("## ") {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            date: "2026-01-02 03:04 UTC".into(),
            cores: "2".into(),
            memory: "23.5 GiB".into(),
            cpu: "AMD EPYC".into(),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel: "6.1.0".into(),
            open_files: "20000".into(),
            rustc: "rustc 1.95.0 (abc 2026-01-01)".into(),
            profile: "release",
            nats_server: "nats-server: v2.15.1".into(),
            fsync: "interval (the server's default)".into(),
            postgres: "PostgreSQL 15.18".into(),
            commit: "0123456789ab".into(),
            command: "cargo xtask bench".into(),
        }
    }

    fn latency(p50_ms: f64, p99_ms: f64, p999_ms: f64) -> Latency {
        Latency {
            count: 1_000,
            p50_ms,
            p99_ms,
            p999_ms,
            ..Latency::default()
        }
    }

    fn steady() -> RunResult {
        RunResult {
            name: "steady-1k".into(),
            command: "steady --users 200 --rate 1000 --duration 20 --warmup 3".into(),
            outcome: Outcome::Correct,
            report: Some(Report {
                scenario: "steady".into(),
                duration_s: 20.0,
                accounting: Accounting {
                    attempted: 20_000,
                    accepted: 20_000,
                    delivered: 40_000,
                    ..Accounting::default()
                },
                sent_per_s: 1_000.0,
                accepted_per_s: 999.6,
                delivered_per_s: 1_999.2,
                accept_latency: Some(latency(1.234, 5.5, 9.0)),
                delivery_latency: Some(latency(2.5, 12.26, 153.7)),
                ..Report::default()
            }),
            html: Some("target/bench/steady-1k/steady.html".into()),
            cost: None,
            projection_lag: Some(Lag {
                count: 20_000,
                p50_ms: 12.5,
                p99_ms: 87.0,
            }),
        }
    }

    fn table_rows(section: &str) -> Vec<&str> {
        section
            .lines()
            .filter(|line| line.starts_with('|'))
            .collect()
    }

    #[test]
    fn renders_the_setting_and_a_row_per_run() {
        let connections = RunResult {
            name: "connections".into(),
            command: "connections --count 20000 --concurrency 500 --hold 5".into(),
            outcome: Outcome::Failed("natter-loadtest failed (exit 2)".into()),
            report: None,
            html: None,
            projection_lag: None,
            cost: None,
        };
        let mut storm = steady();
        storm.name = "storm".into();
        storm.outcome = Outcome::Incorrect;
        if let Some(report) = storm.report.as_mut() {
            report.accounting.lost = 7;
            report.accounting.unexpected = 1;
            report.extra.insert("storm_complete_s".into(), 12.3456);
            report.extra.insert("connect_per_s".into(), 4_321.9);
            report.problems = vec!["7 deliveries LOST (accepted, never delivered)".into()];
        }

        let section = render_results(&machine(), &[steady(), connections, storm]);

        for fact in [
            "2026-01-02 03:04 UTC",
            "2 cores (AMD EPYC), 23.5 GiB",
            "kernel 6.1.0",
            "rustc 1.95.0",
            "nats-server: v2.15.1",
            "fsync: interval",
            "PostgreSQL 15.18",
            "`cargo xtask bench`",
            "loadtest/reports/",
        ] {
            assert!(section.contains(fact), "{fact} missing from:\n{section}");
        }
        let rows = table_rows(&section);
        assert_eq!(rows.len(), 2 + 3, "{section}");
        let pipes = |row: &str| row.matches('|').count() - row.matches("\\|").count();
        assert!(rows.iter().all(|row| pipes(row) == 12), "{section}");
        assert_eq!(
            rows[2],
            "| steady-1k | ok | `steady --users 200 --rate 1000 --duration 20 --warmup 3` \
             | 1,000 | 1,999 | 1.23 / 5.50 | 2.50 / 12.3 / 154 | 12.5 / 87.0 | 0 / 0 / 0 | — \
             | [html](target/bench/steady-1k/steady.html) |"
        );
        assert!(rows[3].starts_with("| connections | **failed** |"));
        assert!(rows[3].ends_with("| — | — | — | — | — | — | — |"));
        assert!(rows[4].contains("| **WRONG** |"));
        assert!(rows[4].contains("7 / 0 / 0 (+1 unexpected)"));
        assert!(rows[4].contains("connect_per_s 4,322, storm_complete_s 12.35"));
        assert!(section.contains("- **connections**: natter-loadtest failed (exit 2)"));
        assert!(section.contains("- **storm**: 7 deliveries LOST"));
    }

    #[test]
    fn names_what_went_wrong_from_the_counts_when_the_report_lists_nothing() {
        let mut run = steady();
        run.outcome = Outcome::Incorrect;
        if let Some(report) = run.report.as_mut() {
            report.accounting.duplicated = 2;
            report.accounting.out_of_order = 1;
        }
        let section = render_results(&machine(), &[run]);
        assert!(
            section
                .contains("- **steady-1k**: 2 deliveries duplicated, 1 deliveries out of order\n"),
            "{section}"
        );
    }

    #[test]
    fn a_correct_suite_lists_nothing_as_wrong() {
        let section = render_results(&machine(), &[steady()]);
        assert!(!section.contains("What went wrong"));
    }

    #[test]
    fn keeps_cells_free_of_pipes() {
        let mut run = steady();
        if let Some(report) = run.report.as_mut() {
            report.extra.insert("a|b".into(), 1.0);
        }
        let section = render_results(&machine(), &[run]);
        assert!(section.contains("a\\|b 1"));
    }

    #[test]
    fn formats_numbers_for_reading() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.5), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-4_321.0), "-4,321");
        assert_eq!(ms(0.123), "0.12");
        assert_eq!(ms(42.04), "42.0");
        assert_eq!(ms(1_532.6), "1,533");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.125), "0.12");
    }

    #[test]
    fn reads_the_load_tests_json() {
        let json = r#"{
            "scenario": "steady", "started_at": "2026-01-02T03:04:05Z", "duration_s": 20.0,
            "parameters": {"users": 200},
            "accounting": {"attempted": 10, "accepted": 9, "refused": 1, "unanswered": 0,
                           "delivered": 18, "lost": 0, "duplicated": 0, "out_of_order": 0,
                           "unexpected": 0},
            "sent_per_s": 0.5, "accepted_per_s": 0.45, "delivered_per_s": 0.9,
            "accept_latency": {"count": 9, "min_ms": 1.0, "mean_ms": 2.0, "p50_ms": 2.0,
                               "p90_ms": 3.0, "p99_ms": 4.0, "p999_ms": 4.0, "max_ms": 4.0},
            "delivery_latency": null,
            "delivery_histogram": [], "timeline": [],
            "extra": {"projection_lag_p99_ms": 12.5},
            "problems": []
        }"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steady.json");
        fs::write(&path, json).unwrap();
        let report = Report::load(&path).unwrap();
        assert_eq!(report.accounting.refused, 1);
        assert_eq!(report.accept_latency.unwrap().p99_ms, 4.0);
        assert_eq!(report.delivery_latency, None);
        assert_eq!(report.extra["projection_lag_p99_ms"], 12.5);

        fs::write(&path, "{}").unwrap();
        assert!(Report::load(&path).is_err());
    }

    const INTRO: &str = "# natter benchmarks\n\nNumbers, with their commands.\n\n\
                         Machine: two cores.\n\n";
    const REST: &str = "## What tracing costs\n\n```sh\n## not a heading\n```\n\n\
                        Hand-written text.\n";

    #[test]
    fn inserts_the_section_after_the_intro_when_markers_are_absent() {
        let doc = format!("{INTRO}{REST}");
        let updated = replace_between_markers(&doc, "new numbers\n").unwrap();
        assert_eq!(
            updated,
            format!("{INTRO}{HEADING}\n\n{BEGIN}\nnew numbers\n{END}\n\n{REST}")
        );
    }

    #[test]
    fn replaces_only_the_text_between_the_markers() {
        let doc = format!("{INTRO}{HEADING}\n\nA note.\n\n{BEGIN}\nold numbers\n{END}\n\n{REST}");
        let updated = replace_between_markers(&doc, "\nnew numbers\n\n").unwrap();
        assert_eq!(
            updated,
            format!("{INTRO}{HEADING}\n\nA note.\n\n{BEGIN}\nnew numbers\n{END}\n\n{REST}")
        );
        assert_eq!(
            replace_between_markers(&updated, "new numbers").unwrap(),
            updated
        );
    }

    #[test]
    fn appends_the_section_to_a_document_without_sections() {
        let updated = replace_between_markers("# Title\n\nIntro.\n", "numbers").unwrap();
        assert_eq!(
            updated,
            format!("# Title\n\nIntro.\n\n{HEADING}\n\n{BEGIN}\nnumbers\n{END}\n")
        );
    }

    #[test]
    fn refuses_to_guess_with_a_lone_or_misplaced_marker() {
        for doc in [
            format!("{INTRO}{BEGIN}\nold\n{REST}"),
            format!("{INTRO}{END}\nold\n{BEGIN}\n{REST}"),
            format!("{INTRO}{BEGIN}\n{END}\n{BEGIN}\n{END}\n{REST}"),
        ] {
            assert!(replace_between_markers(&doc, "new").is_err(), "{doc}");
        }
    }

    #[test]
    fn keeps_the_hand_written_sections_of_benchmarks_md() {
        let path = natter_localinfra::workspace_root().join("BENCHMARKS.md");
        let doc = fs::read_to_string(path).unwrap();
        let updated = replace_between_markers(&doc, "the suite's numbers").unwrap();
        let (before, rest) = updated.split_once(BEGIN).unwrap();
        let (inside, after) = rest.split_once(END).unwrap();
        assert_eq!(inside, "\nthe suite's numbers\n");
        assert!(before.starts_with("# natter benchmarks\n"));
        assert!(after.contains("## What tracing costs on the message path"));
        // Outside the markers nothing changed, whether they were there already or not.
        let outside = |text: &str| match (text.find(BEGIN), text.find(END)) {
            (Some(begin), Some(end)) => format!("{}{}", &text[..begin], &text[end + END.len()..]),
            _ => text.to_owned(),
        };
        if doc.contains(BEGIN) {
            assert_eq!(outside(&updated), outside(&doc));
        } else {
            let heading = format!("{HEADING}\n\n\n\n");
            assert_eq!(outside(&updated).replacen(&heading, "", 1), doc);
        }
    }
}
