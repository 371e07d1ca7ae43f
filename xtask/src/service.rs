//! One of natter's own binaries run by `cargo xtask up` and `bench`: spawned in its own process
//! group, awaited on its `/readyz`, stopped with SIGTERM and a deadline, killed if dropped
//! running.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use natter_localinfra::{Signal, http_status, send_signal};

use crate::signals::Stop;

const POLL: Duration = Duration::from_millis(100);

pub struct Service {
    name: &'static str,
    port: u16,
    child: Child,
}

impl Service {
    /// Starts `binary` with `env` added to ours; its output goes to our terminal.
    pub fn spawn(
        name: &'static str,
        binary: &Path,
        port: u16,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::spawn_with(name, Command::new(binary), port, env)
    }

    /// Like [`Service::spawn`], with its output appended to `log` instead.
    pub fn spawn_logged(
        name: &'static str,
        binary: &Path,
        port: u16,
        env: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let stdout = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let stderr = stdout
            .try_clone()
            .with_context(|| format!("duplicating the handle of {}", log.display()))?;
        let mut command = Command::new(binary);
        command.stdout(stdout).stderr(stderr);
        Self::spawn_with(name, command, port, env)
    }

    fn spawn_with(
        name: &'static str,
        mut command: Command,
        port: u16,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let binary = command.get_program().to_owned();
        command.envs(env.iter().copied());
        // A terminal's Ctrl-C then reaches only xtask, which stops the services in order.
        command.process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", Path::new(&binary).display()))?;
        Ok(Self { name, port, child })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `GET /readyz` answers 200. `Ok(false)` if a stop was requested meanwhile.
    pub fn wait_ready(&mut self, timeout: Duration, stop: &Stop) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                bail!("{} exited during startup ({status})", self.name);
            }
            if stop.requested() {
                return Ok(false);
            }
            if matches!(http_status(self.port, "/readyz"), Ok(200)) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} was not ready (GET http://127.0.0.1:{}/readyz != 200) after {} s",
                    self.name,
                    self.port,
                    timeout.as_secs()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("checking on {}", self.name))
    }

    /// SIGTERM, up to `grace` to drain and exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        if self.exited()?.is_some() {
            return Ok(());
        }
        send_signal(self.child.id(), Signal::Term)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited()?.is_some() {
                return Ok(());
            }
            thread::sleep(POLL);
        }
        eprintln!(
            "{} did not exit {} s after SIGTERM; killing it",
            self.name,
            grace.as_secs()
        );
        self.child
            .kill()
            .with_context(|| format!("killing {}", self.name))?;
        self.child
            .wait()
            .with_context(|| format!("waiting for {}", self.name))?;
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Only reached running on an error path; nothing useful can be done with a failure.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
