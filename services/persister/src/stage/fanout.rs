//! The fan-out stage: publishes committed batches' delivery records in the
//! order the batches committed, then acks them (invariants 2 and 5, DESIGN.md §1).
//! Large records go through the [`Lane`], a chunk between two batches.
//! A record no retry could store is dead-lettered; the rest flow on.

use super::ack::ack;
use super::lane::Lane;
use crate::config::Config;
use crate::error::ConsumeError;
use crate::fanout::{self, Provenance, Published};
use crate::faults::FaultHooks;
use crate::metrics;
use crate::projection::{Fanout, dead_letter};
use crate::tails::Tails;
use async_nats::jetstream::{self, AckKind};
use natter_runtime::backoff::Backoff;
use natter_runtime::trace::Trace;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
    /// The `persister.batch` trace.
    pub trace: Trace,
}

/// The fan-out stage of one consumer run.
pub struct FanOut<'a> {
    js: &'a jetstream::Context,
    /// Where undeliverable records are set aside.
    pool: PgPool,
    /// Most publish acks outstanding at once (`NATS_PUBLISH_WINDOW`).
    window: usize,
    /// Above this a record goes to the lane (`LARGE_FANOUT_BYTES`).
    large: usize,
    /// Bytes a second the lane publishes at most
    /// (`LARGE_FANOUT_BYTES_PER_SEC`).
    lane_rate: f64,
    /// How often the messages the lane holds are marked in progress, so
    /// JetStream does not redeliver them: a third of the ack wait.
    progress_every: Duration,
    hooks: &'a FaultHooks,
    shutdown: &'a CancellationToken,
}

/// Bytes of the lane published between two batches: what a later record
/// may wait behind.
const LANE_CHUNK_BYTES: usize = 1024 * 1024;
/// Bytes the lane may hold before batches wait for it to drain.
const LANE_MAX_BYTES: usize = 256 * 1024 * 1024;
/// How long a waiting lane waits for a batch before looking again.
const LANE_HELD_POLL: Duration = Duration::from_millis(20);

