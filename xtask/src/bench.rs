//! `cargo xtask bench`: builds the release binaries, starts a fresh natter (NATS and PostgreSQL
//! in `.local/bench/`, wiped first), runs the standard `natter-loadtest` suite against it, and
//! writes the numbers into BENCHMARKS.md between its `bench` markers.

mod cost;
mod history;
mod lag;
pub(crate) mod machine;
pub(crate) mod results;
mod suite;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::builder::PossibleValuesParser;
use natter_localinfra::{
    Fsync, NatsOptions, NatsServer, Postgres, PostgresOptions, Signal, nats_server_binary,
    send_signal, try_free_port, workspace_root,
};

use self::cost::{Cost, Pids, Sampler};
use self::machine::Machine;
use self::results::{
    BENCH_MARKERS, HEADING, Markers, Outcome, Report, RunResult, render_results, replace_between,
};
use self::suite::{Entry, SUITE, Scenario};
use crate::service::Service;
use crate::signals::Stop;
use crate::stack::{Stack, lock_single_instance, non_empty_env, random_secret};
use crate::step::{banner, build_load_binaries};

const DATABASE: &str = "natter";
/// Where a published suite's HTML reports are kept, next to the load generator.
const REPORTS: &str = "loadtest/reports";
/// A cold persister creates the streams and runs migrations before it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a load test has to exit after SIGTERM before it is killed.
const LOADTEST_GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Each run a tenth of its size and seconds long, to check that the command works. Results
    /// go to target/bench/results.md only, never to BENCHMARKS.md.
    #[arg(long)]
    quick: bool,
    /// Run only this entry of the suite (repeatable). Results go to target/bench/results.md
    /// only, never to BENCHMARKS.md.
    #[arg(long, value_name = "RUN", value_parser = PossibleValuesParser::new(suite::names()))]
    only: Vec<String>,
    /// With --quick: build and run the release binaries (the full suite and --only always do;
    /// --quick alone uses the debug build that `cargo xtask test` has already made).
    #[arg(long)]
    release: bool,
    /// When JetStream fsyncs: "interval" (the server's default) or "always" (every write).
    /// Ignored with NATS_URL.
    #[arg(long, default_value_t = Fsync::Interval)]
    fsync: Fsync,
    /// The services' RUST_LOG. `info` writes every message-flow line, as `cargo xtask up` does;
    /// a suite measured with anything but the default is not published.
    #[arg(long, value_name = "FILTER", default_value = SERVICES_LOG)]
    services_log: String,
}

/// What the services log during a bench: warnings and errors, not a line per message.
const SERVICES_LOG: &str = "warn";

impl BenchArgs {
    /// `cargo xtask bench --quick`, as `cargo xtask test` runs it.
    pub fn quick() -> Self {
        Self {
            quick: true,
            only: Vec::new(),
            release: false,
            fsync: Fsync::default(),
            services_log: SERVICES_LOG.to_owned(),
        }
    }

    fn release(&self) -> bool {
        self.release || !self.quick
    }

    /// Only a complete, full-size suite replaces the published numbers.
    fn publishes(&self) -> bool {
        !self.quick && self.only.is_empty() && self.services_log == SERVICES_LOG
    }

    fn entries(&self) -> Vec<Entry> {
        SUITE
            .iter()
            .filter(|entry| self.only.is_empty() || self.only.iter().any(|n| n == entry.name))
            .map(|entry| if self.quick { entry.quick() } else { *entry })
            .collect()
    }

    /// The command line that reproduces the run; external servers are named, not their URLs
    /// (which may hold credentials).
    fn command_line(&self) -> String {
        let mut line = String::new();
        for variable in ["NATS_URL", "DATABASE_URL"] {
            if non_empty_env(variable).is_some() {
                line.push_str(&format!("{variable}=<external> "));
            }
        }
        line.push_str("cargo xtask bench");
        if self.quick {
            line.push_str(" --quick");
        }
        if self.quick && self.release {
            line.push_str(" --release");
        }
        for name in &self.only {
            line.push_str(&format!(" --only {name}"));
        }
        if self.fsync != Fsync::default() {
            line.push_str(&format!(" --fsync {}", self.fsync));
        }
        if self.services_log != SERVICES_LOG {
            line.push_str(&format!(" --services-log {}", self.services_log));
        }
        line
    }
}

