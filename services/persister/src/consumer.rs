//! The persister's one durable consumer on `CHAT`.
//!
//! Exactly one persister consumes at a time: it holds a PostgreSQL advisory
//! lock on a dedicated connection and projects on that same connection, so a
//! persister that lost its lock cannot commit. The others wait as hot
//! standbys. Each batch is projected, fanned out and only then acked; a
//! failure before the ack leaves the batch to be retried, in order.

use crate::membership::Membership;
use crate::projection::{self, ProjectionError, Record};
use crate::{Config, FaultHooks, fanout};
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use natter_core::{ChatRecord, subjects};
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;
use tokio::time::{Instant, sleep, timeout_at};
use tokio_util::sync::CancellationToken;

/// The advisory lock key that elects the active persister ("natter-p").
const LEADER_LOCK: i64 = 0x6e61_7474_6572_2d70;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(3);

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
        match consume(config, &mut leader, &js, &hooks, &shutdown).await {
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
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(config.batch_max)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| ConsumeError::Stream(e.to_string()))?;

    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
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
        let deadline = Instant::now() + config.batch_wait();
        while batch.len() < config.batch_max {
            match timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(m))) => batch.push(m),
                Ok(Some(Err(e))) => tracing::warn!(error = %e, "pull consumer error"),
                Ok(None) | Err(_) => break,
            }
        }
        process(config, leader, js, hooks, shutdown, batch).await?;
    }
}

/// A pulled message with its decoded record.
struct Pulled {
    message: jetstream::Message,
    chat_seq: u64,
    delivered: i64,
    record: Option<Result<Record, String>>,
}

async fn process(
    config: &Config,
    leader: &mut Leader,
    js: &jetstream::Context,
    hooks: &FaultHooks,
    shutdown: &CancellationToken,
    batch: Vec<jetstream::Message>,
) -> Result<(), ConsumeError> {
    let mut pulled: Vec<Pulled> = batch.into_iter().map(decode).collect();

    // Records that cannot even be decoded will never project.
    for p in pulled.iter_mut() {
        if let Some(Err(reason)) = &p.record {
            let reason = reason.clone();
            dead_letter(leader, p, &reason, shutdown).await?;
            p.record = None;
        }
    }
    let pending: Vec<&Pulled> = pulled.iter().filter(|p| p.record.is_some()).collect();
    if pending.is_empty() {
        return Ok(());
    }
    let mut step = Step {
        config,
        leader,
        js,
        hooks,
        shutdown,
    };
    step.settle(&pending).await
}

/// What settling records needs.
struct Step<'a> {
    config: &'a Config,
    leader: &'a mut Leader,
    js: &'a jetstream::Context,
    hooks: &'a FaultHooks,
    shutdown: &'a CancellationToken,
}

impl Step<'_> {
    /// Projects, fans out and acks `pending` (in CHAT order), retrying
    /// transient failures in place so nothing is reordered. If the database
    /// refuses a batch, its records are settled one by one so that only the
    /// bad one is held back.
    async fn settle(&mut self, pending: &[&Pulled]) -> Result<(), ConsumeError> {
        let records: Vec<Record> = pending
            .iter()
            .filter_map(|p| p.record.as_ref().and_then(|r| r.as_ref().ok()).cloned())
            .collect();
        let mut backoff = RETRY_MIN;
        loop {
            match apply(self.leader, self.js, self.hooks, &records).await {
                Ok(()) => {
                    for p in pending {
                        ack(&p.message, AckKind::Ack).await;
                    }
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
                    if matches!(failure, Failure::Database(_))
                        && let Ok(false) = self.leader.recover().await
                    {
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
    #[error(transparent)]
    Fanout(#[from] fanout::FanoutError),
    #[error("fault injected")]
    Crash,
}

/// Project, then fan out: the order invariant 2 needs.
async fn apply(
    leader: &mut Leader,
    js: &jetstream::Context,
    hooks: &FaultHooks,
    records: &[Record],
) -> Result<(), Failure> {
    let started = Instant::now();
    let fanouts = projection::project(&mut leader.conn, &mut leader.members, records).await?;
    let seqs: Vec<u64> = records.iter().map(|r| r.chat_seq).collect();
    if hooks.after_commit.as_ref().is_some_and(|h| h(&seqs)) {
        return Err(Failure::Crash);
    }
    let published = fanout::publish(js, &fanouts).await?;
    if hooks.after_fanout.as_ref().is_some_and(|h| h(&seqs)) {
        return Err(Failure::Crash);
    }
    tracing::debug!(
        records = records.len(),
        deliveries = published,
        first_seq = seqs.first().copied().unwrap_or_default(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "batch stored and fanned out"
    );
    Ok(())
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
    Pulled {
        message,
        chat_seq,
        delivered,
        record: Some(record),
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
        let stored = projection::dead_letter(
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
                tracing::error!(chat_seq = p.chat_seq, subject = %p.message.subject, reason,
                    "record dead-lettered");
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
