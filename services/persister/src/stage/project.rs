//! The projection stage: pulls batches from `CHAT`, projects each in one
//! transaction and hands it, committed, to the fan-out stage.
//!
//! It keeps the first half of invariant 2 (DESIGN.md §1). Transient failures
//! are retried in place, so nothing is reordered; records the database
//! refuses are redelivered, then dead-lettered.

use super::ack::ack;
use super::dead_letter;
use super::fanout::Committed;
use super::pulled::Pulled;
use crate::config::Config;
use crate::error::ConsumeError;
use crate::fanout::Provenance;
use crate::faults::FaultHooks;
use crate::leader::Leader;
use crate::metrics;
use crate::projection::membership::Membership;
use crate::projection::{self, Fanout, ProjectionError, Record};
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, consumer::pull};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use natter_core::ChatEvent;
use natter_runtime::backoff::Backoff;
use natter_runtime::trace::Trace;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

/// How often the consumer's backlog is read for the metrics.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// What the projection stage pulls from: the durable consumer, rewound to
/// its ack floor, and its message stream.
pub struct Source {
    pub consumer: PullConsumer,
    pub messages: pull::Stream,
    /// The consumer sequence the consumer was rewound to: the first record
    /// pulled must be the delivery after it. A pull request left over from
    /// before may still be served (and read by no one), so the first
    /// record to arrive is not necessarily the first one delivered.
    pub rewound_to: u64,
}

/// The projection stage of one consumer run.
pub struct Projector<'a> {
    config: &'a Config,
    leader: &'a mut Leader,
    hooks: &'a FaultHooks,
    shutdown: &'a CancellationToken,
    to_fanout: mpsc::Sender<Committed>,
    /// Who is in each group. Every consumer run, and every term of the
    /// leader, starts with it empty: while this process was not projecting,
    /// another persister may have been.
    members: Membership,
    /// The leader's term `members` was filled in.
    term: u64,
    /// The consumer sequence of the last record pulled: each delivery of
    /// the consumer counts one, so a jump means one was lost on the way.
    delivered: Option<u64>,
}

/// What to make of a record just pulled.
enum Delivery {
    /// The next delivery: project it.
    Next,
    /// A fault hook lost it: as if it never arrived.
    Lost,
    /// A delivery before it never arrived: projecting it would put it
    /// ahead of the lost one, which only comes back after the ack wait.
    AfterAGap,
}

/// Why projecting a batch did not commit it.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Database(#[from] ProjectionError),
    #[error("fault injected")]
    Crash,
}

impl<'a> Projector<'a> {
    pub fn new(
        config: &'a Config,
        leader: &'a mut Leader,
        hooks: &'a FaultHooks,
        shutdown: &'a CancellationToken,
        to_fanout: mpsc::Sender<Committed>,
    ) -> Self {
        Self {
            config,
            leader,
            hooks,
            shutdown,
            to_fanout,
            members: Membership::default(),
            term: 0,
            delivered: None,
        }
    }

    /// Checks that `message` is the consumer's next delivery after the last
    /// one pulled, and counts it.
    fn pulled(&mut self, message: &jetstream::Message) -> Delivery {
        let Ok(info) = message.info() else {
            return Delivery::Next;
        };
        let (delivery, stream_seq) = (info.consumer_sequence, info.stream_sequence);
        if self.hooks.lose_pulled(stream_seq) {
            return Delivery::Lost;
        }
        if let Some(last) = self.delivered
            && delivery != last + 1
        {
            tracing::warn!(
                last,
                delivery,
                stream_seq,
                "a delivery of the consumer never arrived"
            );
            return Delivery::AfterAGap;
        }
        self.delivered = Some(delivery);
        Delivery::Next
    }

