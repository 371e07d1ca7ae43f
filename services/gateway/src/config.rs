//! The gateway's configuration: every setting an environment variable
//! (DESIGN.md §5) and a flag.

use clap::Parser;
use natter_runtime::config::{DatabaseArgs, NatsArgs, StreamArgs, TelemetryArgs};
use std::time::Duration;

/// `MAX_MESSAGE_BYTES` unless configured.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// `SEND_RATE_PER_SEC` unless configured.
pub const DEFAULT_SEND_RATE_PER_SEC: f64 = 10.0;
/// `MAX_CONNECTIONS_PER_USER` unless configured.
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 32;

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
    /// Browser origins allowed for CORS and the WebSocket handshake, each
    /// `scheme://host[:port]`; `*` is refused (browsers send credentials).
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',',
          value_parser = crate::origin::parse)]
    pub allowed_origins: Vec<String>,
    /// Largest message content, in bytes of UTF-8; at most 30720, so every
    /// message's delivery record stays within 64 KiB.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES, value_parser = message_bytes)]
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
    #[arg(long, env = "SEND_RATE_PER_SEC", default_value_t = DEFAULT_SEND_RATE_PER_SEC)]
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
    /// Login and signup attempts allowed a minute from one client address,
    /// and for one username; more get 429 `rate_limited` with `Retry-After`.
    #[arg(long, env = "AUTH_RATE_PER_MIN", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_rate_per_min: u32,
    /// Proxies (IP addresses or networks, e.g. `10.0.0.0/8`) whose
    /// `X-Forwarded-For` names the client. Empty: the TCP peer is the
    /// client, and `X-Forwarded-For` is ignored.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<crate::address::Network>,
    /// Memory password hashing may hold at once, in MiB: each Argon2 hash
    /// takes 19 MiB, so this sets how many run in parallel (at most two per CPU).
    #[arg(long, env = "PASSWORD_HASH_MEMORY_MIB", default_value_t = 96)]
    pub password_hash_memory_mib: u64,
    /// Longest a login or signup waits for a hashing slot, in milliseconds;
    /// beyond it the answer is 503 `unavailable` with `Retry-After`.
    #[arg(long, env = "PASSWORD_HASH_WAIT_MS", default_value_t = 5000)]
    pub password_hash_wait_ms: u64,
    /// Live sockets one user may have across the cluster; one more is
    /// closed (1008, "too many connections") right after its handshake.
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_USER)]
    pub max_connections_per_user: usize,
    /// Seconds between sweeps that delete the cursors of devices unseen for
    /// longer than `DELIVERY_MAX_AGE_SECS`.
    #[arg(long, env = "DEVICE_PRUNE_INTERVAL_SECS", default_value_t = 3600)]
    pub device_prune_interval_secs: u64,
    /// Bytes of delivery records one user's messages and group changes may
    /// make per second (a message costs its size once per recipient, so a
    /// big group costs more); more get `rate_limited`. The burst always
    /// admits one largest message, or one group change, to a full group.
    #[arg(long, env = "FANOUT_BYTES_PER_SEC", default_value_t = 512 * 1024)]
    pub fanout_bytes_per_sec: u64,
}

/// `MAX_MESSAGE_BYTES`: 1 to [`natter_core::MAX_CONTENT_BYTES`]. A larger
/// limit would let one message make a delivery record too large to store.
fn message_bytes(raw: &str) -> Result<usize, String> {
    let max = natter_core::MAX_CONTENT_BYTES;
    raw.parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("must be 1 to {max}"))
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

    pub fn password_hash_memory(&self) -> u64 {
        self.password_hash_memory_mib.saturating_mul(1024 * 1024)
    }

    pub fn password_hash_wait(&self) -> Duration {
        Duration::from_millis(self.password_hash_wait_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_message_bytes_is_capped_so_every_record_stays_bounded() {
        let parse =
            |bytes: &str| Config::try_parse_from(["natter-gateway", "--max-message-bytes", bytes]);
        assert_eq!(
            parse("30720").unwrap().max_message_bytes,
            natter_core::MAX_CONTENT_BYTES
        );
        assert!(parse("30721").is_err());
        assert!(parse("0").is_err());
        assert_eq!(
            Config::try_parse_from(["natter-gateway"])
                .unwrap()
                .max_message_bytes,
            16 * 1024
        );
    }
}
