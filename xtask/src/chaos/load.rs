//! The load under the faults: `natter-loadtest steady` as a subprocess, the fault schedule run
//! once its sends are flowing, crashes watched throughout, and its JSON report read back.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use natter_localinfra::{Signal, http_body, send_signal, workspace_root};

use super::natter::Natter;
use super::schedule::{Schedule, Step};
use super::verdict::FaultRun;
use crate::signals::Stop;
use crate::step::banner;

/// How long the load test may take to sign up and connect its users before sending.
const SETUP_TIMEOUT: Duration = Duration::from_secs(90);
/// After its last send: the load test drains for at most 30 s, then writes its report.
const FINISH_MARGIN: Duration = Duration::from_secs(60);
const GRACE: Duration = Duration::from_secs(10);
/// How long after a fault is undone the cluster may take to be whole again.
const HEAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Seconds a load test drains after its last send with nothing arriving before it counts
/// what is missing as lost.
const DRAIN_S: u64 = 20;
const TICK: Duration = Duration::from_millis(100);

/// The `steady` run to start.
pub struct Load {
    pub binary: PathBuf,
    pub users: usize,
    pub rate: u64,
    /// Gets `steady.json`.
    pub out: PathBuf,
}

/// How the load test ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// By itself, with this exit code (`None`: by a signal).
    Exited(Option<i32>),
    /// Stopped at its time limit.
    TimedOut,
    Interrupted,
}

/// What the run did: when the load began, the faults as they ran, and the load test's report.
pub struct LoadRun {
    pub ended: Ended,
    /// Unix ms when xtask saw the first message projected.
    pub load_start_ms: i64,
    pub faults: Vec<FaultRun>,
    /// Faults that did not run, and why.
    pub skipped: Vec<String>,
    pub report: Option<serde_json::Value>,
}

impl LoadRun {
    pub fn interrupted() -> Self {
        Self {
            ended: Ended::Interrupted,
            load_start_ms: now_ms(),
            faults: Vec::new(),
            skipped: Vec::new(),
            report: None,
        }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Why a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waited {
    Elapsed,
    LoadEnded,
    Stopped,
}

/// The load test and what watches it.
struct Running<'a> {
    child: Child,
    natter: &'a mut Natter,
    stop: &'a Stop,
}

impl Running<'_> {
    /// Sleeps `duration`, checking for crashes, the load test's end and a stop request.
    fn wait(&mut self, duration: Duration) -> anyhow::Result<Waited> {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            if self.stop.requested() {
                return Ok(Waited::Stopped);
            }
            if self
                .child
                .try_wait()
                .context("checking on natter-loadtest")?
                .is_some()
            {
                return Ok(Waited::LoadEnded);
            }
            self.natter.check_crashes()?;
            thread::sleep(TICK);
        }
        Ok(Waited::Elapsed)
    }

    /// Waits until a persister has projected a message (the load's sends flow), at most
    /// [`SETUP_TIMEOUT`].
    fn wait_for_load(&mut self) -> anyhow::Result<Waited> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        while Instant::now() < deadline {
            let projected: f64 = self
                .natter
                .persister_ports()
                .iter()
                .filter_map(|port| http_body(*port, "/metrics").ok())
                .map(|text| crate::bench::sum(&text, "natter_persister_records_total"))
                .sum();
            if projected > 0.0 {
                return Ok(Waited::Elapsed);
            }
            let waited = self.wait(Duration::from_millis(250))?;
            if waited != Waited::Elapsed {
                return Ok(waited);
            }
        }
        eprintln!(
            "warning: nothing projected {} s after the load test started; faults start anyway",
            SETUP_TIMEOUT.as_secs()
        );
        Ok(Waited::Elapsed)
    }

    /// One fault: done, held, undone, then time to recover and a whole cluster. Its times.
    fn fault(&mut self, step: &Step) -> anyhow::Result<(Option<FaultRun>, Waited)> {
        let start_ms = now_ms();
        match self.natter.inject(step.fault) {
            Ok(what) => banner(&format!("fault: {what}")),
            Err(error) => {
                let failure = format!("could not inject {}: {error:#}", step.fault);
                self.natter.crashes.push(failure);
                return Ok((None, Waited::Elapsed));
            }
        }
        let held = self.wait(step.hold)?;
        if let Err(error) = self.natter.undo(step.fault, self.stop) {
            let failure = format!("could not undo {}: {error:#}", step.fault);
            self.natter.crashes.push(failure);
        }
        let run = FaultRun {
            fault: step.fault,
            start_ms,
            end_ms: now_ms(),
        };
        if held != Waited::Elapsed {
            return Ok((Some(run), held));
        }
        let recovered = self.wait(step.recover)?;
        if recovered == Waited::Elapsed {
            self.heal(step);
        }
        Ok((Some(run), recovered))
    }

    /// Waits until the cluster is whole and messages flow again, so the next fault does not
    /// land on this one's aftermath; at most [`HEAL_TIMEOUT`].
    fn heal(&mut self, step: &Step) {
        let started = Instant::now();
        let healthy = self.natter.wait_healthy(HEAL_TIMEOUT, self.stop);
        let left = HEAL_TIMEOUT.saturating_sub(started.elapsed());
        let flowing = healthy && self.natter.wait_flowing(left, self.stop);
        if !flowing && !self.stop.requested() {
            eprintln!(
                "warning: {} s after {}, the cluster was {}",
                HEAL_TIMEOUT.as_secs(),
                step.fault,
                if healthy {
                    "whole but messages were not flowing"
                } else {
                    "not whole"
                }
            );
        }
    }
}

