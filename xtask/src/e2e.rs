//! The browser step of `cargo xtask test`: the seed guide's test cases in
//! Debian's Chromium, driven by playwright-core from `e2e/`. Installs what is
//! missing (Chromium with apt, the npm packages with `npm ci`), builds the
//! two services, starts a nats-server of its own and a database in the
//! run's PostgreSQL, and runs `node --test` over `e2e/tests/`.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};

use anyhow::Context as _;
use natter_localinfra::{Fsync, NatsOptions, NatsServer, Postgres, workspace_root};

use crate::signals::Stop;
use crate::step::{banner, build_services, debug_dir, run_to_end};

const CHROMIUM: &str = "/usr/bin/chromium";
const DATABASE: &str = "natter_e2e";

pub fn run(postgres: &Postgres, stop: &Stop) -> anyhow::Result<ExitStatus> {
    let root = workspace_root();
    let e2e = root.join("e2e");
    ensure_chromium(stop)?;
    ensure_node(stop)?;
    if !e2e.join("node_modules/playwright-core").is_dir() {
        banner("npm ci (e2e/)");
        let status = run_to_end(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&e2e),
            "npm ci",
            stop,
        )?;
        if !status.success() {
            return Ok(status);
        }
    }
    let status = build_services(stop)?;
    if !status.success() {
        return Ok(status);
    }

    banner("nats-server and a database for the browser tests");
    let nats_dir = root.join("target").join("e2e-nats");
    if nats_dir.exists() {
        std::fs::remove_dir_all(&nats_dir)
            .with_context(|| format!("removing {}", nats_dir.display()))?;
    }
    let nats = NatsServer::start(NatsOptions {
        data_dir: nats_dir,
        port: None,
        fsync: Fsync::Interval,
        cluster: None,
    })?;
    postgres.ensure_database(DATABASE)?;
    let artifacts = root.join("target").join("e2e");
    let debug = debug_dir();

    // One file at a time (they share the nats-server and the database), and
    // every file even after a failure, so one run reports them all.
    let mut files: Vec<PathBuf> = std::fs::read_dir(e2e.join("tests"))
        .context("listing e2e/tests")?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    let mut failed = Vec::new();
    let mut status = None;
    for file in &files {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        banner(&format!("node --test e2e/tests/{name} (headless Chromium)"));
        let ran = run_to_end(
            Command::new("node")
                .arg("--test")
                .arg(file)
                .current_dir(&e2e)
                .env("NATTER_E2E_NATS_URL", nats.url())
                .env("NATTER_E2E_DATABASE_URL", postgres.url(DATABASE))
                .env("NATTER_GATEWAY_BIN", debug.join("natter-gateway"))
                .env("NATTER_PERSISTER_BIN", debug.join("natter-persister"))
                .env("NATTER_E2E_ARTIFACTS", &artifacts)
                .env("CHROMIUM", CHROMIUM),
            "node --test",
            stop,
        )?;
        if !ran.success() {
            failed.push(name.into_owned());
            status = Some(ran);
        } else if status.is_none() {
            status = Some(ran);
        }
        if stop.requested() {
            break;
        }
    }
    let status = status.context("no browser tests in e2e/tests")?;
    if !failed.is_empty() {
        eprintln!("    failed: {}", failed.join(", "));
        eprintln!(
            "    screenshots of the failing pages are in {}",
            artifacts.display()
        );
    }
    drop(nats);
    Ok(status)
}

/// Node.js and npm, from Debian when the machine has none.
fn ensure_node(stop: &Stop) -> anyhow::Result<()> {
    let found = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if found("node") && found("npm") {
        return Ok(());
    }
    apt_install(&["nodejs", "npm"], stop)?;
    anyhow::ensure!(
        found("node") && found("npm"),
        "cannot install Node.js and npm with apt-get (the browser tests need them)"
    );
    Ok(())
}

fn apt_install(packages: &[&str], stop: &Stop) -> anyhow::Result<()> {
    banner(&format!("apt-get install {}", packages.join(" ")));
    let update = run_to_end(
        Command::new("apt-get").args(["update", "-q"]),
        "apt-get update",
        stop,
    )?;
    let install = run_to_end(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
        stop,
    )?;
    anyhow::ensure!(
        update.success() && install.success(),
        "apt-get could not install {}",
        packages.join(" ")
    );
    Ok(())
}

/// Chromium from Debian (a browser download cannot work here).
fn ensure_chromium(stop: &Stop) -> anyhow::Result<()> {
    if PathBuf::from(CHROMIUM).is_file() {
        return Ok(());
    }
    apt_install(&["chromium"], stop)?;
    anyhow::ensure!(
        PathBuf::from(CHROMIUM).is_file(),
        "apt-get installed chromium but {CHROMIUM} is missing"
    );
    Ok(())
}
