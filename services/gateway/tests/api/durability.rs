//! Invariants 1–3: accepted means durable (persister down, PostgreSQL down,
//! crashes), persist before deliver, idempotent everywhere.

use natter_persister::FaultHooks;
use natter_testkit::ws::{contents, numbered};
use natter_testkit::{TestApp, TestOptions};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

async fn delivery_records_for(app: &TestApp, user: &natter_testkit::TestUser) -> u64 {
    let js = app.jetstream().await;
    let stream = js.get_stream("DELIVERY").await.unwrap();
    let subject = format!("deliver.{}", user.id);
    let info = stream.info_with_subjects(subject.clone()).await.unwrap();
    let mut count = 0;
    let mut info = info;
    use futures::StreamExt;
    while let Some(Ok((name, n))) = info.next().await {
        if name == subject {
            count += n as u64;
        }
    }
    count
}

/// Sends every content to `to` without waiting, then requires a
/// `message_sent` for each.
async fn send_all_then_confirm(
    sender: &mut natter_testkit::WsClient,
    to: &natter_testkit::TestUser,
    contents: &[String],
) {
    for (i, content) in contents.iter().enumerate() {
        sender
            .send_ref(
                "send_direct_message",
                json!({"receiverId": to.id.to_string(), "content": content}),
                &format!("s{i}"),
            )
            .await;
    }
    for i in 0..contents.len() {
        let reply = sender.reply_to(&format!("s{i}")).await;
        assert_eq!(reply["event"], "message_sent", "{reply}");
    }
}

#[tokio::test]
async fn messages_accepted_while_the_persister_is_down_are_delivered_after() {
    let mut app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut b = app.connect(&bob, "phone").await;
    app.stop_persister().await;

    let mut a = app.connect(&alice, "a").await;
    for i in 0..10 {
        let reply = a
            .send_direct(bob.id, &format!("m{i}"), &format!("r{i}"))
            .await;
        assert_eq!(
            reply["event"], "message_sent",
            "accepted with the persister down: {reply}"
        );
    }
    // Not persisted, so not delivered (invariant 2).
    let early = b.drain(Duration::from_millis(500)).await;
    assert!(
        early.iter().all(|f| f["event"] != "receive_direct_message"),
        "{early:?}"
    );

    app.start_persister(FaultHooks::default()).await;
    let received = b.receive_messages(10).await;
    assert_eq!(contents(&received), numbered("m", 10));
}

#[tokio::test]
async fn messages_accepted_during_a_database_outage_are_delivered_once_it_is_back() {
    let mut app = TestApp::spawn_with_own_postgres().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "phone").await;
    let warm = a.send_direct(bob.id, "before", "warm").await;
    assert_eq!(warm["event"], "message_sent");
    b.receive_messages(1).await;

    app.stop_postgres();
    let (status, _) = app.get("/readyz", None).await;
    assert_eq!(status, 503);

    // Between users the gateway already knows, sends are still accepted,
    // with a clientMsgId too (as every web client sends), whose earlier
    // send the gateway cannot look up now.
    let mut ids = Vec::new();
    for i in 0..5 {
        let reference = format!("r{i}");
        a.send_ref(
            "send_direct_message",
            json!({"receiverId": bob.id.to_string(), "content": format!("during{i}"),
                   "clientMsgId": format!("c{i}")}),
            &reference,
        )
        .await;
        let reply = a.reply_to(&reference).await;
        assert_eq!(reply["event"], "message_sent", "{reply}");
        ids.push(reply["data"]["message"]["id"].clone());
    }
    // A retry is still the same message, stored once (JetStream's dedupe).
    a.send_ref(
        "send_direct_message",
        json!({"receiverId": bob.id.to_string(), "content": "during0", "clientMsgId": "c0"}),
        "again",
    )
    .await;
    let again = a.reply_to("again").await;
    assert_eq!(again["data"]["message"]["id"], ids[0], "{again}");
    // A receiver it cannot check is refused, not accepted and lost.
    let unknown = a.send_direct(uuid::Uuid::now_v7(), "x", "unknown").await;
    assert_eq!(unknown["data"]["code"], "unavailable", "{unknown}");
    let early = b.drain(Duration::from_millis(500)).await;
    assert!(
        early.iter().all(|f| f["event"] != "receive_direct_message"),
        "{early:?}"
    );

    app.start_postgres();
    let received = b.receive_messages(5).await;
    assert_eq!(contents(&received), numbered("during", 5));
    let late = b.drain(Duration::from_millis(500)).await;
    assert!(
        late.iter().all(|f| f["event"] != "receive_direct_message"),
        "the retry was delivered again: {late:?}"
    );
    let conversation = warm["data"]["message"]["conversationId"].as_str().unwrap();
    assert_eq!(app.history_eventually(&bob, conversation, 6).await.len(), 6);
}