/// What the load tests are pointed at: their global flags.
struct Target {
    url: String,
    /// The gateway with natter's default per-user limits, for `abuse`.
    limited_url: String,
    nats_url: String,
    database_url: String,
    jwt_secret: String,
    gateway_pid: u32,
    persister_port: u16,
}

pub fn run(args: &BenchArgs, stop: &Stop) -> anyhow::Result<ExitCode> {
    Ok(if check(args, stop)? {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Builds, runs the suite and publishes it; `Ok(true)` when every run was right and natter
/// stopped cleanly.
pub fn check(args: &BenchArgs, stop: &Stop) -> anyhow::Result<bool> {
    let root = workspace_root();
    let local = root.join(".local");
    fs::create_dir_all(&local).with_context(|| format!("creating {}", local.display()))?;
    // Held until we return: a second bench would wipe this one's servers' data.
    let Some(_lock) = lock_single_instance(&local, "bench")? else {
        return Ok(false);
    };

    let Some(bin_dir) = build_load_binaries(args.release(), stop)? else {
        return Ok(false);
    };

    let mut machine = machine::probe();
    machine.command = args.command_line();
    machine.profile = if args.release() { "release" } else { "debug" };
    let out = root.join("target").join("bench");
    let mut stack = Stack::default();
    let runs = start_and_run(
        args,
        &bin_dir,
        &local.join("bench"),
        &out,
        &mut stack,
        &mut machine,
        stop,
    );
    let stopped_cleanly = stack.stop_all();
    let mut runs = match runs {
        Ok(runs) => runs,
        Err(error) => {
            eprintln!("error: {error:#}");
            return Ok(false);
        }
    };
    if args.publishes() && !stop.requested() {
        keep_reports(&root.join(REPORTS), &mut runs)?;
    }

    let section = render_results(&machine, &runs);
    println!();
    println!("{section}");
    publish(args, &section, (&machine, &runs), &out, stop)?;

    let failed: Vec<_> = runs
        .iter()
        .filter(|run| !run.passed())
        .map(|run| run.name.as_str())
        .collect();
    if !failed.is_empty() {
        eprintln!("==> FAILED: {}", failed.join(", "));
    }
    Ok(failed.is_empty() && stopped_cleanly && !stop.requested())
}

/// Starts the stack, then runs each entry in turn; every entry gets a result, run or not.
fn start_and_run(
    args: &BenchArgs,
    bin_dir: &Path,
    data: &Path,
    out: &Path,
    stack: &mut Stack,
    machine: &mut Machine,
    stop: &Stop,
) -> anyhow::Result<Vec<RunResult>> {
    let Some(target) = start(args, bin_dir, data, stack, machine, stop)? else {
        return Ok(args
            .entries()
            .iter()
            .map(|entry| not_run(entry, "not run: interrupted"))
            .collect());
    };
    let loadtest = bin_dir.join("natter-loadtest");
    let open_files = machine::open_files(machine);
    let mut runs = Vec::new();
    for entry in args.entries() {
        if stop.requested() {
            runs.push(not_run(&entry, "not run: interrupted"));
            continue;
        }
        if let Some(what) = stack.crashed()? {
            runs.push(not_run(&entry, &format!("not run: {what}")));
            continue;
        }
        if let (Scenario::Connections { count, .. }, Some(limit)) = (entry.scenario, open_files)
            && u64::from(count) >= limit
        {
            eprintln!(
                "warning: {count} connections need more than the open-files limit ({limit}) in \
                 both natter-loadtest and the gateway; expect `{}` to fail (raise `ulimit -n`)",
                entry.name
            );
        }
        let before = projection_lag(target.persister_port);
        let mut run = run_entry(&entry, &loadtest, &target, out, stack, stop)?;
        // Every record the run sent is committed before its lag is read, and
        // before the next run starts.
        wait_until_idle(target.persister_port, stop);
        run.projection_lag = before
            .zip(projection_lag(target.persister_port))
            .and_then(|(before, after)| after.since(&before).lag());
        runs.push(run);
    }
    Ok(runs)
}

/// NATS, PostgreSQL, the persister and the gateway, on free ports with fresh data. `None` if a
/// stop was requested while they started.
fn start(
    args: &BenchArgs,
    bin_dir: &Path,
    data: &Path,
    stack: &mut Stack,
    machine: &mut Machine,
    stop: &Stop,
) -> anyhow::Result<Option<Target>> {
    if data.exists() {
        fs::remove_dir_all(data).with_context(|| format!("removing {}", data.display()))?;
    }
    fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;

    let nats_url = match non_empty_env("NATS_URL") {
        Some(url) => {
            if args.fsync != Fsync::default() {
                eprintln!("NATS_URL is set, so --fsync {} has no effect", args.fsync);
            }
            banner("using the NATS at NATS_URL");
            machine.nats_server = "external (NATS_URL)".to_owned();
            machine.fsync = "unknown (external server)".to_owned();
            url
        }
        None => {
            banner(&format!(
                "starting nats-server (fsync {}, data in {})",
                args.fsync,
                data.join("nats").display()
            ));
            let nats = stack
                .nats
                .insert(NatsServer::start_in_own_process_group(NatsOptions {
                    data_dir: data.join("nats"),
                    port: None,
                    fsync: args.fsync,
                    cluster: None,
                })?);
            machine.nats_server = machine::version_of(&nats_server_binary()?);
            machine.fsync = match args.fsync {
                Fsync::Interval => "interval (the server's default)".to_owned(),
                Fsync::Always => "always (every write)".to_owned(),
            };
            nats.url()
        }
    };

    let database_url = match non_empty_env("DATABASE_URL") {
        Some(url) => {
            banner("using the PostgreSQL at DATABASE_URL");
            url
        }
        None => {
            banner(&format!(
                "starting PostgreSQL (data in {})",
                data.join("pg").display()
            ));
            let postgres = stack.postgres.insert(Postgres::start(PostgresOptions {
                data_dir: data.join("pg"),
                port: None,
            })?);
            postgres.ensure_database(DATABASE)?;
            postgres.url(DATABASE)
        }
    };
    machine.postgres = machine::postgres_version(&database_url);
    if stack.postgres.is_none() {
        machine.postgres.push_str(" (external, DATABASE_URL)");
    }

    let jwt_secret = random_secret()?;
    let gateway_port = try_free_port()?;
    let persister_port = other_free_port(&[gateway_port])?;
    let limited_port = other_free_port(&[gateway_port, persister_port])?;
    let gateway_port_text = gateway_port.to_string();
    let persister_port_text = persister_port.to_string();
    let common = [
        ("NATS_URL", nats_url.as_str()),
        ("DATABASE_URL", database_url.as_str()),
        ("JWT_SECRET", jwt_secret.as_str()),
        ("PERSISTER_PORT", persister_port_text.as_str()),
        ("BIND_ADDRESS", "127.0.0.1"),
        ("RUST_LOG", args.services_log.as_str()),
    ];
    let env: Vec<(&str, &str)> = common
        .iter()
        .chain(&[("PORT", gateway_port_text.as_str())])
        .chain(&crate::stack::LIFTED_LIMITS)
        .copied()
        .collect();
    let limited_port_text = limited_port.to_string();
    let limited_env: Vec<(&str, &str)> = common
        .iter()
        .copied()
        .chain([("PORT", limited_port_text.as_str())])
        .collect();

    banner(&format!(
        "starting natter-persister on port {persister_port}"
    ));
    let persister = stack.persister.insert(Service::spawn(
        "natter-persister",
        &bin_dir.join("natter-persister"),
        persister_port,
        &env,
    )?);
    if !persister.wait_ready(READY_TIMEOUT, stop)? {
        return Ok(None);
    }
    banner(&format!("starting natter-gateway on port {gateway_port}"));
    let gateway = stack.gateway.insert(Service::spawn(
        "natter-gateway",
        &bin_dir.join("natter-gateway"),
        gateway_port,
        &env,
    )?);
    if !gateway.wait_ready(READY_TIMEOUT, stop)? {
        return Ok(None);
    }
    let gateway_pid = gateway.pid();
    banner(&format!(
        "starting natter-gateway with the default per-user limits on port {limited_port}"
    ));
    let limited = stack.limited_gateway.insert(Service::spawn(
        "natter-gateway (default limits)",
        &bin_dir.join("natter-gateway"),
        limited_port,
        &limited_env,
    )?);
    if !limited.wait_ready(READY_TIMEOUT, stop)? {
        return Ok(None);
    }
    Ok(Some(Target {
        url: format!("http://127.0.0.1:{gateway_port}"),
        limited_url: format!("http://127.0.0.1:{limited_port}"),
        nats_url,
        database_url,
        jwt_secret,
        gateway_pid,
        persister_port,
    }))
}

/// One load test, in `<out>/<entry>/` (emptied first, so no earlier run's JSON is read back),
/// stopped at its time limit, on a stop request or if natter dies under it.
fn run_entry(
    entry: &Entry,
    loadtest: &Path,
    target: &Target,
    out: &Path,
    stack: &mut Stack,
    stop: &Stop,
) -> anyhow::Result<RunResult> {
    let dir = out.join(entry.name);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let subcommand = entry.scenario.subcommand();
    let scenario_args = entry.scenario.args();
    let described = format!("{subcommand} {}", scenario_args.join(" "));

    let url = if entry.scenario.needs_limits() {
        &target.limited_url
    } else {
        &target.url
    };
    let mut command = Command::new(loadtest);
    command
        .current_dir(workspace_root())
        .args(["--url", url])
        .args(["--nats-url", &target.nats_url])
        .args(["--database-url", &target.database_url])
        .args(["--jwt-secret", &target.jwt_secret])
        .args(["--gateway-pid", &target.gateway_pid.to_string()])
        .arg("--out")
        .arg(&dir)
        .arg("--quiet")
        .arg(subcommand)
        .args(&scenario_args);
    banner(&format!(
        "{}: natter-loadtest --out {} {described} (limit {} s)",
        entry.name,
        shown(&dir),
        entry.limit.as_secs()
    ));

    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", loadtest.display()))?;
    let sampler = Sampler::start(pids(stack, child.id()));
    let (status, ended) = watch(child, entry.limit, stack, stop)?;
    let samples = sampler.finish();
    let elapsed = started.elapsed().as_secs_f64();

    let json = dir.join(format!("{subcommand}.json"));
    let report = Report::load(&json);
    let cost = report
        .as_ref()
        .ok()
        .and_then(|report| Cost::of(&report.work(), &samples, cost::ticks_per_second()));
    let outcome = match ended {
        Ended::Interrupted => Outcome::Failed("interrupted".to_owned()),
        Ended::TimedOut => {
            Outcome::Failed(format!("stopped at its {} s limit", entry.limit.as_secs()))
        }
        Ended::NatterDied(what) => Outcome::Failed(what),
        Ended::Exited => match (status.code(), &report) {
            (Some(0), Ok(report)) if report.problems.is_empty() => Outcome::Correct,
            (Some(0 | 1), Ok(_)) => Outcome::Incorrect,
            (Some(0 | 1), Err(error)) => Outcome::Failed(format!(
                "natter-loadtest exited with {status} but its report is unusable: {error:#}"
            )),
            (Some(2), _) => {
                Outcome::Failed("natter-loadtest failed (exit 2; its output says why)".to_owned())
            }
            _ => Outcome::Failed(format!("natter-loadtest {status}")),
        },
    };
    let verdict = match &outcome {
        Outcome::Correct => "ok".to_owned(),
        Outcome::Incorrect => "WRONG (lost, duplicated or misordered messages)".to_owned(),
        Outcome::Failed(reason) => format!("FAILED: {reason}"),
    };
    println!("    {}: {verdict} after {elapsed:.1} s", entry.name);

    let html = dir.join(format!("{subcommand}.html"));
    Ok(RunResult {
        name: entry.name.to_owned(),
        command: described,
        outcome,
        report: report.ok(),
        html: html.is_file().then(|| shown(&html)),
        projection_lag: None,
        cost,
    })
}

/// The processes a run's cost is split between; `load` is the load generator's.
fn pids(stack: &Stack, load: u32) -> Pids {
    Pids {
        nats: stack.nats.as_ref().map(NatsServer::pid),
        postmaster: stack.postgres.as_ref().and_then(Postgres::pid),
        gateways: [&stack.gateway, &stack.limited_gateway]
            .into_iter()
            .flatten()
            .map(Service::pid)
            .collect(),
        persister: stack.persister.as_ref().map(Service::pid),
        load: Some(load),
    }
}

enum Ended {
    /// By itself.
    Exited,
    TimedOut,
    Interrupted,
    /// Stopped because a server under it died; what died.
    NatterDied(String),
}

/// Waits for a load test. A terminal's Ctrl-C reaches it by itself (same process group); a
/// SIGTERM sent to xtask alone, the time limit and a dead server are passed on as SIGTERM, then
/// SIGKILL after a grace period.
fn watch(
    mut child: Child,
    limit: Duration,
    stack: &mut Stack,
    stop: &Stop,
) -> anyhow::Result<(ExitStatus, Ended)> {
    let deadline = Instant::now() + limit;
    let mut ended = Ended::Exited;
    let mut kill_at: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait().context("waiting for natter-loadtest")? {
            // A terminal's Ctrl-C may reach the load test before we see it.
            if stop.requested() && matches!(ended, Ended::Exited) {
                ended = Ended::Interrupted;
            }
            return Ok((status, ended));
        }
        if kill_at.is_none() {
            let reason = if stop.requested() {
                Some(Ended::Interrupted)
            } else if Instant::now() >= deadline {
                Some(Ended::TimedOut)
            } else {
                stack.crashed()?.map(Ended::NatterDied)
            };
            if let Some(reason) = reason {
                if let Ended::NatterDied(what) = &reason {
                    eprintln!("{what}; stopping the load test");
                }
                ended = reason;
                send_signal(child.id(), Signal::Term).context("stopping natter-loadtest")?;
                kill_at = Some(Instant::now() + LOADTEST_GRACE);
            }
        } else if kill_at.is_some_and(|at| Instant::now() >= at) {
            eprintln!("natter-loadtest did not exit after SIGTERM; killing it");
            child.kill().context("killing natter-loadtest")?;
            return Ok((child.wait().context("waiting for natter-loadtest")?, ended));
        }
        thread::sleep(POLL);
    }
}

fn not_run(entry: &Entry, reason: &str) -> RunResult {
    RunResult {
        name: entry.name.to_owned(),
        command: format!(
            "{} {}",
            entry.scenario.subcommand(),
            entry.scenario.args().join(" ")
        ),
        outcome: Outcome::Failed(reason.to_owned()),
        report: None,
        html: None,
        projection_lag: None,
        cost: None,
    }
}

/// Copies each run's HTML report into `dir` (emptied of older reports first) as `<run>.html`,
/// and points the run at the copy: BENCHMARKS.md then links reports that are committed with it
/// and open offline in any checkout.
fn keep_reports(dir: &Path, runs: &mut [RunResult]) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "html") {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for run in runs.iter_mut() {
        let Some(html) = &run.html else { continue };
        let kept = dir.join(format!("{}.html", run.name));
        fs::copy(workspace_root().join(html), &kept)
            .with_context(|| format!("copying {html} to {}", kept.display()))?;
        run.html = Some(shown(&kept));
    }
    Ok(())
}

/// Writes the section to `<out>/results.md`, and into BENCHMARKS.md when the run was the full
/// suite, uninterrupted.
fn publish(
    args: &BenchArgs,
    section: &str,
    (machine, runs): (&Machine, &[RunResult]),
    out: &Path,
    stop: &Stop,
) -> anyhow::Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let results = out.join("results.md");
    fs::write(&results, format!("{HEADING}\n\n{section}"))
        .with_context(|| format!("writing {}", results.display()))?;
    if stop.requested() {
        banner(&format!(
            "interrupted: BENCHMARKS.md left as it was; this run's results are in {}",
            shown(&results)
        ));
        return Ok(());
    }
    if !args.publishes() {
        banner(&format!(
            "--quick/--only: BENCHMARKS.md left as it was; results in {}",
            shown(&results)
        ));
        return Ok(());
    }
    let path = workspace_root().join("BENCHMARKS.md");
    let doc = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    write_between_markers(&path, &doc, section, &BENCH_MARKERS)?;
    banner("wrote the results into BENCHMARKS.md");
    let doc = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    if let Some(rows) = history::appended(history::section_of(&doc), machine, runs) {
        write_between_markers(&path, &doc, &rows, &history::HISTORY_MARKERS)?;
        banner(&format!(
            "appended the {} row to its history in BENCHMARKS.md",
            history::HEADLINE
        ));
    }
    Ok(())
}

