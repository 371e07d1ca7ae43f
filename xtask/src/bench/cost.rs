//! What each process spent during a run: CPU time from `/proc/<pid>/stat` and resident memory
//! from `/proc/<pid>/status`, sampled four times a second while the load test runs, and the
//! machine's own busy and stolen time from `/proc/stat`. The CPU spent inside the run's measured
//! window, divided by the messages accepted in it, is the run's cost per message: the budget
//! every optimisation is judged against.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The processes a run's cost is split between, in the table's order.
pub const PARTS: [&str; 5] = [
    "nats-server",
    "PostgreSQL",
    "gateway",
    "persister",
    "load generator",
];
const NATS: usize = 0;
const POSTGRES: usize = 1;
const GATEWAY: usize = 2;
const PERSISTER: usize = 3;
const LOAD: usize = 4;

const PERIOD: Duration = Duration::from_millis(250);

/// The processes to watch; `None` for a server run elsewhere (`NATS_URL`, `DATABASE_URL`).
#[derive(Clone, Debug, Default)]
pub struct Pids {
    pub nats: Option<u32>,
    /// PostgreSQL's postmaster: its backends and helpers are its children.
    pub postmaster: Option<u32>,
    /// Both gateways of the bench (the second one serves only `abuse`).
    pub gateways: Vec<u32>,
    pub persister: Option<u32>,
    pub load: Option<u32>,
}

/// One look at every part and at the machine.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub at_ms: i64,
    /// CPU time (user + system, children that exited included) in clock ticks.
    pub ticks: [u64; PARTS.len()],
    pub rss_kb: [u64; PARTS.len()],
    pub machine: MachineTicks,
}

/// `/proc/stat`'s first line: all CPUs together, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineTicks {
    pub busy: u64,
    /// Time the hypervisor gave this machine's CPUs to someone else.
    pub steal: u64,
    pub total: u64,
}

/// Samples `pids` on a thread of its own until [`Sampler::finish`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub fn start(pids: Pids) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut samples = vec![sample(&pids)];
            while !flag.load(Ordering::Relaxed) {
                thread::sleep(PERIOD);
                let next = sample(&pids);
                samples.push(match samples.last() {
                    Some(previous) => kept_up(previous, next),
                    None => next,
                });
            }
            samples
        });
        Self { stop, thread }
    }

    /// Stops sampling (after one last sample) and hands over what was seen.
    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// `next` with no part's CPU time below `previous`'s: a process that has exited (the load
/// generator, once reaped) keeps the time it spent.
fn kept_up(previous: &Sample, mut next: Sample) -> Sample {
    for (now, before) in next.ticks.iter_mut().zip(previous.ticks) {
        *now = (*now).max(before);
    }
    next
}

fn sample(pids: &Pids) -> Sample {
    let mut sample = Sample {
        at_ms: unix_ms(),
        machine: machine_ticks().unwrap_or_default(),
        ..Sample::default()
    };
    let mut add = |part: usize, pid: u32| {
        if let Some(process) = process(pid) {
            sample.ticks[part] += process.ticks;
            sample.rss_kb[part] += process.rss_kb;
        }
    };
    for (part, pid) in [
        (NATS, pids.nats),
        (PERSISTER, pids.persister),
        (LOAD, pids.load),
    ] {
        if let Some(pid) = pid {
            add(part, pid);
        }
    }
    for &pid in &pids.gateways {
        add(GATEWAY, pid);
    }
    if let Some(postmaster) = pids.postmaster {
        let (ticks, rss_kb) = postgres(postmaster);
        sample.ticks[POSTGRES] = ticks;
        sample.rss_kb[POSTGRES] = rss_kb;
    }
    sample
}

/// PostgreSQL's CPU time and memory: the postmaster's own time and that of every backend it
/// has reaped, plus its live children's. Shared memory is mapped by every backend, so it is
/// counted once (the largest mapping) on top of each process's private memory.
fn postgres(postmaster: u32) -> (u64, u64) {
    let mut ticks = 0;
    let mut private_kb = 0;
    let mut shared_kb = 0;
    for pid in std::iter::once(postmaster).chain(natter_localinfra::children_of(postmaster)) {
        if let Some(process) = process(pid) {
            ticks += process.ticks;
            private_kb += process.anon_kb;
            shared_kb = shared_kb.max(process.rss_kb - process.anon_kb);
        }
    }
    (ticks, private_kb + shared_kb)
}

struct Process {
    ticks: u64,
    rss_kb: u64,
    anon_kb: u64,
}

