//! Publishing delivery records to every recipient's `deliver.<user>`, each
//! recipient's in the order given, with a `Nats-Msg-Id` that makes a
//! repeated fan-out a no-op.
//!
//! Each event is serialised once into a [`Copy`] per recipient. A
//! recipient's copies are sent one at a time, different recipients' in
//! parallel, at most a window of acks outstanding; each record carries its message's
//! `traceparent` and acceptance time in headers. A record no retry can
//! store (too large, unencodable) is set apart in
//! [`Published::undeliverable`] and the rest flow on; any other failure is
//! transient and fails the whole fan-out, to be retried.

use crate::faults::FaultHooks;
use crate::projection::Fanout;
use crate::tails::{TailError, Tails};
use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishError, PublishErrorKind},
    message::PublishMessage,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use natter_core::delivery::{
    ACCEPTED_AT_HEADER, CONTENT_OF_HEADER, MAX_RECORD_BYTES, PREVIOUS_HEADER,
};
use natter_core::{DeliveryEvent, UserId, subjects};
use natter_runtime::trace::Trace;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// Where a `CHAT` record came from: the trace its delivery continues and
/// when it was accepted.
#[derive(Clone, Debug)]
pub struct Provenance {
    pub traceparent: Option<String>,
    pub accepted_at: DateTime<Utc>,
    /// The record's part of its trace in the persister, for its log lines.
    pub trace: Trace,
}

/// A failure worth retrying: JetStream did not answer, had no leader, or
/// the connection dropped.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("publishing a delivery record failed: {0}")]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Tail(#[from] TailError),
}

