//! The fan-out stage: publishes committed batches' delivery records in the
//! order the batches committed, then acks them (invariants 2 and 5, DESIGN.md §1).
//! A record no retry could store is dead-lettered; the rest flow on.

use super::ack::ack;
use crate::config::Config;
use crate::error::ConsumeError;
use crate::fanout::{self, Provenance, Published};
use crate::faults::FaultHooks;
use crate::metrics;
use crate::projection::{Fanout, dead_letter};
use async_nats::jetstream::{self, AckKind};
use natter_runtime::backoff::Backoff;
use sqlx::PgPool;
use std::collections::HashMap;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A committed batch on its way to the fan-out stage.
pub struct Committed {
    /// The batch's `CHAT` messages, acked once fanned out.
    pub messages: Vec<jetstream::Message>,
    pub fanouts: Vec<Fanout>,
    pub provenance: HashMap<u64, Provenance>,
    pub seqs: Vec<u64>,
    pub records: usize,
    /// When its projection started, for the batch duration.
    pub started: Instant,
    /// The `persister.batch` span.
    pub span: tracing::Span,
}

/// The fan-out stage of one consumer run.
pub struct FanOut<'a> {
    js: &'a jetstream::Context,
    /// Where undeliverable records are set aside.
    pool: PgPool,
    /// Most publish acks outstanding at once (`NATS_PUBLISH_WINDOW`).
    window: usize,
    hooks: &'a FaultHooks,
    shutdown: &'a CancellationToken,
}

impl<'a> FanOut<'a> {
    pub fn new(
        config: &Config,
        js: &'a jetstream::Context,
        pool: PgPool,
        hooks: &'a FaultHooks,
        shutdown: &'a CancellationToken,
    ) -> Self {
        Self {
            js,
            pool,
            window: config.nats.nats_publish_window as usize,
            hooks,
            shutdown,
        }
    }

    /// Fans out committed batches in the order they were committed, then
    /// acks them. Fan-out failures are retried in place (it is idempotent),
    /// so no later batch overtakes. Returns once the projection stage
    /// closed the hand-over, or on shutdown.
    pub async fn run(self, mut committed: mpsc::Receiver<Committed>) -> Result<(), ConsumeError> {
        while let Some(batch) = committed.recv().await {
            let Some(Published {
                records: published,
                undeliverable,
            }) = self.publish(&batch).await
            else {
                return Ok(());
            };
            metrics::fanned_out(published);
            for (chat_seq, reason) in &undeliverable {
                if !self.dead_letter(&batch, *chat_seq, reason).await {
                    return Ok(());
                }
            }
            // A simulated crash: stop with the batch unacked, as a dead
            // process would; consumption restarts from the ack floor.
            if self.hooks.crash_after_fanout(&batch.seqs) {
                return Err(ConsumeError::Crashed);
            }
            for message in &batch.messages {
                ack(message, AckKind::Ack).await;
            }
            metrics::batch(batch.records, batch.started.elapsed());
            tracing::debug!(parent: &batch.span, records = batch.records, deliveries = published,
                first_seq = batch.seqs.first().copied().unwrap_or_default(),
                elapsed_ms = batch.started.elapsed().as_millis() as u64,
                "batch stored and fanned out");
        }
        Ok(())
    }

    /// Publishes `batch`'s delivery records, retrying until JetStream has
    /// stored all of them. How many were published; `None` on shutdown.
    async fn publish(&self, batch: &Committed) -> Option<Published> {
        let mut backoff = Backoff::default();
        loop {
            let span = tracing::info_span!(parent: &batch.span, "fanout.publish",
                records = batch.fanouts.len());
            match fanout::publish(self.js, self.window, &batch.fanouts, &batch.provenance)
                .instrument(span)
                .await
            {
                Ok(published) => return Some(published),
                Err(e) => {
                    tracing::warn!(parent: &batch.span, error = %e, size = batch.records,
                        "fan-out failed; retrying");
                    // Keep the records ours while we wait.
                    for message in &batch.messages {
                        ack(message, AckKind::Progress).await;
                    }
                    if !backoff.wait(self.shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Stores the dead letter of the record at `chat_seq`, whose delivery
    /// records no retry could store, retrying while PostgreSQL fails. The
    /// record itself stays projected and is acked with its batch. `false`
    /// on shutdown.
    async fn dead_letter(&self, batch: &Committed, chat_seq: u64, reason: &str) -> bool {
        let Some(message) = batch
            .seqs
            .iter()
            .zip(&batch.messages)
            .find_map(|(seq, m)| (*seq == chat_seq).then_some(m))
        else {
            return true;
        };
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let reason = format!("fan-out: {reason}");
        let mut backoff = Backoff::default();
        loop {
            let stored = async {
                let mut conn = self.pool.acquire().await?;
                let subject = message.subject.as_str();
                dead_letter::store(
                    &mut conn,
                    chat_seq,
                    subject,
                    &message.payload,
                    &reason,
                    delivered,
                )
                .await
            };
            match stored.await {
                Ok(()) => {
                    metrics::dead_lettered();
                    tracing::error!(parent: &batch.span, chat_seq, reason, "delivery records dead-lettered");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot store a dead letter; retrying");
                    for message in &batch.messages {
                        ack(message, AckKind::Progress).await;
                    }
                    if !backoff.wait(self.shutdown).await {
                        return false;
                    }
                }
            }
        }
    }
}
