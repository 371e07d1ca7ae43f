//! DESIGN §4's `clientMsgId` rule: a retry of the same message (same
//! receiver, same content) is the same message, at any age; the id reused
//! for anything else is refused, never answered with the earlier message
//! and never silently dropped.

use natter_core::subjects;
use natter_testkit::{TestApp, TestOptions, TestUser, WsClient};
use serde_json::{Value, json};

async fn send(socket: &mut WsClient, to: &TestUser, content: &str, reference: &str) -> Value {
    let data =
        json!({"receiverId": to.id.to_string(), "content": content, "clientMsgId": "retry-1"});
    socket
        .send_ref("send_direct_message", data, reference)
        .await;
    socket.reply_to(reference).await
}

async fn chat_last_seq(app: &TestApp) -> u64 {
    let js = app.jetstream().await;
    let mut chat = js.get_stream(subjects::CHAT_STREAM).await.unwrap();
    chat.info().await.unwrap().state.last_sequence
}

/// Shrinks `CHAT`'s duplicate window and waits it out, as if the first send
/// were older than the broker remembers.
async fn forget_duplicates(app: &TestApp) {
    let js = app.jetstream().await;
    let mut config = js
        .get_stream(subjects::CHAT_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    config.duplicate_window = std::time::Duration::from_millis(100);
    js.update_stream(config).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_reused_client_msg_id_for_another_message_is_refused_while_the_broker_remembers_it() {
    // No persister: only JetStream's duplicate window knows the first send.
    let app = TestApp::spawn_with(TestOptions {
        persister: false,
        ..TestOptions::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let mut a = app.connect(&alice, "a").await;

    let first = send(&mut a, &bob, "hello", "first").await;
    assert_eq!(first["event"], "message_sent", "{first}");
    for (to, content, reference) in [(&bob, "changed", "content"), (&carol, "hello", "receiver")] {
        let reply = send(&mut a, to, content, reference).await;
        assert_eq!(reply["event"], "error", "{reply}");
        assert_eq!(reply["data"]["code"], "bad_request", "{reply}");
    }
    let (status, body) = app
        .post(
            "/api/messages",
            Some(&alice.token),
            json!({"receiverId": carol.id.to_string(), "content": "hello", "clientMsgId": "retry-1"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");

    let again = send(&mut a, &bob, "hello", "again").await;
    assert_eq!(
        again["data"]["message"]["id"],
        first["data"]["message"]["id"]
    );
    assert_eq!(
        again["data"]["message"]["seq"],
        first["data"]["message"]["seq"]
    );
}

#[tokio::test]
async fn a_client_msg_id_of_a_stored_message_is_answered_from_the_store_at_any_age() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let mut a = app.connect(&alice, "a").await;
    let first = send(&mut a, &bob, "hello", "first").await;
    let conversation = first["data"]["message"]["conversationId"].as_str().unwrap();
    app.history_eventually(&bob, conversation, 1).await;
    forget_duplicates(&app).await;
    let published = chat_last_seq(&app).await;

    // Stored: whatever the broker's duplicate window, the answer comes from
    // the store, and nothing new is published.
    let again = send(&mut a, &bob, "hello", "again").await;
    assert_eq!(again["event"], "message_sent", "{again}");
    assert_eq!(
        again["data"]["message"]["id"],
        first["data"]["message"]["id"]
    );
    assert_eq!(
        again["data"]["message"]["seq"],
        first["data"]["message"]["seq"]
    );
    let other = send(&mut a, &carol, "hello", "other").await;
    assert_eq!(other["data"]["code"], "bad_request", "{other}");
    let changed = send(&mut a, &bob, "changed", "changed").await;
    assert_eq!(changed["data"]["code"], "bad_request", "{changed}");
    assert_eq!(
        chat_last_seq(&app).await,
        published,
        "a retry was published again"
    );
    assert_eq!(app.history(&bob, conversation).await.len(), 1);
}

#[tokio::test]
async fn an_earlier_send_is_still_found_after_postgresql_restarts() {
    let mut app = TestApp::spawn_with_own_postgres().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let first = send(&mut a, &bob, "hello", "first").await;
    let conversation = first["data"]["message"]["conversationId"].as_str().unwrap();
    app.history_eventually(&bob, conversation, 1).await;
    forget_duplicates(&app).await;

    // The first send's lookup opened the connection lookups hold; it is
    // gone with the server.
    app.stop_postgres();
    app.start_postgres();
    let ready = app
        .eventually(std::time::Duration::from_secs(20), || async {
            app.get("/readyz", None).await.0 == 200
        })
        .await;
    assert!(ready, "the gateway did not see PostgreSQL again");
    let published = chat_last_seq(&app).await;
    let again = send(&mut a, &bob, "hello", "again").await;
    assert_eq!(again["event"], "message_sent", "{again}");
    assert_eq!(
        again["data"]["message"]["seq"], first["data"]["message"]["seq"],
        "the retry was not looked up in the store"
    );
    assert_eq!(
        chat_last_seq(&app).await,
        published,
        "a retry was published again"
    );
}

/// Sends `count` messages from `socket` to `to`, each with its own
/// `clientMsgId`, and returns the replies in order.
async fn send_numbered(
    socket: &mut WsClient,
    to: &TestUser,
    prefix: &str,
    count: usize,
) -> Vec<Value> {
    let mut replies = Vec::new();
    for n in 0..count {
        let data = json!({"receiverId": to.id.to_string(), "content": format!("{prefix} {n}"),
            "clientMsgId": format!("{prefix}-{n}")});
        let reference = format!("{prefix}-{n}");
        socket
            .send_ref("send_direct_message", data, &reference)
            .await;
        replies.push(socket.reply_to(&reference).await);
    }
    replies
}

#[tokio::test]
async fn retries_from_many_sessions_at_once_are_each_answered_with_their_own_message() {
    // The gateway looks up many sends' ids in one query: each answer must
    // still go to its own send, stored or not.
    let app = TestApp::spawn().await;
    let bob = app.signup("bob").await;
    let mut senders = Vec::new();
    for name in ["alice", "carol", "dave", "erin"] {
        let user = app.signup(name).await;
        let socket = app.connect(&user, "d").await;
        senders.push((user, socket));
    }
    let mut firsts = Vec::new();
    for (user, socket) in &mut senders {
        firsts.push(send_numbered(socket, &bob, &user.username, 5).await);
    }
    for (first, (user, _)) in firsts.iter().zip(&senders) {
        let conversation = first[0]["data"]["message"]["conversationId"]
            .as_str()
            .unwrap();
        app.history_eventually(user, conversation, 5).await;
    }
    forget_duplicates(&app).await;

    // Every session retries its five and sends five new ones, all at once.
    let rounds = senders.iter_mut().map(|(user, socket)| {
        let bob = &bob;
        async move {
            let retried = send_numbered(socket, bob, &user.username, 5).await;
            let fresh = send_numbered(socket, bob, &format!("{}-new", user.username), 5).await;
            (retried, fresh)
        }
    });
    let answers = futures::future::join_all(rounds).await;
    for (first, (retried, fresh)) in firsts.iter().zip(answers) {
        for (original, again) in first.iter().zip(&retried) {
            assert_eq!(again["event"], "message_sent", "{again}");
            for field in ["id", "seq", "content", "conversationId"] {
                assert_eq!(
                    again["data"]["message"][field], original["data"]["message"][field],
                    "{again}"
                );
            }
        }
        let mut seqs: Vec<_> = fresh
            .iter()
            .map(|reply| reply["data"]["message"]["seq"].as_u64().unwrap())
            .collect();
        assert!(
            first
                .iter()
                .all(|reply| !seqs.contains(&reply["data"]["message"]["seq"].as_u64().unwrap())),
            "a new send was answered with a stored message"
        );
        seqs.dedup();
        assert_eq!(seqs.len(), 5, "{fresh:?}");
    }
}
