//! A [`Report`] made readable: the one-screen text summary printed after a
//! run, the JSON file for machines, and a self-contained HTML page with SVG
//! charts for people.

use crate::report::{Accounting, Bucket, LatencySummary, Report, Second};
use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::fmt::Write as _;
use std::path::Path;

const OK_VERDICT: &str = "OK: every accepted message delivered once, in order";

/// Each chart's size in SVG user units; the page scales it down to fit.
const CHART_SIZE: (u32, u32) = (960, 400);

/// The run in one screen of text: what ran, the books, the rates, the
/// latencies and a verdict that cannot be missed when the run went wrong.
pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    let started = if report.started_at.is_empty() {
        String::new()
    } else {
        format!("started {}, ", report.started_at)
    };
    line(
        &mut out,
        format!(
            "natter-loadtest {}: {started}measured {:.1} s",
            or_unnamed(&report.scenario),
            report.duration_s
        ),
    );
    if !report.parameters.is_empty() {
        let parameters: Vec<String> = report
            .parameters
            .iter()
            .map(|(name, value)| format!("{name}={}", parameter(value)))
            .collect();
        line(&mut out, format!("parameters  {}", parameters.join(", ")));
    }

    let a = &report.accounting;
    line(
        &mut out,
        format!(
            "messages    attempted {}  accepted {}  refused {}  unanswered {}",
            count(a.attempted),
            count(a.accepted),
            count(a.refused),
            count(a.unanswered)
        ),
    );
    line(
        &mut out,
        format!(
            "deliveries  delivered {}  lost {}  duplicated {}  out of order {}  unexpected {}",
            count(a.delivered),
            count(a.lost),
            count(a.duplicated),
            count(a.out_of_order),
            count(a.unexpected)
        ),
    );
    line(
        &mut out,
        format!(
            "rates       sent {:.1}/s  accepted {:.1}/s  delivered {:.1}/s",
            report.sent_per_s, report.accepted_per_s, report.delivered_per_s
        ),
    );

    let latencies = latency_rows(report);
    if !latencies.is_empty() {
        line(
            &mut out,
            format!(
                "latency ms  {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "count", "p50", "p90", "p99", "p99.9", "max"
            ),
        );
        for (name, l) in latencies {
            line(
                &mut out,
                format!(
                    "  {name:<9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    count(l.count),
                    ms(l.p50_ms),
                    ms(l.p90_ms),
                    ms(l.p99_ms),
                    ms(l.p999_ms),
                    ms(l.max_ms)
                ),
            );
        }
    }
    for (name, value) in &report.extra {
        line(&mut out, format!("extra       {name} = {}", number(*value)));
    }
    for kind in ["accept", "delivery"] {
        let stalls: Vec<i64> = report
            .stalls
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.to_unix_ms - s.from_unix_ms)
            .collect();
        if let Some(longest) = stalls.iter().max() {
            line(
                &mut out,
                format!(
                    "stalls      {kind}: {} of 250 ms or more, the longest {longest} ms",
                    stalls.len()
                ),
            );
        }
    }

    for anomaly in report.anomalies.iter().take(10) {
        line(&mut out, format!("anomaly     {anomaly}"));
    }

    if report.problems.is_empty() {
        out.push_str(OK_VERDICT);
    } else {
        // A failed run must stand out in a scrolling CI log, not read like
        // one more line of numbers.
        let bar = "!".repeat(72);
        line(&mut out, bar.clone());
        line(&mut out, "!!! FAILED:".to_owned());
        for problem in &report.problems {
            line(&mut out, format!("!!!   {problem}"));
        }
        out.push_str(&bar);
    }
    out
}

/// Writes the report as pretty JSON, creating the directory if needed.
pub fn write_json(report: &Report, path: &Path) -> anyhow::Result<()> {
    let mut json = serde_json::to_string_pretty(report).context("cannot serialise the report")?;
    json.push('\n');
    write_file(path, &json)
}

/// Writes the report as one HTML page that opens offline: inline CSS and
/// SVG, no scripts, no external assets.
pub fn write_html(report: &Report, path: &Path) -> anyhow::Result<()> {
    write_file(path, &html(report)?)
}

fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

fn line(out: &mut String, text: String) {
    out.push_str(&text);
    out.push('\n');
}

fn or_unnamed(scenario: &str) -> &str {
    if scenario.is_empty() {
        "(unnamed scenario)"
    } else {
        scenario
    }
}

