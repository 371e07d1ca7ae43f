//! Replay of a user's delivery log: a user's records from a sequence on,
//! read with JetStream direct gets and no consumer created.
//!
//! Each record names the one of its user's before it
//! ([`natter_core::delivery::PREVIOUS_HEADER`], checked by the stream when
//! the persister stored it), so a replay walks back from the user's newest
//! record, one direct get by sequence per record: its cost is the records
//! read, whatever else the stream holds. A chain longer than one read, or
//! broken (a record stored before the chain existed), is read the other way:
//! one batched direct get by subject, which the server answers by scanning
//! the stream from the given sequence, in the asking connection's read
//! loop. A reconnection storm of thousands of devices, each scanning the
//! range it missed, held every other request of that connection behind it.

use super::record::{DeliveryError, Stored, header_u64};
use async_nats::{StatusCode, jetstream};
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
    /// The bounds `answer` gives to a question sent at `asked`, after the
    /// `previous` ones. An overloaded stream answers its API late: closing
    /// every connecting session over it would bring them all back to ask
    /// again, so a failure is answered with the last bounds known, if any.
    /// They are safe to use: the first sequence only grows, so a cursor
    /// they say fell off the log did; a new device starts a little early.
    fn answered(
        asked: Instant,
        answer: Result<(u64, u64), String>,
        previous: Option<&Bounds>,
    ) -> Bounds {
        let last_known = answer
            .clone()
            .ok()
            .or_else(|| previous.and_then(|bounds| bounds.last_known));
        let answer = match (answer, last_known) {
            (Err(e), Some(known)) => {
                tracing::debug!(error = %e, "stream bounds not answered; using the last known");
                Ok(known)
            }
            (answer, _) => answer,
        };
        Bounds {
            asked,
            answer,
            last_known,
        }
    }

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
                let answer = self
                    .info()
                    .await
                    .map(|info| (info.state.first_sequence, info.state.last_sequence))
                    .map_err(|e| e.to_string());
                let bounds = Bounds::answered(asked, answer, cached.as_ref());
                let answer = bounds.answer.clone();
                *cached = Some(bounds);
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

    /// Up to `limit` of `user`'s records with sequence ≥ `from`, in order:
    /// walked back from the newest when there are at most `limit`, else
    /// scanned for.
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
            let read = match walk(nats, user, from, limit, patience).await {
                Ok(Some(records)) => {
                    crate::metrics::log_read("walk");
                    Ok(records)
                }
                Ok(None) => {
                    crate::metrics::log_read("scan");
                    read_log_within(nats, user, from, limit, patience).await
                }
                Err(e) => Err(e),
            };
            match read {
                Err(DeliveryError::Timeout) if attempt < READ_ATTEMPTS => {
                    tracing::debug!(%user, attempt, "delivery log read timed out; asking again");
                    attempt += 1;
                }
                read => return read,
            }
        }
    }
}

/// `user`'s records with sequence ≥ `from`, in order, read by walking back
/// from the newest along each record's previous one; `None` when there
/// are more than `limit` of them or the chain is broken (a record without
/// its previous one named, or one not found where named), so they must be
/// scanned for.
async fn walk(
    nats: &async_nats::Client,
    user: UserId,
    from: u64,
    limit: usize,
    patience: Duration,
) -> Result<Option<Vec<Stored>>, DeliveryError> {
    let subject = subjects::deliver(user);
    let newest = get(nats, Get::LastOf(&subject), patience).await?;
    let Some((mut record, _)) = newest else {
        return Ok(Some(Vec::new()));
    };
    let mut newest_first = Vec::new();
    while record.seq >= from {
        let previous = record.last_seq;
        newest_first.push(record);
        let previous = match previous {
            Some(previous) if previous < from => break,
            Some(previous) if newest_first.len() < limit => previous,
            _ => return Ok(None),
        };
        match get(nats, Get::Seq(previous), patience).await? {
            Some((found, of)) if found.seq == previous && of == subject => record = found,
            _ => return Ok(None),
        }
    }
    newest_first.reverse();
    Ok(Some(newest_first))
}

/// Which one record a direct get asks for.
enum Get<'a> {
    /// The newest on this subject.
    LastOf(&'a str),
    /// The one at this sequence.
    Seq(u64),
}

/// One direct get from `DELIVERY`: the record and its subject, `None` if
/// there is none.
async fn get(
    nats: &async_nats::Client,
    which: Get<'_>,
    patience: Duration,
) -> Result<Option<(Stored, String)>, DeliveryError> {
    let api = format!("$JS.API.DIRECT.GET.{}", subjects::DELIVERY_STREAM);
    let (api, payload) = match which {
        Get::LastOf(subject) => (format!("{api}.{subject}"), Bytes::new()),
        Get::Seq(seq) => (api, Bytes::from(format!(r#"{{"seq":{seq}}}"#))),
    };
    let request = async_nats::Request::new()
        .payload(payload)
        .timeout(Some(patience));
    let reply = nats
        .send_request(api, request)
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::TimedOut => DeliveryError::Timeout,
            _ => DeliveryError::Nats(e.to_string()),
        })?;
    match reply.status {
        None => {}
        Some(StatusCode::NOT_FOUND) => return Ok(None),
        Some(other) => {
            return Err(DeliveryError::Protocol(format!(
                "status {other} {}",
                reply.description.unwrap_or_default()
            )));
        }
    }
    let headers = reply.headers.as_ref();
    let seq = headers.and_then(|h| header_u64(h, "Nats-Sequence"));
    let subject = headers
        .and_then(|h| h.get("Nats-Subject"))
        .map(|v| v.to_string());
    let (Some(seq), Some(subject)) = (seq, subject) else {
        return Err(DeliveryError::Protocol(
            "record without Nats-Sequence".into(),
        ));
    };
    let record = Stored::new(seq, None, headers, reply.payload);
    Ok(Some((record, subject)))
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

    #[test]
    fn a_question_not_answered_is_answered_with_the_last_bounds_known() {
        let t0 = Instant::now();
        let first = Bounds::answered(t0, Err("timed out".into()), None);
        assert_eq!(first.answer, Err("timed out".into()), "nothing known yet");
        let known = Bounds::answered(t0, Ok((3, 90)), Some(&first));
        assert_eq!(known.answer, Ok((3, 90)));
        let late = Bounds::answered(t0, Err("timed out".into()), Some(&known));
        assert_eq!(late.answer, Ok((3, 90)), "the last bounds known stand in");
        let later = Bounds::answered(t0, Err("timed out".into()), Some(&late));
        assert_eq!(later.answer, Ok((3, 90)), "and keep standing in");
        let fresh = Bounds::answered(t0, Ok((5, 120)), Some(&later));
        assert_eq!(
            (fresh.answer, fresh.last_known),
            (Ok((5, 120)), Some((5, 120)))
        );
    }
}
