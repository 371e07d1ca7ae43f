//! The faults `cargo xtask chaos` injects, in order, and how long each lasts and is given to
//! recover: one cycle with short pauses for the run inside `cargo xtask test`, as many cycles
//! as fit for a run of `--minutes`.

use std::fmt;
use std::time::Duration;

/// How many NATS nodes the chaos cluster has.
pub const NODES: usize = 3;
/// How many gateways (and persisters) run.
pub const PAIR: usize = 2;
/// The node that runs in its own network namespace and can be partitioned away.
pub const PARTITIONED_NODE: usize = NODES - 1;

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL nats-server node `i`, restart it on its data afterwards.
    KillNats(usize),
    /// SIGSTOP nats-server node `i`, SIGCONT afterwards: a hung machine.
    PauseNats(usize),
    /// SIGKILL whichever persister holds the leader lock, restart it afterwards.
    KillLeaderPersister,
    /// SIGKILL gateway `i`, restart it on the same port afterwards.
    KillGateway(usize),
    /// SIGKILL PostgreSQL (postmaster and backends), start it again afterwards.
    KillPostgres,
    /// Node `i`'s link down: no packet in or out, then up again.
    PartitionNats(usize),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KillNats(i) => write!(f, "kill -9 nats n{i}"),
            Self::PauseNats(i) => write!(f, "SIGSTOP nats n{i}"),
            Self::KillLeaderPersister => f.write_str("kill -9 leader persister"),
            Self::KillGateway(i) => write!(f, "kill -9 gateway g{i}"),
            Self::KillPostgres => f.write_str("kill -9 PostgreSQL"),
            Self::PartitionNats(i) => write!(f, "partition nats n{i}"),
        }
    }
}

/// A fault, how long it holds, and the pause after it is undone before the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub fault: Fault,
    pub hold: Duration,
    pub recover: Duration,
}

/// The whole run: load alone for `lead`, the steps, then load alone for `tail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub lead: Duration,
    pub steps: Vec<Step>,
    pub tail: Duration,
}

/// Seconds each fault holds in a long run, and in a short one.
fn holds(fault: Fault, short: bool) -> u64 {
    match (fault, short) {
        (Fault::KillNats(_), false) | (Fault::KillPostgres, false) => 8,
        (Fault::PauseNats(_) | Fault::PartitionNats(_), false) => 10,
        (Fault::KillLeaderPersister | Fault::KillGateway(_), false) => 5,
        (Fault::PartitionNats(_), true) => 5,
        (_, true) => 3,
    }
}

/// Every fault once, in the order they run; the partition only when it can be made.
pub fn cycle(partition: bool) -> Vec<Fault> {
    let mut faults: Vec<Fault> = (0..NODES).map(Fault::KillNats).collect();
    faults.extend((0..NODES).map(Fault::PauseNats));
    faults.extend([
        Fault::KillLeaderPersister,
        Fault::KillGateway(0),
        Fault::KillPostgres,
    ]);
    if partition {
        faults.push(Fault::PartitionNats(PARTITIONED_NODE));
    }
    faults
}

/// How much longer than planned a step takes: restarts, readiness, waiting for the cluster to
/// be healthy again. The load runs this much longer per step so no fault falls after it.
pub const STEP_OVERHEAD: Duration = Duration::from_secs(4);
const LEAD: Duration = Duration::from_secs(10);
const SHORT_LEAD: Duration = Duration::from_secs(6);
const TAIL: Duration = Duration::from_secs(15);
const SHORT_TAIL: Duration = Duration::from_secs(6);
/// The pause before waiting for the cluster to be whole and messages to flow again.
const SHORT_RECOVER: Duration = Duration::from_secs(3);
const LONG_RECOVER: Duration = Duration::from_secs(20);
const MIN_RECOVER: Duration = Duration::from_secs(5);

impl Schedule {
    /// Every fault once with short pauses: the run inside `cargo xtask test`.
    pub fn short(partition: bool) -> Self {
        let steps = cycle(partition)
            .into_iter()
            .map(|fault| Step {
                fault,
                hold: Duration::from_secs(holds(fault, true)),
                recover: SHORT_RECOVER,
            })
            .collect();
        Self {
            lead: SHORT_LEAD,
            steps,
            tail: SHORT_TAIL,
        }
    }

