//! The local natter that `up` and `bench` run: NATS, PostgreSQL, the persister and the gateway,
//! watched for crashes and stopped in reverse order of starting; and what configures it.

use std::env;
use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use natter_localinfra::{NatsServer, Postgres};

use crate::service::Service;
use crate::step::banner;

/// The per-user limits lifted for load runs (`bench`, `chaos`), whose senders and groups go
/// well above natter's defaults for one user.
pub const LIFTED_LIMITS: [(&str, &str); 3] = [
    ("SEND_RATE_PER_SEC", "1000000"),
    ("FANOUT_BYTES_PER_SEC", "1000000000000"),
    ("SESSION_QUEUE", "4096"),
];

/// Matches the services' own drain deadline.
const SERVICE_GRACE: Duration = Duration::from_secs(10);

/// What a task started, stopped in reverse order of starting.
#[derive(Default)]
pub struct Stack {
    pub nats: Option<NatsServer>,
    pub postgres: Option<Postgres>,
    pub persister: Option<Service>,
    pub gateway: Option<Service>,
    /// `bench`'s second gateway, with natter's default per-user limits.
    pub limited_gateway: Option<Service>,
}

impl Stack {
    /// What has exited by itself, in words (`None` while everything runs).
    pub fn crashed(&mut self) -> anyhow::Result<Option<String>> {
        for service in [
            self.gateway.as_mut(),
            self.limited_gateway.as_mut(),
            self.persister.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(status) = service.exited()? {
                return Ok(Some(format!(
                    "{} exited unexpectedly ({status})",
                    service.name()
                )));
            }
        }
        if let Some(nats) = self.nats.as_mut()
            && !nats.is_running()
        {
            return Ok(Some(format!(
                "nats-server exited unexpectedly (see {})",
                nats.log_path().display()
            )));
        }
        if let Some(postgres) = &self.postgres
            && postgres.pid().is_none()
        {
            return Ok(Some(format!(
                "PostgreSQL exited unexpectedly (see {})",
                postgres.log_path().display()
            )));
        }
        Ok(None)
    }

    /// Gateway first (it drains its WebSockets), then the persister (it finishes its batch),
    /// then the servers they both use. `false` if anything failed to stop.
    pub fn stop_all(&mut self) -> bool {
        let mut clean = true;
        for service in [
            self.gateway.take(),
            self.limited_gateway.take(),
            self.persister.take(),
        ]
        .into_iter()
        .flatten()
        {
            let mut service = service;
            banner(&format!("stopping {}", service.name()));
            if let Err(error) = service.stop(SERVICE_GRACE) {
                eprintln!("error stopping {}: {error:#}", service.name());
                clean = false;
            }
        }
        if let Some(mut nats) = self.nats.take() {
            banner("stopping nats-server");
            if let Err(error) = nats.stop() {
                eprintln!("error stopping nats-server: {error}");
                clean = false;
            }
        }
        if let Some(mut postgres) = self.postgres.take() {
            banner("stopping PostgreSQL");
            if let Err(error) = postgres.stop() {
                eprintln!("error stopping PostgreSQL: {error}");
                clean = false;
            }
        }
        clean
    }
}

/// An exclusive lock on `<dir>/<task>.lock`, held while the returned file lives; `None` (after
/// saying so) when another `cargo xtask <task>` holds it.
pub fn lock_single_instance(dir: &Path, task: &str) -> anyhow::Result<Option<File>> {
    let path = dir.join(format!("{task}.lock"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => {
            eprintln!(
                "another `cargo xtask {task}` is already running (it holds {}); \
                 stop it with Ctrl-C in its terminal first",
                path.display()
            );
            Ok(None)
        }
        Err(fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("locking {}", path.display()))
        }
    }
}

pub fn non_empty_env(name: &str) -> Option<String> {
    env::var(name).ok().filter(|value| !value.is_empty())
}

pub use crate::step::release_dir;

/// A new JWT secret: 48 random bytes from `/dev/urandom`, as 96 hex digits.
pub fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0_u8; 48];
    File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut bytes))
        .context("reading 48 random bytes from /dev/urandom")?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}
