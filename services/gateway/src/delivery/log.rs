//! Replay of a user's delivery log: records by subject from a sequence, with
//! one batched JetStream direct get and no consumer created.

use super::record::{DeliveryError, Stored, header_u64};
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use natter_core::{UserId, subjects};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a direct get's next reply may take on the first attempt, and
/// more on each next one (2, 4, 6, 8 s). Any replica of `DELIVERY` answers a
/// direct get; one that hangs (a paused node still in the cluster) answers
/// nothing, and the request is sent again; a busy one answers late, and a
/// session that gave up would only come back to ask again.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Direct gets sent before a read gives up: 2 + 4 + 6 + 8 = 20 s in all. A
/// session that gives up is closed and its client comes back to ask again,
/// so under load waiting is cheaper than giving up.
const READ_ATTEMPTS: usize = 4;

/// Reads up to `limit` records of `user`'s log with sequence ≥ `from`, in
/// order, with one batched direct get.
pub async fn read_log(
    nats: &async_nats::Client,
    user: UserId,
    from: u64,
    limit: usize,
) -> Result<Vec<Stored>, DeliveryError> {
    read_log_within(nats, user, from, limit, REPLY_TIMEOUT).await
}

/// [`read_log`], waiting at most `patience` for each reply.
async fn read_log_within(
    nats: &async_nats::Client,
    user: UserId,
    from: u64,
    limit: usize,
    patience: Duration,
) -> Result<Vec<Stored>, DeliveryError> {
    let inbox = nats.new_inbox();
    let mut replies = nats
        .subscribe(inbox.clone())
        .await
        .map_err(|e| DeliveryError::Nats(e.to_string()))?;
    let request = serde_json::json!({
        "seq": from.max(1),
        "next_by_subj": subjects::deliver(user),
        "batch": limit,
    });
    nats.publish_with_reply(
        format!("$JS.API.DIRECT.GET.{}", subjects::DELIVERY_STREAM),
        inbox,
        Bytes::from(request.to_string()),
    )
    .await
    .map_err(|e| DeliveryError::Nats(e.to_string()))?;

    let mut records = Vec::new();
    loop {
        let message = tokio::time::timeout(patience, replies.next())
            .await
            .map_err(|_| DeliveryError::Timeout)?
            .ok_or_else(|| DeliveryError::Nats("reply subscription closed".into()))?;
        match message.status.map(|s| s.as_u16()) {
            None => {
                let seq = message
                    .headers
                    .as_ref()
                    .and_then(|h| header_u64(h, "Nats-Sequence"))
                    .ok_or_else(|| {
                        DeliveryError::Protocol("record without Nats-Sequence".into())
                    })?;
                records.push(Stored::new(
                    seq,
                    None,
                    message.headers.as_ref(),
                    message.payload,
                ));
                if records.len() >= limit {
                    break;
                }
            }
            // 204: end of batch; 404: nothing at or after `from`.
            Some(204) | Some(404) => break,
            Some(other) => {
                return Err(DeliveryError::Protocol(format!(
                    "status {other} {}",
                    message.description.unwrap_or_default()
                )));
            }
        }
    }
    let _ = replies.unsubscribe().await;
    Ok(records)
}

/// The `DELIVERY` stream, as sessions read it.
#[derive(Clone)]
pub struct DeliveryLog {
    /// The connections reads go out on, taken in turn: the server answers
    /// each connection's direct gets one after another, in its read loop.
    readers: Arc<[async_nats::Client]>,
    next_reader: Arc<std::sync::atomic::AtomicUsize>,
    stream: jetstream::stream::Stream,
    /// The stream's bounds as last asked, and when that question was sent;
    /// held while a question is out, so sessions that connect meanwhile
    /// share the next answer.
    bounds: Arc<tokio::sync::Mutex<Option<Bounds>>>,
}

/// One question about the stream's bounds: when it was sent, and its answer
/// (a failure too, so the sessions that waited on it fail together rather
/// than each asking again in turn).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Bounds {
    asked: Instant,
    answer: Result<(u64, u64), String>,
    /// The last answer that was not a failure.
    last_known: Option<(u64, u64)>,
}