/// Replaces the section between `markers` of `doc`, the text of `path`, and writes it back.
pub(crate) fn write_between_markers(
    path: &Path,
    doc: &str,
    section: &str,
    markers: &Markers,
) -> anyhow::Result<()> {
    let updated = replace_between(doc, section, markers)
        .with_context(|| format!("updating {}", path.display()))?;
    // Written beside it and renamed over it, so an interruption never leaves half a file.
    let temporary = path.with_extension("md.tmp");
    fs::write(&temporary, updated).with_context(|| format!("writing {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))
}

/// A path relative to the workspace root when it is inside it: how BENCHMARKS.md links it.
fn shown(path: &Path) -> String {
    let root = workspace_root();
    path.strip_prefix(&root)
        .map_or_else(|_| path.to_path_buf(), PathBuf::from)
        .display()
        .to_string()
}

/// How long a run may leave natter busy before the next starts anyway.
const IDLE_WAIT: Duration = Duration::from_secs(120);

/// Waits until the persister has caught up with everything the previous
/// run left behind, so one run's backlog does not count against the next:
/// its backlog gauges read 0 and it has projected nothing new for a few
/// seconds (the gauges alone can be stale while it is too busy to refresh
/// them).
fn wait_until_idle(persister_port: u16, stop: &Stop) {
    let started = std::time::Instant::now();
    let mut last_projected = None;
    let mut quiet_for = 0;
    while started.elapsed() < IDLE_WAIT && !stop.requested() {
        if let Some(text) = scrape(persister_port) {
            let projected = sum(&text, "natter_persister_records_total");
            let drained = gauge(&text, "natter_persister_consumer_pending") == Some(0.0)
                && gauge(&text, "natter_persister_consumer_ack_pending") == Some(0.0);
            quiet_for = if Some(projected) == last_projected {
                quiet_for + 1
            } else {
                0
            };
            last_projected = Some(projected);
            if drained && quiet_for >= 3 {
                return;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "warning: the persister was still busy after {} s; starting the next run anyway",
        IDLE_WAIT.as_secs()
    );
}

/// The sum of every sample of a metric family (all label sets).
pub(crate) fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            (rest.starts_with('{') || rest.starts_with(' '))
                .then(|| rest.rsplit(' ').next()?.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The persister's projection lag histogram as it stands.
fn projection_lag(persister_port: u16) -> Option<lag::Histogram> {
    scrape(persister_port).map(|text| lag::Histogram::parse(&text, lag::METRIC))
}

/// `GET /metrics` on a local port, as text.
fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The value of an unlabelled sample in a Prometheus exposition.
pub(crate) fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// A free port that is none of `taken`.
fn other_free_port(taken: &[u16]) -> anyhow::Result<u16> {
    loop {
        let port = try_free_port()?;
        if !taken.contains(&port) {
            return Ok(port);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_an_unlabelled_gauge() {
        let text = "# TYPE natter_persister_consumer_pending gauge\n\
                    natter_persister_consumer_pending 0\n\
                    natter_persister_consumer_pending_other 5\n\
                    natter_persister_consumer_ack_pending 12\n";
        assert_eq!(
            super::gauge(text, "natter_persister_consumer_pending"),
            Some(0.0)
        );
        assert_eq!(
            super::gauge(text, "natter_persister_consumer_ack_pending"),
            Some(12.0)
        );
        assert_eq!(super::gauge(text, "natter_missing"), None);
        let records = "natter_persister_records_total{kind=\"direct\"} 3\n\
                       natter_persister_records_total{kind=\"read\"} 2\n";
        assert_eq!(super::sum(records, "natter_persister_records_total"), 5.0);
    }

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map(|cli| cli.bench)
    }

    #[test]
    fn runs_the_whole_suite_by_default_and_publishes_it() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.entries(), SUITE);
        assert!(args.publishes());
    }

    #[test]
    fn quick_and_only_select_smaller_runs_and_do_not_publish() {
        let args = parse(&["--quick", "--only", "steady-1k", "--only", "storm"]).unwrap();
        let names: Vec<_> = args.entries().iter().map(|entry| entry.name).collect();
        assert_eq!(names, ["steady-1k", "storm"]);
        assert_eq!(args.entries()[0], SUITE[0].quick());
        assert!(!args.publishes());
        assert!(
            args.command_line()
                .ends_with("cargo xtask bench --quick --only steady-1k --only storm")
        );
    }

    #[test]
    fn a_suite_with_the_flow_logs_on_is_measured_but_not_published() {
        let args = parse(&["--services-log", "info"]).unwrap();
        assert_eq!(args.entries(), SUITE);
        assert!(!args.publishes());
        assert!(
            args.command_line()
                .ends_with("cargo xtask bench --services-log info")
        );
    }

    #[test]
    fn rejects_an_unknown_run_name() {
        assert!(parse(&["--only", "steady-2k"]).is_err());
    }

    #[test]
    fn published_reports_are_copied_beside_the_loadtest_and_linked_there() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("reports");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("stale.html"), "old").unwrap();
        let source = scratch.path().join("steady.html");
        fs::write(&source, "<svg/>").unwrap();
        let mut runs = vec![RunResult {
            name: "steady-1k".into(),
            command: "steady".into(),
            outcome: Outcome::Correct,
            report: None,
            html: Some(source.display().to_string()),
            projection_lag: None,
            cost: None,
        }];
        runs.push(not_run(&SUITE[1], "not run: interrupted"));
        keep_reports(&dir, &mut runs).unwrap();
        let kept = dir.join("steady-1k.html");
        assert_eq!(fs::read_to_string(&kept).unwrap(), "<svg/>");
        assert!(!dir.join("stale.html").exists());
        assert_eq!(runs[0].html.as_deref(), Some(shown(&kept).as_str()));
        assert_eq!(runs[1].html, None);
    }

    #[test]
    fn shows_paths_relative_to_the_workspace() {
        let html = workspace_root().join("target/bench/steady-1k/steady.html");
        assert_eq!(shown(&html), "target/bench/steady-1k/steady.html");
        assert_eq!(shown(Path::new("/elsewhere/x")), "/elsewhere/x");
    }
}
