//! A PostgreSQL cluster on a loopback port with trust auth, its data under a caller's
//! directory, driven by initdb and pg_ctl (as the `postgres` user when we are root).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{InfraError, IoContext, Result};
use crate::probe::{free_port, port_is_free};
use crate::process::{
    Group, Signal, Watchdog, children_of, effective_uid, is_alive, log_len, log_tail, run,
    send_signal, sh_command_line, wait_gone,
};
use crate::tools::postgres_bin_dir;

/// pg_ctl's `-t`: how long `start` and `stop` wait, in seconds.
const PG_CTL_TIMEOUT_SECS: u64 = 30;
/// Tries with a fresh port when another process grabbed the free one first.
const START_ATTEMPTS: usize = 3;
const LOG_TAIL_LINES: usize = 30;
/// Tests open a pool per test database; the default 100 runs out with parallel tests.
const MAX_CONNECTIONS: u32 = 300;

/// How to start a [`Postgres`].
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// The cluster's data directory (initialised when it has no `PG_VERSION`); the server log
    /// is `<data_dir>/postgres.log`. When we run as root, it is handed to the `postgres` user.
    pub data_dir: PathBuf,
    /// The port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
}

/// A PostgreSQL cluster started with `pg_ctl`; stopped (`-m immediate`) on drop, its data left
/// in place. Connect as `postgres` over TCP, no password.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    data_dir: PathBuf,
    port: u16,
    /// PostgreSQL refuses to run as root, so as root every initdb/pg_ctl goes through runuser.
    as_postgres_user: bool,
    running: bool,
    /// Stops the cluster if this process dies without dropping it.
    watchdog: Option<Watchdog>,
}

impl Postgres {
    /// Initialises the cluster if `data_dir` has none (`initdb -U postgres --auth=trust
    /// --encoding=UTF8 --locale=C --no-sync`), then starts it with `pg_ctl start -w`, listening
    /// on 127.0.0.1 only and on no Unix socket.
    ///
    /// As root, `data_dir` is chowned to `postgres` and its parent made traversable (it is
    /// typically a fresh 0700 temp dir); any other ancestor that `postgres` cannot traverse is
    /// an error.
    pub fn start(opts: PostgresOptions) -> Result<Self> {
        let bin = postgres_bin_dir()?;
        let as_postgres_user = effective_uid()? == 0;
        let data_dir = std::path::absolute(&opts.data_dir)
            .context(|| format!("resolving {}", opts.data_dir.display()))?;
        fs::create_dir_all(&data_dir).context(|| format!("creating {}", data_dir.display()))?;
        let mut pg = Self {
            bin,
            data_dir,
            port: 0,
            as_postgres_user,
            running: false,
            watchdog: None,
        };
        if as_postgres_user {
            pg.hand_to_postgres_user()?;
        }
        if !pg.data_dir.join("PG_VERSION").exists() {
            pg.initdb()?;
        }
        let attempts = if opts.port.is_some() {
            1
        } else {
            START_ATTEMPTS
        };
        let mut attempt = 1;
        loop {
            pg.port = opts.port.unwrap_or_else(free_port);
            match pg.pg_ctl_start() {
                Ok(()) => return Ok(pg),
                Err(error) if attempt < attempts && is_port_conflict(&error) => attempt += 1,
                Err(error) => return Err(error),
            }
        }
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The postmaster's pid, from the first line of `postmaster.pid`, if it is running.
    pub fn pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid = text.lines().next()?.trim().parse().ok()?;
        is_alive(pid).then_some(pid)
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log, appended to by every start.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("postgres.log")
    }

