//! `cargo xtask test`: fmt, the module-cycle check, clippy, doc tests, nextest, a short chaos
//! run, the bench's smoke run, schemathesis against the OpenAPI document and the browser tests, failing fast, with nats-server installed once and one PostgreSQL
//! shared by every test process of the run.

use std::fs;
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus};
use std::time::Instant;

use anyhow::Context as _;
use natter_localinfra::{Postgres, PostgresOptions, nats_server_binary, nats_version};

use crate::signals::Stop;
use crate::step::{banner, run_cargo};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Leave out the browser tests in `e2e/` (for a quick run; CI runs them).
    #[arg(long)]
    skip_browser: bool,
    /// Leave out the short fault-injection run (`cargo xtask chaos`, under 3 minutes).
    #[arg(long)]
    skip_chaos: bool,
    /// Leave out the bench's smoke run (`cargo xtask bench --quick`, about a minute): every
    /// run of the suite, a tenth of its size, with no thresholds.
    #[arg(long)]
    skip_bench: bool,
    /// Leave out schemathesis against the OpenAPI document (about 2 minutes).
    #[arg(long)]
    skip_contract: bool,
    /// Passed on to `cargo nextest run`, e.g. `-- -E 'test(replays)'`.
    #[arg(last = true)]
    nextest_args: Vec<String>,
}

/// The shared cluster and its directory, both gone when this drops, whatever the outcome.
struct TestPostgres {
    postgres: Option<Postgres>,
    dir: PathBuf,
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Some(mut postgres) = self.postgres.take() {
            banner("stopping the test PostgreSQL");
            if let Err(error) = postgres.stop() {
                eprintln!("error stopping the test PostgreSQL: {error}");
            }
        }
        if let Err(error) = fs::remove_dir_all(&self.dir) {
            eprintln!("error removing {}: {error}", self.dir.display());
        }
    }
}

pub fn run(args: &TestArgs, stop: &Stop) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let outcome = run_steps(args, stop);
    let elapsed = started.elapsed().as_secs_f64();
    match outcome {
        Ok(None) => {
            println!("==> all checks passed in {elapsed:.1} s");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Some(failed)) => {
            eprintln!("==> FAILED: {failed} (after {elapsed:.1} s)");
            Ok(ExitCode::FAILURE)
        }
        Err(error) => {
            eprintln!("==> FAILED after {elapsed:.1} s");
            Err(error)
        }
    }
}

/// `Ok(Some(step))` names the first step that failed.
fn run_steps(args: &TestArgs, stop: &Stop) -> anyhow::Result<Option<String>> {
    let fmt = ["fmt", "--all", "--check"];
    if let Some(failed) = check(
        "cargo fmt (run `cargo fmt --all` to fix)",
        run_cargo(fmt, |_| {}, stop)?,
        stop,
    ) {
        return Ok(Some(failed));
    }
    // Before clippy: it takes a second and needs no build.
    banner("module cycles and long functions (`cargo xtask structure`)");
    if !crate::structure::check_workspace()? {
        return Ok(Some(
            "code structure (listed above; `cargo xtask structure` to check again)".to_owned(),
        ));
    }
    let clippy = [
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ];
    if let Some(failed) = check("cargo clippy", run_cargo(clippy, |_| {}, stop)?, stop) {
        return Ok(Some(failed));
    }

    // Installed here, once: otherwise every parallel test process would queue on pip's lock.
    banner("nats-server");
    let nats_server = nats_server_binary()?;
    let (major, minor, patch) = nats_version(&nats_server).map_err(anyhow::Error::msg)?;
    println!("    {} (v{major}.{minor}.{patch})", nats_server.display());

    banner("PostgreSQL shared by the tests");
    let dir = std::env::temp_dir().join(format!("natter-xtask-test-pg-{}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut shared = TestPostgres {
        postgres: None,
        dir: dir.clone(),
    };
    let postgres = shared.postgres.insert(Postgres::start(PostgresOptions {
        data_dir: dir.join("data"),
        port: None,
    })?);
    let pg_url = postgres.url("postgres");
    println!("    {pg_url} (data in {})", dir.display());

    let environment = |command: &mut std::process::Command| {
        command
            .env("NATTER_NATS_SERVER", &nats_server)
            .env("NATTER_TEST_PG_URL", &pg_url);
    };
    // Doc tests first: the run's last summary is then nextest's count of
    // every integration and unit test.
    let doc = ["test", "--workspace", "--doc"];
    if let Some(failed) = check("cargo test --doc", run_cargo(doc, environment, stop)?, stop) {
        return Ok(Some(failed));
    }
    let mut nextest = vec!["nextest", "run", "--workspace", "--no-fail-fast"];
    nextest.extend(args.nextest_args.iter().map(String::as_str));
    if let Some(failed) = check(
        "cargo nextest",
        run_cargo(&nextest, environment, stop)?,
        stop,
    ) {
        return Ok(Some(failed));
    }
    if args.skip_chaos {
        banner("chaos run skipped (--skip-chaos)");
    } else {
        banner("short chaos run (`cargo xtask chaos`)");
        if !crate::chaos::check(&crate::chaos::ChaosArgs::default(), stop)? {
            return Ok(Some(
                "chaos (its verdict is above; `cargo xtask chaos` to run it again)".to_owned(),
            ));
        }
    }
    if args.skip_bench {
        banner("bench smoke run skipped (--skip-bench)");
    } else {
        banner("bench smoke run (`cargo xtask bench --quick`)");
        if !crate::bench::check(&crate::bench::BenchArgs::quick(), stop)? {
            return Ok(Some(
                "bench smoke run (above; `cargo xtask bench --quick` to run it again)".to_owned(),
            ));
        }
    }
    if args.skip_contract {
        banner("API contract run skipped (--skip-contract)");
    } else if let Some(failed) = check(
        "API contract (schemathesis, above)",
        crate::contract::run(postgres, stop)?,
        stop,
    ) {
        return Ok(Some(failed));
    }
    if args.skip_browser {
        banner("browser tests skipped (--skip-browser)");
        return Ok(None);
    }
    Ok(check(
        "browser tests (e2e/)",
        crate::e2e::run(postgres, stop)?,
        stop,
    ))
}

/// `Some(description)` when the step failed or the run was interrupted.
fn check(step: &str, status: ExitStatus, stop: &Stop) -> Option<String> {
    if stop.requested() {
        Some(format!("{step} (interrupted)"))
    } else if status.success() {
        None
    } else {
        Some(format!("{step} ({status})"))
    }
}
