//! The persister's configuration: environment variables or flags
//! (DESIGN.md §5).

use clap::Parser;
use natter_runtime::config::{DatabaseArgs, NatsArgs, StreamArgs, TelemetryArgs};
use std::time::Duration;

/// The persister's configuration: environment variables or flags.
#[derive(Parser, Clone, Debug)]
#[command(name = "natter-persister", version, about)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Port of the health and metrics endpoints.
    #[arg(long, env = "PERSISTER_PORT", default_value_t = 8001)]
    pub port: u16,
    /// Address the health and metrics endpoints listen on.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: String,
    /// Most CHAT records projected in one transaction.
    #[arg(long, env = "PERSISTER_BATCH_MAX", default_value_t = 500)]
    pub batch_max: usize,
    /// How long a batch waits to fill after its first record, in
    /// milliseconds. 0 takes what has arrived: under load the records that
    /// came while the last batch was written make the next one, and an idle
    /// moment's lone record is not held back (a wait of 2 ms saved about a
    /// fifth of the CPU at 1,000 msg/s and added 1.5 ms to every delivery).
    #[arg(long, env = "PERSISTER_BATCH_WAIT_MS", default_value_t = 0)]
    pub batch_wait_ms: u64,
    /// Deliveries of a record that fails to project before it is dead-lettered.
    #[arg(long, env = "PERSISTER_MAX_DELIVER", default_value_t = 5)]
    pub max_deliver: i64,
    /// Bytes of delivery records (all recipients' copies together) above
    /// which a `CHAT` record is fanned out beside later records, a chunk at
    /// a time, instead of ahead of them: one message to a large group does
    /// not hold up everyone else's.
    #[arg(long, env = "LARGE_FANOUT_BYTES", default_value_t = 1024 * 1024)]
    pub large_fanout_bytes: usize,
    /// Bytes a second of such records published at most, all senders
    /// together: what a burst of them may take from everyone else.
    #[arg(long, env = "LARGE_FANOUT_BYTES_PER_SEC", default_value_t = 64 * 1024 * 1024)]
    pub large_fanout_bytes_per_sec: u64,
    /// Seconds JetStream waits for an ack before redelivering.
    #[arg(long, env = "PERSISTER_ACK_WAIT_SECS", default_value_t = 30)]
    pub ack_wait_secs: u64,
}

impl Config {
    pub fn batch_wait(&self) -> Duration {
        Duration::from_millis(self.batch_wait_ms)
    }
}