#[tokio::test]
async fn a_message_reaches_a_socket_only_after_it_is_committed() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "phone").await;
    let pool = app.db.pool().await.unwrap();
    for i in 0..20 {
        a.send_ref(
            "send_direct_message",
            json!({"receiverId": bob.id.to_string(), "content": format!("m{i}")}),
            &format!("r{i}"),
        )
        .await;
    }
    for frame in b.receive_messages(20).await {
        let id: uuid::Uuid = frame["data"]["message"]["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let stored: Option<i64> = sqlx::query_scalar("SELECT seq FROM messages WHERE id = $1")
            .bind(id)
            .fetch_optional(&pool)
            .await
            .unwrap();
        assert_eq!(
            stored,
            frame["data"]["message"]["seq"].as_i64(),
            "delivered before commit"
        );
    }
}

#[tokio::test]
async fn redelivery_after_commit_creates_no_duplicate_row_or_delivery() {
    for stage in ["after_commit", "after_fanout"] {
        let mut app = TestApp::spawn().await;
        let alice = app.signup("alice").await;
        let bob = app.signup("bob").await;
        let mut b = app.connect(&bob, "phone").await;
        app.stop_persister().await;
        let crashed = Arc::new(AtomicBool::new(false));
        let once = crashed.clone();
        let hook: natter_persister::FaultHook =
            Arc::new(move |_seqs: &[u64]| !once.swap(true, Ordering::SeqCst));
        let hooks = match stage {
            "after_commit" => FaultHooks {
                after_commit: Some(hook),
                ..FaultHooks::default()
            },
            _ => FaultHooks {
                after_fanout: Some(hook),
                ..FaultHooks::default()
            },
        };
        let mut a = app.connect(&alice, "a").await;
        for i in 0..5 {
            a.send_direct(bob.id, &format!("m{i}"), &format!("r{i}"))
                .await;
        }
        app.start_persister(hooks).await;
        let received = b.receive_messages(5).await;
        // (after_fanout fires only once the fan-out's acks are in, which can
        // be just after the records reach the socket.)
        let fired = app
            .eventually(Duration::from_secs(5), || async {
                crashed.load(Ordering::SeqCst)
            })
            .await;
        assert!(fired, "{stage}: the fault fired");
        let extra = b.drain(Duration::from_millis(500)).await;
        assert!(
            extra.iter().all(|f| f["event"] != "receive_direct_message"),
            "{stage}: {extra:?}"
        );
        let conversation = received[0]["data"]["message"]["conversationId"]
            .as_str()
            .unwrap();
        assert_eq!(
            app.history(&bob, conversation).await.len(),
            5,
            "{stage}: rows"
        );
        assert_eq!(
            delivery_records_for(&app, &bob).await,
            5,
            "{stage}: delivery records"
        );
        assert_eq!(
            app.unread_from(&bob, &alice).await,
            5,
            "{stage}: unread counted once"
        );
    }
}

#[tokio::test]
async fn the_same_client_msg_id_yields_one_message_with_one_id() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "phone").await;
    let data =
        json!({"receiverId": bob.id.to_string(), "content": "once", "clientMsgId": "retry-1"});
    a.send_ref("send_direct_message", data.clone(), "first")
        .await;
    let first = a.reply_to("first").await;
    a.send_ref("send_direct_message", data.clone(), "second")
        .await;
    let second = a.reply_to("second").await;
    assert_eq!(first["event"], "message_sent");
    assert_eq!(
        second["data"]["message"]["id"],
        first["data"]["message"]["id"]
    );
    assert_eq!(
        second["data"]["message"]["seq"],
        first["data"]["message"]["seq"]
    );
    assert_eq!(
        second["data"]["message"]["createdAt"],
        first["data"]["message"]["createdAt"]
    );
    // The same over REST.
    let (status, third) = app.post("/api/messages", Some(&alice.token), data).await;
    assert_eq!(status, 202);
    assert_eq!(third["message"]["id"], first["data"]["message"]["id"]);

    b.receive_messages(1).await;
    let extra = b.drain(Duration::from_millis(500)).await;
    assert!(
        extra.iter().all(|f| f["event"] != "receive_direct_message"),
        "{extra:?}"
    );
    let conversation = first["data"]["message"]["conversationId"].as_str().unwrap();
    assert_eq!(app.history(&bob, conversation).await.len(), 1);
}