fn process(pid: u32) -> Option<Process> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    Some(Process {
        ticks: ticks_of(&stat)?,
        rss_kb: status_kb(&status, "VmRSS").unwrap_or(0),
        anon_kb: status_kb(&status, "RssAnon").unwrap_or(0),
    })
}

/// utime + stime + cutime + cstime of a `/proc/<pid>/stat` line.
fn ticks_of(stat: &str) -> Option<u64> {
    // The command name is parenthesised and may itself hold ") ".
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After the name: state is field 3 of the line, utime 14 … cstime 17.
    (11..15)
        .map(|index| fields.get(index)?.parse::<u64>().ok())
        .sum()
}

/// A `Name:   123 kB` line of `/proc/<pid>/status`.
fn status_kb(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        value.split_ascii_whitespace().next()?.parse().ok()
    })
}

fn machine_ticks() -> Option<MachineTicks> {
    parse_machine(&fs::read_to_string("/proc/stat").ok()?)
}

fn parse_machine(stat: &str) -> Option<MachineTicks> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|value| value.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let field = |index: usize| values.get(index).copied().unwrap_or(0);
    let total: u64 = (0..8).map(field).sum();
    let steal = field(7);
    Some(MachineTicks {
        busy: total - field(3) - field(4) - steal,
        steal,
        total,
    })
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// Clock ticks per second (`USER_HZ`): what `/proc` counts CPU time in.
pub fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// What a run did, from its report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Work {
    /// When its measured window began (Unix ms); `None` for a run without one.
    pub t0_unix_ms: Option<i64>,
    pub duration_s: f64,
    pub accepted_per_s: f64,
    pub delivered_per_s: f64,
    /// Connections held, for `connections`.
    pub connections: Option<f64>,
}

/// What a run cost, per unit of work done in its measured window.
#[derive(Clone, Debug, PartialEq)]
pub struct Cost {
    /// What one unit is: an accepted message, or a connection (`connections`).
    pub unit: &'static str,
    pub units: f64,
    pub window_s: f64,
    /// CPU microseconds per unit, by part.
    pub us_per_unit: [f64; PARTS.len()],
    /// The machine's busy time beyond the parts (other tenants, the bench itself, the kernel's
    /// own threads), per unit.
    pub other_us_per_unit: f64,
    /// Deliveries per unit, when the run delivers (50 for a group message to 50 members).
    pub deliveries_per_unit: Option<f64>,
    /// Busy share of all the machine's CPUs in the window, and the share stolen from it.
    pub machine_busy: f64,
    pub machine_steal: f64,
    /// The most resident memory each part held while the load test ran.
    pub peak_rss_kb: [u64; PARTS.len()],
}

impl Cost {
    /// All the parts together (without `other`), per unit.
    pub fn total_us(&self) -> f64 {
        self.us_per_unit.iter().sum()
    }

    /// The cost of a run that did `work` from the samples taken while it ran: the window is
    /// its measured one, or the whole sampling for a run that has none (`connections`, whose
    /// unit is a connection). `None` without two samples or work to divide by.
    pub fn of(work: &Work, samples: &[Sample], ticks_per_second: f64) -> Option<Self> {
        let (first, last) = (samples.first()?, samples.last()?);
        let messages = work.accepted_per_s * work.duration_s;
        let (unit, units, from_ms, to_ms) = match work.t0_unix_ms {
            Some(t0) if messages > 0.0 => (
                "message",
                messages,
                t0,
                t0 + (work.duration_s * 1000.0) as i64,
            ),
            _ => ("connection", work.connections?, first.at_ms, last.at_ms),
        };
        if units <= 0.0 || to_ms <= from_ms {
            return None;
        }
        let start = at(samples, from_ms)?;
        let end = at(samples, to_ms)?;
        let us = |ticks: f64| ticks / ticks_per_second * 1e6 / units;
        let mut us_per_unit = [0.0; PARTS.len()];
        for (part, cost) in us_per_unit.iter_mut().enumerate() {
            *cost = us(end.ticks[part] - start.ticks[part]);
        }
        let parts_ticks: f64 = (0..PARTS.len())
            .map(|part| end.ticks[part] - start.ticks[part])
            .sum();
        let busy = end.busy - start.busy;
        let total = (end.total - start.total).max(1.0);
        let mut peak_rss_kb = [0; PARTS.len()];
        for sample in samples {
            for (part, peak) in peak_rss_kb.iter_mut().enumerate() {
                *peak = (*peak).max(sample.rss_kb[part]);
            }
        }
        let delivered = work.delivered_per_s * work.duration_s;
        Some(Self {
            unit,
            units,
            window_s: (to_ms - from_ms) as f64 / 1000.0,
            us_per_unit,
            other_us_per_unit: us((busy - parts_ticks).max(0.0)),
            deliveries_per_unit: (unit == "message" && delivered > 0.0).then(|| delivered / units),
            machine_busy: busy / total,
            machine_steal: (end.steal - start.steal) / total,
            peak_rss_kb,
        })
    }
}

