//! Publishing delivery records to every recipient's `deliver.<user>`, in
//! the order given, with a `Nats-Msg-Id` that makes a repeated fan-out a
//! no-op.
//!
//! Each event is serialised once into a [`Copy`] per recipient, at most a
//! window of acks is outstanding, and each record carries its message's
//! `traceparent` and acceptance time in headers. A record no retry can
//! store (too large, unencodable) is set apart in
//! [`Published::undeliverable`] and the rest flow on; any other failure is
//! transient and fails the whole fan-out, to be retried.

use crate::projection::Fanout;
use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishError, PublishErrorKind},
    message::PublishMessage,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use natter_core::delivery::{ACCEPTED_AT_HEADER, CONTENT_OF_HEADER, MAX_RECORD_BYTES};
use natter_core::{DeliveryEvent, UserId, subjects};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Where a `CHAT` record came from: the trace its delivery continues and
/// when it was accepted.
#[derive(Clone, Debug)]
pub struct Provenance {
    pub traceparent: Option<String>,
    pub accepted_at: DateTime<Utc>,
    /// The record's span in the persister, for its log lines.
    pub span: tracing::Span,
}

/// A failure worth retrying: JetStream did not answer, had no leader, or
/// the connection dropped.
#[derive(Debug, thiserror::Error)]
#[error("publishing a delivery record failed: {0}")]
pub struct FanoutError(#[from] PublishError);

/// What a fan-out stored, and the `CHAT` records whose delivery records
/// could not be stored by any retry, with why (by `CHAT` sequence).
#[derive(Debug, Default)]
pub struct Published {
    pub records: usize,
    pub undeliverable: BTreeMap<u64, String>,
}

/// Whether retrying `error` cannot help: the record itself is refused as
/// too large, by the client before sending or by the stream after. Told by
/// the error's kind and JetStream's error code, never its text.
pub fn is_permanent(error: &PublishError) -> bool {
    match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => true,
        PublishErrorKind::Other => std::error::Error::source(error)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|e| {
                e.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
            }),
        _ => false,
    }
}

/// A record at least this large, whose copies together reach the large
/// fan-out size, is stored by reference: its message's content stays in
/// PostgreSQL and the gateway fills it in. Smaller records are not worth the
/// gateway's lookup.
pub const BY_REFERENCE_MIN_BYTES: usize = 1024;

/// A fan-out's record, encoded, or why it never will be.
fn encode(event: &DeliveryEvent) -> Result<Bytes, String> {
    let payload =
        serde_json::to_vec(event).map_err(|e| format!("cannot encode the delivery record: {e}"))?;
    if payload.len() > MAX_RECORD_BYTES {
        return Err(format!(
            "the delivery record is {} bytes; the limit is {MAX_RECORD_BYTES}",
            payload.len()
        ));
    }
    Ok(Bytes::from(payload))
}

/// One delivery record for one recipient, ready to publish.
#[derive(Clone, Debug)]
pub struct Copy {
    pub chat_seq: u64,
    pub recipient: UserId,
    /// Shared by every copy of one record.
    pub payload: Bytes,
    message_id: String,
    /// Headers shared by every copy of one record.
    traceparent: Option<Arc<str>>,
    accepted_at: Option<Arc<str>>,
    /// The message whose content the gateway fills in, for a record stored
    /// by reference.
    content_of: Option<Arc<str>>,
    /// The record's size as sockets get it, content filled in: what the
    /// copy costs its recipient's gateway, and so what the lane paces.
    delivered: usize,
}

impl Copy {
    /// A test copy: `bytes` of payload for `recipient`.
    #[cfg(test)]
    pub fn for_test(chat_seq: u64, recipient: UserId, bytes: usize) -> Self {
        Self {
            chat_seq,
            recipient,
            payload: Bytes::from(vec![b' '; bytes]),
            message_id: format!("{chat_seq}.{recipient}"),
            traceparent: None,
            accepted_at: None,
            content_of: None,
            delivered: bytes,
        }
    }

    /// The record's size as its recipient gets it, content filled in.
    pub fn weight(&self) -> usize {
        self.delivered
    }
}

/// Every recipient's copy of `fanout`'s record, or why it has none. A
/// message record whose copies together reach `large` bytes is stored by
/// reference, once it is big enough for that to pay.
pub fn copies(
    fanout: &Fanout,
    provenance: &HashMap<u64, Provenance>,
    large: usize,
) -> Result<Vec<Copy>, String> {
    let mut payload = encode(&fanout.event)?;
    let delivered = payload.len();
    let mut content_of = None;
    if payload.len() >= BY_REFERENCE_MIN_BYTES
        && payload.len().saturating_mul(fanout.recipients.len()) >= large
        && let Some((id, bare)) = fanout.event.without_content()
    {
        payload = encode(&bare)?;
        content_of = Some(Arc::from(id.to_string()));
    }
    let origin = provenance.get(&fanout.chat_seq);
    let accepted_at: Option<Arc<str>> =
        origin.map(|o| o.accepted_at.timestamp_micros().to_string().into());
    let traceparent: Option<Arc<str>> =
        origin.and_then(|o| o.traceparent.as_deref().map(Arc::from));
    Ok(fanout
        .recipients
        .iter()
        .map(|recipient| Copy {
            chat_seq: fanout.chat_seq,
            recipient: *recipient,
            payload: payload.clone(),
            message_id: fanout.message_id(*recipient),
            traceparent: traceparent.clone(),
            accepted_at: accepted_at.clone(),
            content_of: content_of.clone(),
            delivered,
        })
        .collect())
}