    /// As many whole cycles of faults as fit in `minutes` with at least 20 s to recover after
    /// each (overhead included), the pauses then stretched to fill the time; at least one
    /// cycle, with shorter pauses (5 s at least) if it must.
    pub fn long(minutes: u64, partition: bool) -> Self {
        let faults = cycle(partition);
        let budget = Duration::from_secs(minutes * 60).saturating_sub(LEAD + TAIL);
        let hold: Duration = faults
            .iter()
            .map(|fault| Duration::from_secs(holds(*fault, false)))
            .sum();
        let fixed = hold + STEP_OVERHEAD * count(&faults);
        let cycle_length = fixed + LONG_RECOVER * count(&faults);
        let cycles = (budget.as_secs() / cycle_length.as_secs().max(1)).max(1);
        let pauses = count(&faults) * u32::try_from(cycles).unwrap_or(u32::MAX);
        let left = budget.saturating_sub(fixed * u32::try_from(cycles).unwrap_or(u32::MAX));
        // Whole seconds, so the record reads plainly.
        let recover = Duration::from_secs((left / pauses.max(1)).as_secs()).max(MIN_RECOVER);
        let steps = (0..cycles)
            .flat_map(|_| faults.iter().copied())
            .map(|fault| Step {
                fault,
                hold: Duration::from_secs(holds(fault, false)),
                recover,
            })
            .collect();
        Self {
            lead: LEAD,
            steps,
            tail: TAIL,
        }
    }

    /// How long the load must run: the schedule with each step's overhead.
    pub fn load_length(&self) -> Duration {
        let steps: Duration = self
            .steps
            .iter()
            .map(|step| step.hold + step.recover + STEP_OVERHEAD)
            .sum();
        self.lead + steps + self.tail
    }
}

fn count(faults: &[Fault]) -> u32 {
    u32::try_from(faults.len()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_run_injects_every_fault_once_within_140_s_of_load() {
        let schedule = Schedule::short(true);
        assert_eq!(schedule.steps.len(), 10);
        assert_eq!(schedule.steps[0].fault, Fault::KillNats(0));
        assert_eq!(schedule.steps[5].fault, Fault::PauseNats(2));
        assert_eq!(
            schedule.steps.last().map(|step| step.fault),
            Some(Fault::PartitionNats(2))
        );
        // With starting, draining and stopping, the run stays under 3 minutes.
        assert!(schedule.load_length() < Duration::from_secs(140));
    }

    #[test]
    fn leaves_the_partition_out_when_it_cannot_be_made() {
        let schedule = Schedule::short(false);
        assert_eq!(schedule.steps.len(), 9);
        assert!(
            !schedule
                .steps
                .iter()
                .any(|step| matches!(step.fault, Fault::PartitionNats(_)))
        );
    }

    #[test]
    fn a_long_run_repeats_whole_cycles_that_fit_its_minutes() {
        let schedule = Schedule::long(30, true);
        assert_eq!(schedule.steps.len() % 10, 0);
        assert!(schedule.steps.len() >= 40, "{}", schedule.steps.len());
        assert!(schedule.load_length() <= Duration::from_secs(30 * 60));
        assert!(schedule.load_length() >= Duration::from_secs(29 * 60));
        assert!(
            schedule
                .steps
                .iter()
                .all(|step| step.recover >= LONG_RECOVER)
        );
        let kill = schedule.steps[0];
        assert_eq!(kill.hold, Duration::from_secs(8));
    }

    #[test]
    fn a_ten_minute_run_stretches_its_pauses_to_fill_the_time() {
        let schedule = Schedule::long(10, true);
        assert_eq!(schedule.steps.len(), 10);
        assert!(schedule.steps[0].recover > LONG_RECOVER);
        assert!(schedule.load_length() >= Duration::from_secs(9 * 60));
        assert!(schedule.load_length() <= Duration::from_secs(10 * 60));
    }

    #[test]
    fn a_long_run_too_short_for_a_cycle_shortens_its_pauses() {
        let schedule = Schedule::long(3, true);
        assert_eq!(schedule.steps.len(), 10);
        let recover = schedule.steps[0].recover;
        assert!(
            recover < LONG_RECOVER && recover >= MIN_RECOVER,
            "{recover:?}"
        );
    }

    #[test]
    fn names_faults_for_the_table() {
        assert_eq!(Fault::PauseNats(1).to_string(), "SIGSTOP nats n1");
        assert_eq!(Fault::KillGateway(0).to_string(), "kill -9 gateway g0");
    }
}