    /// Pulls and settles batches. Returns on shutdown; dropping the
    /// projector closes the hand-over.
    pub async fn run(mut self, mut source: Source) -> Result<(), ConsumeError> {
        self.delivered = Some(source.rewound_to);
        let mut backlog = tokio::time::interval(BACKLOG_EVERY);
        loop {
            let first = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = backlog.tick() => {
                    report_backlog(&mut source.consumer).await;
                    continue;
                }
                next = source.messages.next() => next,
            };
            let first = match first {
                Some(Ok(m)) => match self.pulled(&m) {
                    Delivery::Next => m,
                    Delivery::Lost => continue,
                    Delivery::AfterAGap => return Err(ConsumeError::PullLost),
                },
                Some(Err(e)) if pull_lost(&e) => return Err(ConsumeError::PullLost),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pull consumer error");
                    continue;
                }
                None => return Err(ConsumeError::Stream("pull subscription ended".into())),
            };
            let (batch, lost) = self.fill(first, &mut source.messages).await;
            self.process(batch).await?;
            if lost {
                return Err(ConsumeError::PullLost);
            }
        }
    }

    /// The batch `first` opens: what else has arrived, or arrives within the batch wait, up
    /// to the batch size; and whether the pull request was lost meanwhile.
    async fn fill(
        &mut self,
        first: jetstream::Message,
        messages: &mut pull::Stream,
    ) -> (Vec<jetstream::Message>, bool) {
        let mut batch = vec![first];
        let deadline = Instant::now() + self.config.batch_wait();
        while batch.len() < self.config.batch_max {
            match timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(m))) => match self.pulled(&m) {
                    Delivery::Next => batch.push(m),
                    Delivery::Lost => {}
                    Delivery::AfterAGap => return (batch, true),
                },
                Ok(Some(Err(e))) if pull_lost(&e) => return (batch, true),
                Ok(Some(Err(e))) => tracing::warn!(error = %e, "pull consumer error"),
                Ok(None) | Err(_) => break,
            }
        }
        (batch, false)
    }

    async fn process(&mut self, batch: Vec<jetstream::Message>) -> Result<(), ConsumeError> {
        let mut pulled: Vec<Pulled> = batch.into_iter().map(Pulled::decode).collect();
        // One transaction serves many traces: the batch is a trace of its own,
        // linked to the span of each record it holds.
        let batch = Trace::start(
            || tracing::info_span!(parent: None, "persister.batch", records = pulled.len()),
        );
        for p in &pulled {
            batch.link_to(p.traceparent.as_deref());
            if p.delivered > 1 {
                metrics::redelivered();
            }
        }
        batch.instrument(self.settle_batch(&mut pulled)).await
    }

    async fn settle_batch(&mut self, pulled: &mut [Pulled]) -> Result<(), ConsumeError> {
        // Records that cannot even be decoded will never project.
        for p in pulled.iter_mut() {
            if let Some(Err(reason)) = &p.record {
                let reason = reason.clone();
                dead_letter::set_aside(self.leader, p, &reason, self.shutdown).await?;
                p.record = None;
            }
        }
        let pending: Vec<&Pulled> = pulled.iter().filter(|p| p.record.is_some()).collect();
        if pending.is_empty() {
            return Ok(());
        }
        self.settle(&pending).await
    }

    /// Projects `pending` (in CHAT order) and hands it to the fan-out
    /// stage, retrying transient failures in place so nothing is reordered.
    async fn settle(&mut self, pending: &[&Pulled]) -> Result<(), ConsumeError> {
        let records: Vec<Record> = pending.iter().filter_map(|p| p.record()).cloned().collect();
        let provenance = provenance(pending, &records);
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            match self.project(&records, &provenance).await {
                Ok((committed_at, fanouts)) => {
                    for record in &records {
                        metrics::committed(record.event.kind(), lag(record, committed_at));
                    }
                    let batch = Committed {
                        messages: pending.iter().map(|p| p.message.clone()).collect(),
                        fanouts,
                        provenance,
                        seqs: records.iter().map(|r| r.chat_seq).collect(),
                        records: records.len(),
                        started,
                        trace: Trace::current(),
                    };
                    return self.hand_over(batch).await;
                }
                // A simulated crash: stop here with nothing acked, as a dead
                // process would; consumption restarts from the ack floor.
                Err(Failure::Crash) => return Err(ConsumeError::Crashed),
                Err(Failure::Database(e)) if !e.is_transient() => {
                    return self.refused_batch(pending, &e).await;
                }
                Err(failure) => {
                    tracing::warn!(error = %failure, size = pending.len(), "batch failed; retrying");
                    if self.leader.deposed().await {
                        return Err(ConsumeError::Deposed);
                    }
                    // Keep the records ours while we wait.
                    for p in pending {
                        ack(&p.message, AckKind::Progress).await;
                    }
                    if !backoff.wait(self.shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Fails only when the fan-out stage has stopped, which ends this
    /// consumer run anyway.
    async fn hand_over(&self, batch: Committed) -> Result<(), ConsumeError> {
        self.to_fanout
            .send(batch)
            .await
            .map_err(|_| ConsumeError::Stream("the fan-out stage stopped".into()))
    }

    /// If the database refuses a batch, its records are settled one by one
    /// so that only the bad one is held back.
    async fn refused_batch(
        &mut self,
        pending: &[&Pulled],
        error: &ProjectionError,
    ) -> Result<(), ConsumeError> {
        if let [single] = pending {
            return self.refused(single, error).await;
        }
        tracing::warn!(%error, size = pending.len(),
            "batch refused; projecting its records one by one");
        for p in pending {
            Box::pin(self.settle(&[*p])).await?;
        }
        Ok(())
    }

    /// A record the database refuses: redelivered later (it may have met a
    /// passing conflict) until `max_deliver`, then dead-lettered so it blocks
    /// nothing.
    async fn refused(&mut self, p: &Pulled, error: &ProjectionError) -> Result<(), ConsumeError> {
        if p.delivered >= self.config.max_deliver {
            return dead_letter::set_aside(self.leader, p, &error.to_string(), self.shutdown).await;
        }
        tracing::warn!(%error, chat_seq = p.chat_seq, delivered = p.delivered,
            "record refused; redelivering later");
        ack(&p.message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
        Ok(())
    }

    /// Projects `records` in one transaction: the first half of invariant
    /// 2's order (the fan-out stage does the rest). Returns when the batch
    /// was committed, with what it fans out.
    async fn project(
        &mut self,
        records: &[Record],
        provenance: &HashMap<u64, Provenance>,
    ) -> Result<(DateTime<Utc>, Vec<Fanout>), Failure> {
        if self.leader.term() != self.term {
            self.term = self.leader.term();
            self.members = Membership::default();
        }
        let step = Trace::current().child(|parent| {
            tracing::info_span!(parent: parent, "postgres.commit", records = records.len())
        });
        let fanouts = step
            .instrument(projection::project(
                self.leader.conn(),
                &mut self.members,
                records,
            ))
            .await?;
        let committed_at = Utc::now();
        for record in records {
            if let Some(origin) = provenance.get(&record.chat_seq) {
                log_stored(&origin.trace, record, committed_at);
            }
        }
        let seqs: Vec<u64> = records.iter().map(|r| r.chat_seq).collect();
        if self.hooks.crash_after_commit(&seqs) {
            return Err(Failure::Crash);
        }
        Ok((committed_at, fanouts))
    }
}

/// Reads the consumer's backlog into the metrics.
/// Missed idle heartbeats: the consumer's leader no longer holds our pull
/// request, and only a new one gets records flowing again.
fn pull_lost(error: &pull::MessagesError) -> bool {
    error.kind() == pull::MessagesErrorKind::MissingHeartbeat
}

async fn report_backlog(consumer: &mut PullConsumer) {
    match consumer.info().await {
        Ok(info) => metrics::consumer_backlog(info.num_pending, info.num_ack_pending),
        Err(e) => tracing::debug!(error = %e, "cannot read the consumer's backlog"),
    }
}

/// Where each record came from, by `CHAT` sequence; `records` are
/// `pending`'s, in the same order.
fn provenance(pending: &[&Pulled], records: &[Record]) -> HashMap<u64, Provenance> {
    pending
        .iter()
        .zip(records)
        .map(|(p, r)| {
            let origin = Provenance {
                traceparent: p.traceparent.clone(),
                accepted_at: r.event.at(),
                trace: p.trace.clone(),
            };
            (r.chat_seq, origin)
        })
        .collect()
}

/// Seconds from a record's acceptance to its commit.
fn lag(record: &Record, committed_at: DateTime<Utc>) -> f64 {
    natter_runtime::metrics::seconds_between(record.event.at(), committed_at)
}

/// The seed's "message saved to DB" line, in the record's trace.
fn log_stored(trace: &Trace, record: &Record, committed_at: DateTime<Utc>) {
    let lag_ms = (lag(record, committed_at) * 1000.0) as u64;
    trace.in_scope(|| match &record.event {
        ChatEvent::MessageSent(m) => tracing::info!(chat_seq = record.chat_seq,
            message_id = %m.id, conversation = %m.conversation_id, sender = %m.sender_id,
            lag_ms, "[STORED] message saved to PostgreSQL"),
        other => tracing::info!(
            chat_seq = record.chat_seq,
            kind = other.kind(),
            lag_ms,
            "[STORED] event projected to PostgreSQL"
        ),
    });
}
