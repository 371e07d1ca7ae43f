//! Delivery to connected devices (DESIGN.md §1–2).
//!
//! - [`hub`]: one core subscription to `live.deliver.<user>` per connected
//!   user, shared by that user's sessions, each fed through a bounded queue.
//! - [`log`]: replay of a user's log from a sequence with one batched
//!   JetStream direct get, no consumer created.
//! - [`cursors`]: the durable per-device cursors, written in batches.
//! - [`record`]: what the parts share: a stored record, a push, a close.

pub mod cursors;
pub mod hub;
pub mod log;
pub mod record;

pub use cursors::CursorStore;
pub use hub::{Attachment, Hub, SessionInfo};
pub use log::{DeliveryLog, read_log};
pub use record::{Closing, DeliveryError, Push, Stored};
