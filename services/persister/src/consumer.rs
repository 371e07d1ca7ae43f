//! The persister's one durable consumer on `CHAT`.
//!
//! Exactly one persister consumes at a time: it holds a PostgreSQL advisory
//! lock on a dedicated connection and projects on that same connection, so a
//! persister that lost its lock cannot commit. The others wait as hot
//! standbys. Each batch is projected, fanned out and only then acked; a
//! failure before the ack leaves the batch to be retried, in order.
//!
//! Projection and fan-out are two stages that overlap: while batch N is
//! fanned out, batch N+1 is projected. One fan-out stage takes committed
//! batches in order, so delivery records are still published in `CHAT`
//! order and only after their batch committed; a crash between the stages
//! leaves committed but unacked records, which the rewind at start
//! redelivers and the idempotent projection passes on to be fanned out.

use crate::config::Config;
use crate::fanout::Provenance;
use crate::faults::FaultHooks;
use crate::projection::membership::Membership;
use crate::projection::{self, Fanout, ProjectionError, Record};
use crate::{fanout, metrics};
use async_nats::jetstream::{self, AckKind, consumer::pull};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use natter_core::{ChatEvent, ChatRecord, subjects};
use natter_runtime::trace;
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The advisory lock key that elects the active persister ("natter-p").
const LEADER_LOCK: i64 = 0x6e61_7474_6572_2d70;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(3);
/// How often the consumer's backlog is read for the metrics.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Runs until `shutdown`: elect, consume, and on any loss of leadership or of
/// the consumer start over.
pub async fn run(
    config: &Config,
    pool: PgPool,
    js: jetstream::Context,
    hooks: FaultHooks,
    shutdown: CancellationToken,
) {
    let settings = config.streams.settings();
    let mut backoff = RETRY_MIN;
    while !shutdown.is_cancelled() {
        if let Err(e) = natter_runtime::jetstream::ensure_streams(&js, &settings).await {
            tracing::warn!(error = %e, "streams not ready; retrying");
            pause(&shutdown, &mut backoff).await;
            continue;
        }
        let Some(mut leader) = Leader::elect(&pool, &shutdown).await else {
            return;
        };
        tracing::info!("elected active persister");
        metrics::leader(true);
        let consumed = consume(config, &mut leader, &js, &hooks, &shutdown).await;
        metrics::leader(false);
        match consumed {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "consumer stopped; starting over");
                pause(&shutdown, &mut backoff).await;
            }
        }
    }
}

async fn pause(shutdown: &CancellationToken, backoff: &mut Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(RETRY_MAX);
}

/// The active persister's lock connection.
struct Leader {
    pool: PgPool,
    conn: PgConnection,
    members: Membership,
}

