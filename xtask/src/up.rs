//! `cargo xtask up`: builds the release binaries, starts NATS and PostgreSQL with their data in
//! `.local/`, then the persister and the gateway, and on Ctrl-C stops them in reverse order.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, bail};
use natter_localinfra::{
    Fsync, NatsOptions, NatsServer, Postgres, PostgresOptions, port_is_free, workspace_root,
};

use crate::service::Service;
use crate::signals::Stop;
use crate::stack::{Stack, lock_single_instance, non_empty_env, random_secret, release_dir};
use crate::step::{banner, run_cargo};

const NATS_PORT: u16 = 4222;
const POSTGRES_PORT: u16 = 5432;
const GATEWAY_PORT: u16 = 8000;
const PERSISTER_PORT: u16 = 8001;
const DATABASE: &str = "natter";
/// A cold persister creates the streams and runs migrations before it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const SUPERVISE_POLL: Duration = Duration::from_millis(200);

#[derive(clap::Args)]
pub struct UpArgs {
    /// When JetStream fsyncs: "interval" (the server's default) or "always" (every write;
    /// durable across power loss, much slower).
    #[arg(long, default_value_t = Fsync::Interval)]
    fsync: Fsync,
}

enum Ending {
    /// Ctrl-C or SIGTERM.
    Requested,
    /// Something died by itself.
    Crashed,
}