    /// The directory holding initdb, pg_ctl, psql and createdb.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// `pg_ctl stop -m fast -w`: disconnects clients, checkpoints and exits.
    pub fn stop(&mut self) -> Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// Starts the cluster again on the same port and data (stopping it first if it runs).
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.pg_ctl_start()
    }

    /// SIGKILL to the postmaster and its backends: a simulated crash. The next start recovers
    /// from the WAL.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(pid) = self.pid() {
            // Backends outlive a killed postmaster for a moment, holding its shared memory, and
            // a start while they do fails; killing them too is what a machine crash does anyway.
            let backends = children_of(pid);
            send_signal(pid, Signal::Kill)?;
            for backend in &backends {
                send_signal(*backend, Signal::Kill)?;
            }
            for gone in std::iter::once(pid).chain(backends) {
                if !wait_gone(gone, Duration::from_secs(10)) {
                    return Err(InfraError::DidNotExit {
                        what: "PostgreSQL".into(),
                        pid: gone,
                        secs: 10,
                    });
                }
            }
            // The dead postmaster stays a zombie until init reaps it (seconds, in some
            // containers), and PostgreSQL takes a zombie's pid in the lock file for a live
            // server. Every process of the cluster is gone, so the lock is stale.
            let lock = self.data_dir.join("postmaster.pid");
            fs::remove_file(&lock).context(|| format!("removing {}", lock.display()))?;
        }
        self.running = false;
        self.watchdog = None;
        Ok(())
    }

    /// Creates `database` unless it exists (psql and createdb over TCP); `true` if it created it.
    /// `database` must be a plain identifier: lowercase letters, digits and underscores.
    pub fn ensure_database(&self, database: &str) -> Result<bool> {
        if database.is_empty()
            || !database
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(InfraError::InvalidDatabaseName(database.to_owned()));
        }
        let port = self.port.to_string();
        let client = |program: &str| {
            let mut command = Command::new(self.bin.join(program));
            command
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
                .env("PGCONNECT_TIMEOUT", "10");
            command
        };
        let query = format!("SELECT 1 FROM pg_database WHERE datname = '{database}'");
        let exists = run(client("psql").args(["-d", "postgres", "-tAc", &query]))?;
        if String::from_utf8_lossy(&exists.stdout).trim() == "1" {
            return Ok(false);
        }
        run(client("createdb").arg(database))?;
        Ok(true)
    }

    /// A command for one of PostgreSQL's programs, run as `postgres` when we are root.
    fn pg_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        // The caller's working directory may be one `postgres` cannot enter.
        command.current_dir("/");
        command
    }

    fn initdb(&self) -> Result<()> {
        let mut initdb = self.pg_command("initdb");
        initdb
            .arg("-D")
            .arg(&self.data_dir)
            // C collation: the same sort order on every machine, whatever its locale settings.
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ])
            // A cluster that a crash of the machine loses can simply be initialised again.
            .arg("--no-sync");
        run(&mut initdb)?;
        Ok(())
    }

    fn pg_ctl_start(&mut self) -> Result<()> {
        let port = self.port;
        if !port_is_free(port) {
            return Err(InfraError::PortInUse { port });
        }
        let log = self.log_path();
        let log_start = log_len(&log);
        // pg_ctl hands -o to /bin/sh, so `''` arrives as an empty argument: no Unix socket, so
        // no socket directory that `postgres` must own and no 107-byte path limit.
        let server_options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k '' -c max_connections={MAX_CONNECTIONS}"
        );
        let mut pg_ctl = self.pg_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log)
            .args([
                "-w",
                "-t",
                &PG_CTL_TIMEOUT_SECS.to_string(),
                "-o",
                &server_options,
            ])
            .arg("start");
        match run(&mut pg_ctl) {
            Ok(_) => {
                self.running = true;
                self.arm_watchdog()
            }
            Err(InfraError::Command { status, output, .. }) => Err(InfraError::ExitedEarly {
                what: format!("PostgreSQL on port {port}"),
                status: format!("pg_ctl start: {status}: {}", output.trim()),
                tail: log_tail(&log, log_start, LOG_TAIL_LINES),
                log,
            }),
            Err(other) => Err(other),
        }
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> Result<()> {
        if self.pid().is_none() {
            self.running = false;
            self.watchdog = None;
            return Ok(());
        }
        let mut pg_ctl = self.pg_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", &PG_CTL_TIMEOUT_SECS.to_string()])
            .arg("stop");
        let result = run(&mut pg_ctl);
        // pg_ctl fails when the server exited between our check and its own: that is success.
        if result.is_ok() || self.pid().is_none() {
            self.running = false;
            self.watchdog = None;
            return Ok(());
        }
        result.map(|_| ())
    }

    /// The postmaster detaches from us (pg_ctl starts it in a session of its own), so nothing
    /// stops it when we die but this; the watchdog gets a process group of its own so that a
    /// harness killing our group does not take the watchdog with it.
    fn arm_watchdog(&mut self) -> Result<()> {
        let mut stop = self.pg_command("pg_ctl");
        stop.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "stop"]);
        let script = format!("{} >/dev/null 2>&1", sh_command_line(&stop));
        self.watchdog = Some(Watchdog::arm(&script, Group::Own)?);
        Ok(())
    }

    /// Makes `data_dir` the `postgres` user's and checks that user can reach it.
    fn hand_to_postgres_user(&self) -> Result<()> {
        let id = run(Command::new("id").args(["-u", "postgres"]))
            .map_err(|_| InfraError::NoPostgresUser)?;
        let uid: u32 = String::from_utf8_lossy(&id.stdout)
            .trim()
            .parse()
            .map_err(|_| InfraError::NoPostgresUser)?;

        let parent = self.data_dir.parent();
        for ancestor in self.data_dir.ancestors().skip(1) {
            let meta =
                fs::metadata(ancestor).context(|| format!("reading {}", ancestor.display()))?;
            if meta.uid() == uid || meta.mode() & 0o001 != 0 {
                continue;
            }
            if Some(ancestor) != parent {
                return Err(InfraError::NotTraversable {
                    dir: ancestor.to_path_buf(),
                });
            }
            // The parent is usually the caller's fresh 0700 temp dir: opening it to others is
            // what lets `postgres` in, and its contents are the cluster's own.
            let mode = meta.mode() | 0o055;
            fs::set_permissions(ancestor, fs::Permissions::from_mode(mode))
                .context(|| format!("chmod {mode:o} {}", ancestor.display()))?;
        }

        let owner = fs::metadata(&self.data_dir)
            .context(|| format!("reading {}", self.data_dir.display()))?
            .uid();
        if owner != uid {
            run(Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&self.data_dir))?;
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            // Immediate: nothing will read this cluster's data soon, so skip the checkpoint.
            let _ = self.pg_ctl_stop("immediate");
        }
    }
}