impl Bounds {
    /// The answer, if the question was sent no earlier than `since`.
    fn as_of(cached: Option<&Bounds>, since: Instant) -> Option<Result<(u64, u64), String>> {
        cached
            .filter(|bounds| bounds.asked >= since)
            .map(|bounds| bounds.answer.clone())
    }
}

impl DeliveryLog {
    /// Reads go out on `readers` in turn (at least one).
    pub fn new(readers: Vec<async_nats::Client>, stream: jetstream::stream::Stream) -> Self {
        Self {
            readers: readers.into(),
            next_reader: Arc::default(),
            stream,
            bounds: Arc::default(),
        }
    }

    /// The first and last sequence the stream holds, as of a question sent
    /// after this call began. Every connecting session needs them (is its
    /// cursor still in the log? where does a new device start?): the
    /// sessions that connect while one question is out share the next, so a
    /// reconnection storm of thousands asks the stream a few times, not
    /// once per socket.
    pub async fn bounds(&self) -> Result<(u64, u64), DeliveryError> {
        let since = Instant::now();
        let mut cached = self.bounds.lock().await;
        let answer = match Bounds::as_of(cached.as_ref(), since) {
            Some(answer) => answer,
            None => {
                let asked = Instant::now();
                let mut answer = self
                    .info()
                    .await
                    .map(|info| (info.state.first_sequence, info.state.last_sequence))
                    .map_err(|e| e.to_string());
                let last_known = answer
                    .clone()
                    .ok()
                    .or_else(|| cached.as_ref().and_then(|bounds| bounds.last_known));
                if let (Err(e), Some(known)) = (&answer, last_known) {
                    // An overloaded stream answers its API late: closing every
                    // connecting session over it would bring them all back
                    // to ask again. Earlier bounds are safe to use: the first
                    // sequence only grows, so a cursor they say fell off the
                    // log did; a new device starts a little early.
                    tracing::debug!(error = %e, "stream bounds not answered; using the last known");
                    answer = Ok(known);
                }
                *cached = Some(Bounds {
                    asked,
                    answer: answer.clone(),
                    last_known,
                });
                answer
            }
        };
        answer.map_err(|e| DeliveryError::Nats(format!("stream info: {e}")))
    }

    /// The name of the stream's leader, as the leader itself answers (none
    /// on a server without clustering).
    pub async fn leader(&self) -> Result<Option<String>, DeliveryError> {
        let info = self.info().await?;
        Ok(info.cluster.and_then(|cluster| cluster.leader))
    }

    async fn info(&self) -> Result<jetstream::stream::Info, DeliveryError> {
        self.stream
            .get_info()
            .await
            .map_err(|e| DeliveryError::Nats(e.to_string()))
    }

    /// Up to `limit` of `user`'s records with sequence ≥ `from`, in order.
    pub async fn read(
        &self,
        user: UserId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, DeliveryError> {
        let mut attempt = 1;
        loop {
            let patience = REPLY_TIMEOUT * attempt as u32;
            let turn = self
                .next_reader
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(nats) = self.readers.get(turn % self.readers.len().max(1)) else {
                return Err(DeliveryError::Nats("no connection to read on".into()));
            };
            match read_log_within(nats, user, from, limit, patience).await {
                Err(DeliveryError::Timeout) if attempt < READ_ATTEMPTS => {
                    tracing::debug!(%user, attempt, "delivery log read timed out; asking again");
                    attempt += 1;
                }
                read => return read,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_serves_only_those_who_asked_before_its_question_went_out() {
        let t0 = Instant::now();
        let cached = Bounds {
            asked: t0 + Duration::from_millis(5),
            answer: Ok((3, 90)),
            last_known: Some((3, 90)),
        };
        assert_eq!(Bounds::as_of(Some(&cached), t0), Some(Ok((3, 90))));
        let at_send = t0 + Duration::from_millis(5);
        assert_eq!(Bounds::as_of(Some(&cached), at_send), Some(Ok((3, 90))));
        assert_eq!(
            Bounds::as_of(Some(&cached), at_send + Duration::from_millis(1)),
            None
        );
        assert_eq!(Bounds::as_of(None, t0), None);
        // A failure is shared the same way.
        let failed = Bounds {
            asked: at_send,
            answer: Err("timed out".into()),
            last_known: None,
        };
        assert_eq!(
            Bounds::as_of(Some(&failed), t0),
            Some(Err("timed out".into()))
        );
    }
}
