//! `cargo xtask`: the README's commands. `up` builds natter and runs it locally with its own
//! NATS and PostgreSQL; `test` runs every check CI runs. Orchestration only: finding and
//! running the servers lives in natter-localinfra.

mod service;
mod signals;
mod step;
mod test;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "natter's development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build and run natter locally: gateway, persister, NATS and PostgreSQL. Ctrl-C stops all.
    Up(up::UpArgs),
    /// Run what CI runs: fmt, clippy, nextest (with a shared PostgreSQL) and doc tests.
    Test(test::TestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = signals::install().and_then(|stop| match cli.task {
        Task::Up(args) => up::run(&args, &stop),
        Task::Test(args) => test::run(&args, &stop),
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
