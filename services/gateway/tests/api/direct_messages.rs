//! Seed test cases 1, 3, 7 and in-order delivery of a burst.

use natter_testkit::TestApp;
use natter_testkit::ws::{contents, numbered};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn two_users_exchange_direct_messages_instantly() {
    // Seed test case 1.
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "tab-a").await;
    let mut b = app.connect(&bob, "tab-b").await;

    let sent = a.send_direct(bob.id, "Hello from Tab A", "r1").await;
    assert_eq!(sent["event"], "message_sent", "{sent}");
    let message = &sent["data"]["message"];
    assert!(message["seq"].as_u64().unwrap() > 0);
    assert_eq!(message["senderName"], alice.display_name);

    let received = b.receive_messages(1).await.remove(0);
    assert_eq!(received["data"]["message"]["content"], "Hello from Tab A");
    assert_eq!(received["data"]["message"]["id"], message["id"]);
    assert_eq!(
        received["data"]["message"]["senderName"],
        alice.display_name
    );
    assert_eq!(
        received["data"]["message"]["createdAt"],
        message["createdAt"]
    );
    assert!(received["cursor"].as_u64().is_some());

    let reply = b.send_direct(alice.id, "Hello from Tab B", "r2").await;
    assert_eq!(reply["event"], "message_sent");
    let frames = a.receive_messages(2).await;
    // The sender's own message comes back on its log too (other devices).
    let contents: Vec<_> = frames
        .iter()
        .map(|f| f["data"]["message"]["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(contents, ["Hello from Tab A", "Hello from Tab B"]);
}

#[tokio::test]
async fn offline_receiver_gets_message_on_reconnect_with_original_time() {
    // Seed test case 3.
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let b = app.connect(&bob, "laptop").await;
    b.close().await;

    let mut a = app.connect(&alice, "laptop").await;
    let sent = a.send_direct(bob.id, "Are you there?", "r1").await;
    assert_eq!(sent["event"], "message_sent");
    let created_at = sent["data"]["message"]["createdAt"].clone();

    assert!(
        app.eventually(Duration::from_secs(5), || async {
            app.unread_from(&bob, &alice).await == 1
        })
        .await,
        "unread count reaches 1"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut b = app.connect(&bob, "laptop").await;
    let received = b.receive_messages(1).await.remove(0);
    assert_eq!(received["data"]["message"]["content"], "Are you there?");
    assert_eq!(received["data"]["message"]["createdAt"], created_at);

    let conversation = sent["data"]["message"]["conversationId"].as_str().unwrap();
    let (status, history) = app
        .get(
            &format!("/api/conversations/{conversation}/messages"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(history["messages"][0]["content"], "Are you there?");
    assert_eq!(history["messages"][0]["createdAt"], created_at);
    assert_eq!(history["hasMore"], false);
}

#[tokio::test]
async fn conversations_stay_apart() {
    // Seed test case 7.
    let app = TestApp::spawn().await;
    let one = app.signup("user1").await;
    let two = app.signup("user2").await;
    let three = app.signup("user3").await;
    let mut a = app.connect(&one, "d").await;
    let to_two = a.send_direct(two.id, "Hello User2", "r1").await;
    let to_three = a.send_direct(three.id, "Hello User3", "r2").await;
    let conv_two = to_two["data"]["message"]["conversationId"]
        .as_str()
        .unwrap()
        .to_owned();
    let conv_three = to_three["data"]["message"]["conversationId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(conv_two, conv_three);

    assert!(
        app.eventually(Duration::from_secs(5), || async {
            app.unread_from(&three, &one).await == 1
        })
        .await
    );
    let (_, history) = app
        .get(
            &format!("/api/conversations/{conv_two}/messages"),
            Some(&one.token),
        )
        .await;
    let contents: Vec<_> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(contents, [json!("Hello User2")]);
    // User3's unread count stands while User2's conversation is open.
    assert_eq!(app.unread_from(&two, &one).await, 1);
    assert_eq!(app.unread_from(&three, &one).await, 1);
    // Nobody reads a conversation they are not in.
    let (status, body) = app
        .get(
            &format!("/api/conversations/{conv_two}/messages"),
            Some(&three.token),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.to_string().find("Hello User2").is_none());
}

#[tokio::test]
async fn burst_of_500_arrives_complete_and_in_seq_order() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "d").await;
    let mut b = app.connect(&bob, "d").await;
    for i in 0..500 {
        a.send_ref(
            "send_direct_message",
            json!({"receiverId": bob.id.to_string(), "content": format!("m{i}")}),
            &format!("r{i}"),
        )
        .await;
    }
    let received = b.receive_messages(500).await;
    let seqs: Vec<u64> = received
        .iter()
        .map(|f| f["data"]["message"]["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq strictly increases"
    );
    assert_eq!(contents(&received), numbered("m", 500));
    // Every send was confirmed, in order.
    let mut confirmed = 0;
    while confirmed < 500 {
        let frame = a.next().await;
        if frame["event"] == "message_sent" {
            assert_eq!(frame["ref"], format!("r{confirmed}"));
            confirmed += 1;
        }
    }
}

#[tokio::test]
async fn marking_read_clears_unread_and_sends_a_receipt() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "b").await;
    let mut conversation = String::new();
    for i in 0..3 {
        let sent = a
            .send_direct(bob.id, &format!("m{i}"), &format!("r{i}"))
            .await;
        conversation = sent["data"]["message"]["conversationId"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    b.receive_messages(3).await;
    assert!(
        app.eventually(Duration::from_secs(5), || async {
            app.unread_from(&bob, &alice).await == 3
        })
        .await
    );
    // The sender's own messages are not unread for the sender.
    assert_eq!(app.unread_from(&alice, &bob).await, 0);

    b.send("mark_read", json!({"conversationId": conversation}))
        .await;
    let receipt = a.next_event("messages_read").await;
    assert_eq!(receipt["data"]["readerId"], bob.id.to_string());
    assert_eq!(receipt["data"]["conversationId"], conversation);
    assert!(receipt["data"]["upToSeq"].as_u64().unwrap() > 0);
    assert!(receipt["cursor"].as_u64().is_some());
    // The reader's own devices hear of it too.
    b.next_event("messages_read").await;
    assert_eq!(app.unread_from(&bob, &alice).await, 0);

    a.send_direct(bob.id, "one more", "r3").await;
    assert!(
        app.eventually(Duration::from_secs(5), || async {
            app.unread_from(&bob, &alice).await == 1
        })
        .await
    );

    // Over REST, and members only.
    let (status, _) = app
        .post(
            &format!("/api/conversations/{conversation}/read"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 204);
    assert!(
        app.eventually(Duration::from_secs(5), || async {
            app.unread_from(&bob, &alice).await == 0
        })
        .await
    );
    let carol = app.signup("carol").await;
    let (status, body) = app
        .post(
            &format!("/api/conversations/{conversation}/read"),
            Some(&carol.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
}