/// Parameters as typed on the command line: strings without JSON quotes.
fn parameter(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn latency_rows(report: &Report) -> Vec<(&'static str, &LatencySummary)> {
    [
        ("accept", report.accept_latency.as_ref()),
        ("delivery", report.delivery_latency.as_ref()),
    ]
    .into_iter()
    .filter_map(|(name, l)| l.map(|l| (name, l)))
    .collect()
}

/// A count with thousands separated, so 1,000,000 is not misread as 100,000.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds with the precision that matters at their scale: a local run
/// measures fractions of a millisecond, a saturated one whole seconds.
fn ms(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a < 10.0 {
        format!("{v:.3}")
    } else if a < 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.is_finite() && v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.is_finite() {
        format!("{v:.3}")
    } else {
        v.to_string()
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; }
.meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; }
th { background: #f4f4f4; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
td.note { color: #666; }
tr.bad td { background: #fce8e6; color: #a50e0e; font-weight: bold; }
.verdict { padding: 0.8em 1em; border-radius: 4px; font-weight: bold; font-size: 1.1em; }
.verdict.ok { background: #e6f4ea; color: #137333; border: 2px solid #137333; }
.verdict.failed { background: #fce8e6; color: #a50e0e; border: 2px solid #a50e0e; }
.verdict ul { margin: 0.4em 0 0; }
figure { margin: 0 0 2em; }
figure svg { max-width: 100%; height: auto; }
.nodata { color: #666; font-style: italic; border: 1px dashed #ccc; padding: 2em; text-align: center; }
";

fn html(report: &Report) -> anyhow::Result<String> {
    let scenario = escape(or_unnamed(&report.scenario));
    let state = if report.ok() { "OK" } else { "FAILED" };
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(h, "<title>natter-loadtest {scenario}: {state}</title>");
    let _ = writeln!(h, "<style>{STYLE}</style>\n</head>\n<body>");
    let _ = writeln!(h, "<h1>natter-loadtest: {scenario}</h1>");
    let _ = writeln!(
        h,
        "<p class=\"meta\">started {}, measured {:.1} s (warm-up excluded)</p>",
        escape(&report.started_at),
        report.duration_s
    );

    verdict_html(&mut h, report);
    parameters_html(&mut h, report);
    accounting_html(&mut h, &report.accounting);
    rates_html(&mut h, report);
    latency_html(&mut h, report);
    extra_html(&mut h, report);

    figure(
        &mut h,
        "Latency over time",
        "p50 and p99 of the latencies that ended in each second, in ms",
        latency_chart(&report.timeline)?,
    );
    figure(
        &mut h,
        "Delivery latency histogram",
        "deliveries per latency bucket; each bar counts latencies above the previous bound and at most its own, in ms",
        histogram_chart(&report.delivery_histogram)?,
    );
    figure(
        &mut h,
        "Throughput",
        "messages sent, accepted and delivered in each second",
        throughput_chart(&report.timeline)?,
    );
    h.push_str("</body>\n</html>\n");
    Ok(h)
}

fn verdict_html(h: &mut String, report: &Report) {
    if report.problems.is_empty() {
        let _ = writeln!(h, "<p class=\"verdict ok\">{}</p>", escape(OK_VERDICT));
    } else {
        h.push_str("<div class=\"verdict failed\">FAILED:\n<ul>\n");
        for problem in &report.problems {
            let _ = writeln!(h, "<li>{}</li>", escape(problem));
        }
        h.push_str("</ul>\n</div>\n");
    }
}

fn parameters_html(h: &mut String, report: &Report) {
    if report.parameters.is_empty() {
        return;
    }
    h.push_str("<h2>Parameters</h2>\n<table>\n");
    for (name, value) in &report.parameters {
        let _ = writeln!(
            h,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(name),
            escape(&parameter(value))
        );
    }
    h.push_str("</table>\n");
}

fn accounting_html(h: &mut String, a: &Accounting) {
    // (name, value, whether any is wrong, what it counts)
    let rows = [
        ("attempted", a.attempted, false, "sends written to a socket"),
        (
            "accepted",
            a.accepted,
            false,
            "sends answered with message_sent",
        ),
        (
            "refused",
            a.refused,
            false,
            "sends answered with an error frame (not owed)",
        ),
        (
            "unanswered",
            a.unanswered,
            false,
            "sends with no answer by the end of the run",
        ),
        (
            "delivered",
            a.delivered,
            false,
            "deliveries received, each (recipient, message) once",
        ),
        (
            "lost",
            a.lost,
            true,
            "deliveries owed (accepted × recipients) never received",
        ),
        (
            "duplicated",
            a.duplicated,
            true,
            "deliveries received more than once by one device",
        ),
        (
            "out of order",
            a.out_of_order,
            true,
            "deliveries after a later message of their conversation",
        ),
        (
            "unexpected",
            a.unexpected,
            true,
            "deliveries of messages this run never sent to that recipient",
        ),
    ];
    h.push_str("<h2>Accounting</h2>\n<table>\n");
    for (name, value, wrong_if_any, note) in rows {
        let class = if wrong_if_any && value > 0 {
            " class=\"bad\""
        } else {
            ""
        };
        let _ = writeln!(
            h,
            "<tr{class}><th>{name}</th><td class=\"n\">{}</td><td class=\"note\">{}</td></tr>",
            count(value),
            escape(note)
        );
    }
    h.push_str("</table>\n");
}

fn rates_html(h: &mut String, report: &Report) {
    h.push_str("<h2>Rates</h2>\n<table>\n<tr><th></th><th>per second</th></tr>\n");
    for (name, value) in [
        ("sent", report.sent_per_s),
        ("accepted", report.accepted_per_s),
        ("delivered", report.delivered_per_s),
    ] {
        let _ = writeln!(h, "<tr><th>{name}</th><td class=\"n\">{value:.1}</td></tr>");
    }
    h.push_str("</table>\n");
}

fn latency_html(h: &mut String, report: &Report) {
    h.push_str("<h2>Latency (ms)</h2>\n");
    let rows = latency_rows(report);
    if rows.is_empty() {
        h.push_str("<p class=\"nodata\">no latency samples</p>\n");
        return;
    }
    h.push_str("<table>\n<tr><th></th><th>count</th><th>min</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>\n");
    for (name, l) in rows {
        let _ = write!(
            h,
            "<tr><th>{name}</th><td class=\"n\">{}</td>",
            count(l.count)
        );
        for v in [
            l.min_ms, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms,
        ] {
            let _ = write!(h, "<td class=\"n\">{}</td>", ms(v));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

fn extra_html(h: &mut String, report: &Report) {
    if report.extra.is_empty() {
        return;
    }
    h.push_str("<h2>Scenario measures</h2>\n<table>\n");
    for (name, value) in &report.extra {
        let _ = writeln!(
            h,
            "<tr><th>{}</th><td class=\"n\">{}</td></tr>",
            escape(name),
            number(*value)
        );
    }
    h.push_str("</table>\n");
}

fn figure(h: &mut String, title: &str, caption: &str, svg: Option<String>) {
    let _ = writeln!(h, "<h2>{}</h2>\n<figure>", escape(title));
    match svg {
        Some(svg) => h.push_str(&svg),
        None => h.push_str("<p class=\"nodata\">no data</p>\n"),
    }
    let _ = writeln!(h, "<figcaption>{}</figcaption>\n</figure>", escape(caption));
}

/// One line of a chart, cut where the data has gaps (a second with no
/// latency ended) rather than drawn across them as if it had been measured.
struct Line {
    label: &'static str,
    color: RGBColor,
    runs: Vec<Vec<(f64, f64)>>,
}

impl Line {
    fn new(
        label: &'static str,
        color: RGBColor,
        timeline: &[Second],
        y: impl Fn(&Second) -> Option<f64>,
    ) -> Self {
        let mut runs = Vec::new();
        let mut run = Vec::new();
        for s in timeline {
            match y(s).filter(|v| v.is_finite()) {
                Some(v) => run.push((f64::from(s.t), v)),
                None if !run.is_empty() => runs.push(std::mem::take(&mut run)),
                None => {}
            }
        }
        if !run.is_empty() {
            runs.push(run);
        }
        Line { label, color, runs }
    }

    fn points(&self) -> impl Iterator<Item = &(f64, f64)> {
        self.runs.iter().flatten()
    }
}

const DELIVERY_P50: RGBColor = RGBColor(66, 133, 244);
const DELIVERY_P99: RGBColor = RGBColor(13, 71, 161);
const ACCEPT_P50: RGBColor = RGBColor(255, 167, 38);
const ACCEPT_P99: RGBColor = RGBColor(191, 54, 12);
const SENT: RGBColor = RGBColor(120, 120, 120);
const ACCEPTED: RGBColor = RGBColor(255, 143, 0);
const DELIVERED: RGBColor = RGBColor(30, 136, 229);

fn latency_chart(timeline: &[Second]) -> anyhow::Result<Option<String>> {
    let lines = [
        Line::new("delivery p50", DELIVERY_P50, timeline, |s| {
            s.delivery_p50_ms
        }),
        Line::new("delivery p99", DELIVERY_P99, timeline, |s| {
            s.delivery_p99_ms
        }),
        Line::new("accept p50", ACCEPT_P50, timeline, |s| s.accept_p50_ms),
        Line::new("accept p99", ACCEPT_P99, timeline, |s| s.accept_p99_ms),
    ];
    // plotters picks the decimals its ticks need.
    lines_chart(&lines, "latency (ms)", None)
}

fn throughput_chart(timeline: &[Second]) -> anyhow::Result<Option<String>> {
    // Counts per second are far below 2^53, so the f64 is exact.
    let lines = [
        Line::new("sent", SENT, timeline, |s| Some(s.sent as f64)),
        Line::new("accepted", ACCEPTED, timeline, |s| Some(s.accepted as f64)),
        Line::new("delivered", DELIVERED, timeline, |s| {
            Some(s.delivered as f64)
        }),
    ];
    lines_chart(&lines, "messages per second", Some(&|v| format!("{v:.0}")))
}

/// Lines against seconds since the start; `None` when there is nothing to draw.
fn lines_chart(
    lines: &[Line],
    y_desc: &str,
    y_label: Option<&dyn Fn(&f64) -> String>,
) -> anyhow::Result<Option<String>> {
    let Some((x_lo, x_hi, y_hi)) =
        lines
            .iter()
            .flat_map(Line::points)
            .fold(None, |acc, &(x, y)| {
                let (lo, hi, top) = acc.unwrap_or((x, x, y));
                Some((f64::min(lo, x), f64::max(hi, x), f64::max(top, y)))
            })
    else {
        return Ok(None);
    };
    // plotters needs a range with some width, even for a single point.
    let x_hi = if x_hi - x_lo < 1.0 { x_lo + 1.0 } else { x_hi };
    let y_hi = if y_hi > 0.0 { y_hi * 1.1 } else { 1.0 };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x_lo..x_hi, 0.0..y_hi)?;
        let mut mesh = chart.configure_mesh();
        // Whole seconds only: a short run must not get "0", "0", "1", "1".
        mesh.x_labels(((x_hi - x_lo) as usize + 1).min(10))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("t (s)")
            .y_desc(y_desc)
            .light_line_style(WHITE.mix(0.0));
        if let Some(y_label) = y_label {
            mesh.y_label_formatter(y_label);
        }
        mesh.draw()?;
        for l in lines {
            let color = l.color;
            for (i, run) in l.runs.iter().enumerate() {
                // A lone second would be an invisible zero-length line.
                let dot = if run.len() == 1 { 3 } else { 0 };
                let series = chart.draw_series(
                    LineSeries::new(run.iter().copied(), color.stroke_width(2)).point_size(dot),
                )?;
                if i == 0 {
                    series.label(l.label).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        root.present()?;
    }
    Ok(Some(svg))
}

fn histogram_chart(buckets: &[Bucket]) -> anyhow::Result<Option<String>> {
    let top = buckets.iter().map(|b| b.count).max().unwrap_or(0);
    if top == 0 {
        return Ok(None);
    }
    let labels: Vec<String> = buckets
        .iter()
        .enumerate()
        .map(|(i, b)| bucket_label(b.le_ms, i.checked_sub(1).map(|p| buckets[p].le_ms)))
        .collect();
    // plotters' integer ranges include their end; a lone bucket still needs
    // a range with some width.
    let last = (buckets.len() - 1).max(1);
    let x_label = |v: &SegmentValue<usize>| match v {
        SegmentValue::Exact(i) | SegmentValue::CenterOf(i) => {
            labels.get(*i).cloned().unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        histogram_into(&root, buckets, last, top, &x_label)?;
        root.present()?;
    }
    Ok(Some(svg))
}

fn histogram_into(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    buckets: &[Bucket],
    last: usize,
    top: u64,
    x_label: &dyn Fn(&SegmentValue<usize>) -> String,
) -> anyhow::Result<()> {
    let mut chart = ChartBuilder::on(root)
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((0..last).into_segmented(), 0..top + top / 10 + 1)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(buckets.len())
        .x_label_formatter(x_label)
        .x_desc("delivery latency (ms)")
        .y_desc("deliveries")
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart.draw_series(
        Histogram::vertical(&chart)
            .style(DELIVERED.filled())
            .margin(4)
            .data(buckets.iter().enumerate().map(|(i, b)| (i, b.count))),
    )?;
    // The tail is what matters and is far too short to see against the
    // peak, so every non-empty bar says how many it holds.
    let above = ("sans-serif", 12)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(
        buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| b.count > 0)
            .map(|(i, b)| {
                Text::new(
                    count(b.count),
                    (SegmentValue::CenterOf(i), b.count),
                    above.clone(),
                )
            }),
    )?;
    Ok(())
}

/// `≤ 5` for a bounded bucket; `> 10000` for the catch-all at infinity.
fn bucket_label(le_ms: f64, previous: Option<f64>) -> String {
    match (le_ms.is_finite(), previous) {
        (true, _) => format!("≤{le_ms}"),
        (false, Some(p)) => format!(">{p}"),
        (false, None) => "all".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn filled() -> Report {
        let latency = |base: f64| LatencySummary {
            count: 1200,
            min_ms: base / 4.0,
            mean_ms: base,
            p50_ms: base,
            p90_ms: base * 2.0,
            p99_ms: base * 4.0,
            p999_ms: base * 8.0,
            max_ms: base * 20.0,
        };
        Report {
            scenario: "steady".to_owned(),
            started_at: "2025-01-02T03:04:05Z".to_owned(),
            duration_s: 60.0,
            parameters: [
                ("rate".to_owned(), serde_json::json!(20)),
                ("users".to_owned(), serde_json::json!("fifty")),
            ]
            .into_iter()
            .collect(),
            accounting: Accounting {
                attempted: 1_200_000,
                accepted: 1_199_990,
                refused: 10,
                delivered: 1_199_990,
                ..Accounting::default()
            },
            sent_per_s: 20000.0,
            accepted_per_s: 19999.8,
            delivered_per_s: 19999.8,
            accept_latency: Some(latency(0.8)),
            delivery_latency: Some(latency(3.5)),
            delivery_histogram: [0.5, 1.0, 2.0, 5.0, 10.0, 25.0]
                .into_iter()
                .enumerate()
                .map(|(i, le_ms)| Bucket {
                    le_ms,
                    count: (i as u64 + 1) * 100,
                })
                .collect(),
            timeline: (0..60)
                .map(|t| Second {
                    t,
                    sent: 20000,
                    retried: u64::from(t == 31) * 7,
                    accepted: 19990 + u64::from(t % 3),
                    delivered: 19980 + u64::from(t % 5),
                    // A gap in the latencies, as when nothing completed.
                    accept_p50_ms: (t != 30).then_some(0.8),
                    accept_p99_ms: (t != 30).then_some(3.0),
                    // Sixty-fourths are exact in binary, so the JSON round trip is too.
                    delivery_p50_ms: (t != 30).then_some(3.5 + f64::from(t) / 64.0),
                    delivery_p99_ms: (t != 30).then_some(14.0),
                })
                .collect(),
            t0_unix_ms: Some(1_735_787_045_000),
            anomalies: Vec::new(),
            stalls: vec![crate::report::Stall {
                kind: "accept".to_owned(),
                from_unix_ms: 1_735_787_075_000,
                to_unix_ms: 1_735_787_076_250,
            }],
            extra: [("connect_per_s".to_owned(), 812.5)].into_iter().collect(),
            problems: Vec::new(),
        }
    }

    fn failed() -> Report {
        let mut report = filled();
        report.accounting.lost = 7;
        report.accounting.duplicated = 2;
        report.problems = report.accounting.problems();
        report
    }

    /// A directory under the temp dir that no other test or run uses, not
    /// created yet so the writers must create it; removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let id = std::process::id();
            Scratch(std::env::temp_dir().join(format!("natter-render-{test}-{id}-{nanos}")))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn summary_of_a_correct_run_says_ok() {
        assert!(
            summary(&filled()).contains("accept: 1 of 250 ms or more, the longest 1250 ms"),
            "{}",
            summary(&filled())
        );
        let text = summary(&filled());
        assert!(text.ends_with(OK_VERDICT), "{text}");
        assert!(!text.contains("FAILED"), "{text}");
        assert!(text.contains("steady"), "{text}");
        assert!(text.contains("rate=20, users=fifty"), "{text}");
        assert!(text.contains("attempted 1,200,000"), "{text}");
        assert!(text.contains("connect_per_s = 812.5"), "{text}");
        assert!(text.lines().count() <= 25, "{text}");
    }

    #[test]
    fn summary_of_a_failed_run_says_failed_and_lists_every_problem() {
        let report = failed();
        assert_eq!(report.problems.len(), 2);
        let text = summary(&report);
        assert!(text.contains("FAILED:"), "{text}");
        assert!(text.contains("!!!"), "{text}");
        assert!(!text.contains(OK_VERDICT), "{text}");
        for problem in &report.problems {
            assert!(
                text.lines().any(|l| l.contains(problem.as_str())),
                "{problem} missing from\n{text}"
            );
        }
        assert!(text.contains("LOST"), "{text}");
    }

    #[test]
    fn summary_omits_missing_latencies() {
        let text = summary(&Report::default());
        assert!(!text.contains("p50"), "{text}");
        assert!(text.ends_with(OK_VERDICT), "{text}");
    }

    #[test]
    fn json_round_trips() {
        let report = failed();
        let dir = Scratch::new("json");
        let path = dir.0.join("out").join("steady.json");
        write_json(&report, &path).unwrap();
        let read: Report = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(read, report);
    }

    #[test]
    fn html_has_three_charts_and_no_external_references() {
        let dir = Scratch::new("html");
        let path = dir.0.join("steady.html");
        write_html(&failed(), &path).unwrap();
        let page = std::fs::read_to_string(&path).unwrap();
        assert_eq!(page.matches("<svg").count(), 3, "{page}");
        assert!(page.contains("FAILED"));
        assert!(page.contains("LOST"));
        // SVG's namespace is a name, not something fetched.
        let rest = page.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !rest.contains("http://") && !rest.contains("https://"),
            "{rest}"
        );
        assert!(!rest.contains("<script"), "{rest}");
        assert!(!rest.contains("no data"), "{rest}");
    }

    #[test]
    fn html_of_an_empty_report_renders_without_charts() {
        let dir = Scratch::new("empty");
        let path = dir.0.join("empty.html");
        write_html(&Report::default(), &path).unwrap();
        let page = std::fs::read_to_string(&path).unwrap();
        assert_eq!(page.matches("<svg").count(), 0, "{page}");
        assert_eq!(page.matches("no data").count(), 3, "{page}");
        assert!(page.contains(OK_VERDICT));
    }

    #[test]
    fn html_charts_survive_degenerate_data() {
        let mut report = filled();
        // One second, one bucket, an infinite catch-all and non-finite values.
        report.timeline.truncate(1);
        report.timeline[0].delivery_p99_ms = Some(f64::NAN);
        report.delivery_histogram = vec![Bucket {
            le_ms: f64::INFINITY,
            count: 3,
        }];
        let page = html(&report).unwrap();
        assert_eq!(page.matches("<svg").count(), 3, "{page}");
        report.delivery_histogram = vec![
            Bucket {
                le_ms: 1.0,
                count: 0,
            },
            Bucket {
                le_ms: f64::INFINITY,
                count: 0,
            },
        ];
        report.timeline.clear();
        let page = html(&report).unwrap();
        assert_eq!(page.matches("<svg").count(), 0, "{page}");
    }

    #[test]
    fn html_escapes_what_the_run_reports() {
        let mut report = failed();
        report.scenario = "<script>alert(1)</script>".to_owned();
        report.problems.push("a & b < c".to_owned());
        let page = html(&report).unwrap();
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("a &amp; b &lt; c"));
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn the_catch_all_bucket_is_labelled_by_the_bound_below_it() {
        assert_eq!(bucket_label(5.0, Some(2.0)), "≤5");
        assert_eq!(bucket_label(0.5, None), "≤0.5");
        assert_eq!(bucket_label(f64::INFINITY, Some(10000.0)), ">10000");
    }
}
