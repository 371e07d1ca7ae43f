//! The session's rules, in-process: a fake backend, channels for the socket,
//! and the hub's inbox built by hand. No NATS, no PostgreSQL, no network.

use super::*;
use crate::delivery::{Closing, Inbox};
use bytes::Bytes;
use futures::channel::mpsc as socket;
use natter_core::{ConversationId, MessageId};
use serde_json::json;
use std::sync::Mutex;
use tokio::task::JoinHandle;

/// A user's delivery log, cursor and acks, held in memory.
#[derive(Default)]
pub(super) struct Fake {
    cursor: Mutex<Option<u64>>,
    /// The user's records, in sequence order.
    log: Mutex<Vec<Stored>>,
    /// The stream's first sequence (records before it have expired).
    first: Mutex<u64>,
    advanced: Mutex<Vec<u64>>,
    /// Confirmations are held until a test releases them.
    confirmations: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
}

impl Fake {
    pub(super) fn with_log(cursor: Option<u64>, seqs: &[u64]) -> Arc<Self> {
        let fake = Self::default();
        *fake.cursor.lock().unwrap() = cursor;
        *fake.first.lock().unwrap() = 1;
        fake.append(seqs);
        Arc::new(fake)
    }

    fn append(&self, seqs: &[u64]) {
        let mut log = self.log.lock().unwrap();
        for &seq in seqs {
            let last = log.last().map_or(0, |r| r.seq);
            log.push(record(seq, Some(last)));
        }
    }

    fn advanced(&self) -> Vec<u64> {
        self.advanced.lock().unwrap().clone()
    }
}

fn record(seq: u64, last_seq: Option<u64>) -> Stored {
    let payload = json!({"event": "receive_direct_message", "data": {"message": {"seq": seq}}});
    Stored::new(seq, last_seq, None, Bytes::from(payload.to_string()))
}

/// A record stored by reference: a group message without its content.
fn by_reference(seq: u64, last_seq: u64) -> Stored {
    let sender = UserId::generate();
    let message = Message {
        id: MessageId::for_send(sender, None),
        conversation_id: ConversationId(uuid::Uuid::now_v7()),
        seq,
        sender_id: sender,
        sender_name: "sender".into(),
        receiver_id: None,
        group_id: Some(natter_core::GroupId::generate()),
        content: String::new(),
        client_msg_id: None,
        created_at: chrono::Utc::now(),
    };
    Stored {
        content_of: Some(message.id),
        payload: Bytes::from(
            serde_json::to_vec(&natter_core::DeliveryEvent::ReceiveGroupMessage { message })
                .unwrap(),
        ),
        ..record(seq, Some(last_seq))
    }
}

impl Backend for Fake {
    async fn cursor(&self, _: UserId, _: &DeviceId) -> Result<Option<u64>, Unavailable> {
        Ok(*self.cursor.lock().unwrap())
    }

    async fn register(&self, _: UserId, _: &DeviceId, seq: u64) -> Result<u64, Unavailable> {
        *self.cursor.lock().unwrap() = Some(seq);
        Ok(seq)
    }

    fn advance(&self, _: UserId, _: &DeviceId, seq: u64) {
        self.advanced.lock().unwrap().push(seq);
    }

    async fn log_bounds(&self) -> Result<(u64, u64), Unavailable> {
        let last = self.log.lock().unwrap().last().map_or(0, |r| r.seq);
        Ok((*self.first.lock().unwrap(), last))
    }

