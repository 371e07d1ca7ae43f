//! Acks on `CHAT` messages. They are fire-and-forget: a lost ack means a
//! redelivery, which the projection and the fan-out absorb (invariant 3).

use async_nats::jetstream::{self, AckKind};

/// Acks `message` with `kind`, logging a failure.
pub async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, "ack failed; the record will be redelivered");
    }
}
