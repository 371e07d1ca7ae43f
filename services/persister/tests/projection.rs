//! The projection called directly on a real PostgreSQL: what it stores and
//! what it fans out when one send appears twice in `CHAT`, in one batch or
//! across a redelivery.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use chrono::Utc;
use natter_core::{ChatEvent, ConversationId, MessageId, MessageSent, UserId};
use natter_persister::projection::membership::Membership;
use natter_persister::projection::{Record, project};
use natter_testkit::database::TestDatabase;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

fn send(id: MessageId, sender: UserId, receiver: UserId, content: &str) -> ChatEvent {
    ChatEvent::MessageSent(MessageSent {
        id,
        conversation_id: ConversationId::direct(sender, receiver),
        sender_id: sender,
        sender_name: "alice".to_owned(),
        receiver_id: Some(receiver),
        group_id: None,
        content: content.to_owned(),
        client_msg_id: None,
        created_at: Utc::now(),
    })
}

async fn unread(conn: &mut PgConnection, user: UserId) -> i64 {
    sqlx::query_scalar(
        "SELECT c.message_count - m.seen_count FROM conversation_members m
         JOIN conversations c ON c.id = m.conversation_id WHERE m.user_id = $1",
    )
    .bind(user.0)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// Projects `batch` and returns the CHAT sequences it fans out.
async fn fanned_out(
    conn: &mut PgConnection,
    members: &mut Membership,
    batch: &[Record],
) -> Vec<u64> {
    project(conn, members, batch)
        .await
        .unwrap()
        .iter()
        .map(|f| f.chat_seq)
        .collect()
}

#[tokio::test]
async fn a_send_twice_in_chat_is_stored_counted_and_fanned_out_once() {
    let db = TestDatabase::create(false).await.unwrap();
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let mut members = Membership::default();
    let (alice, bob) = (UserId(Uuid::new_v4()), UserId(Uuid::new_v4()));
    let (first, second) = (MessageId(Uuid::new_v4()), MessageId(Uuid::new_v4()));
    let batch = vec![
        Record {
            chat_seq: 1,
            event: send(first, alice, bob, "one"),
        },
        // A late retry of the same send, at a later CHAT sequence.
        Record {
            chat_seq: 2,
            event: send(first, alice, bob, "one"),
        },
        Record {
            chat_seq: 3,
            event: send(second, alice, bob, "two"),
        },
    ];

    let fanned = fanned_out(&mut conn, &mut members, &batch).await;
    assert_eq!(fanned, [1, 3], "the retry is not delivered");
    let rows: Vec<(Uuid, i64)> = sqlx::query_as("SELECT id, seq FROM messages ORDER BY seq")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, [(first.0, 1), (second.0, 3)]);
    assert_eq!(unread(&mut conn, bob).await, 2);

    // The whole batch again, as after a crash between commit and ack: the
    // stored records are fanned out again (their fan-out may not have
    // finished), nothing is stored or counted twice.
    let fanned = fanned_out(&mut conn, &mut members, &batch).await;
    assert_eq!(fanned, [1, 3]);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 2);
    assert_eq!(unread(&mut conn, bob).await, 2);
}
