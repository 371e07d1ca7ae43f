//! The gateway's configuration: every setting an environment variable
//! (DESIGN.md §5) and a flag.

use clap::Parser;
use natter_runtime::config::{DatabaseArgs, NatsArgs, StreamArgs, TelemetryArgs};
use std::time::Duration;

#[derive(Parser, Clone, Debug)]
#[command(name = "natter-gateway", version, about)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// HTTP port.
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: String,
    /// HS256 signing secret for tokens, at least 32 bytes.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Development mode: a missing or short JWT_SECRET is tolerated (a random
    /// one is used when missing, so tokens die with the process).
    #[arg(long, env = "NATTER_DEV")]
    pub dev: bool,
    /// Browser origins allowed for CORS and the WebSocket handshake.
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Largest message content, in bytes of UTF-8.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 16 * 1024)]
    pub max_message_bytes: usize,
    /// Largest WebSocket frame; a bigger one closes the socket with 1009.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,
    /// Lifetime of an issued token, in seconds.
    #[arg(long, env = "TOKEN_TTL_SECS", default_value_t = 24 * 3600)]
    pub token_ttl_secs: u64,
    /// Delivery records queued for one connection before it is marked lagging
    /// (it then catches up from the stream instead of from memory).
    #[arg(long, env = "SESSION_QUEUE", default_value_t = 256)]
    pub session_queue: usize,
    /// Sends one connection may have awaiting their JetStream ack.
    #[arg(long, env = "SESSION_MAX_INFLIGHT", default_value_t = 256)]
    pub session_max_inflight: usize,
    /// Messages one user may send per second on average (twice that in a
    /// burst), all their connections and REST together on one gateway;
    /// more are refused with `rate_limited`.
    #[arg(long, env = "SEND_RATE_PER_SEC", default_value_t = 500.0)]
    pub send_rate_per_sec: f64,
    /// Seconds a connection's presence outlives its gateway's last heartbeat.
    #[arg(long, env = "PRESENCE_TTL_SECS", default_value_t = 30)]
    pub presence_ttl_secs: u64,
    /// Usernames allowed to see `/debug/active-users`.
    #[arg(long, env = "ADMIN_USERS", value_delimiter = ',')]
    pub admin_users: Vec<String>,
    /// Seconds between server pings; a client silent for two of them is
    /// gone (a dead network sends no close).
    #[arg(long, env = "WS_PING_SECS", default_value_t = 20)]
    pub ws_ping_secs: u64,
    /// Seconds a socket write may block before the reader counts as too slow.
    #[arg(long, env = "SLOW_READER_SECS", default_value_t = 10)]
    pub slow_reader_secs: u64,
    /// Live sockets one user may have across the cluster; one more is
    /// closed (1008, "too many connections") right after its handshake.
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value_t = 32)]
    pub max_connections_per_user: usize,
    /// Seconds between sweeps that delete the cursors of devices unseen for
    /// longer than `DELIVERY_MAX_AGE_SECS`.
    #[arg(long, env = "DEVICE_PRUNE_INTERVAL_SECS", default_value_t = 3600)]
    pub device_prune_interval_secs: u64,
}

impl Config {
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs)
    }

    pub fn presence_ttl(&self) -> Duration {
        Duration::from_secs(self.presence_ttl_secs.max(1))
    }

    pub fn ws_ping_interval(&self) -> Duration {
        Duration::from_secs(self.ws_ping_secs.max(1))
    }

    pub fn device_prune_interval(&self) -> Duration {
        Duration::from_secs(self.device_prune_interval_secs.max(1))
    }

    pub fn slow_reader_timeout(&self) -> Duration {
        Duration::from_secs(self.slow_reader_secs)
    }
}
