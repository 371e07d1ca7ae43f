//! The `natter-persister` binary: parse configuration, install telemetry, run.

use clap::Parser;
use natter_persister::{Config, FaultHooks};

/// Every message allocates on its way through; under load glibc's malloc
/// took 12 % of the gateway's CPU, and with mimalloc the gateway accepts
/// twice the rate on the same cores (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = natter_runtime::telemetry::init("natter-persister", &config.telemetry, "info")?;
    let listener =
        tokio::net::TcpListener::bind((config.bind_address.as_str(), config.port)).await?;
    tracing::info!(
        port = config.port,
        "natter-persister health endpoints listening"
    );
    let shutdown = natter_runtime::shutdown::on_signal();
    let result = natter_persister::run(config, listener, FaultHooks::default(), shutdown).await;
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
    result
}
