//! Delivery to connected devices (DESIGN.md §1–2).
//!
//! - [`hub`]: one core subscription to `live.deliver.<user>` per connected
//!   user, shared by that user's sessions.
//! - [`registry`]: those users' feeds and sessions, each session fed
//!   through its [`inbox`], bounded; no NATS.
//! - [`log`]: replay of a user's log from a sequence with one batched
//!   JetStream direct get, no consumer created.
//! - [`cursors`]: the durable per-device cursors, written in batches.
//! - [`contents`]: the contents of records stored by reference, read once
//!   per message and filled in.
//! - [`watch`]: the watch on `DELIVERY`'s leader: sessions re-read their
//!   logs when it was out of reach or changed (live records may be lost).
//! - [`record`]: what the parts share: a stored record, a push, a close.

pub mod contents;
pub mod cursors;
pub mod hub;
pub mod inbox;
pub mod log;
pub mod record;
pub mod registry;
pub mod watch;

pub use contents::Contents;
pub use cursors::CursorStore;
pub use hub::Hub;
pub use inbox::{Alarm, Inbox};
pub use log::{DeliveryLog, read_log};
pub use record::{Closing, DeliveryError, Push, Stored};
pub use registry::{Attachment, SessionInfo};
