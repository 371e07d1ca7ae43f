//! The standard suite: which `natter-loadtest` runs `cargo xtask bench` makes, with what
//! parameters and time limits, and the `--quick` version of each.

use std::time::Duration;

/// One run of the suite: a name (its output directory and table row) and a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: &'static str,
    pub scenario: Scenario,
    /// When the run is stopped, whatever the load test is doing: the whole suite's limits add
    /// up to under sixteen minutes.
    pub limit: Duration,
}

/// A `natter-loadtest` subcommand and its arguments (see `loadtest/src/cli.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Steady {
        users: u32,
        rate: u32,
        duration_s: u32,
        warmup_s: u32,
    },
    Fanout {
        groups: u32,
        group_size: u32,
        rate: u32,
        duration_s: u32,
        warmup_s: u32,
    },
    Connections {
        count: u32,
        concurrency: u32,
        hold_s: u32,
    },
    Storm {
        devices: u32,
        missed: u32,
        deadline_s: u32,
    },
    /// `steady` traffic quiet, then under abusers; against the gateway with
    /// natter's default limits.
    Abuse {
        users: u32,
        rate: u32,
        duration_s: u32,
        warmup_s: u32,
        abusers: u32,
        group_size: u32,
    },
}

pub const SUITE: &[Entry] = &[
    Entry {
        name: "steady-1k",
        scenario: Scenario::Steady {
            users: 200,
            rate: 1_000,
            duration_s: 15,
            warmup_s: 2,
        },
        limit: Duration::from_secs(60),
    },
    Entry {
        name: "steady-5k",
        scenario: Scenario::Steady {
            users: 200,
            rate: 5_000,
            duration_s: 15,
            warmup_s: 2,
        },
        limit: Duration::from_secs(75),
    },
    Entry {
        name: "fanout",
        scenario: Scenario::Fanout {
            groups: 20,
            group_size: 50,
            rate: 200,
            duration_s: 15,
            warmup_s: 2,
        },
        limit: Duration::from_secs(75),
    },
    Entry {
        name: "connections",
        scenario: Scenario::Connections {
            // Just under the open-files limit (20,000 here) that the load
            // generator and the gateway each have.
            count: 19_000,
            concurrency: 500,
            hold_s: 5,
        },
        limit: Duration::from_secs(120),
    },
    Entry {
        name: "storm",
        scenario: Scenario::Storm {
            devices: 10_000,
            missed: 50,
            deadline_s: 120,
        },
        limit: Duration::from_secs(360),
    },
    // Honest users at 1,000 msg/s, alone and then beside abusers.
    Entry {
        name: "abuse",
        scenario: Scenario::Abuse {
            // 200 senders at 5/s each, half the default send limit.
            users: 400,
            rate: 1_000,
            duration_s: 15,
            warmup_s: 2,
            // Three flood, three send the largest messages.
            abusers: 6,
            group_size: 1_000,
        },
        limit: Duration::from_secs(150),
    },
    // The rate the projection-lag target is set at.
    Entry {
        name: "steady-10k",
        scenario: Scenario::Steady {
            users: 400,
            rate: 10_000,
            duration_s: 10,
            warmup_s: 2,
        },
        limit: Duration::from_secs(60),
    },
    // Last: it overloads natter today, and the backlog it leaves would
    // weigh on whatever ran after it.
    Entry {
        name: "steady-20k",
        scenario: Scenario::Steady {
            users: 400,
            rate: 20_000,
            duration_s: 10,
            warmup_s: 2,
        },
        limit: Duration::from_secs(60),
    },
];

/// A `--quick` run's limit: seconds of load, plus setup and drain.
const QUICK_LIMIT: Duration = Duration::from_secs(60);

pub fn names() -> impl Iterator<Item = &'static str> {
    SUITE.iter().map(|entry| entry.name)
}

impl Entry {
    /// The same run, a tenth of the size and a few seconds long: proves the command works.
    pub fn quick(&self) -> Self {
        Self {
            name: self.name,
            scenario: self.scenario.quick(),
            limit: self.limit.min(QUICK_LIMIT),
        }
    }
}

