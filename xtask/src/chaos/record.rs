//! The end of a chaos run: the verdict printed, kept in `target/chaos/verdict.md` (and the
//! timeline a line per second in `timeline.txt`), and for a long run written into
//! RELIABILITY.md between its markers.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::Context as _;
use natter_localinfra::{nats_server_binary, workspace_root};

use super::load::{Ended, LoadRun};
use super::render::{fault_table, timeline, timeline_summary, totals_table};
use super::verdict::{FaultRow, LoadReport, fault_row, wrongs};
use crate::bench::machine;
use crate::bench::results::Markers;
use crate::step::banner;

const MARKERS: Markers = Markers {
    begin: "<!-- chaos:begin -->",
    end: "<!-- chaos:end -->",
    heading: "## Latest run (cargo xtask chaos)",
};
const INTRO: &str = "# natter reliability\n\n\
    What `cargo xtask chaos --minutes N` measured: natter on a 3-node NATS cluster with R3 \
    streams, two persisters and two gateways, under steady load, while nodes are killed, \
    paused and partitioned away and the leader persister, a gateway and PostgreSQL are \
    killed. The section below is rewritten by every run of 10 minutes or more.\n\n";
const NOT_COVERED: &str = "### Not covered\n\n\
    - Power loss: no tool here can cut a disk's write cache, so a machine crash that loses \
    what the OS had not yet written is not simulated (see DESIGN.md §2 on fsync).\n\
    - Clock skew between the nodes.\n\
    - A full disk.\n";
/// Seconds per line of a long run's timeline summary.
const SUMMARY_WIDTH: u32 = 10;

/// How the run was set up, as its record states it.
pub struct Setting {
    /// The `cargo xtask chaos …` line that reproduces it.
    pub command: String,
    pub users: usize,
    pub rate: u64,
    pub release: bool,
    /// Whether the verdict goes into RELIABILITY.md.
    pub publishes: bool,
}

/// What was judged, ready to print or record.
struct Judged {
    report: Option<LoadReport>,
    rows: Vec<FaultRow>,
    t0_ms: i64,
    wrong: Vec<String>,
}

fn judge(run: &LoadRun, crashes: &[String]) -> Judged {
    let report = run.report.as_ref().map(LoadReport::parse);
    let t0_ms = report
        .as_ref()
        .map_or(run.load_start_ms, |report| report.t0_ms(run.load_start_ms));
    let rows = report.as_ref().map_or_else(Vec::new, |report| {
        run.faults
            .iter()
            .map(|fault| fault_row(report, t0_ms, fault))
            .collect()
    });
    let exit = match run.ended {
        Ended::Exited(code) => code,
        Ended::TimedOut | Ended::Interrupted => None,
    };
    let wrong = wrongs(report.as_ref().map(|r| &r.totals), exit, crashes);
    Judged {
        report,
        rows,
        t0_ms,
        wrong,
    }
}

/// Prints the verdict, keeps it, records a long run; `Ok(true)` when it is right.
pub fn conclude(
    args: &Setting,
    run: &LoadRun,
    crashes: &[String],
    notes: &[String],
    stop: &crate::signals::Stop,
) -> anyhow::Result<bool> {
    let judged = judge(run, crashes);
    banner("verdict");
    let seconds = judged
        .report
        .as_ref()
        .map(|report| timeline(report, judged.t0_ms, &run.faults));
    if let Some(seconds) = &seconds {
        println!("{seconds}");
    }
    let interrupted = stop.requested() || run.ended == Ended::Interrupted;
    let section = section(args, run, &judged, notes, interrupted);
    println!("{section}");
    let out = workspace_root().join("target").join("chaos");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let kept = out.join("verdict.md");
    fs::write(&kept, &section).with_context(|| format!("writing {}", kept.display()))?;
    let kept_timeline = out.join("timeline.txt");
    fs::write(&kept_timeline, seconds.unwrap_or_default())
        .with_context(|| format!("writing {}", kept_timeline.display()))?;
    if args.publishes && !interrupted {
        publish(&workspace_root().join("RELIABILITY.md"), &section)?;
        banner("wrote the verdict into RELIABILITY.md");
    }
    if interrupted {
        banner("chaos: interrupted, no verdict");
        return Ok(false);
    }
    if judged.wrong.is_empty() {
        banner("chaos: RIGHT (nothing lost, duplicated or misordered)");
    } else {
        eprintln!("==> chaos: WRONG: {}", judged.wrong.join("; "));
    }
    Ok(judged.wrong.is_empty())
}

