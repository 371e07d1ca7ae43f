//! The `natter-gateway` binary: parse configuration, install telemetry, run.

use clap::Parser;
use natter_gateway::Config;

/// Every message allocates on its way through; under load glibc's malloc
/// took 12 % of the gateway's CPU, and with mimalloc the gateway accepts
/// twice the rate on the same cores (BENCHMARKS.md). The feature
/// `system-allocator` leaves it out, for heap profilers that watch malloc.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = natter_runtime::telemetry::init("natter-gateway", &config.telemetry, "info")?;
    let listener =
        tokio::net::TcpListener::bind((config.bind_address.as_str(), config.port)).await?;
    let shutdown = natter_runtime::shutdown::on_signal();
    let result = natter_gateway::run(config, listener, shutdown).await;
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
    result
}
