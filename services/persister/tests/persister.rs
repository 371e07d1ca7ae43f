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
