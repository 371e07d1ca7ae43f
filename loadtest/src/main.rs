//! The `natter-loadtest` binary: run a scenario, print the summary, write
//! `<out>/<scenario>.json` and `.html`. Exits 0 when every accepted message
//! was delivered once and in order, 1 when the run saw anything lost,
//! duplicated, misordered or unexpected, 2 when it could not run.

use clap::Parser;
use natter_loadtest::cli::Cli;
use natter_loadtest::render;
use std::process::ExitCode;

/// Every message allocates on its way through; under load glibc's malloc
/// took 12 % of the gateway's CPU, and with mimalloc the gateway accepts
/// twice the rate on the same cores (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let report = match natter_loadtest::run(&cli).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("natter-loadtest: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("{}", render::summary(&report));
    let json = cli.target.out.join(format!("{}.json", report.scenario));
    let html = cli.target.out.join(format!("{}.html", report.scenario));
    for written in [
        render::write_json(&report, &json),
        render::write_html(&report, &html),
    ] {
        if let Err(e) = written {
            eprintln!("natter-loadtest: cannot write the report: {e:#}");
            return ExitCode::from(2);
        }
    }
    println!("report: {} and {}", json.display(), html.display());
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