/// The cost table: a row per run that has a cost, and what its columns mean.
pub fn render<'a>(runs: impl IntoIterator<Item = (&'a str, &'a Cost)>) -> String {
    let mut out = String::from(
        "| run | per | nats-server | PostgreSQL | gateway | persister | load generator \
         | **total** | deliveries per unit | other | machine busy / stolen \
         | peak RSS MiB: nats-server / PostgreSQL / gateway / persister / load generator |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for (name, cost) in runs {
        let mut cells = vec![name.to_owned(), cost.unit.to_owned()];
        cells.extend(cost.us_per_unit.iter().map(|&us| micros(us)));
        cells.push(format!("**{}**", micros(cost.total_us())));
        cells.push(
            cost.deliveries_per_unit
                .map_or_else(|| "—".to_owned(), |d| format!("{d:.1}")),
        );
        cells.push(micros(cost.other_us_per_unit));
        cells.push(format!(
            "{:.0} % / {:.0} %",
            cost.machine_busy * 100.0,
            cost.machine_steal * 100.0
        ));
        let rss: Vec<String> = cost
            .peak_rss_kb
            .iter()
            .map(|&kb| format!("{:.0}", kb as f64 / 1024.0))
            .collect();
        cells.push(rss.join(" / "));
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out.push_str(
        "\nCPU microseconds per accepted message (per connection for `connections`), by process, \
         over the run's measured window (warm-up and drain excluded): user + system time from \
         `/proc/<pid>/stat`, sampled every 250 ms and interpolated at the window's ends. \
         PostgreSQL is the postmaster with every backend (live or exited); the gateway column \
         adds the idle second gateway `abuse` uses. **total** is these five processes; `other` \
         is the rest of the machine's busy time in the window (the kernel's own threads, the \
         bench itself, anything else running), and `machine busy / stolen` the share of all \
         cores busy, and taken by the hypervisor. Peak RSS is the largest resident memory seen \
         while the load test ran (PostgreSQL: every process's private memory plus its shared \
         memory once).\n",
    );
    out
}