pub fn run(args: &UpArgs, stop: &Stop) -> anyhow::Result<ExitCode> {
    let local = workspace_root().join(".local");
    fs::create_dir_all(&local).with_context(|| format!("creating {}", local.display()))?;
    // Held until we return: two `up`s would fight over the same ports and data directories.
    let Some(_lock) = lock_single_instance(&local, "up")? else {
        return Ok(ExitCode::FAILURE);
    };

    let build = [
        "build",
        "--release",
        "-p",
        "natter-gateway",
        "-p",
        "natter-persister",
    ];
    let status = run_cargo(build, |_| {}, stop)?;
    if !status.success() {
        eprintln!("the release build failed ({status})");
        return Ok(ExitCode::FAILURE);
    }
    if stop.requested() {
        return Ok(ExitCode::SUCCESS);
    }

    let mut stack = Stack::default();
    let ending = start_and_supervise(args, &local, &mut stack, stop);
    if let Err(error) = &ending {
        eprintln!("error: {error:#}");
    }
    let stopped_cleanly = stack.stop_all();
    Ok(match ending {
        Ok(Ending::Requested) if stopped_cleanly => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

fn start_and_supervise(
    args: &UpArgs,
    local: &Path,
    stack: &mut Stack,
    stop: &Stop,
) -> anyhow::Result<Ending> {
    let gateway_port = port_from_env("PORT", GATEWAY_PORT)?;
    let persister_port = port_from_env("PERSISTER_PORT", PERSISTER_PORT)?;
    for (name, port, variable) in [
        ("the gateway", gateway_port, "PORT"),
        ("the persister", persister_port, "PERSISTER_PORT"),
    ] {
        if !port_is_free(port) {
            bail!(
                "port {port} for {name} is in use (natter running outside `cargo xtask up`?); \
                 free it or set {variable}"
            );
        }
    }

    let mut table = Vec::new();
    let nats_url = match non_empty_env("NATS_URL") {
        Some(url) => {
            if args.fsync != Fsync::default() {
                eprintln!("NATS_URL is set, so --fsync {} has no effect", args.fsync);
            }
            table.push(("NATS", "external (NATS_URL)".to_owned(), String::new()));
            url
        }
        None => {
            let data_dir = local.join("nats");
            banner(&format!(
                "starting nats-server (data in {})",
                data_dir.display()
            ));
            let options = NatsOptions {
                data_dir,
                port: preferred_port(NATS_PORT),
                fsync: args.fsync,
                cluster: None,
            };
            let nats = stack
                .nats
                .insert(NatsServer::start_in_own_process_group(options)?);
            table.push((
                "NATS",
                nats.url(),
                format!("data {}, fsync {}", nats.data_dir().display(), args.fsync),
            ));
            nats.url()
        }
    };

    let database_url = match non_empty_env("DATABASE_URL") {
        Some(url) => {
            table.push((
                "PostgreSQL",
                "external (DATABASE_URL)".to_owned(),
                String::new(),
            ));
            url
        }
        None => {
            let data_dir = local.join("pg");
            banner(&format!(
                "starting PostgreSQL (data in {})",
                data_dir.display()
            ));
            let options = PostgresOptions {
                data_dir,
                port: preferred_port(POSTGRES_PORT),
            };
            let postgres = stack.postgres.insert(Postgres::start(options)?);
            if postgres.ensure_database(DATABASE)? {
                println!("    created database {DATABASE}");
            }
            table.push((
                "PostgreSQL",
                postgres.url(DATABASE),
                format!("data {}", postgres.data_dir().display()),
            ));
            postgres.url(DATABASE)
        }
    };
    let jwt_secret = jwt_secret(local)?;
    let bin_dir = release_dir();

    banner("starting natter-persister");
    let persister_port_text = persister_port.to_string();
    let persister = stack.persister.insert(Service::spawn(
        "natter-persister",
        &bin_dir.join("natter-persister"),
        persister_port,
        &[
            ("DATABASE_URL", &database_url),
            ("NATS_URL", &nats_url),
            ("PERSISTER_PORT", &persister_port_text),
        ],
    )?);
    if !persister.wait_ready(READY_TIMEOUT, stop)? {
        return Ok(Ending::Requested);
    }

    banner("starting natter-gateway");
    let gateway_port_text = gateway_port.to_string();
    let origins = non_empty_env("ALLOWED_ORIGINS").unwrap_or_else(|| {
        format!("http://localhost:{gateway_port},http://127.0.0.1:{gateway_port}")
    });
    let gateway = stack.gateway.insert(Service::spawn(
        "natter-gateway",
        &bin_dir.join("natter-gateway"),
        gateway_port,
        &[
            ("DATABASE_URL", &database_url),
            ("NATS_URL", &nats_url),
            ("JWT_SECRET", &jwt_secret),
            ("PORT", &gateway_port_text),
            ("ALLOWED_ORIGINS", &origins),
        ],
    )?);
    if !gateway.wait_ready(READY_TIMEOUT, stop)? {
        return Ok(Ending::Requested);
    }

    table.insert(
        0,
        (
            "persister",
            format!("http://127.0.0.1:{persister_port}/readyz"),
            "health (/healthz, /readyz) and /metrics".to_owned(),
        ),
    );
    table.insert(
        0,
        (
            "gateway",
            format!("http://127.0.0.1:{gateway_port}"),
            format!(
                "the web client (open it in a browser), WebSocket /ws, origins {origins}, /metrics"
            ),
        ),
    );
    print_table(&table, stack);

    supervise(stack, stop)
}

fn print_table(table: &[(&str, String, String)], stack: &Stack) {
    let url_width = table.iter().map(|(_, url, _)| url.len()).max().unwrap_or(0);
    println!();
    println!("natter is up:");
    for (name, url, detail) in table {
        println!("  {name:<11} {url:<url_width$}  {detail}");
    }
    let mut logs = vec!["gateway and persister log here (RUST_LOG=debug for more)".to_owned()];
    if let Some(nats) = &stack.nats {
        logs.push(format!("NATS: {}", nats.log_path().display()));
    }
    if let Some(postgres) = &stack.postgres {
        logs.push(format!("PostgreSQL: {}", postgres.log_path().display()));
    }
    println!("  logs        {}", logs.join("; "));
    println!();
    println!("Ctrl-C stops everything.");
}

/// Waits for Ctrl-C/SIGTERM or for something to die by itself.
fn supervise(stack: &mut Stack, stop: &Stop) -> anyhow::Result<Ending> {
    loop {
        if stop.requested() {
            println!();
            return Ok(Ending::Requested);
        }
        if let Some(what) = stack.crashed()? {
            eprintln!("{what}; stopping the rest");
            return Ok(Ending::Crashed);
        }
        thread::sleep(SUPERVISE_POLL);
    }
}

/// The well-known port when it is free, else a free one (`None`).
fn preferred_port(port: u16) -> Option<u16> {
    if port_is_free(port) {
        Some(port)
    } else {
        println!("    port {port} is in use; using a free one");
        None
    }
}

fn port_from_env(name: &str, default: u16) -> anyhow::Result<u16> {
    match non_empty_env(name) {
        Some(text) => text
            .parse()
            .with_context(|| format!("{name}={text:?} is not a port number")),
        None => Ok(default),
    }
}

/// `$JWT_SECRET`, else the secret in `.local/jwt_secret`, else a new random one saved there:
/// tokens then stay valid across restarts of `up`.
fn jwt_secret(local: &Path) -> anyhow::Result<String> {
    match non_empty_env("JWT_SECRET") {
        Some(secret) => Ok(secret),
        None => stored_secret(local),
    }
}

fn stored_secret(local: &Path) -> anyhow::Result<String> {
    let path = local.join("jwt_secret");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.trim();
            if secret.len() < 32 {
                bail!(
                    "{} holds fewer than 32 characters; delete it to get a new secret",
                    path.display()
                );
            }
            return Ok(secret.to_owned());
        }
        Err(error) if error.kind() == ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    }
    let secret = random_secret()?;
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{secret}").with_context(|| format!("writing {}", path.display()))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_secret_once_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = stored_secret(dir.path()).unwrap();
        assert_eq!(first.len(), 96);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(stored_secret(dir.path()).unwrap(), first);
        let mode = fs::metadata(dir.path().join("jwt_secret"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
}