impl Leader {
    /// Waits until this process holds the lock, or `shutdown`.
    async fn elect(pool: &PgPool, shutdown: &CancellationToken) -> Option<Leader> {
        let mut backoff = RETRY_MIN;
        let mut announced = false;
        loop {
            match try_lock(pool).await {
                Ok(Some(conn)) => {
                    return Some(Leader {
                        pool: pool.clone(),
                        conn,
                        members: Membership::default(),
                    });
                }
                Ok(None) => {
                    if !announced {
                        tracing::info!("another persister is active; waiting as a standby");
                        announced = true;
                    }
                    backoff = Duration::from_secs(1);
                }
                Err(e) => tracing::warn!(error = %e, "cannot reach PostgreSQL to elect a leader"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    /// After a database error: keep leadership if the lock connection is
    /// fine or the lock can be taken again on a new one (a PostgreSQL
    /// restart releases it). `Ok(false)`: another persister took over.
    async fn recover(&mut self) -> Result<bool, sqlx::Error> {
        if sqlx::query("SELECT 1")
            .execute(&mut self.conn)
            .await
            .is_ok()
        {
            return Ok(true);
        }
        match try_lock(&self.pool).await? {
            Some(conn) => {
                self.conn = conn;
                tracing::info!("re-took the persister lock on a new connection");
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

async fn try_lock(pool: &PgPool) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK)
        .fetch_one(&mut conn)
        .await?;
    if locked {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}

#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error("cannot create the persister consumer: {0}")]
    Consumer(String),
    #[error("the pull subscription failed: {0}")]
    Stream(String),
    #[error("another persister took over")]
    Deposed,
    #[error("fault injected")]
    Crashed,
}

async fn consume(
    config: &Config,
    leader: &mut Leader,
    js: &jetstream::Context,
    hooks: &FaultHooks,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let stream = js
        .get_stream(subjects::CHAT_STREAM)
        .await
        .map_err(|e| ConsumeError::Consumer(e.to_string()))?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(subjects::PERSISTER_CONSUMER.to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(config.ack_wait_secs),
            max_deliver: -1,
            max_ack_pending: (config.batch_max * 8) as i64,
            num_replicas: config.streams.settings().replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| ConsumeError::Consumer(e.to_string()))?;
    // Records a previous leader (or our own previous attempt) pulled but
    // never acked would come back only after the ack wait, behind newer
    // ones, and fan out out of order. Rewinding to the ack floor redelivers
    // them first; projection and fan-out are idempotent, so records above
    // the floor that were already done cost a no-op each.
    stream
        .reset_consumer(subjects::PERSISTER_CONSUMER, None)
        .await
        .map_err(|e| ConsumeError::Consumer(format!("cannot rewind to the ack floor: {e}")))?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(config.batch_max)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| ConsumeError::Stream(e.to_string()))?;

    // One committed batch may wait while another is fanned out.
    let (to_fanout, committed) = mpsc::channel(1);
    let projector = Projector {
        config,
        leader,
        hooks,
        shutdown,
        to_fanout,
    };
    let projecting = projector.run(consumer, messages);
    let fanning = fan_out_stage(config, js, hooks, shutdown, committed);
    tokio::try_join!(projecting, fanning).map(|_| ())
}

/// The projection stage: pulls batches and projects them, handing each
/// committed batch to the fan-out stage.
struct Projector<'a> {
    config: &'a Config,
    leader: &'a mut Leader,
    hooks: &'a FaultHooks,
    shutdown: &'a CancellationToken,
    to_fanout: mpsc::Sender<Committed>,
}

impl Projector<'_> {
    /// Returns on shutdown; dropping the projector closes the hand-over.
    async fn run(
        mut self,
        mut consumer: jetstream::consumer::PullConsumer,
        mut messages: pull::Stream,
    ) -> Result<(), ConsumeError> {
        let mut backlog = tokio::time::interval(BACKLOG_EVERY);
        loop {
            let first = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = backlog.tick() => {
                    match consumer.info().await {
                        Ok(info) => metrics::consumer_backlog(info.num_pending, info.num_ack_pending),
                        Err(e) => tracing::debug!(error = %e, "cannot read the consumer's backlog"),
                    }
                    continue;
                }
                next = messages.next() => next,
            };
            let mut batch = match first {
                Some(Ok(m)) => vec![m],
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pull consumer error");
                    continue;
                }
                None => return Err(ConsumeError::Stream("pull subscription ended".into())),
            };
            let deadline = Instant::now() + self.config.batch_wait();
            while batch.len() < self.config.batch_max {
                match timeout_at(deadline, messages.next()).await {
                    Ok(Some(Ok(m))) => batch.push(m),
                    Ok(Some(Err(e))) => tracing::warn!(error = %e, "pull consumer error"),
                    Ok(None) | Err(_) => break,
                }
            }
            self.process(batch).await?;
        }
    }
}

/// A committed batch on its way to the fan-out stage.
struct Committed {
    /// The batch's `CHAT` messages, acked once fanned out.
    messages: Vec<jetstream::Message>,
    fanouts: Vec<Fanout>,
    provenance: HashMap<u64, Provenance>,
    seqs: Vec<u64>,
    records: usize,
    /// When its projection started, for the batch duration.
    started: Instant,
    /// The `persister.batch` span.
    span: tracing::Span,
}

/// Fans out committed batches in the order they were committed, then acks
/// them. Fan-out failures are retried in place (it is idempotent), so no
/// later batch overtakes.
async fn fan_out_stage(
    config: &Config,
    js: &jetstream::Context,
    hooks: &FaultHooks,
    shutdown: &CancellationToken,
    mut committed: mpsc::Receiver<Committed>,
) -> Result<(), ConsumeError> {
    let window = config.nats.nats_publish_window as usize;
    while let Some(batch) = committed.recv().await {
        let mut backoff = RETRY_MIN;
        let published = loop {
            let span = tracing::info_span!(parent: &batch.span, "fanout.publish",
                records = batch.fanouts.len());
            match fanout::publish(js, window, &batch.fanouts, &batch.provenance)
                .instrument(span)
                .await
            {
                Ok(published) => break published,
                Err(e) => {
                    tracing::warn!(parent: &batch.span, error = %e, size = batch.records,
                        "fan-out failed; retrying");
                    // Keep the records ours while we wait.
                    for message in &batch.messages {
                        ack(message, AckKind::Progress).await;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        };
        metrics::fanned_out(published);
        // A simulated crash: stop with the batch unacked, as a dead process
        // would; consumption restarts from the ack floor.
        if hooks.after_fanout.as_ref().is_some_and(|h| h(&batch.seqs)) {
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

/// A pulled message with its decoded record.
struct Pulled {
    message: jetstream::Message,
    chat_seq: u64,
    delivered: i64,
    record: Option<Result<Record, String>>,
    /// This record's part of its message's trace, open until it is settled.
    span: tracing::Span,
    /// `span` as a `traceparent`, for the delivery records it fans out to.
    traceparent: Option<String>,
}

impl Projector<'_> {
    async fn process(&mut self, batch: Vec<jetstream::Message>) -> Result<(), ConsumeError> {
        let mut pulled: Vec<Pulled> = batch.into_iter().map(decode).collect();
        // One transaction serves many traces: the batch is a trace of its own,
        // linked to the span of each record it holds.
        let batch_span =
            tracing::info_span!(parent: None, "persister.batch", records = pulled.len());
        for p in &pulled {
            trace::link_to(&batch_span, p.traceparent.as_deref());
            if p.delivered > 1 {
                metrics::redelivered();
            }
        }
        self.settle_batch(&mut pulled).instrument(batch_span).await
    }

    async fn settle_batch(&mut self, pulled: &mut [Pulled]) -> Result<(), ConsumeError> {
        // Records that cannot even be decoded will never project.
        for p in pulled.iter_mut() {
            if let Some(Err(reason)) = &p.record {
                let reason = reason.clone();
                dead_letter(self.leader, p, &reason, self.shutdown).await?;
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
    /// stage, retrying transient failures in place so nothing is reordered. If the database
    /// refuses a batch, its records are settled one by one so that only the
    /// bad one is held back.
    async fn settle(&mut self, pending: &[&Pulled]) -> Result<(), ConsumeError> {
        let records: Vec<Record> = pending
            .iter()
            .filter_map(|p| p.record.as_ref().and_then(|r| r.as_ref().ok()).cloned())
            .collect();
        let provenance: HashMap<u64, Provenance> = pending
            .iter()
            .zip(&records)
            .map(|(p, r)| {
                let origin = Provenance {
                    traceparent: p.traceparent.clone(),
                    accepted_at: r.event.at(),
                    span: p.span.clone(),
                };
                (r.chat_seq, origin)
            })
            .collect();
        let mut backoff = RETRY_MIN;
        loop {
            let started = Instant::now();
            match project(self.leader, self.hooks, &records, &provenance).await {
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
                        span: tracing::Span::current(),
                    };
                    // Fails only when the fan-out stage has stopped, which
                    // ends this consumer anyway.
                    self.to_fanout
                        .send(batch)
                        .await
                        .map_err(|_| ConsumeError::Stream("the fan-out stage stopped".into()))?;
                    return Ok(());
                }
                // A simulated crash: stop here with nothing acked, as a dead
                // process would; consumption restarts from the ack floor.
                Err(Failure::Crash) => return Err(ConsumeError::Crashed),
                Err(Failure::Database(e)) if !e.is_transient() => {
                    if let [single] = pending {
                        return refused(self.config, self.leader, single, &e, self.shutdown).await;
                    }
                    tracing::warn!(error = %e, size = pending.len(),
                        "batch refused; projecting its records one by one");
                    for p in pending {
                        Box::pin(self.settle(&[*p])).await?;
                    }
                    return Ok(());
                }
                Err(failure) => {
                    tracing::warn!(error = %failure, size = pending.len(), "batch failed; retrying");
                    if let Ok(false) = self.leader.recover().await {
                        return Err(ConsumeError::Deposed);
                    }
                    // Keep the records ours while we wait.
                    for p in pending {
                        ack(&p.message, AckKind::Progress).await;
                    }
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Ok(()),
                        _ = sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

/// A record the database refuses: redelivered later (it may have met a
/// passing conflict) until `max_deliver`, then dead-lettered so it blocks
/// nothing.
async fn refused(
    config: &Config,
    leader: &mut Leader,
    p: &Pulled,
    error: &ProjectionError,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    if p.delivered >= config.max_deliver {
        return dead_letter(leader, p, &error.to_string(), shutdown).await;
    }
    tracing::warn!(%error, chat_seq = p.chat_seq, delivered = p.delivered,
        "record refused; redelivering later");
    ack(&p.message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Database(#[from] ProjectionError),
    #[error("fault injected")]
    Crash,
}

/// Projects `records` in one transaction: the first half of invariant 2's
/// order (the fan-out stage does the rest). Returns when the batch was
/// committed, with what it fans out.
async fn project(
    leader: &mut Leader,
    hooks: &FaultHooks,
    records: &[Record],
    provenance: &HashMap<u64, Provenance>,
) -> Result<(DateTime<Utc>, Vec<Fanout>), Failure> {
    let fanouts = projection::project(&mut leader.conn, &mut leader.members, records)
        .instrument(tracing::info_span!(
            "postgres.commit",
            records = records.len()
        ))
        .await?;
    let committed_at = Utc::now();
    for record in records {
        if let Some(origin) = provenance.get(&record.chat_seq) {
            log_stored(&origin.span, record, committed_at);
        }
    }
    let seqs: Vec<u64> = records.iter().map(|r| r.chat_seq).collect();
    if hooks.after_commit.as_ref().is_some_and(|h| h(&seqs)) {
        return Err(Failure::Crash);
    }
    Ok((committed_at, fanouts))
}

/// Seconds from a record's acceptance to its commit.
fn lag(record: &Record, committed_at: DateTime<Utc>) -> f64 {
    natter_runtime::metrics::seconds_between(record.event.at(), committed_at)
}

/// The seed's "message saved to DB" line, in the record's trace.
fn log_stored(span: &tracing::Span, record: &Record, committed_at: DateTime<Utc>) {
    let lag_ms = (lag(record, committed_at) * 1000.0) as u64;
    match &record.event {
        ChatEvent::MessageSent(m) => tracing::info!(parent: span, chat_seq = record.chat_seq,
            message_id = %m.id, conversation = %m.conversation_id, sender = %m.sender_id,
            lag_ms, "[STORED] message saved to PostgreSQL"),
        other => tracing::info!(parent: span, chat_seq = record.chat_seq, kind = other.kind(),
            lag_ms, "[STORED] event projected to PostgreSQL"),
    }
}

fn decode(message: jetstream::Message) -> Pulled {
    let (chat_seq, delivered) = match message.info() {
        Ok(info) => (info.stream_sequence, info.delivered),
        Err(_) => (0, 1),
    };
    let record = match serde_json::from_slice::<ChatRecord>(&message.payload) {
        Ok(r) => Ok(Record {
            chat_seq,
            event: r.event,
        }),
        Err(e) => Err(format!("undecodable record: {e}")),
    };
    let kind = match &record {
        Ok(r) => r.event.kind(),
        Err(_) => "undecodable",
    };
    let span = tracing::info_span!(parent: None, "persister.persist", chat_seq, delivered, kind);
    trace::continue_from(&span, trace::from_headers(message.headers.as_ref()));
    let traceparent = trace::traceparent(&span);
    Pulled {
        message,
        chat_seq,
        delivered,
        record: Some(record),
        span,
        traceparent,
    }
}

async fn dead_letter(
    leader: &mut Leader,
    p: &Pulled,
    reason: &str,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let mut backoff = RETRY_MIN;
    loop {
        let stored = projection::dead_letter::store(
            &mut leader.conn,
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
                tracing::error!(parent: &p.span, chat_seq = p.chat_seq,
                    subject = %p.message.subject, reason, "record dead-lettered");
                ack(&p.message, AckKind::Term).await;
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot store a dead letter; retrying");
                if let Ok(false) = leader.recover().await {
                    return Err(ConsumeError::Deposed);
                }
                ack(&p.message, AckKind::Progress).await;
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Acks are fire-and-forget: a lost ack means a redelivery, which the
/// projection and the fan-out absorb.
async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, "ack failed; the record will be redelivered");
    }
}