/// Runs `load` long enough for `schedule`, and the schedule's faults on `natter` once the
/// sends flow. Faults that would end after the load are left out (and listed).
pub fn run(
    load: &Load,
    schedule: &Schedule,
    natter: &mut Natter,
    stop: &Stop,
) -> anyhow::Result<LoadRun> {
    fs::create_dir_all(&load.out).with_context(|| format!("creating {}", load.out.display()))?;
    let length = schedule.load_length();
    let child = spawn(load, natter, length)?;
    let mut running = Running {
        child,
        natter,
        stop,
    };
    let mut waited = running.wait_for_load()?;
    let load_start_ms = now_ms();
    let load_end = Instant::now() + length;
    banner(&format!(
        "load flowing; faults start in {} s",
        schedule.lead.as_secs()
    ));
    if waited == Waited::Elapsed {
        waited = running.wait(schedule.lead)?;
    }
    let mut faults = Vec::new();
    let mut skipped = Vec::new();
    for step in &schedule.steps {
        let why = match waited {
            Waited::Stopped => Some("interrupted"),
            Waited::LoadEnded => Some("the load test had ended"),
            Waited::Elapsed if Instant::now() + step.hold + step.recover > load_end => {
                Some("it would have ended after the load")
            }
            Waited::Elapsed => None,
        };
        if let Some(why) = why {
            skipped.push(format!("{}: not run, {why}", step.fault));
            continue;
        }
        let (fault, after) = running.fault(step)?;
        faults.extend(fault);
        waited = after;
    }
    let ended = running.finish(load_end + FINISH_MARGIN)?;
    let json = load.out.join("steady.json");
    let report = fs::read_to_string(&json)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    Ok(LoadRun {
        ended,
        load_start_ms,
        faults,
        skipped,
        report,
    })
}

fn spawn(load: &Load, natter: &Natter, length: Duration) -> anyhow::Result<Child> {
    let mut command = Command::new(&load.binary);
    command
        .current_dir(workspace_root())
        .args(["--url", &natter.gateway_urls()])
        .args(["--database-url", &natter.database_url])
        .args(["--jwt-secret", &natter.jwt_secret])
        .arg("--out")
        .arg(&load.out)
        .args(["--quiet", "steady"])
        .args(["--users", &load.users.to_string()])
        .args(["--rate", &load.rate.to_string()])
        .args(["--duration", &length.as_secs().to_string()])
        .args(["--warmup", "0", "--drain", &DRAIN_S.to_string()]);
    banner(&format!(
        "natter-loadtest steady --users {} --rate {} --duration {} (report in {})",
        load.users,
        load.rate,
        length.as_secs(),
        load.out.display()
    ));
    command
        .spawn()
        .with_context(|| format!("starting {}", load.binary.display()))
}

impl Running<'_> {
    /// Waits for the load test to end by itself until `deadline`, then stops it (SIGTERM, then
    /// SIGKILL); a stop request stops it at once.
    fn finish(&mut self, deadline: Instant) -> anyhow::Result<Ended> {
        let mut ended = None;
        while ended.is_none() {
            if let Some(status) = self
                .child
                .try_wait()
                .context("waiting for natter-loadtest")?
            {
                return Ok(Ended::Exited(status.code()));
            }
            if self.stop.requested() {
                ended = Some(Ended::Interrupted);
            } else if Instant::now() >= deadline {
                eprintln!("natter-loadtest ran past its time; stopping it");
                ended = Some(Ended::TimedOut);
            } else {
                self.natter.check_crashes()?;
                thread::sleep(TICK);
            }
        }
        send_signal(self.child.id(), Signal::Term).context("stopping natter-loadtest")?;
        let grace = Instant::now() + GRACE;
        while Instant::now() < grace {
            if self
                .child
                .try_wait()
                .context("waiting for natter-loadtest")?
                .is_some()
            {
                return Ok(ended.unwrap_or(Ended::Interrupted));
            }
            thread::sleep(TICK);
        }
        self.child.kill().context("killing natter-loadtest")?;
        self.child.wait().context("waiting for natter-loadtest")?;
        Ok(ended.unwrap_or(Ended::Interrupted))
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        // Only reached running on an error path.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