/// Microseconds for reading: whole above 100, one decimal below.
fn micros(us: f64) -> String {
    if us >= 100.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

/// Every counter of the samples at `at_ms`, interpolated between the two samples around it.
struct Counters {
    ticks: [f64; PARTS.len()],
    busy: f64,
    steal: f64,
    total: f64,
}

fn at(samples: &[Sample], at_ms: i64) -> Option<Counters> {
    let after = samples.iter().position(|sample| sample.at_ms >= at_ms)?;
    let later = &samples[after];
    let earlier = &samples[after.saturating_sub(1)];
    let span = (later.at_ms - earlier.at_ms) as f64;
    let share = if span > 0.0 {
        (at_ms - earlier.at_ms) as f64 / span
    } else {
        1.0
    };
    let mix = |a: u64, b: u64| a as f64 + (b as f64 - a as f64) * share.clamp(0.0, 1.0);
    let mut ticks = [0.0; PARTS.len()];
    for (part, value) in ticks.iter_mut().enumerate() {
        *value = mix(earlier.ticks[part], later.ticks[part]);
    }
    Some(Counters {
        ticks,
        busy: mix(earlier.machine.busy, later.machine.busy),
        steal: mix(earlier.machine.steal, later.machine.steal),
        total: mix(earlier.machine.total, later.machine.total),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_past_a_command_name_with_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime ...
        let stat = "42 (a) b) c) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 4 0 99";
        assert_eq!(ticks_of(stat), Some(310));
        assert_eq!(ticks_of("42 (short) S 1 2"), None);
    }

    #[test]
    fn reads_memory_lines_of_the_status_file() {
        let status = "Name:\tpostgres\nVmRSS:\t  14820 kB\nRssAnon:\t    2100 kB\n";
        assert_eq!(status_kb(status, "VmRSS"), Some(14_820));
        assert_eq!(status_kb(status, "RssAnon"), Some(2_100));
        assert_eq!(status_kb(status, "VmHWM"), None);
    }

    #[test]
    fn the_machine_is_busy_when_neither_idle_waiting_nor_stolen() {
        let stat = "cpu  100 5 50 800 20 3 2 10 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(
            parse_machine(stat),
            Some(MachineTicks {
                busy: 160,
                steal: 10,
                total: 990
            })
        );
    }

    fn sample(at_ms: i64, gateway_ticks: u64, busy: u64) -> Sample {
        let mut ticks = [0; PARTS.len()];
        ticks[GATEWAY] = gateway_ticks;
        ticks[NATS] = gateway_ticks / 2;
        Sample {
            at_ms,
            ticks,
            rss_kb: [at_ms as u64, 0, 0, 0, 0],
            machine: MachineTicks {
                busy,
                steal: 0,
                total: 2 * at_ms as u64 / 10,
            },
        }
    }

    fn steady(t0: i64, duration_s: f64, accepted_per_s: f64) -> Work {
        Work {
            t0_unix_ms: Some(t0),
            duration_s,
            accepted_per_s,
            delivered_per_s: 2.0 * accepted_per_s,
            connections: None,
        }
    }

    #[test]
    fn divides_the_cpu_spent_in_the_measured_window_by_the_messages_accepted_in_it() {
        // The gateway burns 100 ticks (1 s at 100 Hz) per second of the samples; the window
        // (1,500 → 3,500 ms) falls between samples, so its ends are interpolated.
        let samples: Vec<_> = (0..=5)
            .map(|s| sample(s * 1000, s as u64 * 100, s as u64 * 180))
            .collect();
        let cost = Cost::of(&steady(1_500, 2.0, 1_000.0), &samples, 100.0).unwrap();
        assert_eq!(cost.unit, "message");
        assert_eq!(cost.units, 2_000.0);
        // 2 s of CPU over 2,000 messages.
        assert!((cost.us_per_unit[GATEWAY] - 1_000.0).abs() < 1e-6);
        assert!((cost.us_per_unit[NATS] - 500.0).abs() < 1e-6);
        assert!((cost.total_us() - 1_500.0).abs() < 1e-6);
        // 3.6 s busy, 3 s of it in the parts.
        assert!((cost.other_us_per_unit - 300.0).abs() < 1e-6);
        assert!((cost.machine_busy - 0.9).abs() < 1e-6);
        assert_eq!(cost.deliveries_per_unit, Some(2.0));
        assert_eq!(cost.peak_rss_kb[NATS], 5_000);
    }

    #[test]
    fn a_run_without_a_window_costs_per_connection_over_the_whole_sampling() {
        let samples: Vec<_> = (0..=2)
            .map(|s| sample(s * 1000, s as u64 * 100, 0))
            .collect();
        let work = Work {
            connections: Some(400.0),
            ..Work::default()
        };
        let cost = Cost::of(&work, &samples, 100.0).unwrap();
        assert_eq!(cost.unit, "connection");
        assert!((cost.us_per_unit[GATEWAY] - 5_000.0).abs() < 1e-6);
        assert_eq!(cost.deliveries_per_unit, None);
    }

    #[test]
    fn no_cost_without_samples_or_work() {
        let samples: Vec<_> = (0..=2).map(|s| sample(s * 1000, 0, 0)).collect();
        assert_eq!(Cost::of(&steady(500, 1.0, 0.0), &samples, 100.0), None);
        assert_eq!(Cost::of(&steady(500, 1.0, 10.0), &[], 100.0), None);
        // A window that ends after the last sample is not guessed at.
        assert_eq!(Cost::of(&steady(1_500, 5.0, 10.0), &samples, 100.0), None);
    }

    #[test]
    fn renders_a_row_per_run_with_the_total_and_peak_memory() {
        let samples: Vec<_> = (0..=5)
            .map(|s| sample(s * 1000, s as u64 * 100, s as u64 * 180))
            .collect();
        let cost = Cost::of(&steady(1_500, 2.0, 1_000.0), &samples, 100.0).unwrap();
        let table = render([("steady-1k", &cost)]);
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[2],
            "| steady-1k | message | 500 | 0.0 | 1000 | 0.0 | 0.0 | **1500** | 2.0 | 300 \
             | 90 % / 0 % | 5 / 0 / 0 / 0 / 0 |"
        );
        assert_eq!(rows[0].matches('|').count(), rows[1].matches('|').count());
    }

    #[test]
    fn a_process_that_exits_keeps_the_time_it_spent() {
        let before = sample(1000, 300, 0);
        let after = kept_up(&before, sample(1250, 0, 0));
        assert_eq!(after.ticks[GATEWAY], 300);
        assert_eq!(after.at_ms, 1250);
        assert_eq!(kept_up(&before, sample(1250, 400, 0)).ticks[GATEWAY], 400);
    }

    #[test]
    fn samples_this_very_process() {
        let own = std::process::id();
        let seen = super::sample(&Pids {
            load: Some(own),
            ..Pids::default()
        });
        assert!(seen.rss_kb[LOAD] > 0);
        assert!(seen.machine.total > 0);
    }
}