/// Times one copy is sent again after the stream refused its user's tail
/// (each time asked again) before the fan-out fails and is retried whole.
const TAIL_ATTEMPTS: u32 = 4;

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
        PublishErrorKind::Other => {
            natter_runtime::jetstream::publish_error_code(error)
                == Some(jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
        }
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

    /// A test copy stored by reference: `bytes` of payload that deliver
    /// `delivered`.
    #[cfg(test)]
    pub fn for_test_by_reference(
        chat_seq: u64,
        recipient: UserId,
        bytes: usize,
        delivered: usize,
    ) -> Self {
        Self {
            content_of: Some(Arc::from("message")),
            delivered,
            ..Self::for_test(chat_seq, recipient, bytes)
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

/// Publishes every copy and waits until JetStream stored all of them. Each
/// recipient's copies go in the order given, one at a time: the next is
/// sent only once the one before it is stored. Copies for different
/// recipients are pipelined, at most `window` acks outstanding: the context
/// admits only so many (`NATS_PUBLISH_WINDOW`, of which this is the
/// persister's only user), and a publish that waited for room while the
/// acks holding it went unpolled would wait forever.
///
/// One at a time per recipient is what keeps a log in `CHAT` order across
/// a failure: when a publish is lost (its stream's leader died under it),
/// nothing after it in that log was sent, so the retry stores it in its
/// place. Pipelined, the copies after it would have been stored first.
/// It is also what lets each copy name the one before it: the recipient's
/// tail is known when the next copy goes ([`crate::tails`]).
pub async fn publish(
    js: &jetstream::Context,
    window: usize,
    copies: &[Copy],
    tails: &mut Tails,
    hooks: &FaultHooks,
) -> Result<Published, FanoutError> {
    let window = window.max(1);
    tails
        .learn_all(js, copies.iter().map(|c| c.recipient))
        .await?;
    let mut chains = Chains::of(copies);
    let mut acks = FuturesUnordered::new();
    let mut published = Published::default();
    let mut refusals: HashMap<UserId, u32> = HashMap::new();
    loop {
        while acks.len() < window
            && let Some((recipient, copy)) = chains.next_ready()
        {
            if published.undeliverable.contains_key(&copy.chat_seq) {
                chains.settled(recipient);
                continue;
            }
            // Known: learnt above, or set by the ack of the copy before.
            let previous = tails.get(recipient).unwrap_or_default();
            match send(js, copy, previous, hooks).await {
                Ok(ack) => {
                    acks.push(async move {
                        let stored = match ack {
                            Some(ack) => ack.await,
                            None => Err(PublishError::new(PublishErrorKind::TimedOut)),
                        };
                        (recipient, copy, stored)
                    });
                }
                Err(e) if is_permanent(&e) => {
                    published.undeliverable.insert(copy.chat_seq, e.to_string());
                    chains.settled(recipient);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let Some((recipient, copy, stored)) = acks.next().await else {
            return Ok(published);
        };
        match stored {
            Err(e) if refuses_tail(&e) => {
                // Another writer, expired records, or the stream still
                // storing the copy before: ask where the log ends, and
                // send this copy again.
                let refused = refusals.entry(recipient).or_default();
                *refused += 1;
                if *refused > TAIL_ATTEMPTS {
                    return Err(e.into());
                }
                tails.forget(recipient);
                tails.learn_all(js, [recipient]).await?;
                chains.again(recipient, copy);
            }
            stored => {
                if let Ok(ack) = &stored {
                    tails.stored(recipient, ack.sequence);
                    refusals.remove(&recipient);
                }
                settle(&mut published, copy.chat_seq, stored)?;
                chains.settled(recipient);
            }
        }
    }
}

/// Whether the stream refused a copy because its user's log does not end
/// where the copy says: JetStream's "wrong last sequence" (with the real
/// one, or without while the stream still stores the record before).
fn refuses_tail(error: &PublishError) -> bool {
    matches!(
        natter_runtime::jetstream::publish_error_code(error),
        Some(jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE)
            | Some(jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT)
    )
}

/// Sends one copy, claiming its recipient's log ends at `previous`; its ack
/// comes later. `None` for a copy a fault hook lost: it is not sent, and
/// its ack fails as a timeout.
async fn send(
    js: &jetstream::Context,
    copy: &Copy,
    previous: u64,
    hooks: &FaultHooks,
) -> Result<Option<PublishAckFuture>, PublishError> {
    if hooks.lose_publish(copy.chat_seq, copy.recipient) {
        return Ok(None);
    }
    let mut message = PublishMessage::build()
        .payload(copy.payload.clone())
        .message_id(copy.message_id.as_str())
        .header(PREVIOUS_HEADER, previous.to_string());
    if let Some(traceparent) = &copy.traceparent {
        message = message.header(natter_runtime::trace::TRACEPARENT, &**traceparent);
    }
    if let Some(accepted_at) = &copy.accepted_at {
        message = message.header(ACCEPTED_AT_HEADER, &**accepted_at);
    }
    if let Some(id) = &copy.content_of {
        message = message.header(CONTENT_OF_HEADER, &**id);
    }
    js.send_publish(subjects::deliver(copy.recipient), message)
        .await
        .map(Some)
}

/// Each recipient's copies in order, and which recipients may send their
/// next one (none of theirs in flight).
struct Chains<'a> {
    queues: HashMap<UserId, VecDeque<&'a Copy>>,
    ready: VecDeque<UserId>,
}

impl<'a> Chains<'a> {
    fn of(copies: &'a [Copy]) -> Self {
        let mut queues: HashMap<UserId, VecDeque<&'a Copy>> = HashMap::new();
        let mut ready = VecDeque::new();
        for copy in copies {
            let queue = queues.entry(copy.recipient).or_default();
            if queue.is_empty() {
                ready.push_back(copy.recipient);
            }
            queue.push_back(copy);
        }
        Self { queues, ready }
    }

    /// The next copy whose recipient has nothing in flight; it is in flight
    /// until [`Chains::settled`].
    fn next_ready(&mut self) -> Option<(UserId, &'a Copy)> {
        let recipient = self.ready.pop_front()?;
        let copy = self.queues.get_mut(&recipient)?.pop_front()?;
        Some((recipient, copy))
    }

    /// `recipient`'s copy in flight must be sent again, before the rest.
    fn again(&mut self, recipient: UserId, copy: &'a Copy) {
        self.queues.entry(recipient).or_default().push_front(copy);
        self.ready.push_back(recipient);
    }

    /// `recipient`'s copy in flight is done with: its next may go.
    fn settled(&mut self, recipient: UserId) {
        if self
            .queues
            .get(&recipient)
            .is_some_and(|queue| !queue.is_empty())
        {
            self.ready.push_back(recipient);
        }
    }
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
    fn each_recipients_copies_go_one_at_a_time_in_order() {
        let (ann, bob) = (UserId::generate(), UserId::generate());
        let copies: Vec<Copy> = [(1, ann), (1, bob), (2, ann), (3, ann), (3, bob)]
            .into_iter()
            .map(|(seq, to)| Copy::for_test(seq, to, 10))
            .collect();
        let mut chains = Chains::of(&copies);
        let sent = |c: Option<(UserId, &Copy)>| c.map(|(to, copy)| (copy.chat_seq, to));
        // Both recipients' first copies may fly together; nothing more until
        // one of them is stored.
        assert_eq!(sent(chains.next_ready()), Some((1, ann)));
        assert_eq!(sent(chains.next_ready()), Some((1, bob)));
        assert_eq!(sent(chains.next_ready()), None);
        chains.settled(bob);
        assert_eq!(sent(chains.next_ready()), Some((3, bob)));
        chains.settled(bob);
        assert_eq!(sent(chains.next_ready()), None, "ann's first is in flight");
        chains.settled(ann);
        assert_eq!(sent(chains.next_ready()), Some((2, ann)));
        chains.settled(ann);
        assert_eq!(sent(chains.next_ready()), Some((3, ann)));
        chains.settled(ann);
        assert_eq!(sent(chains.next_ready()), None);
    }

    #[test]
    fn a_refused_copy_goes_again_before_the_rest_of_its_recipients_chain() {
        let (ann, bob) = (UserId::generate(), UserId::generate());
        let copies: Vec<Copy> = [(1, ann), (2, ann), (1, bob)]
            .into_iter()
            .map(|(seq, to)| Copy::for_test(seq, to, 10))
            .collect();
        let mut chains = Chains::of(&copies);
        let (to, first) = chains.next_ready().unwrap();
        assert_eq!((first.chat_seq, to), (1, ann));
        assert_eq!(
            chains.next_ready().map(|(to, c)| (c.chat_seq, to)),
            Some((1, bob))
        );
        // The stream refused ann's copy (a wrong tail): it goes again, and
        // her second copy still waits for it.
        chains.again(ann, first);
        let sent = |c: Option<(UserId, &Copy)>| c.map(|(to, copy)| (copy.chat_seq, to));
        assert_eq!(sent(chains.next_ready()), Some((1, ann)));
        assert_eq!(sent(chains.next_ready()), None, "one of ann's at a time");
        chains.settled(ann);
        assert_eq!(sent(chains.next_ready()), Some((2, ann)));
        chains.settled(bob);
        chains.settled(ann);
        assert_eq!(sent(chains.next_ready()), None);
    }

    #[test]
    fn a_record_too_large_is_permanent() {
        assert!(is_permanent(&PublishError::new(
            PublishErrorKind::MaxPayloadExceeded
        )));
        assert!(is_permanent(&natter_runtime::jetstream::refused_publish(
            10054
        )));
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
        assert!(!is_permanent(&natter_runtime::jetstream::refused_publish(
            10008
        )));
    }
}
