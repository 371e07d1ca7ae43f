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
use crate::step::{banner, run_cargo, run_to_end};

const CHROMIUM: &str = "/usr/bin/chromium";
const DATABASE: &str = "natter_e2e";

pub fn run(postgres: &Postgres, stop: &Stop) -> anyhow::Result<ExitStatus> {
    let root = workspace_root();
    let e2e = root.join("e2e");
    ensure_chromium(stop)?;
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
    let build = [
        "build",
        "--bin",
        "natter-gateway",
        "--bin",
        "natter-persister",
    ];
    let status = run_cargo(build, |_| {}, stop)?;
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
    })?;
    postgres.ensure_database(DATABASE)?;
    let artifacts = root.join("target").join("e2e");
    let debug = root.join("target").join("debug");

    banner("node --test e2e/tests/ (headless Chromium)");
    let status = run_to_end(
        Command::new("node")
            .args(["--test", "--test-concurrency=1", "tests/"])
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
    if !status.success() {
        eprintln!(
            "    screenshots of the failing pages are in {}",
            artifacts.display()
        );
    }
    drop(nats);
    Ok(status)
}

/// Chromium from Debian (a browser download cannot work here).
fn ensure_chromium(stop: &Stop) -> anyhow::Result<()> {
    if PathBuf::from(CHROMIUM).is_file() {
        return Ok(());
    }
    banner("apt-get install chromium");
    let update = run_to_end(
        Command::new("apt-get").args(["update", "-q"]),
        "apt-get update",
        stop,
    )?;
    let install = run_to_end(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "chromium"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install chromium",
        stop,
    )?;
    anyhow::ensure!(
        update.success() && install.success() && PathBuf::from(CHROMIUM).is_file(),
        "cannot install Chromium with apt-get (the browser tests need {CHROMIUM})"
    );
    Ok(())
}
