//! The steps of a task: a `==>` banner, then an external command run to completion, with
//! xtask's own SIGINT/SIGTERM passed on so the command stops with it.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use natter_localinfra::{Signal, send_signal};

use crate::signals::Stop;

/// Prints a step's banner.
pub fn banner(what: &str) {
    println!("==> {what}");
}

/// Cargo as it ran xtask (`$CARGO`), so the steps use the same toolchain.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
    let mut command = Command::new(cargo);
    command.current_dir(natter_localinfra::workspace_root());
    command
}

/// `cargo <args>` with a banner showing the command line; its exit status.
pub fn run_cargo<I, S>(
    args: I,
    configure: impl FnOnce(&mut Command),
    stop: &Stop,
) -> anyhow::Result<ExitStatus>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = cargo();
    command.args(args);
    configure(&mut command);
    let shown = std::iter::once("cargo".to_owned())
        .chain(
            command
                .get_args()
                .map(|arg| arg.to_string_lossy().into_owned()),
        )
        .collect::<Vec<_>>()
        .join(" ");
    banner(&shown);
    run_to_end(&mut command, &shown, stop)
}

/// Runs `command` with inherited stdio until it exits. A Ctrl-C in a terminal reaches the
/// command by itself (same process group); a SIGTERM sent to xtask alone is passed on.
/// `cargo build` of the two services' debug binaries.
pub fn build_services(stop: &Stop) -> anyhow::Result<ExitStatus> {
    let build = [
        "build",
        "--bin",
        "natter-gateway",
        "--bin",
        "natter-persister",
    ];
    run_cargo(build, |_| {}, stop)
}

/// Builds the gateway, the persister and the load generator, in release or debug; the
/// directory they are in, or `None` if the build failed (said on stderr) or a stop came.
pub fn build_load_binaries(release: bool, stop: &Stop) -> anyhow::Result<Option<PathBuf>> {
    let mut build = vec!["build"];
    if release {
        build.push("--release");
    }
    build.extend(["--bin", "natter-gateway", "--bin", "natter-persister"]);
    build.extend(["--bin", "natter-loadtest"]);
    let status = run_cargo(&build, |_| {}, stop)?;
    if !status.success() {
        eprintln!("the build failed ({status})");
        return Ok(None);
    }
    if stop.requested() {
        return Ok(None);
    }
    Ok(Some(binaries_dir(release)))
}

/// Where cargo puts the binaries of that profile.
pub fn binaries_dir(release: bool) -> PathBuf {
    if release { release_dir() } else { debug_dir() }
}

/// Where cargo puts the release binaries: under CARGO_TARGET_DIR when set.
pub fn release_dir() -> PathBuf {
    target_dir().join("release")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| natter_localinfra::workspace_root().join("target"))
}

/// Where cargo puts the debug binaries: under CARGO_TARGET_DIR when set.
pub fn debug_dir() -> PathBuf {
    target_dir().join("debug")
}

pub fn run_to_end(command: &mut Command, shown: &str, stop: &Stop) -> anyhow::Result<ExitStatus> {
    let mut child = command
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    let mut passed_on = false;
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{shown}`"))?
        {
            return Ok(status);
        }
        if stop.requested() && !passed_on {
            send_signal(child.id(), Signal::Term)
                .with_context(|| format!("passing the stop signal on to `{shown}`"))?;
            passed_on = true;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
