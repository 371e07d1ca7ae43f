//! natter on a 3-node NATS cluster with every stream replicated three
//! times: the guarantees of DESIGN.md §1 across the loss of a node.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use natter_testkit::{TestApp, TestOptions, TestUser, WsClient};
use serde_json::{Value, json};
use std::time::Duration;

/// Sends `content` to `to` with a `clientMsgId`, retrying what is answered
/// `unavailable` (the outcome is unknown) with the same id, as DESIGN §4
/// tells clients to. Returns the accepted message.
async fn send_until_accepted(from: &mut WsClient, to: &TestUser, content: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        let reference = format!("{content}-{attempt}");
        from.send_ref(
            "send_direct_message",
            json!({"receiverId": to.id.to_string(), "content": content, "clientMsgId": content}),
            &reference,
        )
        .await;
        let reply = from.reply_to(&reference).await;
        if reply["event"] == "message_sent" {
            return reply["data"]["message"].clone();
        }
        assert_eq!(reply["data"]["code"], "unavailable", "{reply}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{content} never accepted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}

/// The name of the node that leads `stream`.
async fn leader_of(app: &TestApp, stream: &str) -> String {
    let js = app.jetstream().await;
    let info = js
        .get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    info.cluster
        .and_then(|c| c.leader)
        .expect("a replicated stream has a leader")
}

#[tokio::test]
async fn the_loss_of_the_chat_leader_loses_duplicates_and_reorders_nothing() {
    let mut app = TestApp::spawn_with(TestOptions {
        nats_nodes: 3,
        ..TestOptions::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&alice, "a").await;
    let mut b = app.connect(&bob, "b").await;
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(send_until_accepted(&mut a, &bob, &format!("before-{i}")).await);
    }

    // kill -9 of the node that leads CHAT, while messages go on.
    let leader = leader_of(&app, "CHAT").await;
    let node = (0..app.nats.len())
        .find(|i| app.nats.node(*i).server_name() == Some(leader.as_str()))
        .unwrap();
    app.nats.node_mut(node).kill().unwrap();
    for i in 0..10 {
        sent.push(send_until_accepted(&mut a, &bob, &format!("during-{i}")).await);
    }
    app.nats.node_mut(node).restart().unwrap();
    for i in 0..10 {
        sent.push(send_until_accepted(&mut a, &bob, &format!("after-{i}")).await);
    }

    // Bob gets every accepted message once, in seq order; a reconnecting
    // device replays the same from its cursor.
    let mut got: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < sent.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} delivered",
            got.len(),
            sent.len()
        );
        if let Some(frame) = b.try_next(Duration::from_secs(1)).await
            && frame["event"] == "receive_direct_message"
        {
            got.push(frame["data"]["message"].clone());
        }
    }
    let ids = |messages: &[Value]| -> Vec<String> {
        messages.iter().map(|m| m["id"].to_string()).collect()
    };
    assert_eq!(ids(&got), ids(&sent), "delivered once each, in send order");
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let late = b.drain(Duration::from_millis(500)).await;
    assert!(
        late.iter().all(|f| f["event"] != "receive_direct_message"),
        "{late:?}"
    );
}
