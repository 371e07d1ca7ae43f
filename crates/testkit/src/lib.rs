//! natter's test kit: real infrastructure for integration tests.
//!
//! - [`database`]: a fresh PostgreSQL database per test, copied from a
//!   migrated template, on the cluster `cargo xtask test` started (or on a
//!   cluster of the test's own when run outside it), dropped afterwards.
//! - [`app`]: a test's own nats-server plus in-process gateway and persister
//!   on free ports, with handles to stop, crash and restart each part.
//! - [`ws`]: a WebSocket client speaking protocol v1.
//! - [`scrape`]: reading `/metrics` to check what moved.

// A test kit's job is to fail the test loudly when the world is not as expected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod app;
pub mod database;
pub mod deploy;
pub mod scrape;
pub mod ws;

pub use app::{TestApp, TestOptions, TestUser};
pub use ws::WsClient;

/// Installs a test log subscriber once (`RUST_LOG` filters it; quiet by default).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