impl Scenario {
    /// The loadtest subcommand, which is also the name of its report files.
    pub fn subcommand(&self) -> &'static str {
        match self {
            Self::Steady { .. } => "steady",
            Self::Fanout { .. } => "fanout",
            Self::Connections { .. } => "connections",
            Self::Storm { .. } => "storm",
            Self::Abuse { .. } => "abuse",
        }
    }

    /// Whether the run needs natter's default per-user limits in force
    /// (the suite's other runs go far beyond them).
    pub fn needs_limits(&self) -> bool {
        matches!(self, Self::Abuse { .. })
    }

    /// The subcommand's flags, in the order `natter-loadtest --help` lists them.
    pub fn args(&self) -> Vec<String> {
        let flags: Vec<(&str, u32)> = match *self {
            Self::Steady {
                users,
                rate,
                duration_s,
                warmup_s,
            } => vec![
                ("--users", users),
                ("--rate", rate),
                ("--duration", duration_s),
                ("--warmup", warmup_s),
            ],
            Self::Fanout {
                groups,
                group_size,
                rate,
                duration_s,
                warmup_s,
            } => vec![
                ("--groups", groups),
                ("--group-size", group_size),
                ("--rate", rate),
                ("--duration", duration_s),
                ("--warmup", warmup_s),
            ],
            Self::Connections {
                count,
                concurrency,
                hold_s,
            } => vec![
                ("--count", count),
                ("--concurrency", concurrency),
                ("--hold", hold_s),
            ],
            Self::Storm {
                devices,
                missed,
                deadline_s,
            } => vec![
                ("--devices", devices),
                ("--missed", missed),
                ("--deadline", deadline_s),
            ],
            Self::Abuse {
                users,
                rate,
                duration_s,
                warmup_s,
                abusers,
                group_size,
            } => vec![
                ("--users", users),
                ("--rate", rate),
                ("--duration", duration_s),
                ("--warmup", warmup_s),
                ("--abusers", abusers),
                ("--group-size", group_size),
            ],
        };
        flags
            .into_iter()
            .flat_map(|(flag, value)| [flag.to_owned(), value.to_string()])
            .collect()
    }

    /// Counts and rates divided by ten, a few seconds of load, a shorter deadline.
    fn quick(&self) -> Self {
        const WARMUP_S: u32 = 1;
        const DURATION_S: u32 = 3;
        let tenth = |n: u32| (n / 10).max(2);
        match *self {
            Self::Steady { users, rate, .. } => Self::Steady {
                // Users come in sender/receiver pairs.
                users: tenth(users).next_multiple_of(2),
                rate: tenth(rate),
                duration_s: DURATION_S,
                warmup_s: WARMUP_S,
            },
            Self::Fanout {
                groups,
                group_size,
                rate,
                ..
            } => Self::Fanout {
                groups: tenth(groups),
                group_size: tenth(group_size),
                rate: tenth(rate),
                duration_s: DURATION_S,
                warmup_s: WARMUP_S,
            },
            Self::Connections {
                count, concurrency, ..
            } => Self::Connections {
                count: tenth(count),
                concurrency: tenth(concurrency),
                hold_s: 1,
            },
            Self::Storm {
                devices,
                missed,
                deadline_s,
            } => Self::Storm {
                devices: tenth(devices),
                missed: tenth(missed),
                deadline_s: (deadline_s / 4).max(10),
            },
            Self::Abuse {
                users,
                rate,
                abusers,
                group_size,
                ..
            } => Self::Abuse {
                users: tenth(users).next_multiple_of(2),
                rate: tenth(rate),
                duration_s: DURATION_S,
                warmup_s: WARMUP_S,
                abusers: (abusers / 2).max(1),
                group_size: tenth(group_size),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_usable_as_directory_names() {
        let mut names: Vec<_> = names().collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SUITE.len());
        for name in names {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{name}"
            );
        }
    }

    #[test]
    fn the_whole_suite_is_bounded_by_sixteen_minutes() {
        let total: Duration = SUITE.iter().map(|entry| entry.limit).sum();
        assert!(total <= Duration::from_secs(960), "{total:?}");
        for entry in SUITE {
            if let Scenario::Steady {
                duration_s,
                warmup_s,
                ..
            }
            | Scenario::Fanout {
                duration_s,
                warmup_s,
                ..
            } = entry.scenario
            {
                assert!(u64::from(duration_s + warmup_s) < entry.limit.as_secs());
            }
        }
    }

    #[test]
    fn renders_the_loadtest_flags() {
        assert_eq!(SUITE[0].scenario.subcommand(), "steady");
        assert_eq!(
            SUITE[0].scenario.args().join(" "),
            "--users 200 --rate 1000 --duration 15 --warmup 2"
        );
        let fanout = SUITE.iter().find(|entry| entry.name == "fanout").unwrap();
        assert_eq!(
            fanout.scenario.args().join(" "),
            "--groups 20 --group-size 50 --rate 200 --duration 15 --warmup 2"
        );
    }

    #[test]
    fn quick_runs_are_a_tenth_of_the_size_and_seconds_long() {
        let quick: Vec<_> = SUITE.iter().map(Entry::quick).collect();
        assert_eq!(
            quick[0].scenario,
            Scenario::Steady {
                users: 20,
                rate: 100,
                duration_s: 3,
                warmup_s: 1
            }
        );
        let storm = quick.iter().find(|entry| entry.name == "storm").unwrap();
        assert_eq!(
            storm.scenario,
            Scenario::Storm {
                devices: 1_000,
                missed: 5,
                deadline_s: 30
            }
        );
        assert!(quick.iter().all(|entry| entry.limit <= QUICK_LIMIT));
    }

    #[test]
    fn quick_steady_keeps_users_in_pairs() {
        let odd = Scenario::Steady {
            users: 30,
            rate: 10,
            duration_s: 20,
            warmup_s: 3,
        };
        let Scenario::Steady { users, .. } = odd.quick() else {
            unreachable!()
        };
        assert_eq!(users, 4);
    }
}
