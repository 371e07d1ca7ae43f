//! The consumer's two pipeline stages, which overlap: while batch N is
//! fanned out, batch N+1 is projected.
//!
//! One fan-out stage takes committed batches in order, so each user's
//! delivery records are published in `CHAT` order and only after their
//! batch committed (invariants 2 and 5, DESIGN.md §1). A record too large
//! to publish ahead of everything after it goes through the stage's lane,
//! beside later records, still in order for each of its recipients. A crash between the stages leaves
//! committed but unacked records, which the rewind at start redelivers and
//! the idempotent projection passes on to be fanned out (invariant 3).
//!
//! - `project`: pull, decode, project, hand over.
//! - `fanout`: publish in order, then ack; `lane`: large records published
//!   beside later ones, a chunk at a time.
//! - `pulled`, `dead_letter`, `ack`: a pulled message, setting it aside,
//!   settling it in `CHAT`.

mod ack;
mod dead_letter;
mod fanout;
mod lane;
mod project;
mod pulled;

pub use fanout::FanOut;
pub use project::{Projector, Source};

use fanout::Committed;
use tokio::sync::mpsc;

/// The hand-over from the projection stage to the fan-out stage. One
/// committed batch may wait while another is fanned out.
pub fn handover() -> (mpsc::Sender<Committed>, mpsc::Receiver<Committed>) {
    mpsc::channel(1)
}