#[tokio::test]
async fn a_persister_crash_loses_and_duplicates_nothing() {
    let mut app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "phone").await;
    for i in 0..200 {
        a.send_ref(
            "send_direct_message",
            json!({"receiverId": bob.id.to_string(), "content": format!("m{i}")}),
            &format!("r{i}"),
        )
        .await;
        if i == 100 {
            app.crash_persister().await;
            app.start_persister(FaultHooks::default()).await;
        }
    }
    let received = b.receive_messages(200).await;
    assert_eq!(contents(&received), numbered("m", 200));
    assert!(
        b.drain(Duration::from_millis(500))
            .await
            .iter()
            .all(|f| f["event"] != "receive_direct_message")
    );
}

#[tokio::test]
async fn accepted_messages_survive_a_broker_crash_before_they_are_persisted() {
    let mut app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let b = app.connect(&bob, "phone").await;
    b.close().await;
    app.stop_persister().await;
    let mut a = app.connect(&alice, "a").await;
    for i in 0..10 {
        let reply = a
            .send_direct(bob.id, &format!("m{i}"), &format!("r{i}"))
            .await;
        assert_eq!(reply["event"], "message_sent", "{reply}");
    }
    drop(a);

    // kill -9 of nats-server with everything accepted but nothing projected.
    app.crash_and_restart_nats().await;
    app.start_persister(FaultHooks::default()).await;

    let mut b = app.connect(&bob, "phone").await;
    let received = b.receive_messages(10).await;
    assert_eq!(contents(&received), numbered("m", 10));
}

#[tokio::test]
async fn sends_beyond_the_publish_window_wait_for_room_and_never_stall() {
    // A window of 2 acks per process: the session pipelines far more sends
    // than that, and each persister batch fans out far more records.
    let window = vec!["--nats-publish-window".to_owned(), "2".to_owned()];
    let app = TestApp::spawn_with(TestOptions {
        gateway_args: window.clone(),
        persister_args: window,
        ..TestOptions::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "phone").await;
    let expected = numbered("w", 60);
    send_all_then_confirm(&mut a, &bob, &expected).await;
    assert_eq!(
        contents(&b.receive_messages(expected.len()).await),
        expected
    );
}

#[tokio::test]
async fn a_crash_between_the_persisters_two_stages_loses_and_reorders_nothing() {
    // Small batches, so that while one is fanned out the next is already
    // committed: the crash after the third fan-out leaves a committed batch
    // behind that was never fanned out, and one fanned out but never acked.
    let mut app = TestApp::spawn_with(TestOptions {
        persister_args: vec!["--batch-max".to_owned(), "10".to_owned()],
        ..TestOptions::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "phone").await;
    app.stop_persister().await;
    let expected = numbered("p", 200);
    send_all_then_confirm(&mut a, &bob, &expected).await;
    let fanned_out = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = fanned_out.clone();
    let hook: natter_persister::FaultHook =
        Arc::new(move |_seqs: &[u64]| count.fetch_add(1, Ordering::SeqCst) == 2);
    app.start_persister(FaultHooks {
        after_fanout: Some(hook),
        ..FaultHooks::default()
    })
    .await;

    let received = b.receive_messages(expected.len()).await;
    assert_eq!(contents(&received), expected);
    let seqs: Vec<u64> = received
        .iter()
        .map(|f| f["cursor"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(fanned_out.load(Ordering::SeqCst) > 3, "the crash happened");
    assert!(
        b.drain(Duration::from_millis(500))
            .await
            .iter()
            .all(|f| f["event"] != "receive_direct_message")
    );
    assert_eq!(delivery_records_for(&app, &bob).await, 200);
    assert_eq!(app.unread_from(&bob, &alice).await, 200);
}
