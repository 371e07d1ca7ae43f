//! The persister against a real nats-server and PostgreSQL: dead letters,
//! rebuilding the projections from CHAT, and leader election.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use natter_persister::FaultHooks;
use natter_testkit::database::TestDatabase;
use natter_testkit::{TestApp, TestUser, WsClient};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The rows `query` reads from `dead_letters`, once there are any (or none
/// after 10 s).
async fn dead_letters_eventually<T>(pool: &PgPool, query: &'static str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    for _ in 0..200 {
        let dead: Vec<T> = sqlx::query_as(query).fetch_all(pool).await.unwrap();
        if !dead.is_empty() {
            return dead;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Vec::new()
}

async fn send_n(sender: &mut WsClient, receiver: &TestUser, prefix: &str, n: usize) -> String {
    let mut conversation = String::new();
    for i in 0..n {
        let reply = sender
            .send_direct(
                receiver.id,
                &format!("{prefix}{i}"),
                &format!("{prefix}-r{i}"),
            )
            .await;
        assert_eq!(reply["event"], "message_sent", "{reply}");
        conversation = reply["data"]["message"]["conversationId"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    conversation
}

#[tokio::test]
async fn an_unprojectable_record_is_dead_lettered_and_blocks_nothing() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut b = app.connect(&bob, "phone").await;
    let js = app.jetstream().await;
    let conversation = uuid::Uuid::now_v7();
    js.publish(format!("chat.msg.{conversation}"), "{not a record".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut a = app.connect(&alice, "a").await;
    send_n(&mut a, &bob, "m", 3).await;
    let received = b.receive_messages(3).await;
    assert_eq!(received[2]["data"]["message"]["content"], "m2");

    let pool = app.db.pool().await.unwrap();
    let dead: Vec<(String, String)> = sqlx::query_as("SELECT subject, error FROM dead_letters")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, format!("chat.msg.{conversation}"));
    assert!(dead[0].1.contains("undecodable"), "{}", dead[0].1);
}

async fn snapshot(pool: &PgPool) -> Vec<String> {
    let mut rows: Vec<String> = Vec::new();
    for sql in [
        "SELECT row_to_json(t)::text FROM (SELECT * FROM conversations ORDER BY id) t",
        "SELECT row_to_json(t)::text FROM (SELECT * FROM conversation_members ORDER BY conversation_id, user_id) t",
        "SELECT row_to_json(t)::text FROM (SELECT * FROM messages ORDER BY seq) t",
    ] {
        let part: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await
            .unwrap();
        rows.extend(part);
    }
    rows
}

#[tokio::test]
async fn replaying_chat_into_an_empty_database_rebuilds_the_same_projections() {
    let mut app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "b").await;
    let ab = send_n(&mut a, &bob, "ab", 4).await;
    send_n(&mut a, &carol, "ac", 2).await;
    b.receive_messages(4).await;
    b.send("mark_read", json!({"conversationId": ab, "upToSeq": 2}))
        .await;
    send_n(&mut b, &alice, "ba", 3).await;
    b.send("mark_read", json!({"conversationId": ab})).await;
    a.next_event("messages_read").await;
    a.next_event("messages_read").await;
    // Group membership changes between group messages.
    let group = app.create_group(&alice, "Rebuilt", &[&bob]).await;
    let group_id = group["id"].as_str().unwrap().to_owned();
    a.send_ref(
        "send_group_message",
        json!({"groupId": group_id, "content": "g0"}),
        "g0",
    )
    .await;
    assert_eq!(a.reply_to("g0").await["event"], "message_sent");
    let (status, _) = app
        .post(
            &format!("/api/groups/{group_id}/members"),
            Some(&alice.token),
            json!({"userIds": [carol.id.to_string()]}),
        )
        .await;
    assert_eq!(status, 200);
    a.send_ref(
        "send_group_message",
        json!({"groupId": group_id, "content": "g1"}),
        "g1",
    )
    .await;
    assert_eq!(a.reply_to("g1").await["event"], "message_sent");
    let (status, _) = app
        .delete(
            &format!("/api/groups/{group_id}/members/{}", bob.id),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, 204);
    a.send_ref(
        "send_group_message",
        json!({"groupId": group_id, "content": "g2"}),
        "g2",
    )
    .await;
    assert_eq!(a.reply_to("g2").await["event"], "message_sent");
    app.history_eventually(&carol, &group_id, 3).await;
    // A group deleted after a message: its row stays, marked, without members.
    let gone = app.create_group(&alice, "Gone", &[&bob, &carol]).await;
    let gone_id = gone["id"].as_str().unwrap().to_owned();
    a.send_ref(
        "send_group_message",
        json!({"groupId": gone_id, "content": "last words"}),
        "gone",
    )
    .await;
    assert_eq!(a.reply_to("gone").await["event"], "message_sent");
    app.history_eventually(&bob, &gone_id, 1).await;
    let (status, _) = app
        .delete(&format!("/api/groups/{gone_id}"), Some(&alice.token))
        .await;
    assert_eq!(status, 204);
    let original = snapshot(&app.db.pool().await.unwrap()).await;
    assert!(original.len() > 9);

    // A second database, and the consumer rewound to the start of CHAT.
    app.stop_persister().await;
    let js = app.jetstream().await;
    js.get_stream("CHAT")
        .await
        .unwrap()
        .delete_consumer("persister")
        .await
        .unwrap();
    let empty = TestDatabase::create(false).await.unwrap();
    let mut config = app.persister_config();
    config.database.database_url = empty.url.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let rebuild = tokio::spawn(natter_persister::run(
        config,
        listener,
        FaultHooks::default(),
        shutdown.clone(),
    ));
    let pool = empty.pool().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let rebuilt = loop {
        let rebuilt = snapshot(&pool).await;
        if rebuilt == original || std::time::Instant::now() > deadline {
            break rebuilt;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    shutdown.cancel();
    rebuild.await.unwrap().unwrap();
    assert_eq!(rebuilt, original);
}

#[tokio::test]
async fn a_standby_persister_takes_over_when_the_active_one_dies() {
    let mut app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "b").await;
    send_n(&mut a, &bob, "first", 2).await;
    b.receive_messages(2).await;

    // A second persister waits while the first holds the lock.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let standby = tokio::spawn(natter_persister::run(
        app.persister_config(),
        listener,
        FaultHooks::default(),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    app.crash_persister().await;
    send_n(&mut a, &bob, "second", 3).await;
    let received = b.receive_messages(3).await;
    assert_eq!(received[2]["data"]["message"]["content"], "second2");
    shutdown.cancel();
    standby.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_record_the_database_refuses_is_dead_lettered_after_max_deliver() {
    let app = TestApp::spawn_with(natter_testkit::TestOptions {
        persister_args: vec![
            "--max-deliver".into(),
            "2".into(),
            "--ack-wait-secs".into(),
            "5".into(),
        ],
        ..natter_testkit::TestOptions::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut b = app.connect(&bob, "phone").await;
    // A record that decodes but that PostgreSQL refuses (text cannot hold NUL);
    // the gateway never accepts such content, so it is published by hand.
    let conversation = natter_core::ConversationId::direct(alice.id, bob.id);
    let record = json!({
        "v": 1, "type": "message_sent", "id": uuid::Uuid::now_v7(), "conversationId": conversation,
        "senderId": alice.id, "senderName": "alice", "receiverId": bob.id,
        "content": "bad\u{0}byte", "createdAt": "2026-01-01T00:00:00Z"
    });
    let js = app.jetstream().await;
    js.publish(
        format!("chat.msg.{conversation}"),
        record.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut a = app.connect(&alice, "a").await;
    send_n(&mut a, &bob, "m", 3).await;
    let received = b.receive_messages(3).await;
    assert_eq!(received[0]["data"]["message"]["content"], "m0");

    let pool = app.db.pool().await.unwrap();
    let dead: Vec<(i64, i32)> =
        dead_letters_eventually(&pool, "SELECT chat_seq, deliveries FROM dead_letters").await;
    assert_eq!(dead.len(), 1, "dead-lettered");
    assert_eq!(dead[0].0, 1);
    assert!(dead[0].1 >= 2);
}

#[tokio::test]
async fn the_persister_applies_the_schema_to_an_empty_database() {
    let app = TestApp::spawn_with(natter_testkit::TestOptions {
        persister: false,
        ..natter_testkit::TestOptions::default()
    })
    .await;
    let blank = TestDatabase::create_blank().await.unwrap();
    let pool = blank.pool().await.unwrap();
    let tables = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('users', 'messages', 'device_cursors')",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(tables(pool.clone()).await, 0);
    let mut config = app.persister_config();
    config.database.database_url = blank.url.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let persister = tokio::spawn(natter_persister::run(
        config,
        listener,
        FaultHooks::default(),
        shutdown.clone(),
    ));
    let mut migrated = 0;
    for _ in 0..200 {
        migrated = tables(pool.clone()).await;
        if migrated == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    persister.await.unwrap().unwrap();
    assert_eq!(migrated, 3);
}

#[tokio::test]
async fn a_delivery_record_too_large_is_dead_lettered_and_the_rest_flow_on() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut b = app.connect(&bob, "phone").await;
    // A record the gateway would never accept (its content is over any
    // MAX_MESSAGE_BYTES), written straight to CHAT: it projects, but its
    // delivery record would outgrow the 64 KiB bound.
    let conversation = natter_core::ConversationId::direct(alice.id, bob.id);
    let oversized = natter_core::ChatRecord::new(natter_core::ChatEvent::MessageSent(
        natter_core::MessageSent {
            id: natter_core::MessageId::for_send(alice.id, None),
            conversation_id: conversation,
            sender_id: alice.id,
            sender_name: alice.display_name.clone(),
            receiver_id: Some(bob.id),
            group_id: None,
            content: "x".repeat(100 * 1024),
            client_msg_id: None,
            created_at: chrono::Utc::now(),
        },
    ));
    let js = app.jetstream().await;
    let stored = js
        .publish(
            natter_core::subjects::chat_message(conversation),
            serde_json::to_vec(&oversized).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut a = app.connect(&alice, "a").await;
    send_n(&mut a, &bob, "m", 2).await;
    let received = b.receive_messages(2).await;
    // Only the first characters: a failure must not print 100 KiB.
    let contents: Vec<String> = received
        .iter()
        .map(|f| {
            f["data"]["message"]["content"]
                .as_str()
                .unwrap()
                .chars()
                .take(8)
                .collect()
        })
        .collect();
    assert_eq!(contents, ["m0", "m1"]);

    let pool = app.db.pool().await.unwrap();
    let dead: Vec<(i64, String)> = sqlx::query_as("SELECT chat_seq, error FROM dead_letters")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, stored.sequence as i64);
    assert!(dead[0].1.contains("fan-out"), "{}", dead[0].1);
    assert!(dead[0].1.contains("65536"), "{}", dead[0].1);
}

#[tokio::test]
async fn a_message_id_reused_for_another_message_is_dead_lettered_never_dropped() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut b = app.connect(&bob, "phone").await;
    // Two sends under one clientMsgId (so one message id), published by hand
    // as if the gateway had accepted the second after the broker forgot the
    // first and before the projection had it: the same message, then another.
    let conversation = natter_core::ConversationId::direct(alice.id, bob.id);
    let id = uuid::Uuid::now_v7();
    let js = app.jetstream().await;
    for content in ["first", "first", "changed"] {
        let record = json!({
            "v": 1, "type": "message_sent", "id": id, "conversationId": conversation,
            "senderId": alice.id, "senderName": "alice", "receiverId": bob.id,
            "content": content, "clientMsgId": "c1", "createdAt": "2026-01-01T00:00:00Z"
        });
        js.publish(
            format!("chat.msg.{conversation}"),
            record.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let delivered = b.receive_messages(1).await;
    assert_eq!(delivered[0]["data"]["message"]["content"], "first");
    let pool = app.db.pool().await.unwrap();
    let dead: Vec<(i64, String)> =
        dead_letters_eventually(&pool, "SELECT chat_seq, error FROM dead_letters").await;
    assert_eq!(
        dead.len(),
        1,
        "only the other message is set aside: {dead:?}"
    );
    assert_eq!(dead[0].0, 3);
    assert!(
        dead[0].1.contains("already names another message"),
        "{dead:?}"
    );
    assert!(
        b.drain(Duration::from_millis(300))
            .await
            .iter()
            .all(|f| f["event"] != "receive_direct_message")
    );
}

/// The frames that are records of a delivery log (not presence, typing).
fn records(frames: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    frames
        .into_iter()
        .filter(|f| f.get("cursor").is_some())
        .collect()
}

/// How many records `user`'s delivery log holds.
async fn log_length(js: &async_nats::jetstream::Context, user: &TestUser) -> usize {
    let subject = natter_core::subjects::deliver(user.id);
    let stream = js.get_stream("DELIVERY").await.unwrap();
    let info = stream.info_with_subjects(&subject).await.unwrap();
    let mut subjects = info;
    let mut count = 0;
    while let Some(Ok((_, n))) = futures::StreamExt::next(&mut subjects).await {
        count += n;
    }
    count
}

/// A persister whose large fan-out lane is held shut (until `open` is
/// set), with a group's records waiting in it and a direct message to one
/// of its members already delivered past them.
struct HeldLane {
    app: TestApp,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    member: TestUser,
    m: WsClient,
    crowd: Vec<TestUser>,
    js: async_nats::jetstream::Context,
}

async fn held_lane() -> HeldLane {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    // Every group record (22 copies of more than 100 bytes) is large here;
    // a direct message (one copy) is not.
    let mut app = TestApp::spawn_with(natter_testkit::TestOptions {
        persister: false,
        persister_args: ["--ack-wait-secs", "5", "--large-fanout-bytes", "2000"]
            .map(String::from)
            .to_vec(),
        ..natter_testkit::TestOptions::default()
    })
    .await;
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    app.start_persister(FaultHooks {
        lane_open: Some(Arc::new(move || gate.load(Ordering::SeqCst))),
        ..FaultHooks::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let member = app.signup("member").await;
    let crowd = app.seed_users("crowd", 20).await;
    let carol = app.signup("carol").await;
    let dave = app.signup("dave").await;
    let mut listed: Vec<&TestUser> = crowd.iter().collect();
    listed.push(&member);
    let group = app.create_group(&alice, "everyone", &listed).await;
    let group_id = group["id"].as_str().unwrap().to_owned();
    let mut m = app.connect(&member, "m").await;
    let mut d = app.connect(&dave, "d").await;
    let mut a = app.connect(&alice, "a").await;
    a.send_ref(
        "send_group_message",
        json!({"groupId": group_id, "content": "to everyone"}),
        "g",
    )
    .await;
    assert_eq!(a.reply_to("g").await["event"], "message_sent");

    // The lane holds the group's records; a direct message between two
    // people outside the group goes by.
    let mut c = app.connect(&carol, "c").await;
    c.send_direct(dave.id, "beside it", "dm").await;
    let got = d.receive_messages(1).await;
    assert_eq!(got[0]["data"]["message"]["content"], "beside it");
    let js = app.jetstream().await;
    assert_eq!(log_length(&js, &crowd[0]).await, 0);
    assert!(records(m.drain(Duration::from_millis(300)).await).is_empty());

    // A record to a member goes after that member's copies of the group's
    // records, which go out first, in order.
    d.send_direct(member.id, "after it", "dm2").await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let frame = m.next().await;
        let event = frame["event"].as_str().unwrap().to_owned();
        if event.starts_with("receive_") || event == "group_updated" {
            seen.push(event);
        }
    }
    assert_eq!(
        seen,
        [
            "group_updated",
            "receive_group_message",
            "receive_direct_message"
        ]
    );
    assert_eq!(log_length(&js, &crowd[0]).await, 0);
    HeldLane {
        app,
        open,
        member,
        m,
        crowd,
        js,
    }
}

/// Waits until the lane delivered the group's two records to the crowd and
/// every `CHAT` record is acked; then checks that each log holds each
/// record once and the member's socket got nothing more.
async fn drained_once(held: &mut HeldLane) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while log_length(&held.js, &held.crowd[0]).await < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the lane drains");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = held
        .js
        .get_stream("CHAT")
        .await
        .unwrap()
        .get_consumer(natter_core::subjects::PERSISTER_CONSUMER)
        .await
        .unwrap();
    while consumer.info().await.unwrap().num_ack_pending > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "everything is acked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for user in &held.crowd {
        assert_eq!(log_length(&held.js, user).await, 2);
    }
    assert_eq!(log_length(&held.js, &held.member).await, 3);
    let late = records(held.m.drain(Duration::from_millis(300)).await);
    assert!(late.is_empty(), "{late:?}");
}

#[tokio::test]
async fn a_large_fan_out_goes_beside_later_records_and_keeps_each_users_order() {
    let mut held = held_lane().await;
    held.open.store(true, std::sync::atomic::Ordering::SeqCst);
    drained_once(&mut held).await;
}

#[tokio::test]
async fn a_large_fan_out_cut_short_by_a_stop_is_finished_once_by_the_next_persister() {
    let mut held = held_lane().await;
    // Its records are acked out of CHAT order: the group's stay unacked
    // behind the direct messages. The next persister rewinds to the ack
    // floor and fans out again; what was stored is not stored twice.
    held.app.stop_persister().await;
    held.app.start_persister(FaultHooks::default()).await;
    drained_once(&mut held).await;
}

/// The next `receive_group_message` frame on `client`.
async fn next_group_message(client: &mut WsClient) -> serde_json::Value {
    loop {
        let frame = client.next().await;
        if frame["event"] == "receive_group_message" {
            return frame;
        }
    }
}

#[tokio::test]
async fn a_big_message_into_a_big_group_is_stored_once_and_delivered_whole() {
    // 22 copies of a 6 KB record pass 100 KB: stored by reference. A short
    // message's copies do not: stored whole.
    let app = TestApp::spawn_with(natter_testkit::TestOptions {
        persister_args: ["--large-fanout-bytes", "100000"]
            .map(String::from)
            .to_vec(),
        ..natter_testkit::TestOptions::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let member = app.signup("member").await;
    let crowd = app.seed_users("crowd", 20).await;
    let mut listed: Vec<&TestUser> = crowd.iter().collect();
    listed.push(&member);
    let group = app.create_group(&alice, "everyone", &listed).await;
    let group_id = group["id"].as_str().unwrap().to_owned();
    // One device of the member is live; another was seen once and is away.
    let mut live = app.connect(&member, "live").await;
    app.connect(&member, "away").await.close().await;
    let mut a = app.connect(&alice, "a").await;
    let big = "a \"quoted\" line\n".repeat(400);
    for (content, reference) in [(big.as_str(), "big"), ("short", "short")] {
        a.send_ref(
            "send_group_message",
            json!({"groupId": group_id, "content": content}),
            reference,
        )
        .await;
        assert_eq!(a.reply_to(reference).await["event"], "message_sent");
    }

    for got in [
        next_group_message(&mut live).await,
        next_group_message(&mut live).await,
    ]
    .iter()
    .zip([big.as_str(), "short"])
    {
        assert_eq!(got.0["data"]["message"]["content"], got.1, "live");
        assert_eq!(got.0["data"]["message"]["senderId"], alice.id.to_string());
    }
    let mut away = app.connect(&member, "away").await;
    let replayed = [
        next_group_message(&mut away).await,
        next_group_message(&mut away).await,
    ];
    assert_eq!(replayed[0]["data"]["message"]["content"], big, "replayed");
    assert_eq!(replayed[1]["data"]["message"]["content"], "short");

    // What the log holds: the big message's record without its content and
    // with the reference; the short one whole.
    let log = app.delivery_log(crowd[0].id).await;
    let content_of = |i: usize| {
        log[i]
            .headers
            .get(natter_core::delivery::CONTENT_OF_HEADER)
            .map(|v| v.as_str().to_owned())
    };
    assert_eq!(log.len(), 3, "group_updated, big, short");
    let id = replayed[0]["data"]["message"]["id"].as_str().unwrap();
    assert_eq!(content_of(1).as_deref(), Some(id));
    assert!(
        log[1].payload.len() < 1024,
        "{} bytes",
        log[1].payload.len()
    );
    let stored: serde_json::Value = serde_json::from_slice(&log[1].payload).unwrap();
    assert_eq!(stored["data"]["message"]["content"], "");
    assert_eq!(content_of(2), None);
    let short: serde_json::Value = serde_json::from_slice(&log[2].payload).unwrap();
    assert_eq!(short["data"]["message"]["content"], "short");
}

/// The `seq` of every message record in `user`'s delivery log, in log order.
async fn logged_message_seqs(app: &TestApp, user: &TestUser) -> Vec<u64> {
    app.delivery_log(user.id)
        .await
        .iter()
        .filter_map(|record| {
            let record: serde_json::Value = serde_json::from_slice(&record.payload).ok()?;
            record["data"]["message"]["seq"].as_u64()
        })
        .collect()
}

/// `user`'s logged message seqs once there are `count`, or whatever is
/// there after 20 s.
async fn logged_message_seqs_eventually(app: &TestApp, user: &TestUser, count: usize) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let logged = logged_message_seqs(app, user).await;
        if logged.len() >= count || tokio::time::Instant::now() > deadline {
            return logged;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_delivery_record_lost_in_flight_does_not_fall_behind_the_next_ones() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    // A stream leader that dies under a window of publishes loses one and
    // stores the ones after it. The retry must not store the lost one after
    // them: a user's log is in CHAT order (invariant 5).
    let mut app = TestApp::spawn_with(natter_testkit::TestOptions {
        persister: false,
        ..natter_testkit::TestOptions::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    // Accepted while no persister runs: one batch for the next one.
    for i in 0..5 {
        let reply = a
            .send_direct(bob.id, &format!("m{i}"), &format!("r{i}"))
            .await;
        assert_eq!(reply["event"], "message_sent", "{reply}");
    }
    let lost_once = Arc::new(AtomicBool::new(false));
    let lost = lost_once.clone();
    let bob_id = bob.id;
    app.start_persister(FaultHooks {
        lose_publish: Some(Arc::new(move |_, recipient| {
            recipient == bob_id && !lost.swap(true, Ordering::SeqCst)
        })),
        ..FaultHooks::default()
    })
    .await;
    let logged = logged_message_seqs_eventually(&app, &bob, 5).await;
    assert!(lost_once.load(Ordering::SeqCst), "a record was lost");
    let mut in_order = logged.clone();
    in_order.sort_unstable();
    assert_eq!(logged.len(), 5, "{logged:?}");
    assert_eq!(logged, in_order, "bob's log is out of CHAT order");
}

/// Five messages from alice to bob, accepted while no persister runs; then
/// a persister whose pull loses the `lost`-th of them once on its way, as a
/// node that dies while it delivers does (the consumer counts it
/// delivered, so it would come back only after the 120 s ack wait, behind
/// the ones after it). Bob's log must still hold all five in CHAT order
/// (invariant 5), without waiting out the ack wait.
async fn lose_one_pulled_record_and_check_the_order(lost: usize) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut app = TestApp::spawn_with(natter_testkit::TestOptions {
        persister: false,
        persister_args: vec!["--ack-wait-secs".into(), "120".into()],
        ..natter_testkit::TestOptions::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut seqs = Vec::new();
    for i in 0..5 {
        let reply = a
            .send_direct(bob.id, &format!("m{i}"), &format!("r{i}"))
            .await;
        assert_eq!(reply["event"], "message_sent", "{reply}");
        seqs.push(reply["data"]["message"]["seq"].as_u64().unwrap());
    }
    let lost_once = Arc::new(AtomicBool::new(false));
    let lose = lost_once.clone();
    let target = seqs[lost];
    app.start_persister(FaultHooks {
        lose_pulled: Some(Arc::new(move |stream_seq| {
            stream_seq == target && !lose.swap(true, Ordering::SeqCst)
        })),
        ..FaultHooks::default()
    })
    .await;
    let logged = logged_message_seqs_eventually(&app, &bob, 5).await;
    assert!(lost_once.load(Ordering::SeqCst), "a record was lost");
    assert_eq!(logged, seqs, "bob's log is out of CHAT order or incomplete");
}

#[tokio::test]
async fn the_first_record_pulled_after_a_restart_lost_on_its_way_keeps_its_place() {
    // Seen in a fault run: after the persister pulled again, the first
    // delivery went to a pull request left over from before (served by the
    // server, read by no one). With nothing pulled yet to compare with, the
    // persister took the second delivery as the first. The check starts
    // from where the consumer was rewound to.
    lose_one_pulled_record_and_check_the_order(0).await;
}

#[tokio::test]
async fn a_chat_record_lost_on_its_way_to_the_persister_is_fanned_out_in_its_place() {
    lose_one_pulled_record_and_check_the_order(1).await;
}
