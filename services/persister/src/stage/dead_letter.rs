//! Setting a record aside: stored as a dead letter, then terminated in
//! `CHAT`, so it never holds up anyone else's delivery (DESIGN.md §2).

use super::ack::ack;
use super::pulled::Pulled;
use crate::error::ConsumeError;
use crate::leader::Leader;
use crate::metrics;
use crate::projection::dead_letter;
use async_nats::jetstream::AckKind;
use natter_runtime::backoff::Backoff;
use tokio_util::sync::CancellationToken;

/// Dead-letters `p` for `reason`, retrying while PostgreSQL fails. Returns
/// on shutdown with `p` unsettled, to be redelivered.
pub async fn set_aside(
    leader: &mut Leader,
    p: &Pulled,
    reason: &str,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let mut backoff = Backoff::default();
    loop {
        let stored = dead_letter::store(
            leader.conn(),
            p.chat_seq,
            p.message.subject.as_str(),
            &p.message.payload,
            reason,
            p.delivered,
        )
        .await;
        match stored {
            Ok(()) => {
                metrics::dead_lettered();
                p.trace.in_scope(|| {
                    tracing::error!(chat_seq = p.chat_seq,
                    subject = %p.message.subject, reason, "record dead-lettered")
                });
                ack(&p.message, AckKind::Term).await;
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot store a dead letter; retrying");
                if leader.deposed().await {
                    return Err(ConsumeError::Deposed);
                }
                ack(&p.message, AckKind::Progress).await;
                if !backoff.wait(shutdown).await {
                    return Ok(());
                }
            }
        }
    }
}
