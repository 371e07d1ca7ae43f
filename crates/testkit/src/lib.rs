//! natter's test kit: real infrastructure for integration tests.
//!
//! - [`database`]: a fresh PostgreSQL database per test, copied from a
//!   migrated template, on the cluster `cargo xtask test` started (or on a
//!   cluster of the test's own when run outside it), dropped afterwards.
//! - [`app`]: a test's own nats-server plus in-process gateway and persister
//!   on free ports, with handles to stop, crash and restart each part.
//! - [`nats`]: the test's NATS, one server or a cluster.
//! - [`ws`]: a WebSocket client speaking protocol v1.
//! - [`scrape`]: reading `/metrics` to check what moved.
//! - [`logging`]: the test log subscriber.

// A test kit's job is to fail the test loudly when the world is not as expected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod app;
pub mod database;
pub mod deploy;
pub mod logging;
pub mod nats;
pub mod scrape;
pub mod ws;

pub use app::{TestApp, TestOptions, TestUser};
pub use logging::init_logging;
pub use ws::WsClient;
