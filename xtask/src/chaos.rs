//! `cargo xtask chaos`: natter on a 3-node NATS cluster (R3 streams) with two persisters and
//! two gateways, under steady load from `natter-loadtest`, while nodes are killed, paused and
//! partitioned away, the leader persister, a gateway and PostgreSQL killed; then a
//! Jepsen-style verdict: was any accepted message lost, duplicated or misordered, and how
//! long did each fault stall sends and deliveries. A long run records it in RELIABILITY.md.

mod load;
mod natter;
mod netns;
mod record;
mod render;
mod schedule;
mod verdict;

use std::fs;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use natter_localinfra::workspace_root;

use self::load::Ended;
use self::natter::Natter;
use self::netns::Partition;
use self::schedule::Schedule;
use crate::signals::Stop;
use crate::stack::lock_single_instance;
use crate::step::{banner, binaries_dir, build_load_binaries};

/// What a debug build holds on this 2-core machine with everything else running beside it
/// (measured: see the report of the change that added this task).
pub const DEBUG_RATE: u64 = 300;
const RELEASE_RATE: u64 = 1_000;
const DEFAULT_USERS: usize = 200;
/// From this length on a run is recorded in RELIABILITY.md.
const PUBLISHED_MINUTES: u64 = 10;

#[derive(clap::Args, Clone, Debug)]
pub struct ChaosArgs {
    /// Run about this long, repeating the cycle of faults with 20 s to recover after each
    /// (release binaries). Without it: every fault once with short pauses, under 3 minutes.
    /// From 10 minutes on the verdict goes into RELIABILITY.md.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub minutes: Option<u64>,
    /// Messages per second, all senders together [default: 1000 with release binaries, 300
    /// with debug ones].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Users, in sender/receiver pairs.
    #[arg(long, default_value_t = DEFAULT_USERS)]
    pub users: usize,
    /// Use release binaries (implied by --minutes).
    #[arg(long)]
    pub release: bool,
}

/// The short run, as `cargo xtask test` runs it.
impl Default for ChaosArgs {
    fn default() -> Self {
        Self {
            minutes: None,
            rate: None,
            users: DEFAULT_USERS,
            release: false,
        }
    }
}

impl ChaosArgs {
    fn release(&self) -> bool {
        self.release || self.minutes.is_some()
    }

    fn rate(&self) -> u64 {
        self.rate.unwrap_or(if self.release() {
            RELEASE_RATE
        } else {
            DEBUG_RATE
        })
    }

    fn publishes(&self) -> bool {
        self.minutes
            .is_some_and(|minutes| minutes >= PUBLISHED_MINUTES)
    }

    fn schedule(&self, partition: bool) -> Schedule {
        match self.minutes {
            Some(minutes) => Schedule::long(minutes, partition),
            None => Schedule::short(partition),
        }
    }

    fn command_line(&self) -> String {
        let mut line = String::from("cargo xtask chaos");
        if let Some(minutes) = self.minutes {
            line.push_str(&format!(" --minutes {minutes}"));
        } else if self.release {
            line.push_str(" --release");
        }
        if let Some(rate) = self.rate {
            line.push_str(&format!(" --rate {rate}"));
        }
        if self.users != DEFAULT_USERS {
            line.push_str(&format!(" --users {}", self.users));
        }
        line
    }
}

pub fn run(args: &ChaosArgs, stop: &Stop) -> anyhow::Result<ExitCode> {
    Ok(if check(args, stop)? {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Builds, runs and judges; `Ok(true)` when the verdict is right and everything stopped.
pub fn check(args: &ChaosArgs, stop: &Stop) -> anyhow::Result<bool> {
    let started = Instant::now();
    let right = build_and_run(args, stop);
    banner(&format!(
        "chaos took {:.0} s in all",
        started.elapsed().as_secs_f64()
    ));
    right
}

fn build_and_run(args: &ChaosArgs, stop: &Stop) -> anyhow::Result<bool> {
    let root = workspace_root();
    let local = root.join(".local");
    fs::create_dir_all(&local).with_context(|| format!("creating {}", local.display()))?;
    // Held until we return: a second run would wipe this one's servers' data.
    let Some(_lock) = lock_single_instance(&local, "chaos")? else {
        return Ok(false);
    };
    if build_load_binaries(args.release(), stop)?.is_none() {
        return Ok(false);
    }
    let data = local.join("chaos");
    if data.exists() {
        fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
    }
    fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;

    let partition = Partition::create();
    let mut notes = Vec::new();
    if let Err(reason) = &partition {
        notes.push(format!(
            "partition fault skipped: {reason}; all nodes on 127.0.0.1"
        ));
    }
    let mut natter = Natter::default();
    let outcome = start_and_load(args, &mut natter, partition.ok(), &data, stop);
    let stopped_cleanly = natter.stop_all();
    let run = outcome?;
    notes.append(&mut natter.notes);
    let setting = record::Setting {
        command: args.command_line(),
        users: args.users,
        rate: args.rate(),
        release: args.release(),
        publishes: args.publishes(),
    };
    let right = record::conclude(&setting, &run, &natter.crashes, &notes, stop)?;
    Ok(right && stopped_cleanly && !stop.requested() && !matches!(run.ended, Ended::Interrupted))
}

/// Starts natter and runs the load and the faults on it.
fn start_and_load(
    args: &ChaosArgs,
    natter: &mut Natter,
    partition: Option<Partition>,
    data: &std::path::Path,
    stop: &Stop,
) -> anyhow::Result<load::LoadRun> {
    let bin_dir = binaries_dir(args.release());
    if !natter.start(data, &bin_dir, partition, stop)? {
        return Ok(load::LoadRun::interrupted());
    }
    let schedule = args.schedule(natter.can_partition());
    banner(&format!(
        "{} faults over {} s of load at {} msg/s, {} users",
        schedule.steps.len(),
        schedule.load_length().as_secs(),
        args.rate(),
        args.users
    ));
    let out = data.join("load");
    load::run(
        &load::Load {
            binary: bin_dir.join("natter-loadtest"),
            users: args.users,
            rate: args.rate(),
            out,
        },
        &schedule,
        natter,
        stop,
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        chaos: ChaosArgs,
    }

    fn parse(args: &[&str]) -> ChaosArgs {
        Cli::try_parse_from(std::iter::once("chaos").chain(args.iter().copied()))
            .unwrap()
            .chaos
    }

    #[test]
    fn a_short_run_uses_debug_binaries_at_the_debug_rate_and_publishes_nothing() {
        let args = parse(&[]);
        assert_eq!(args.users, ChaosArgs::default().users);
        assert!(!args.release());
        assert_eq!(args.rate(), DEBUG_RATE);
        assert!(!args.publishes());
        assert_eq!(args.schedule(true), Schedule::short(true));
        assert_eq!(args.command_line(), "cargo xtask chaos");
    }

    #[test]
    fn a_long_run_uses_release_binaries_and_publishes_from_10_minutes() {
        let args = parse(&["--minutes", "10"]);
        assert!(args.release());
        assert_eq!(args.rate(), RELEASE_RATE);
        assert!(args.publishes());
        assert!(!parse(&["--minutes", "5"]).publishes());
        assert_eq!(
            parse(&["--minutes", "30", "--rate", "500"]).command_line(),
            "cargo xtask chaos --minutes 30 --rate 500"
        );
    }
}
