//! `cargo xtask`: the README's commands. `up` builds natter and runs it locally with its own
//! NATS and PostgreSQL; `test` runs every check CI runs; `bench` runs the load-test suite and
//! records it in BENCHMARKS.md; `chaos` injects faults into a clustered natter under load and
//! judges what it lost; `structure` checks the crates for module cycles; `tls` makes
//! certificates to try NATS over TLS. Orchestration
//! only: finding and running the servers lives in natter-localinfra.

mod bench;
mod chaos;
mod contract;
mod e2e;
mod service;
mod signals;
mod stack;
mod step;
mod structure;
mod test;
mod tls;
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
    /// Run what CI runs: fmt, the module-cycle check, clippy, doc tests and nextest (with a
    /// shared PostgreSQL), then the browser tests.
    Test(test::TestArgs),
    /// Run the standard load-test suite against a fresh local natter and write the numbers into
    /// BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Kill, pause and partition natter's parts on a 3-node NATS cluster under load, then give
    /// a Jepsen-style verdict: lost, duplicated, misordered; recovery time per fault. A run of
    /// --minutes 10 or more is recorded in RELIABILITY.md.
    Chaos(chaos::ChaosArgs),
    /// Fail if a crate of the workspace has a module cycle, showing each cycle and the
    /// references that make it; optionally print a crate's module graph and the largest
    /// functions and files.
    Structure(structure::StructureArgs),
    /// Make a self-signed CA and a certificate for the NATS nodes under .local/tls, to try
    /// TLS on client and route connections (deploy/README.md, "TLS").
    Tls(tls::TlsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = signals::install().and_then(|stop| match cli.task {
        Task::Up(args) => up::run(&args, &stop),
        Task::Test(args) => test::run(&args, &stop),
        Task::Bench(args) => bench::run(&args, &stop),
        Task::Chaos(args) => chaos::run(&args, &stop),
        Task::Structure(args) => structure::run(&args),
        Task::Tls(args) => tls::run(&args),
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
