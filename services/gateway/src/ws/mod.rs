//! The WebSocket endpoint `/ws` (wire protocol v1, DESIGN.md §4).
//!
//! - [`protocol`]: parsing client frames and building server frames; no I/O.
//! - [`session`]: one connection after its handshake — `ready`, replay, live
//!   delivery, commands — over any socket and [`session::Backend`].
//! - [`upgrade`]: the handshake checks and a connection's life around its
//!   session, with the gateway's real backend.
//! - [`refusals`]: how often refused frames are logged.

pub mod protocol;
pub mod refusals;
pub mod session;
pub mod upgrade;
