//! The command line: where natter is, where reports go, and one
//! subcommand per scenario. Every run is bounded in count and time and
//! talks only to the gateway it is given (loopback by default).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Clone, Debug)]
#[command(name = "natter-loadtest", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub target: Target,
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The natter under test and how users are made.
#[derive(Args, Clone, Debug)]
pub struct Target {
    /// The gateway's base URL; several, comma-separated, spread the users
    /// across them in turn (the two of a `steady` pair land on different
    /// ones). Sign-ups, group creation and `connections` use the first.
    #[arg(
        long,
        env = "NATTER_URL",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    pub url: String,
    /// PostgreSQL of that natter: users are inserted directly (signing
    /// thousands up would measure argon2, not natter).
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// The gateway's JWT secret, to mint the test users' tokens.
    #[arg(long, env = "JWT_SECRET", global = true)]
    pub jwt_secret: Option<String>,
    /// NATS of that natter, to read JetStream's bytes (`abuse`).
    #[arg(long, env = "NATS_URL", global = true)]
    pub nats_url: Option<String>,
    /// The gateway's process id, to read its memory (`connections`).
    #[arg(long, global = true)]
    pub gateway_pid: Option<u32>,
    /// Where `<scenario>.json` and `<scenario>.html` are written.
    #[arg(long, default_value = "target/loadtest", global = true)]
    pub out: PathBuf,
    /// No progress bars (for CI logs).
    #[arg(long, global = true)]
    pub quiet: bool,
}

impl Target {
    /// The gateways' base URLs.
    pub fn urls(&self) -> Vec<&str> {
        let urls: Vec<&str> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect();
        if urls.is_empty() {
            vec![self.url.as_str()]
        } else {
            urls
        }
    }

    /// The gateway of user or device `index`: each in turn.
    pub fn gateway(&self, index: usize) -> String {
        let urls = self.urls();
        urls[index % urls.len()].to_owned()
    }

    /// The first gateway: for sign-ups, group creation and `connections`.
    pub fn first_gateway(&self) -> String {
        self.gateway(0)
    }
}

#[derive(Subcommand, Clone, Debug)]
pub enum Scenario {
    /// Users in pairs sending direct messages at a fixed total rate (open loop).
    Steady(Steady),
    /// Groups of a given size; messages at a fixed rate; deliveries/s and
    /// latency to the last member.
    Fanout(Fanout),
    /// Idle authenticated connections: connect rate and gateway memory per connection.
    Connections(Connections),
    /// Devices drop without a close frame, miss messages, and all reconnect at once.
    Storm(Storm),
    /// `steady` traffic of honest users twice: alone, then while abusers
    /// flood sends, open too many connections and send the largest
    /// messages into a large group. Needs a gateway with its limits on.
    Abuse(Abuse),
}

#[derive(Args, Clone, Debug)]
pub struct Steady {
    /// Users, in sender/receiver pairs.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// After the last send, seconds without any new answer or delivery
    /// before what is missing counts as lost (draining stops after 30 s in
    /// all; what is missing then, while still arriving, is late).
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
}

#[derive(Args, Clone, Debug)]
pub struct Fanout {
    #[arg(long, default_value_t = 10)]
    pub groups: usize,
    #[arg(long, default_value_t = 50)]
    pub group_size: usize,
    /// Group messages per second, all groups together.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Like `steady --drain`.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
}

#[derive(Args, Clone, Debug)]
pub struct Connections {
    /// Connections to open (one user and device each).
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Seconds to hold them open after the last one is up.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
}

#[derive(Args, Clone, Debug)]
pub struct Storm {
    /// Devices (one user each) that drop and reconnect.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Messages each device misses while away.
    #[arg(long, default_value_t = 50)]
    pub missed: usize,
    /// Seconds every device has to get everything after reconnecting.
    #[arg(long, default_value_t = 60)]
    pub deadline: u64,
    /// Messages a second the senders send while the devices are away, all
    /// together, each send due at its own time (0: as fast as the sockets
    /// take them, all due at once).
    #[arg(long, default_value_t = 5000)]
    pub send_rate: u64,
}

#[derive(Args, Clone, Debug)]
pub struct Abuse {
    /// The honest traffic, as for `steady` (run once quiet, once attacked).
    #[command(flatten)]
    pub honest: Steady,
    /// Users who abuse natter: half flood, half send the largest messages,
    /// all open too many connections.
    #[arg(long, default_value_t = 6)]
    pub abusers: usize,
    /// Each abuser sends this many times the gateway's send limit.
    #[arg(long, default_value_t = 100)]
    pub flood_factor: u32,
    /// Each abuser opens this many times the gateway's connection limit.
    #[arg(long, default_value_t = 5)]
    pub connection_factor: usize,
    /// Members of the group the abusers send the largest messages into
    /// (the attacked run's honest users, the abusers, and idle users).
    #[arg(long, default_value_t = 1000)]
    pub group_size: usize,
    /// Largest messages each abuser tries to send into the group, per second.
    #[arg(long, default_value_t = 20)]
    pub big_rate: u32,
    /// The gateway's `SEND_RATE_PER_SEC` (per user).
    #[arg(long, default_value_t = natter_gateway::config::DEFAULT_SEND_RATE_PER_SEC)]
    pub send_limit: f64,
    /// The gateway's `MAX_CONNECTIONS_PER_USER`.
    #[arg(long, default_value_t = natter_gateway::config::DEFAULT_MAX_CONNECTIONS_PER_USER)]
    pub connection_limit: usize,
    /// The gateway's `MAX_MESSAGE_BYTES`.
    #[arg(long, default_value_t = natter_gateway::config::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
}