/// The lane, when its held messages were last marked in progress, and
/// when its pace lets the next chunk go; and the recipients' tails.
struct LaneState {
    lane: Lane<jetstream::Message>,
    progress_at: Instant,
    next_chunk_at: Instant,
    /// Where each recipient's log ends, for the copies that follow.
    tails: Tails,
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
            large: config.large_fanout_bytes.max(1),
            lane_rate: config.large_fanout_bytes_per_sec.max(1) as f64,
            progress_every: Duration::from_secs(config.ack_wait_secs.max(1)) / 3,
            hooks,
            shutdown,
        }
    }

    /// Fans out committed batches in the order they were committed, then
    /// acks them; large records go through the lane, a chunk between two
    /// batches. Fan-out failures are retried in place (it is idempotent),
    /// so no later batch overtakes. Returns once the projection stage
    /// closed the hand-over, or on shutdown.
    pub async fn run(self, mut committed: mpsc::Receiver<Committed>) -> Result<(), ConsumeError> {
        let mut state = LaneState {
            lane: Lane::default(),
            progress_at: Instant::now(),
            next_chunk_at: Instant::now(),
            tails: Tails::default(),
        };
        loop {
            self.keep_held(&mut state).await;
            let now = Instant::now();
            let open = !state.lane.is_empty() && self.hooks.lane_open();
            let due = open && now >= state.next_chunk_at;
            let next = if state.lane.is_empty() {
                match committed.recv().await {
                    Some(batch) => Some(batch),
                    None => return Ok(()),
                }
            } else if open && state.lane.bytes() > LANE_MAX_BYTES {
                // Full: no more batches until it drains.
                tokio::time::sleep_until(state.next_chunk_at).await;
                None
            } else if due {
                match committed.try_recv() {
                    Ok(batch) => Some(batch),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
                }
            } else {
                // The lane waits for its pace (or for a test): batches
                // flow meanwhile.
                let until = if open {
                    state.next_chunk_at.min(now + LANE_HELD_POLL)
                } else {
                    now + LANE_HELD_POLL
                };
                match tokio::time::timeout_at(until, committed.recv()).await {
                    Ok(Some(batch)) => Some(batch),
                    Ok(None) => return Ok(()),
                    Err(_) => None,
                }
            };
            if let Some(batch) = next
                && !self
                    .fan_out(batch, &mut state.lane, &mut state.tails)
                    .await?
            {
                return Ok(());
            }
            if !state.lane.is_empty()
                && self.hooks.lane_open()
                && Instant::now() >= state.next_chunk_at
                && !self.drain_chunk(&mut state).await
            {
                return Ok(());
            }
            metrics::lane(state.lane.bytes());
        }
    }

    /// One batch: large records into the lane, the rest published now,
    /// each after its recipient's copies still in the lane; then the acks
    /// of what is done. `false` on shutdown.
    async fn fan_out(
        &self,
        batch: Committed,
        lane: &mut Lane<jetstream::Message>,
        tails: &mut Tails,
    ) -> Result<bool, ConsumeError> {
        let (now, mut undeliverable) = self.split(&batch, lane);
        let Some(published) = self.publish(&batch, &now, lane, tails).await else {
            return Ok(false);
        };
        metrics::fanned_out(published.records);
        undeliverable.extend(published.undeliverable);
        let stored = now
            .iter()
            .filter(|c| !undeliverable.contains_key(&c.chat_seq));
        // Messages done: the lane's whose last copies went out just now,
        // this batch's that are not in the lane, and the undeliverable
        // ones once set aside.
        let mut done = lane.stored(stored);
        for (chat_seq, reason) in &undeliverable {
            let message = match lane.abandon(*chat_seq) {
                Some(message) => message,
                None => match batch_message(&batch, *chat_seq) {
                    Some(message) => message.clone(),
                    None => continue,
                },
            };
            if !self
                .dead_letter(&message, &batch.trace, *chat_seq, reason)
                .await
            {
                return Ok(false);
            }
            done.push((*chat_seq, message));
        }
        let settled: HashSet<u64> = done.iter().map(|(seq, _)| *seq).collect();
        for (seq, message) in batch.seqs.iter().zip(&batch.messages) {
            if !lane.holds(*seq) && !settled.contains(seq) {
                done.push((*seq, message.clone()));
            }
        }
        // A simulated crash: stop with the batch unacked, as a dead
        // process would; consumption restarts from the ack floor.
        if self.hooks.crash_after_fanout(&batch.seqs) {
            return Err(ConsumeError::Crashed);
        }
        for (_, message) in &done {
            ack(message, AckKind::Ack).await;
        }
        metrics::batch(batch.records, batch.started.elapsed());
        batch.trace.in_scope(|| {
            tracing::debug!(
                records = batch.records,
                deliveries = published.records,
                first_seq = batch.seqs.first().copied().unwrap_or_default(),
                lane_bytes = lane.bytes(),
                elapsed_ms = batch.started.elapsed().as_millis() as u64,
                "batch stored and fanned out"
            )
        });
        Ok(true)
    }

    /// `batch`'s copies to publish now, each after its recipient's copies
    /// taken out of the lane, with large records deferred to the lane; and
    /// the records that cannot be encoded.
    fn split(
        &self,
        batch: &Committed,
        lane: &mut Lane<jetstream::Message>,
    ) -> (Vec<fanout::Copy>, BTreeMap<u64, String>) {
        let encoded: Vec<(u64, Result<Vec<fanout::Copy>, String>)> = batch
            .fanouts
            .iter()
            .map(|f| (f.chat_seq, fanout::copies(f, &batch.provenance, self.large)))
            .collect();
        let large = self.large_records(&encoded);
        let mut now = Vec::new();
        let mut undeliverable = BTreeMap::new();
        for (chat_seq, copies) in encoded {
            match copies {
                Err(reason) => {
                    undeliverable.insert(chat_seq, reason);
                }
                Ok(copies) if large.contains(&chat_seq) => {
                    if let Some(message) = batch_message(batch, chat_seq) {
                        lane.defer(chat_seq, message.clone(), copies);
                    }
                }
                Ok(copies) => {
                    for copy in copies {
                        now.extend(lane.take_for(copy.recipient));
                        now.push(copy);
                    }
                }
            }
        }
        (now, undeliverable)
    }

    /// The `CHAT` sequences whose records, all recipients' copies together,
    /// reach the large fan-out size.
    fn large_records(&self, encoded: &[(u64, Result<Vec<fanout::Copy>, String>)]) -> HashSet<u64> {
        let mut bytes: HashMap<u64, usize> = HashMap::new();
        for (chat_seq, copies) in encoded {
            if let Ok(copies) = copies {
                *bytes.entry(*chat_seq).or_default() +=
                    copies.iter().map(|c| c.weight()).sum::<usize>();
            }
        }
        bytes
            .into_iter()
            .filter(|(_, total)| *total >= self.large)
            .map(|(seq, _)| seq)
            .collect()
    }

    /// Marks the messages the lane holds in progress, once per
    /// `progress_every`.
    async fn keep_held(&self, state: &mut LaneState) {
        if state.progress_at.elapsed() < self.progress_every {
            return;
        }
        for message in state.lane.held() {
            ack(message, AckKind::Progress).await;
        }
        state.progress_at = Instant::now();
    }

    /// Publishes the lane's next chunk, retrying until stored; acks the
    /// messages all of whose copies now are. `false` on shutdown.
    async fn drain_chunk(&self, state: &mut LaneState) -> bool {
        let started = Instant::now();
        let chunk = state.lane.next_chunk(LANE_CHUNK_BYTES);
        let bytes: usize = chunk.iter().map(|c| c.weight()).sum();
        state.next_chunk_at = state.next_chunk_at.max(started)
            + Duration::from_secs_f64(bytes as f64 / self.lane_rate);
        let mut backoff = Backoff::default();
        let published = loop {
            let published =
                fanout::publish(self.js, self.window, &chunk, &mut state.tails, self.hooks);
            match published.await {
                Ok(published) => break published,
                Err(e) => {
                    tracing::warn!(error = %e, copies = chunk.len(), "fan-out of the large lane failed; retrying");
                    for message in state.lane.held() {
                        ack(message, AckKind::Progress).await;
                    }
                    if !backoff.wait(self.shutdown).await {
                        state.lane.put_back(chunk);
                        return false;
                    }
                }
            }
        };
        metrics::fanned_out(published.records);
        let stored = chunk
            .iter()
            .filter(|c| !published.undeliverable.contains_key(&c.chat_seq));
        for (_, message) in state.lane.stored(stored) {
            ack(&message, AckKind::Ack).await;
        }
        for (chat_seq, reason) in &published.undeliverable {
            let Some(message) = state.lane.abandon(*chat_seq) else {
                continue;
            };
            if !self
                .dead_letter(&message, &Trace::current(), *chat_seq, reason)
                .await
            {
                return false;
            }
            ack(&message, AckKind::Ack).await;
        }
        true
    }

    /// Publishes `copies` (`batch`'s, and lane copies taken out ahead of
    /// them), retrying until JetStream has stored all of them. `None` on
    /// shutdown.
    async fn publish(
        &self,
        batch: &Committed,
        copies: &[fanout::Copy],
        lane: &Lane<jetstream::Message>,
        tails: &mut Tails,
    ) -> Option<Published> {
        let mut backoff = Backoff::default();
        loop {
            let step = batch.trace.child(|parent| {
                tracing::info_span!(parent: parent, "fanout.publish",
                    records = batch.fanouts.len())
            });
            match step
                .instrument(fanout::publish(
                    self.js,
                    self.window,
                    copies,
                    tails,
                    self.hooks,
                ))
                .await
            {
                Ok(published) => return Some(published),
                Err(e) => {
                    batch.trace.in_scope(|| {
                        tracing::warn!(error = %e, size = batch.records,
                        "fan-out failed; retrying")
                    });
                    // Keep the records ours while we wait.
                    for message in batch.messages.iter().chain(lane.held()) {
                        ack(message, AckKind::Progress).await;
                    }
                    if !backoff.wait(self.shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Stores the dead letter of the record at `chat_seq` (`message`),
    /// whose delivery records no retry could store, retrying while
    /// PostgreSQL fails. The record itself stays projected and is acked by
    /// the caller. `false` on shutdown.
    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        trace: &Trace,
        chat_seq: u64,
        reason: &str,
    ) -> bool {
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
                    trace.in_scope(|| {
                        tracing::error!(chat_seq, reason, "delivery records dead-lettered")
                    });
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot store a dead letter; retrying");
                    ack(message, AckKind::Progress).await;
                    if !backoff.wait(self.shutdown).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// The `CHAT` message of `batch` at `chat_seq`.
fn batch_message(batch: &Committed, chat_seq: u64) -> Option<&jetstream::Message> {
    batch
        .seqs
        .iter()
        .zip(&batch.messages)
        .find_map(|(seq, m)| (*seq == chat_seq).then_some(m))
}