/// The RELIABILITY.md section: the setting, the verdict, the faults, the timeline.
fn section(
    args: &Setting,
    run: &LoadRun,
    judged: &Judged,
    notes: &[String],
    interrupted: bool,
) -> String {
    let machine = machine::probe();
    let nats = nats_server_binary().map_or_else(|_| "unknown".into(), |b| machine::version_of(&b));
    let mut text = String::new();
    let _ = writeln!(text, "Command: `{}`  ", args.command);
    let _ = writeln!(text, "Date: {}; commit {}  ", machine.date, machine.commit);
    let _ = writeln!(
        text,
        "Machine: {} cores, {}, {}; {}, kernel {}  ",
        machine.cores, machine.memory, machine.cpu, machine.os, machine.kernel
    );
    let _ = writeln!(
        text,
        "{nats}, 3 nodes; JetStream fsync: interval (the server's default); stream replicas: 3; \
         load: steady, {} users, {} msg/s, {} binaries\n",
        args.users,
        args.rate,
        if args.release { "release" } else { "debug" }
    );
    let verdict = if interrupted {
        "none, the run was interrupted".to_owned()
    } else if judged.wrong.is_empty() {
        "RIGHT: nothing lost, duplicated or misordered".to_owned()
    } else {
        format!("WRONG: {}", judged.wrong.join("; "))
    };
    let _ = writeln!(text, "### Verdict: {verdict}\n");
    for line in notes.iter().chain(&run.skipped) {
        let _ = writeln!(text, "- {line}");
    }
    match &judged.report {
        Some(report) => {
            let _ = writeln!(text, "\n{}", totals_table(&report.totals));
            let _ = writeln!(text, "### Faults\n\n{}", fault_table(&judged.rows));
            let summary = timeline_summary(report, judged.t0_ms, &run.faults, SUMMARY_WIDTH);
            let _ = writeln!(
                text,
                "### Timeline ({SUMMARY_WIDTH} s a line)\n\n```\n{summary}```\n"
            );
        }
        None => text.push_str("\nThe load test wrote no report.\n\n"),
    }
    text.push_str(NOT_COVERED);
    text
}

/// Writes `section` into `path` between the chaos markers, creating the file with an intro.
fn publish(path: &Path, section: &str) -> anyhow::Result<()> {
    let doc = if path.exists() {
        fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    } else {
        INTRO.to_owned()
    };
    crate::bench::write_between_markers(path, &doc, section, &MARKERS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_reliability_md_with_an_intro_and_replaces_only_its_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("RELIABILITY.md");
        publish(&path, "first run").unwrap();
        let doc = fs::read_to_string(&path).unwrap();
        assert!(doc.starts_with("# natter reliability"), "{doc}");
        assert!(
            doc.contains("<!-- chaos:begin -->\nfirst run\n<!-- chaos:end -->"),
            "{doc}"
        );
        fs::write(&path, format!("{doc}\n## Notes by hand\n\nkept\n")).unwrap();
        publish(&path, "second run").unwrap();
        let doc = fs::read_to_string(&path).unwrap();
        assert!(
            doc.contains("second run") && !doc.contains("first run"),
            "{doc}"
        );
        assert!(doc.ends_with("## Notes by hand\n\nkept\n"), "{doc}");
    }
}