/// Publishes every copy, in order, and waits until JetStream stored all of
/// them. At most `window` acks are outstanding: the context admits only so
/// many (`NATS_PUBLISH_WINDOW`, of which this is the persister's only
/// user), and a publish that waited for room while the acks holding it
/// went unpolled would wait forever.
pub async fn publish(
    js: &jetstream::Context,
    window: usize,
    copies: &[Copy],
) -> Result<Published, FanoutError> {
    let window = window.max(1);
    let mut acks = FuturesUnordered::new();
    let mut published = Published::default();
    for copy in copies {
        if published.undeliverable.contains_key(&copy.chat_seq) {
            continue;
        }
        let mut message = PublishMessage::build()
            .payload(copy.payload.clone())
            .message_id(copy.message_id.as_str());
        if let Some(traceparent) = &copy.traceparent {
            message = message.header(natter_runtime::trace::TRACEPARENT, &**traceparent);
        }
        if let Some(accepted_at) = &copy.accepted_at {
            message = message.header(ACCEPTED_AT_HEADER, &**accepted_at);
        }
        if let Some(id) = &copy.content_of {
            message = message.header(CONTENT_OF_HEADER, &**id);
        }
        while acks.len() >= window {
            if let Some((seq, ack)) = acks.next().await {
                settle(&mut published, seq, ack)?;
            }
        }
        let ack: PublishAckFuture = match js
            .send_publish(subjects::deliver(copy.recipient), message)
            .await
        {
            Ok(ack) => ack,
            Err(e) if is_permanent(&e) => {
                published.undeliverable.insert(copy.chat_seq, e.to_string());
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let seq = copy.chat_seq;
        acks.push(async move { (seq, ack.await) });
    }
    while let Some((seq, ack)) = acks.next().await {
        settle(&mut published, seq, ack)?;
    }
    Ok(published)
}

/// Counts a stored record, sets apart a refused one, fails on anything else.
fn settle(
    published: &mut Published,
    chat_seq: u64,
    ack: Result<jetstream::publish::PublishAck, PublishError>,
) -> Result<(), FanoutError> {
    match ack {
        Ok(_) => published.records += 1,
        Err(e) if is_permanent(&e) => {
            published.undeliverable.insert(chat_seq, e.to_string());
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_error(code: u64) -> PublishError {
        let error: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": 400, "err_code": code, "description": "refused"
        }))
        .unwrap();
        PublishError::with_source(PublishErrorKind::Other, error)
    }

    /// A group message of `content_bytes` to `members` recipients.
    fn group_message(content_bytes: usize, members: usize) -> Fanout {
        let sender = UserId::generate();
        let message = natter_core::Message {
            id: natter_core::MessageId::for_send(sender, None),
            conversation_id: natter_core::ConversationId(uuid::Uuid::now_v7()),
            seq: 7,
            sender_id: sender,
            sender_name: "sender".into(),
            receiver_id: None,
            group_id: Some(natter_core::GroupId::generate()),
            content: "x".repeat(content_bytes),
            client_msg_id: None,
            created_at: Utc::now(),
        };
        Fanout {
            chat_seq: 7,
            dedupe: crate::projection::Dedupe::Message(message.id),
            event: DeliveryEvent::ReceiveGroupMessage { message },
            recipients: (0..members).map(|_| UserId::generate()).collect(),
        }
    }

    #[test]
    fn a_big_fan_out_is_stored_by_reference_and_weighs_what_it_delivers() {
        let large = 100_000;
        let big = copies(&group_message(4_000, 30), &HashMap::new(), large).unwrap();
        assert_eq!(big.len(), 30);
        for copy in &big {
            assert!(copy.content_of.is_some());
            assert!(copy.payload.len() < 1024, "{} bytes", copy.payload.len());
            assert!(copy.weight() > 4_000);
        }
        // So the lane still paces it as the 120 KB it delivers.
        assert!(big.iter().map(Copy::weight).sum::<usize>() >= large);

        // Too few copies, or too small a record: stored whole.
        for (content, members) in [(4_000, 3), (500, 1000)] {
            let whole = copies(&group_message(content, members), &HashMap::new(), large).unwrap();
            assert!(whole.iter().all(|c| c.content_of.is_none()));
            assert!(whole.iter().all(|c| c.payload.len() == c.weight()));
            assert!(whole[0].payload.len() > content);
        }
    }

    #[test]
    fn a_record_too_large_is_permanent() {
        assert!(is_permanent(&PublishError::new(
            PublishErrorKind::MaxPayloadExceeded
        )));
        assert!(is_permanent(&stream_error(10054)));
    }

    #[test]
    fn timeouts_and_lost_leaders_are_retried() {
        for kind in [
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::MaxAckPending,
            PublishErrorKind::Other,
        ] {
            assert!(!is_permanent(&PublishError::new(kind)));
        }
        // "JetStream system temporarily unavailable" (no leader).
        assert!(!is_permanent(&stream_error(10008)));
    }
}
