//! natter's core scenarios on a NATS server with the accounts and
//! permissions of `deploy/nats/accounts.conf`, each service connected as its
//! own user: everything natter does works with no more rights than those,
//! and the server logs no permission violation.

use natter_testkit::nats::TestNats;
use natter_testkit::{TestApp, TestOptions};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn every_core_scenario_works_under_least_privilege() {
    let app = TestApp::spawn_with(TestOptions {
        nats_permissions: true,
        ..TestOptions::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "b").await;

    // A direct message, live; typing and a read marker back.
    let sent = a.send_direct(bob.id, "hello", "r1").await;
    assert_eq!(sent["event"], "message_sent", "{sent}");
    let got = b.receive_messages(1).await.remove(0);
    assert_eq!(got["data"]["message"]["content"], "hello");
    let conversation = got["data"]["message"]["conversationId"].clone();
    b.send("typing", json!({"conversationId": conversation}))
        .await;
    a.next_event("typing").await;
    b.send("mark_read", json!({"conversationId": conversation}))
        .await;
    a.next_event("messages_read").await;

    // A retried send (same clientMsgId) is answered with the original, read
    // back from CHAT by direct get.
    let retry = json!({"receiverId": bob.id.to_string(), "content": "once", "clientMsgId": "c-1"});
    a.send_ref("send_direct_message", retry.clone(), "c1").await;
    let first = a.reply_to("c1").await;
    a.send_ref("send_direct_message", retry, "c2").await;
    let again = a.reply_to("c2").await;
    assert_eq!(
        again["data"]["message"]["id"],
        first["data"]["message"]["id"]
    );
    b.receive_messages(1).await;

    // Replay: bob away, two messages, bob back on the same device.
    b.close().await;
    for (i, content) in ["while away 1", "while away 2"].iter().enumerate() {
        let sent = a.send_direct(bob.id, content, &format!("w{i}")).await;
        assert_eq!(sent["event"], "message_sent", "{sent}");
    }
    let mut b = app.connect(&bob, "b").await;
    // From bob's cursor: what he had (never acked), then what he missed.
    let replayed = natter_testkit::ws::contents(&b.receive_messages(4).await);
    assert_eq!(replayed, ["hello", "once", "while away 1", "while away 2"]);

    // A group: created, a member added over REST, a message to it.
    let group = app.create_group(&alice, "team", &[&bob]).await;
    let group_id = group["id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .post(
            &format!("/api/groups/{group_id}/members"),
            Some(&alice.token),
            json!({"userIds": [carol.id.to_string()]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    a.send_ref(
        "send_group_message",
        json!({"groupId": group_id, "content": "to the team"}),
        "g1",
    )
    .await;
    assert_eq!(a.reply_to("g1").await["event"], "message_sent");
    loop {
        let frame = b.next().await;
        if frame["event"] == "receive_group_message" {
            assert_eq!(frame["data"]["message"]["content"], "to the team");
            break;
        }
    }

    // REST reads: history, people (with presence), members; a profile
    // change announced to other gateways.
    let (status, history) = app
        .get(
            &format!(
                "/api/conversations/{}/messages",
                conversation.as_str().unwrap()
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["messages"].as_array().unwrap().len(), 4);
    let (status, people) = app.get("/api/users", Some(&alice.token)).await;
    assert_eq!(status, 200, "{people}");
    let (status, _) = app
        .get(&format!("/api/groups/{group_id}/members"), Some(&bob.token))
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .patch(
            "/api/me",
            Some(&alice.token),
            json!({"displayName": "Alice A."}),
        )
        .await;
    assert_eq!(status, 200);

    // Log-out revokes the token everywhere (the revocations bucket) and
    // closes the socket it opened.
    let (status, _) = app
        .post("/api/auth/logout", Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, 204);
    let closed = loop {
        match b.try_next(Duration::from_secs(10)).await {
            Some(frame) if frame["event"] == "__closed" => break true,
            Some(_) => continue,
            None => break false,
        }
    };
    assert!(closed, "the logged-out socket was closed");
    let (status, _) = app.get("/api/me", Some(&bob.token)).await;
    assert_eq!(status, 401);

    let TestNats::Deploy(server) = &app.nats else {
        unreachable!("nats_permissions starts the deploy server")
    };
    assert_eq!(server.violations(), Vec::<String>::new());
}