    async fn read_log(
        &self,
        _: UserId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, Unavailable> {
        let log = self.log.lock().unwrap();
        Ok(log
            .iter()
            .filter(|r| r.seq >= from)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn fill_content(
        &self,
        _: MessageId,
        record: &Bytes,
    ) -> Result<Option<Bytes>, Unavailable> {
        Ok(natter_core::delivery::with_content(record, "filled in".into()).map(Bytes::from))
    }

    async fn submit(&self, sender: UserId, send: SendMessage) -> Result<Confirmation, ApiError> {
        let (release, released) = tokio::sync::oneshot::channel();
        self.confirmations.lock().unwrap().push(release);
        let message = Message {
            id: MessageId::for_send(sender, None),
            conversation_id: ConversationId(uuid::Uuid::now_v7()),
            seq: 1,
            sender_id: sender,
            sender_name: "sender".into(),
            receiver_id: match send.target {
                protocol::Target::Direct(receiver) => Some(receiver),
                protocol::Target::Group(_) => None,
            },
            group_id: None,
            content: send.content.into_string(),
            client_msg_id: None,
            created_at: chrono::Utc::now(),
        };
        Ok(Box::pin(async move {
            let _ = released.await;
            Ok(message)
        }))
    }

    async fn mark_read(
        &self,
        _: UserId,
        _: ConversationId,
        _: Option<u64>,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    async fn typing(&self, _: UserId, _: ConversationId) -> Result<(), ApiError> {
        Ok(())
    }
}

pub(super) fn limits() -> Limits {
    Limits {
        max_message_bytes: 1024,
        max_inflight: 8,
        ping_every: Duration::from_secs(3600),
        slow_reader: Duration::from_secs(10),
    }
}

/// The hub's side of a session: what a test pushes into it.
struct Hub {
    inbox: Arc<Inbox>,
}

impl Hub {
    fn push(&self, record: Stored) {
        let queued = self.inbox.offer(Push::Record(Arc::new(record)));
        assert!(queued, "the session's inbox is full");
    }
}

fn attachment(user: UserId) -> (Attachment, Hub) {
    let inbox = Arc::new(Inbox::new(16));
    let attachment = Attachment {
        inbox: inbox.clone(),
        user,
        session: 1,
    };
    (attachment, Hub { inbox })
}

/// A running session and the client's ends of its socket.
pub(super) struct Client {
    pub(super) to_server: socket::UnboundedSender<Result<WsMessage, axum::Error>>,
    from_server: socket::Receiver<WsMessage>,
    hub: Hub,
    shutdown: CancellationToken,
    pub(super) ended: JoinHandle<End>,
}

impl Client {
    /// Starts a session over a socket whose outgoing side holds `window` frames.
    pub(super) fn start(backend: Arc<Fake>, limits: Limits, window: usize) -> Self {
        Self::start_expiring(backend, limits, window, None)
    }

    /// [`Client::start`] for a token that expires at `expires`.
    fn start_expiring(
        backend: Arc<Fake>,
        limits: Limits,
        window: usize,
        expires: Option<tokio::time::Instant>,
    ) -> Self {
        let user = UserId::generate();
        let (to_server, mut incoming) = socket::unbounded();
        let (sink, from_server) = socket::channel(window);
        let (attachment, hub) = attachment(user);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let ended = tokio::spawn(async move {
            let mut session = Session::new(backend, user, DeviceId::default(), limits, sink);
            if let Some(at) = expires {
                session = session.expiring_at(at);
            }
            let end = session.serve(&mut incoming, attachment, &stop).await;
            session.close(end).await;
            end
        });
        Self {
            to_server,
            from_server,
            hub,
            shutdown,
            ended,
        }
    }

    pub(super) fn send(&self, frame: &str) {
        self.to_server
            .unbounded_send(Ok(WsMessage::Text(frame.to_owned().into())))
            .unwrap();
    }

    /// The next text frame the server wrote, as JSON.
    pub(super) async fn next(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), self.from_server.next())
                .await
                .expect("the server wrote a frame within 5 s")
                .expect("the socket is open");
            if let WsMessage::Text(text) = frame {
                return serde_json::from_str(text.as_str()).unwrap();
            }
        }
    }

    pub(super) async fn expect_event(&mut self, event: &str) -> Value {
        let frame = self.next().await;
        assert_eq!(frame["event"], event, "unexpected frame {frame}");
        frame
    }

    /// The cursors of the next `n` delivery frames.
    async fn cursors(&mut self, n: usize) -> Vec<u64> {
        let mut cursors = Vec::new();
        for _ in 0..n {
            let frame = self.expect_event("receive_direct_message").await;
            cursors.push(frame["cursor"].as_u64().unwrap());
        }
        cursors
    }

    /// A round trip: every frame written before the pong is read by then.
    async fn ping(&mut self, reference: &str) {
        self.send(&json!({"event": "ping", "ref": reference}).to_string());
        let pong = self.expect_event("pong").await;
        assert_eq!(pong["ref"], reference);
    }

    pub(super) async fn stop(self) -> End {
        self.shutdown.cancel();
        self.ended.await.unwrap()
    }
}

#[tokio::test]
async fn a_bad_frame_gets_an_error_and_keeps_the_connection() {
    let mut client = Client::start(Fake::with_log(Some(0), &[]), limits(), 64);
    client.expect_event("ready").await;
    for bad in [
        "not json",
        "[1, 2]",
        r#"{"data": {}}"#,
        r#"{"event": "no_such_event", "ref": "r1"}"#,
        r#"{"event": "send_direct_message", "data": {"receiverId": "fake-user-id-12345", "content": "x"}}"#,
        r#"{"event": "ack", "data": {"cursor": "soon"}}"#,
    ] {
        client.send(bad);
        let error = client.expect_event("error").await;
        assert_eq!(error["data"]["code"], "bad_request", "for {bad}");
    }
    client
        .to_server
        .unbounded_send(Ok(WsMessage::Binary(Bytes::from_static(b"\x00\x01"))))
        .unwrap();
    assert_eq!(
        client.expect_event("error").await["data"]["code"],
        "bad_request"
    );
    let oversized = "x".repeat(2000);
    let receiver = UserId::generate();
    client.send(
        &json!({"event": "send_direct_message", "ref": "big",
            "data": {"receiverId": receiver, "content": oversized}})
        .to_string(),
    );
    let error = client.expect_event("error").await;
    assert_eq!(error["data"]["code"], "payload_too_large");
    assert_eq!(error["ref"], "big");
    client.ping("still-open").await;
    assert!(!client.ended.is_finished());
    assert_eq!(
        client.stop().await,
        End::Close(close_code::AWAY, "server shutting down")
    );
}

#[tokio::test]
async fn acks_are_cumulative_and_never_beyond_what_was_delivered() {
    let backend = Fake::with_log(Some(0), &[1, 2, 3]);
    let mut client = Client::start(backend.clone(), limits(), 64);
    assert_eq!(client.expect_event("ready").await["data"]["cursor"], 0);
    assert_eq!(client.cursors(3).await, [1, 2, 3]);

    client.send(r#"{"event": "ack", "data": {"cursor": 4}, "ref": "ahead"}"#);
    let error = client.expect_event("error").await;
    assert_eq!(error["data"]["code"], "bad_request");
    assert_eq!(error["ref"], "ahead");
    client.send(r#"{"event": "ack", "data": {"cursor": 2}}"#);
    client.send(r#"{"event": "ack", "data": {"cursor": 3}}"#);
    client.ping("acks-applied").await;
    assert_eq!(
        backend.advanced(),
        [2, 3],
        "the ack beyond 3 must not count"
    );

    // One more record delivered live makes one more ack valid.
    backend.append(&[9]);
    client.hub.push(record(9, Some(3)));
    assert_eq!(client.cursors(1).await, [9]);
    client.send(r#"{"event": "ack", "data": {"cursor": 9}}"#);
    client.ping("live-ack").await;
    assert_eq!(backend.advanced(), [2, 3, 9]);
    client.stop().await;
}

#[tokio::test]
async fn replay_switches_to_live_without_a_gap_or_a_duplicate() {
    let backend = Fake::with_log(Some(1), &[1, 2, 3]);
    let mut client = Client::start(backend.clone(), limits(), 64);
    // Published while the session replayed: already in the replay.
    client.hub.push(record(3, Some(2)));
    assert_eq!(client.expect_event("ready").await["data"]["cursor"], 1);
    assert_eq!(client.cursors(2).await, [2, 3]);

    // Live and contiguous: written as it comes.
    backend.append(&[5]);
    client.hub.push(record(5, Some(3)));
    assert_eq!(client.cursors(1).await, [5]);

    // 6 and 7 were stored but missed live: 8 reveals the gap, and the log fills it.
    backend.append(&[6, 7, 8]);
    client.hub.push(record(8, Some(7)));
    assert_eq!(client.cursors(3).await, [6, 7, 8]);
    // A late copy of something already written is dropped.
    client.hub.push(record(7, Some(6)));

    // A lagging session (its queue overflowed) catches up from the log.
    backend.append(&[10, 11]);
    client.hub.inbox.lag();
    assert_eq!(client.cursors(2).await, [10, 11]);
    client.ping("nothing-else").await;
    client.stop().await;
}

#[tokio::test]
async fn a_record_stored_by_reference_goes_out_with_its_content() {
    let backend = Fake::with_log(Some(0), &[]);
    {
        let mut log = backend.log.lock().unwrap();
        log.push(by_reference(1, 0));
        // Its content cannot be filled in: skipped, never sent bare.
        log.push(Stored {
            content_of: Some(MessageId::for_send(UserId::generate(), None)),
            ..record(2, Some(1))
        });
        log.push(record(3, Some(2)));
    }
    let mut client = Client::start(backend.clone(), limits(), 64);
    client.expect_event("ready").await;
    let filled = client.expect_event("receive_group_message").await;
    assert_eq!(filled["cursor"], 1);
    assert_eq!(filled["data"]["message"]["content"], "filled in");
    assert_eq!(client.cursors(1).await, [3]);

    backend.log.lock().unwrap().push(by_reference(4, 3));
    client.hub.push(by_reference(4, 3));
    let live = client.expect_event("receive_group_message").await;
    assert_eq!(live["cursor"], 4);
    assert_eq!(live["data"]["message"]["content"], "filled in");
    client.stop().await;
}

#[tokio::test]
async fn a_cursor_older_than_the_log_is_told_to_resync_then_replays_what_is_left() {
    let backend = Fake::with_log(Some(2), &[10, 11]);
    *backend.first.lock().unwrap() = 10;
    let mut client = Client::start(backend, limits(), 64);
    client.expect_event("ready").await;
    client.expect_event("resync_required").await;
    assert_eq!(client.cursors(2).await, [10, 11]);
    client.stop().await;
}

#[tokio::test]
async fn a_new_device_starts_at_the_end_of_the_log() {
    let backend = Fake::with_log(None, &[1, 2, 3]);
    let mut client = Client::start(backend.clone(), limits(), 64);
    assert_eq!(client.expect_event("ready").await["data"]["cursor"], 3);
    client.ping("no-replay").await;
    assert_eq!(*backend.cursor.lock().unwrap(), Some(3));
    client.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_is_closed() {
    let backend = Fake::with_log(Some(0), &(1..=20).collect::<Vec<_>>());
    // The client reads nothing, and its socket holds only a few frames.
    let client = Client::start(backend, limits(), 2);
    let end = tokio::time::timeout(Duration::from_secs(60), client.ended)
        .await
        .expect("the session ended on its own")
        .unwrap();
    assert_eq!(end, End::Close(close_code::POLICY, "slow reader"));
}

#[tokio::test]
async fn confirmations_keep_the_order_of_their_sends_and_outlive_a_close() {
    let backend = Fake::with_log(Some(0), &[]);
    let mut client = Client::start(backend.clone(), limits(), 64);
    client.expect_event("ready").await;
    let receiver = UserId::generate();
    for reference in ["first", "second"] {
        client.send(
            &json!({"event": "send_direct_message", "ref": reference,
                "data": {"receiverId": receiver, "content": reference}})
            .to_string(),
        );
    }
    client.ping("sent").await;
    // The hub closes the session (a revoked token) while both are in flight.
    client.hub.inbox.close(Closing {
        code: 1008,
        reason: "token revoked",
    });
    let releases: Vec<_> = std::mem::take(&mut *backend.confirmations.lock().unwrap());
    assert_eq!(releases.len(), 2);
    for release in releases.into_iter().rev() {
        release.send(()).unwrap();
    }
    assert_eq!(client.expect_event("message_sent").await["ref"], "first");
    assert_eq!(client.expect_event("message_sent").await["ref"], "second");
    let end = client.ended.await.unwrap();
    assert_eq!(end, End::Close(1008, "token revoked"));
}

#[tokio::test(start_paused = true)]
async fn a_session_closes_when_its_token_expires() {
    let expires = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut client =
        Client::start_expiring(Fake::with_log(Some(0), &[]), limits(), 64, Some(expires));
    client.expect_event("ready").await;
    client.ping("before").await;
    let end = tokio::time::timeout(Duration::from_secs(120), client.ended)
        .await
        .expect("the session ended at expiry")
        .unwrap();
    assert_eq!(end, End::Close(close_code::POLICY, "token expired"));
    assert!(tokio::time::Instant::now() >= expires);
}

/// Log lines written while a test runs, on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn refused_frames_are_logged_once_per_interval_without_their_content() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut client = Client::start(Fake::with_log(Some(0), &[]), limits(), 256);
    client.expect_event("ready").await;
    for i in 0..50 {
        client.send(&format!(
            r#"{{"event": "secret-payload-{i}", "data": {{}}}}"#
        ));
        client.send("not json: secret-payload");
    }
    for _ in 0..100 {
        client.expect_event("error").await;
    }
    client.ping("logged").await;
    client.stop().await;
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let refusals = logs.lines().filter(|l| l.contains("frame refused")).count();
    assert_eq!(refusals, 1, "{logs}");
    assert!(
        !logs.contains("secret-payload"),
        "a refused frame's content was logged:\n{logs}"
    );
    assert!(logs.contains("bytes="), "{logs}");
}