fn is_port_conflict(error: &InfraError) -> bool {
    match error {
        InfraError::PortInUse { .. } => true,
        InfraError::ExitedEarly { tail, .. } => {
            tail.contains("could not bind") || tail.contains("already in use")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    use super::*;
    use crate::probe::tcp_accepts;

    fn options(dir: &Path) -> PostgresOptions {
        PostgresOptions {
            data_dir: dir.join("pg"),
            port: None,
        }
    }

    /// Sends a protocol-3 StartupMessage for user `postgres` and expects AuthenticationOk
    /// ('R' with code 0): the server runs, accepts TCP and trusts us, all without psql.
    fn assert_trusts_tcp_login(port: u16) {
        let mut body = Vec::new();
        body.extend_from_slice(&196_608_u32.to_be_bytes()); // protocol 3.0
        for part in ["user", "postgres", "database", "postgres", ""] {
            body.extend_from_slice(part.as_bytes());
            body.push(0);
        }
        let mut message = u32::try_from(body.len() + 4)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        message.extend_from_slice(&body);

        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(&message).unwrap();
        let mut reply = [0_u8; 9];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(reply[0], b'R', "not an authentication reply: {reply:?}");
        assert_eq!(
            &reply[5..9],
            &0_u32.to_be_bytes(),
            "authentication is not trust"
        );
    }

    #[test]
    fn initialises_starts_stops_and_restarts_on_the_same_port() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let mut pg = Postgres::start(options(dir.path())).unwrap();
        eprintln!("initdb + start in {:?}", started.elapsed());
        let port = pg.port();
        assert_eq!(
            pg.url("x"),
            format!("postgres://postgres@127.0.0.1:{port}/x")
        );
        assert_trusts_tcp_login(port);
        let first_pid = pg.pid().unwrap();

        pg.stop().unwrap();
        assert!(pg.pid().is_none());
        assert!(!tcp_accepts(port));

        let restarted = Instant::now();
        pg.restart().unwrap();
        eprintln!("restart in {:?}", restarted.elapsed());
        assert_eq!(pg.port(), port);
        assert_ne!(pg.pid().unwrap(), first_pid);
        assert_trusts_tcp_login(port);
    }

    #[test]
    fn recovers_after_a_kill_and_keeps_its_databases() {
        let dir = tempfile::tempdir().unwrap();
        let mut pg = Postgres::start(options(dir.path())).unwrap();
        assert!(pg.ensure_database("kept").unwrap());
        assert!(!pg.ensure_database("kept").unwrap());

        let pid = pg.pid().unwrap();
        pg.kill().unwrap();
        assert!(!is_alive(pid));
        assert!(pg.pid().is_none());

        pg.restart().unwrap();
        assert_trusts_tcp_login(pg.port());
        assert!(
            !pg.ensure_database("kept").unwrap(),
            "database lost in the crash"
        );
    }

    #[test]
    fn runs_as_the_postgres_user_when_root() {
        if effective_uid().unwrap() != 0 {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pg = Postgres::start(options(dir.path())).unwrap();
        let status = fs::read_to_string(format!("/proc/{}/status", pg.pid().unwrap())).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            !uid_line
                .split_ascii_whitespace()
                .skip(1)
                .any(|uid| uid == "0"),
            "{uid_line}"
        );
        assert_ne!(fs::metadata(pg.data_dir()).unwrap().uid(), 0);
    }

    #[test]
    fn rejects_odd_database_names_without_running_anything() {
        let dir = tempfile::tempdir().unwrap();
        let pg = Postgres {
            bin: PathBuf::from("/nonexistent"),
            data_dir: dir.path().to_path_buf(),
            port: 1,
            as_postgres_user: false,
            running: false,
            watchdog: None,
        };
        assert!(pg.ensure_database("x'; DROP DATABASE y; --").is_err());
        assert!(pg.ensure_database("").is_err());
    }

    #[test]
    fn drop_stops_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let pg = Postgres::start(options(dir.path())).unwrap();
        let pid = pg.pid().unwrap();
        drop(pg);
        assert!(wait_gone(pid, Duration::from_secs(10)));
    }
}
