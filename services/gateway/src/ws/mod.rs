//! The WebSocket endpoint `/ws` (wire protocol v1, DESIGN.md §4).
//!
//! - [`protocol`]: parsing client frames and writing server frames; no I/O.
//! - [`session`]: one connection's life: handshake checks, `ready`, replay,
//!   live delivery, commands.
//! - [`throttle`]: the per-connection rate limit.

pub mod protocol;
pub mod session;
pub mod throttle;
